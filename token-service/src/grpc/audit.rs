//! `chat.v1.AuditService` on token-service, and the one place administrative calls are
//! recorded: who (the caller's name in the callers file), what, on what, and how it
//! ended.

use std::{path::Path, sync::Arc};

use chat_common::{
    auth::{Caller, PolicyError},
    error::audit_outcome,
    security::PolicyReloadHook,
};
use chat_proto::v1::{self as pb, audit_service_server::AuditService};
use tonic::{Request, Response, Status};

use super::{convert::timestamp, reply};
use crate::{
    domain::{AuditEntry, AuditRecord, FailedCallCursor, PageSize, now},
    error::Error,
    store::Store,
};

/// Who is named for what the service does by itself, and what it did.
const THIS_SERVICE: &str = "token-service";
const CALLERS_FILE_RELOAD: &str = "callers-file-reload";

/// Records administrative calls in the store.
#[derive(Clone)]
pub struct Auditor {
    store: Store,
}

impl Auditor {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// The caller's name in the callers file, as the authentication layer found it.
    pub fn caller<T>(request: &Request<T>) -> String {
        Caller::name_of(request)
    }

    /// Records how a call on `target` ended. A call refused for bad input did nothing
    /// and is not recorded, so a refusal writes nothing; a record that cannot be written
    /// is logged.
    pub async fn record<T>(
        &self,
        caller: String,
        method: &str,
        target: String,
        outcome: &Result<T, Error>,
    ) {
        self.record_error(caller, method, target, outcome.as_ref().err())
            .await;
    }

    /// Records each reload of the callers file: OK, or FAILED_PRECONDITION with the
    /// reason `CALLERS_FILE_INVALID` when the file did not load (the previous one stays).
    pub fn policy_reload_hook(&self) -> PolicyReloadHook {
        let store = self.store.clone();
        Arc::new(move |path: &Path, error: Option<&PolicyError>| {
            let (result, reason) = match error {
                None => ("OK", ""),
                Some(_) => ("FAILED_PRECONDITION", "CALLERS_FILE_INVALID"),
            };
            let entry = AuditEntry {
                caller: THIS_SERVICE.to_owned(),
                method: CALLERS_FILE_RELOAD.to_owned(),
                target: path.display().to_string(),
                result: result.to_owned(),
                reason: reason.to_owned(),
            };
            let store = store.clone();
            // Called from the file watcher; the write must not hold it up.
            tokio::spawn(async move { write(&store, entry).await });
        })
    }

    /// Records how a call ended, then answers with it.
    pub async fn reply<T>(
        &self,
        caller: String,
        method: &str,
        target: String,
        outcome: Result<T, Error>,
    ) -> Result<Response<T>, Status> {
        self.record(caller, method, target, &outcome).await;
        reply(outcome)
    }

    /// Records a call that ended with `error`, or succeeded (`None`).
    pub async fn record_error(
        &self,
        caller: String,
        method: &str,
        target: String,
        error: Option<&Error>,
    ) {
        let Some((result, reason)) = audit_outcome(error) else {
            return;
        };
        let entry = AuditEntry {
            caller,
            method: method.to_owned(),
            target,
            result,
            reason,
        };
        write(&self.store, entry).await;
    }
}

/// Appends `entry`; one that cannot be written is logged (it names no personal data).
async fn write(store: &Store, entry: AuditEntry) {
    if let Err(error) = store.audit(entry.clone(), now()).await {
        tracing::error!(%error, ?entry, "could not write an audit record");
    }
}

#[derive(Clone)]
pub struct AuditGrpc {
    store: Store,
}

impl AuditGrpc {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    async fn list(
        &self,
        r: pb::ListAuditRecordsRequest,
    ) -> Result<pb::ListAuditRecordsResponse, Error> {
        let page_size = PageSize::parse(r.page_size)?.get();
        // Record ids, like call ids, are positive integers: the same opaque cursor.
        let before = FailedCallCursor::decode(&r.page_token)?.map(|c| c.0);
        let mut records = self.store.audit_records(before, page_size + 1).await?;
        let mut next_page_token = String::new();
        if records.len() > page_size as usize {
            records.truncate(page_size as usize);
            if let Some(last) = records.last() {
                next_page_token = FailedCallCursor(last.record_id).encode();
            }
        }
        Ok(pb::ListAuditRecordsResponse {
            audit_records: records.iter().map(audit_record).collect(),
            next_page_token,
        })
    }
}

fn audit_record(record: &AuditRecord) -> pb::AuditRecord {
    pb::AuditRecord {
        record_id: record.record_id,
        caller: record.entry.caller.clone(),
        method: record.entry.method.clone(),
        target: record.entry.target.clone(),
        time: Some(timestamp(record.time)),
        result: record.entry.result.clone(),
        reason: record.entry.reason.clone(),
    }
}

#[tonic::async_trait]
impl AuditService for AuditGrpc {
    async fn list_audit_records(
        &self,
        request: Request<pb::ListAuditRecordsRequest>,
    ) -> Result<Response<pb::ListAuditRecordsResponse>, Status> {
        reply(self.list(request.into_inner()).await)
    }
}
