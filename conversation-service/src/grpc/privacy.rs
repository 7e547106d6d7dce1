//! `chat.v1.ConversationPrivacyService` (token-service erases and exports a customer's
//! conversations through it) and `chat.v1.AuditService` over conversation-service's own
//! audit trail. Every privacy call is recorded with the caller's name; bad input is
//! refused before anything is read or written, and is not recorded.

use chat_common::{auth::Caller, error::audit_outcome};
use chat_proto::v1::{
    self, audit_service_server::AuditService,
    conversation_privacy_service_server::ConversationPrivacyService,
    export_customer_conversations_response::Item,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::{GrpcResult, convert, ok, page};
use crate::{
    domain::{ConversationId, PageSize, PageTokens, parse_external_id, parse_request_id},
    error::Error,
    store::{AuditRow, ListDirection, Store},
};

const ERASE: &str = "/chat.v1.ConversationPrivacyService/EraseCustomerConversations";
const EXPORT: &str = "/chat.v1.ConversationPrivacyService/ExportCustomerConversations";
/// Conversations read per query of an export, and messages per page.
const EXPORT_CONVERSATIONS: usize = 100;
const EXPORT_MESSAGES: i64 = 500;
/// Items buffered for token-service while it relays them.
const EXPORT_QUEUE: usize = 32;
/// Listed conversations in one request: more than a customer opens, few enough for one
/// query.
const MAX_LISTED: usize = 10_000;
const AUDIT_PAGE: (i64, i64) = (50, 200);
/// The query a ListAuditRecords page token is sealed for (it has no filters).
const AUDIT_QUERY: &str = "audit";

/// A customer and the conversations their sessions opened, as a request names them.
struct CustomerScope {
    customer_id: String,
    listed: Vec<Uuid>,
}

impl CustomerScope {
    fn parse(customer_id: &str, listed: &[String]) -> Result<Self, Error> {
        if listed.len() > MAX_LISTED {
            return Err(Error::invalid(
                "conversation_ids",
                format!("at most {MAX_LISTED}"),
            ));
        }
        Ok(Self {
            customer_id: parse_external_id("customer_id", customer_id)?,
            listed: listed
                .iter()
                .map(|id| ConversationId::parse("conversation_ids", id).map(|id| id.0))
                .collect::<Result<_, _>>()?,
        })
    }
}

#[derive(Clone)]
pub struct PrivacyApi {
    store: Store,
}

impl PrivacyApi {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// Records how a call on `target` ended (not when it was refused for bad input).
    async fn record(&self, caller: &str, method: &str, target: &str, error: Option<&Error>) {
        let Some((result, reason)) = audit_outcome(error) else {
            return;
        };
        if let Err(error) = self
            .store
            .audit(caller, method, target, &result, &reason)
            .await
        {
            tracing::error!(%error, caller, method, target, "could not write an audit record");
        }
    }

    async fn erase(
        &self,
        request: &v1::EraseCustomerConversationsRequest,
    ) -> Result<v1::EraseCustomerConversationsResponse, Error> {
        parse_request_id("request_id", &request.request_id)?
            .ok_or_else(|| Error::invalid("request_id", "is required"))?;
        let scope = CustomerScope::parse(&request.customer_id, &request.conversation_ids)?;
        let erased = self
            .store
            .erase_customer(&scope.customer_id, &scope.listed)
            .await?;
        Ok(v1::EraseCustomerConversationsResponse {
            conversations_erased: erased.conversations,
            messages_erased: erased.messages,
        })
    }

    /// Sends each conversation, then its messages, into `tx`.
    async fn export(
        &self,
        ids: &[Uuid],
        tx: &mpsc::Sender<Result<v1::ExportCustomerConversationsResponse, Status>>,
    ) -> Result<(), Error> {
        let send = |item: Item| async move {
            tx.send(Ok(v1::ExportCustomerConversationsResponse {
                item: Some(item),
            }))
            .await
            // The caller went away: nothing left to do.
            .map_err(|_| Error::Unavailable("the caller cancelled the export".into()))
        };
        for chunk in ids.chunks(EXPORT_CONVERSATIONS) {
            let mut rows = self.store.get_conversations(chunk).await?;
            rows.sort_by_key(|row| row.id);
            for row in rows {
                send(Item::Conversation(convert::conversation(&row, None))).await?;
                let mut after = 0;
                loop {
                    let messages = self
                        .store
                        .list_messages(
                            row.conversation_id(),
                            ListDirection::Forward,
                            after,
                            EXPORT_MESSAGES,
                        )
                        .await?;
                    for message in &messages {
                        send(Item::Message(convert::message(message))).await?;
                    }
                    match messages.last() {
                        Some(last) if messages.len() as i64 == EXPORT_MESSAGES => after = last.seq,
                        _ => break,
                    }
                }
            }
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl ConversationPrivacyService for PrivacyApi {
    async fn erase_customer_conversations(
        &self,
        request: Request<v1::EraseCustomerConversationsRequest>,
    ) -> GrpcResult<v1::EraseCustomerConversationsResponse> {
        let caller = Caller::name_of(&request);
        let request = request.into_inner();
        let outcome = self.erase(&request).await;
        self.record(&caller, ERASE, &request.customer_id, outcome.as_ref().err())
            .await;
        Ok(Response::new(outcome?))
    }

    type ExportCustomerConversationsStream =
        ReceiverStream<Result<v1::ExportCustomerConversationsResponse, Status>>;

    async fn export_customer_conversations(
        &self,
        request: Request<v1::ExportCustomerConversationsRequest>,
    ) -> GrpcResult<Self::ExportCustomerConversationsStream> {
        let caller = Caller::name_of(&request);
        let request = request.into_inner();
        let scope = CustomerScope::parse(&request.customer_id, &request.conversation_ids)?;
        let ids = match self
            .store
            .customer_conversations(&scope.customer_id, &scope.listed)
            .await
        {
            Ok(ids) => ids,
            Err(error) => {
                self.record(&caller, EXPORT, &scope.customer_id, Some(&error))
                    .await;
                return Err(error.into());
            }
        };
        let (tx, rx) = mpsc::channel(EXPORT_QUEUE);
        let this = self.clone();
        tokio::spawn(async move {
            let outcome = this.export(&ids, &tx).await;
            this.record(&caller, EXPORT, &scope.customer_id, outcome.as_ref().err())
                .await;
            if let Err(error) = outcome {
                let _ = tx.send(Err(error.into())).await;
            }
        });
        ok(ReceiverStream::new(rx))
    }
}

/// `chat.v1.AuditService`: conversation-service's audit trail, newest first.
pub struct AuditApi {
    store: Store,
    pages: PageTokens,
}

impl AuditApi {
    pub fn new(store: Store, pages: PageTokens) -> Self {
        Self { store, pages }
    }
}

fn audit_record(row: &AuditRow) -> v1::AuditRecord {
    v1::AuditRecord {
        record_id: row.record_id,
        caller: row.caller.clone(),
        method: row.method.clone(),
        target: row.target.clone(),
        time: Some(convert::timestamp(row.time)),
        result: row.result.clone(),
        reason: row.reason.clone(),
    }
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn list_audit_records(
        &self,
        request: Request<v1::ListAuditRecordsRequest>,
    ) -> GrpcResult<v1::ListAuditRecordsResponse> {
        let request = request.into_inner();
        let (default, max) = AUDIT_PAGE;
        let size = PageSize::parse("page_size", request.page_size, default, max)?.0;
        let before = self
            .pages
            .decode::<i64>("page_token", AUDIT_QUERY, &request.page_token)?
            .unwrap_or(0);
        let rows = self.store.audit_records(before, size + 1).await?;
        let (audit_records, next_page_token) = page(&rows, size, audit_record, |last| {
            self.pages.encode(AUDIT_QUERY, &last.record_id)
        });
        ok(v1::ListAuditRecordsResponse {
            audit_records,
            next_page_token,
        })
    }
}
