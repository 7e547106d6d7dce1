//! `chat.v1.PrivacyService`: a customer's erasure and export. Both are recorded in the
//! audit trail with the caller's name; bad input is refused before anything is read or
//! written.

use chat_proto::v1::{
    self as pb, export_customer_conversations_response::Item as RemoteItem,
    export_customer_response::Item, privacy_service_server::PrivacyService,
};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{audit::Auditor, convert::timestamp};
use crate::{
    conversations::{CallError, Conversations, classify},
    domain::{CustomerExport, CustomerId, Erasure, RequestId},
    error::Error,
    privacy::Erasures,
    store::Store,
};

const ERASE_CUSTOMER: &str = "/chat.v1.PrivacyService/EraseCustomer";
const EXPORT_CUSTOMER: &str = "/chat.v1.PrivacyService/ExportCustomer";
/// Items buffered for a slow reader of an export; beyond, the export waits for it.
const EXPORT_QUEUE: usize = 32;
/// A whole export, conversation-service's stream and a slow reader included, ends by
/// then: REQUEST_TIMEOUT bounds only the start of a stream, and a stuck one must not hold
/// a task and a connection to conversation-service for ever.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Clone)]
pub struct PrivacyGrpc {
    store: Store,
    erasures: Erasures,
    conversations: Conversations,
    auditor: Auditor,
}

impl PrivacyGrpc {
    pub fn new(store: Store, erasures: Erasures, conversations: Conversations) -> Self {
        Self {
            auditor: Auditor::new(store.clone()),
            store,
            erasures,
            conversations,
        }
    }

    async fn erase(&self, r: pb::EraseCustomerRequest) -> Result<pb::EraseCustomerResponse, Error> {
        let request_id = RequestId::parse("request_id", &r.request_id)?;
        let customer_id = CustomerId::parse("customer_id", &r.customer_id)?;
        let erasure = self.erasures.erase(request_id, customer_id).await?;
        Ok(pb::EraseCustomerResponse {
            erasure: Some(erasure_reply(&erasure)),
        })
    }

    /// Streams token-service's part, then conversation-service's, into `tx`.
    async fn export(
        &self,
        customer_id: &CustomerId,
        local: CustomerExport,
        tx: &mpsc::Sender<Result<pb::ExportCustomerResponse, Status>>,
    ) -> Result<(), Error> {
        let send = |item: Item| async move {
            tx.send(Ok(pb::ExportCustomerResponse { item: Some(item) }))
                .await
                .map_err(|_| Error::Cancelled)
        };
        for session in &local.sessions {
            send(Item::Session(pb::ExportedSession {
                session_id: session.session_id.to_string(),
                provider_id: session.provider_id.as_str().to_owned(),
                token_id: session.token_id.to_string(),
                conversation_id: session
                    .conversation_id
                    .as_ref()
                    .map(|id| id.as_str().to_owned())
                    .unwrap_or_default(),
                create_time: Some(timestamp(session.create_time)),
                end_time: session.end_time.map(timestamp),
            }))
            .await?;
        }
        for contact in &local.contacts {
            send(Item::ContactDetails(pb::ExportedContactDetails {
                session_id: contact.session_id.to_string(),
                name: contact.name.clone(),
                email: contact.email.clone(),
                phone: contact.phone.clone(),
                create_time: Some(timestamp(contact.create_time)),
            }))
            .await?;
        }
        let mut remote = self
            .conversations
            .export_customer(customer_id, &local.conversation_ids(), EXPORT_TIMEOUT)
            .await
            .map_err(remote_error)?;
        while let Some(reply) = remote.message().await.map_err(remote_error)? {
            match reply.item {
                Some(RemoteItem::Conversation(c)) => send(Item::Conversation(c)).await?,
                Some(RemoteItem::Message(m)) => send(Item::Message(m)).await?,
                // An item kind newer than this token-service: nothing to relay.
                None => {}
            }
        }
        Ok(())
    }
}

/// What the caller of an export hears when conversation-service's part fails.
fn remote_error(status: Status) -> Error {
    match classify(status) {
        CallError::Permanent(refusal) => Error::Refused(refusal),
        other => Error::ConversationServiceUnavailable(other.to_string()),
    }
}

fn erasure_reply(erasure: &Erasure) -> pb::Erasure {
    let state = if erasure.complete_time.is_some() {
        pb::ErasureState::Complete
    } else {
        pb::ErasureState::Pending
    };
    pb::Erasure {
        request_id: erasure.request_id.to_string(),
        customer_id: erasure.customer_id.as_str().to_owned(),
        state: state.into(),
        sessions_erased: erasure.sessions_erased,
        calls_erased: erasure.calls_erased,
        conversations_erased: erasure.conversations_erased,
        messages_erased: erasure.messages_erased,
        create_time: Some(timestamp(erasure.create_time)),
        complete_time: erasure.complete_time.map(timestamp),
    }
}

#[tonic::async_trait]
impl PrivacyService for PrivacyGrpc {
    async fn erase_customer(
        &self,
        request: Request<pb::EraseCustomerRequest>,
    ) -> Result<Response<pb::EraseCustomerResponse>, Status> {
        let caller = Auditor::caller(&request);
        let request = request.into_inner();
        let target = request.customer_id.clone();
        let outcome = self.erase(request).await;
        self.auditor
            .reply(caller, ERASE_CUSTOMER, target, outcome)
            .await
    }

    type ExportCustomerStream = ReceiverStream<Result<pb::ExportCustomerResponse, Status>>;

    async fn export_customer(
        &self,
        request: Request<pb::ExportCustomerRequest>,
    ) -> Result<Response<Self::ExportCustomerStream>, Status> {
        let caller = Auditor::caller(&request);
        let target = request.into_inner().customer_id;
        let customer_id = CustomerId::parse("customer_id", &target)?;
        let local = match self.store.export_customer(customer_id.clone()).await {
            Ok(local) => local,
            Err(error) => {
                self.auditor
                    .record_error(caller, EXPORT_CUSTOMER, target, Some(&error))
                    .await;
                return Err(error.into());
            }
        };
        let (tx, rx) = mpsc::channel(EXPORT_QUEUE);
        let this = self.clone();
        tokio::spawn(async move {
            let outcome =
                tokio::time::timeout(EXPORT_TIMEOUT, this.export(&customer_id, local, &tx))
                    .await
                    .unwrap_or_else(|_| {
                        Err(Error::ConversationServiceUnavailable(
                            "the export did not finish in time".into(),
                        ))
                    });
            this.auditor
                .record(caller, EXPORT_CUSTOMER, target, &outcome)
                .await;
            if let Err(error) = outcome {
                let _ = tx.send(Err(error.into())).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
