//! `chat.v1.TokenAdminService`: operators' tools, served beside TokenService but a service
//! of its own, so access to it is granted apart.

use std::path::PathBuf;

use chat_proto::v1::{self as pb, token_admin_service_server::TokenAdminService};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::{audit::Auditor, convert::timestamp, reply};
use crate::{
    domain::{BackupName, CallId, CallKind, FailedCall, FailedCallCursor, PageSize, now},
    error::Error,
    outbox::Outbox,
    store::Store,
};

const RETRY_FAILED_CALL: &str = "/chat.v1.TokenAdminService/RetryFailedCall";
const DROP_FAILED_CALL: &str = "/chat.v1.TokenAdminService/DropFailedCall";
const BACKUP_DATABASE: &str = "/chat.v1.TokenAdminService/BackupDatabase";

#[derive(Clone)]
pub struct TokenAdminGrpc {
    store: Store,
    outbox: Outbox,
    backup_dir: PathBuf,
    auditor: Auditor,
}

impl TokenAdminGrpc {
    pub fn new(store: Store, outbox: Outbox, backup_dir: PathBuf) -> Self {
        Self {
            auditor: Auditor::new(store.clone()),
            store,
            outbox,
            backup_dir,
        }
    }

    async fn list(
        &self,
        r: pb::ListFailedCallsRequest,
    ) -> Result<pb::ListFailedCallsResponse, Error> {
        let page_size = PageSize::parse(r.page_size)?.get();
        let after = FailedCallCursor::decode(&r.page_token)?;
        let mut calls = self.store.failed_calls(after, page_size + 1).await?;
        let mut next_page_token = String::new();
        if calls.len() > page_size as usize {
            calls.truncate(page_size as usize);
            if let Some(last) = calls.last() {
                next_page_token = FailedCallCursor(last.call_id.get()).encode();
            }
        }
        Ok(pb::ListFailedCallsResponse {
            failed_calls: calls.iter().map(failed_call).collect(),
            next_page_token,
        })
    }

    async fn retry(
        &self,
        r: pb::RetryFailedCallRequest,
    ) -> Result<pb::RetryFailedCallResponse, Error> {
        let call_id = CallId::parse(r.call_id)?;
        self.store.retry_failed_call(call_id, now()).await?;
        self.outbox.wake();
        Ok(pb::RetryFailedCallResponse {})
    }

    async fn drop_call(
        &self,
        r: pb::DropFailedCallRequest,
    ) -> Result<pb::DropFailedCallResponse, Error> {
        let call_id = CallId::parse(r.call_id)?;
        self.store.drop_failed_call(call_id).await?;
        Ok(pb::DropFailedCallResponse {})
    }

    async fn backup(
        &self,
        r: pb::BackupDatabaseRequest,
    ) -> Result<pb::BackupDatabaseResponse, Error> {
        let name = BackupName::parse(&r.file_name, now())?;
        let (path, size) = self.store.backup(self.backup_dir.clone(), name).await?;
        tracing::info!(path = %path.display(), size, "backup written");
        Ok(pb::BackupDatabaseResponse {
            path: path.display().to_string(),
            size_bytes: i64::try_from(size).unwrap_or(i64::MAX),
        })
    }
}

fn failed_call(call: &FailedCall) -> pb::FailedCall {
    pb::FailedCall {
        call_id: call.call_id.get(),
        session_id: call.session_id.to_string(),
        kind: match call.kind {
            CallKind::CreateConversation => pb::CallKind::CreateConversation,
            CallKind::UpdateCustomer => pb::CallKind::UpdateCustomer,
        }
        .into(),
        attempts: i32::try_from(call.attempts).unwrap_or(i32::MAX),
        last_error: call.last_error.clone(),
        error_reason: call.error_reason.clone(),
        fail_time: Some(timestamp(call.fail_time)),
        create_time: Some(timestamp(call.create_time)),
    }
}

fn span(method: &'static str, call_id: i64) -> tracing::Span {
    tracing::info_span!("admin_rpc", method, call_id)
}

#[tonic::async_trait]
impl TokenAdminService for TokenAdminGrpc {
    async fn list_failed_calls(
        &self,
        request: Request<pb::ListFailedCallsRequest>,
    ) -> Result<Response<pb::ListFailedCallsResponse>, Status> {
        async { reply(self.list(request.into_inner()).await) }
            .instrument(span("ListFailedCalls", 0))
            .await
    }

    async fn retry_failed_call(
        &self,
        request: Request<pb::RetryFailedCallRequest>,
    ) -> Result<Response<pb::RetryFailedCallResponse>, Status> {
        let span = span("RetryFailedCall", request.get_ref().call_id);
        let caller = Auditor::caller(&request);
        let request = request.into_inner();
        let target = request.call_id.to_string();
        let outcome = self.retry(request).instrument(span).await;
        self.auditor
            .reply(caller, RETRY_FAILED_CALL, target, outcome)
            .await
    }

    async fn drop_failed_call(
        &self,
        request: Request<pb::DropFailedCallRequest>,
    ) -> Result<Response<pb::DropFailedCallResponse>, Status> {
        let span = span("DropFailedCall", request.get_ref().call_id);
        let caller = Auditor::caller(&request);
        let request = request.into_inner();
        let target = request.call_id.to_string();
        let outcome = self.drop_call(request).instrument(span).await;
        self.auditor
            .reply(caller, DROP_FAILED_CALL, target, outcome)
            .await
    }

    async fn backup_database(
        &self,
        request: Request<pb::BackupDatabaseRequest>,
    ) -> Result<Response<pb::BackupDatabaseResponse>, Status> {
        let caller = Auditor::caller(&request);
        let request = request.into_inner();
        let outcome = self
            .backup(request.clone())
            .instrument(span("BackupDatabase", 0))
            .await;
        // The file written, or the name asked for when none was.
        let target = outcome
            .as_ref()
            .map_or(request.file_name, |written| written.path.clone());
        self.auditor
            .reply(caller, BACKUP_DATABASE, target, outcome)
            .await
    }
}
