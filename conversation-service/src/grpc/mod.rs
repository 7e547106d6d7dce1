//! The generated `ConversationService` trait: parse the request into domain values, call
//! the store (or start a stream task), build the reply (`convert`).

pub mod convert;
mod events;
mod outbound;
mod privacy;

pub use privacy::{AuditApi, PrivacyApi};

use std::sync::Arc;

use chat_proto::v1::{self, conversation_service_server::ConversationService};
use chrono::{DateTime, Utc};
use tonic::{Request, Response, Status};
use tracing::Instrument;
use uuid::Uuid;

pub use self::events::EventApi;
use self::outbound::Outbound;
use crate::{
    domain::{
        AttachmentRules, ConversationFilter, ConversationId, CustomerDetails, CustomerPatch,
        EditWindow, MessageChange, NewConversation, NewMessage, PageSize, PageTokens, Participant,
        SearchQuery, Status as ConversationStatus, parse_acting, parse_body,
        parse_client_message_id, parse_external_id, parse_message_body, parse_message_id,
        parse_origin, parse_request_id, parse_seq, parse_session_id,
    },
    error::Error,
    realtime::{
        Hub,
        streams::{self, ConversationDelivery, InboxDelivery, Out, StreamContext},
    },
    store::{InboxCursor, ListDirection, Search, SearchKey, SendQueue, Store},
};

const CONVERSATIONS_PAGE: (i64, i64) = (50, 200);
const MESSAGES_PAGE: (i64, i64) = (50, 500);
const SEARCH_PAGE: (i64, i64) = (20, 100);
/// Items buffered between StreamEvents' task and the HTTP/2 stream.
const STREAM_BUFFER: usize = 16;

pub struct ConversationApi {
    store: Store,
    sender: SendQueue,
    hub: Arc<Hub>,
    streams: StreamContext,
    pages: PageTokens,
    rules: MessageRules,
}

/// What a message may carry and how long it may be edited (configuration).
#[derive(Debug, Clone)]
pub struct MessageRules {
    pub attachments: AttachmentRules,
    pub edit_window: EditWindow,
}

impl ConversationApi {
    pub fn new(
        store: Store,
        sender: SendQueue,
        hub: Arc<Hub>,
        streams: StreamContext,
        pages: PageTokens,
        rules: MessageRules,
    ) -> Self {
        Self {
            store,
            sender,
            hub,
            streams,
            pages,
            rules,
        }
    }
}

impl ConversationApi {
    /// The anonymous customer must present the session that opened the conversation.
    /// Calls whose store step checks membership under the row lock read the conversation
    /// here only for that (the recorded session never changes, so this cannot race).
    async fn check_anonymous(
        &self,
        id: ConversationId,
        participant: &Participant,
        session: Option<Uuid>,
    ) -> Result<(), Error> {
        if participant.is_anonymous() {
            self.store
                .get_conversation(id)
                .await?
                .authorize(participant, session)?;
        }
        Ok(())
    }
}

type GrpcResult<T> = std::result::Result<Response<T>, Status>;

fn ok<T>(value: T) -> GrpcResult<T> {
    Ok(Response::new(value))
}

/// Encoded bytes of the items of one list page. Replies are capped at 1 MiB (tonic's
/// encoding limit); half of it leaves room for everything else in the reply.
const PAGE_BYTES: usize = 512 * 1024;

/// Builds a page from rows read with one extra (`size + 1`): as many items as fit in
/// `size` and in [`PAGE_BYTES`] (at least one), and the token of the last one kept when
/// more follow. A page may hold fewer than `size` items; the token continues after it.
fn page<R, P: prost::Message>(
    rows: &[R],
    size: i64,
    to_proto: impl Fn(&R) -> P,
    token: impl Fn(&R) -> String,
) -> (Vec<P>, String) {
    let size = usize::try_from(size).unwrap_or(usize::MAX);
    let mut items = Vec::new();
    let mut bytes = 0;
    for (i, row) in rows.iter().enumerate() {
        let item = to_proto(row);
        // The item, its field tag and its length prefix.
        let len = item.encoded_len() + 1 + prost::length_delimiter_len(item.encoded_len());
        if i == size || (i > 0 && bytes + len > PAGE_BYTES) {
            return (items, token(&rows[i - 1]));
        }
        bytes += len;
        items.push(item);
    }
    (items, String::new())
}

/// A list's, an inbox's or a summary's owner (field `participant`), put on the RPC's
/// log line.
fn owner(participant: Option<&v1::Participant>) -> Result<Participant, Error> {
    let owner = Participant::parse_owner("participant", participant)?;
    let field = match owner.role() {
        crate::domain::Role::Provider => "provider_id",
        crate::domain::Role::Customer => "customer_id",
    };
    chat_common::rpc::record(field, owner.id());
    Ok(owner)
}

#[tonic::async_trait]
impl ConversationService for ConversationApi {
    async fn create_conversation(
        &self,
        request: Request<v1::CreateConversationRequest>,
    ) -> GrpcResult<v1::CreateConversationResponse> {
        let request = request.into_inner();
        let new = NewConversation {
            request_id: parse_request_id("request_id", &request.request_id)?,
            provider_id: parse_external_id("provider_id", &request.provider_id)?,
            customer: CustomerDetails::parse(request.customer.as_ref())?,
            reuse_active: request.reuse_active,
            origin: parse_origin("origin", &request.origin)?,
            session_id: parse_session_id("session_id", &request.session_id)?,
        };
        chat_common::rpc::record("provider_id", &new.provider_id);
        if let Some(request_id) = new.request_id {
            chat_common::rpc::record("request_id", request_id);
        }
        let (row, created) = self.store.create_conversation(new).await?;
        chat_common::rpc::record("conversation_id", row.id);
        tracing::debug!(created, "conversation");
        ok(v1::CreateConversationResponse {
            conversation: Some(convert::conversation(&row, None)),
            created,
        })
    }

    async fn get_conversation(
        &self,
        request: Request<v1::GetConversationRequest>,
    ) -> GrpcResult<v1::GetConversationResponse> {
        let request = request.into_inner();
        let id = ConversationId::parse("conversation_id", &request.conversation_id)?;
        chat_common::rpc::record("conversation_id", id);
        let viewer = request
            .viewer
            .as_ref()
            .map(|v| parse_acting("viewer", Some(v)))
            .transpose()?;
        let row = self.store.get_conversation(id).await?;
        if let Some((viewer, session)) = &viewer {
            row.authorize(viewer, *session)?;
        }
        let viewer = viewer.map(|(v, _)| v);
        ok(v1::GetConversationResponse {
            conversation: Some(convert::conversation(&row, viewer.map(|v| v.role()))),
        })
    }

    async fn list_conversations(
        &self,
        request: Request<v1::ListConversationsRequest>,
    ) -> GrpcResult<v1::ListConversationsResponse> {
        let request = request.into_inner();
        let owner = owner(request.participant.as_ref())?;
        let filter = ConversationFilter::parse(&request)?;
        let (default, max) = CONVERSATIONS_PAGE;
        let size = PageSize::parse("page_size", request.page_size, default, max)?.0;
        let query = format!("{:?}/{}/{}", owner.role(), owner.id(), filter.scope());
        let after: Option<(DateTime<Utc>, Uuid)> =
            self.pages
                .decode("page_token", &query, &request.page_token)?;
        // One extra row tells whether another page exists.
        let rows = self
            .store
            .list_conversations(&owner, &filter, after, size + 1)
            .await?;
        let (conversations, next_page_token) = page(
            &rows,
            size,
            |r| convert::conversation(r, Some(owner.role())),
            |last| {
                self.pages
                    .encode(&query, &(last.last_activity_at, last.id.0))
            },
        );
        ok(v1::ListConversationsResponse {
            conversations,
            next_page_token,
        })
    }

    async fn update_customer(
        &self,
        request: Request<v1::UpdateCustomerRequest>,
    ) -> GrpcResult<v1::UpdateCustomerResponse> {
        let request = request.into_inner();
        let id = ConversationId::parse("conversation_id", &request.conversation_id)?;
        chat_common::rpc::record("conversation_id", id);
        let patch = CustomerPatch::parse(&request)?;
        let row = if patch.is_empty() {
            self.store.get_conversation(id).await?
        } else {
            self.store.update_customer(id, &patch).await?
        };
        ok(v1::UpdateCustomerResponse {
            conversation: Some(convert::conversation(&row, None)),
        })
    }

    async fn set_conversation_status(
        &self,
        request: Request<v1::SetConversationStatusRequest>,
    ) -> GrpcResult<v1::SetConversationStatusResponse> {
        let request = request.into_inner();
        let id = ConversationId::parse("conversation_id", &request.conversation_id)?;
        chat_common::rpc::record("conversation_id", id);
        let status = ConversationStatus::parse("status", request.status)?;
        let actor = request
            .actor
            .as_ref()
            .map(|a| parse_acting("actor", Some(a)))
            .transpose()?;
        if let Some((actor, session)) = &actor {
            self.check_anonymous(id, actor, *session).await?;
        }
        let actor = actor.map(|(a, _)| a);
        let row = self.store.set_status(id, status, actor.as_ref()).await?;
        ok(v1::SetConversationStatusResponse {
            conversation: Some(convert::conversation(&row, actor.map(|a| a.role()))),
        })
    }

    async fn send_message(
        &self,
        request: Request<v1::SendMessageRequest>,
    ) -> GrpcResult<v1::SendMessageResponse> {
        let request = request.into_inner();
        let conversation_id = ConversationId::parse("conversation_id", &request.conversation_id)?;
        let (sender, session) = parse_acting("sender", request.sender.as_ref())?;
        self.check_anonymous(conversation_id, &sender, session)
            .await?;
        let attachments = self.rules.attachments.parse(&request.attachments)?;
        let message = NewMessage {
            conversation_id,
            sender,
            body: parse_message_body("body", &request.body, attachments.len())?,
            client_message_id: parse_client_message_id(
                "client_message_id",
                &request.client_message_id,
            )?,
            attachments,
        };
        chat_common::rpc::record("conversation_id", message.conversation_id);
        let (row, created) = self.sender.send(message).await?;
        tracing::debug!(seq = row.seq, created, "message");
        ok(v1::SendMessageResponse {
            message: Some(convert::message(&row)),
            created,
        })
    }

    async fn edit_message(
        &self,
        request: Request<v1::EditMessageRequest>,
    ) -> GrpcResult<v1::EditMessageResponse> {
        let request = request.into_inner();
        let conversation_id = ConversationId::parse("conversation_id", &request.conversation_id)?;
        chat_common::rpc::record("conversation_id", conversation_id);
        let (actor, session) = parse_acting("editor", request.editor.as_ref())?;
        let change = MessageChange {
            conversation_id,
            message_id: parse_message_id("message_id", &request.message_id)?,
            actor,
            session,
            body: Some(parse_body("body", &request.body)?),
            request_id: parse_request_id("request_id", &request.request_id)?,
        };
        let row = self
            .store
            .change_message(&change, self.rules.edit_window)
            .await?;
        ok(v1::EditMessageResponse {
            message: Some(convert::into_message(row)),
        })
    }

    async fn delete_message(
        &self,
        request: Request<v1::DeleteMessageRequest>,
    ) -> GrpcResult<v1::DeleteMessageResponse> {
        let request = request.into_inner();
        let conversation_id = ConversationId::parse("conversation_id", &request.conversation_id)?;
        chat_common::rpc::record("conversation_id", conversation_id);
        let (actor, session) = parse_acting("actor", request.actor.as_ref())?;
        let change = MessageChange {
            conversation_id,
            message_id: parse_message_id("message_id", &request.message_id)?,
            actor,
            session,
            body: None,
            request_id: parse_request_id("request_id", &request.request_id)?,
        };
        let row = self
            .store
            .change_message(&change, self.rules.edit_window)
            .await?;
        ok(v1::DeleteMessageResponse {
            message: Some(convert::into_message(row)),
        })
    }

    async fn list_messages(
        &self,
        request: Request<v1::ListMessagesRequest>,
    ) -> GrpcResult<v1::ListMessagesResponse> {
        let request = request.into_inner();
        let id = ConversationId::parse("conversation_id", &request.conversation_id)?;
        chat_common::rpc::record("conversation_id", id);
        let (viewer, session) = parse_acting("viewer", request.viewer.as_ref())?;
        let direction = match v1::Direction::try_from(request.direction) {
            Ok(v1::Direction::Unspecified | v1::Direction::Forward) => ListDirection::Forward,
            Ok(v1::Direction::Backward) => ListDirection::Backward,
            Err(_) => return Err(Error::invalid("direction", "must be FORWARD or BACKWARD").into()),
        };
        let cursor = parse_seq("cursor_seq", request.cursor_seq)?;
        let (default, max) = MESSAGES_PAGE;
        let size = PageSize::parse("page_size", request.page_size, default, max)?.0;
        let query = format!("{id}/{direction:?}/{cursor}");
        let cursor = self
            .pages
            .decode::<i64>("page_token", &query, &request.page_token)?
            .unwrap_or(cursor);
        let conversation = self.store.get_conversation(id).await?;
        conversation.authorize(&viewer, session)?;
        let field = if request.page_token.is_empty() {
            "cursor_seq"
        } else {
            "page_token"
        };
        let rows = self
            .store
            .list_kept_messages(&conversation, direction, field, cursor, size + 1)
            .await?;
        let (messages, next_page_token) = page(&rows, size, convert::message, |last| {
            self.pages.encode(&query, &last.seq)
        });
        ok(v1::ListMessagesResponse {
            messages,
            next_page_token,
            head_seq: conversation.head_seq,
        })
    }

    async fn mark_read(
        &self,
        request: Request<v1::MarkReadRequest>,
    ) -> GrpcResult<v1::MarkReadResponse> {
        let request = request.into_inner();
        let id = ConversationId::parse("conversation_id", &request.conversation_id)?;
        chat_common::rpc::record("conversation_id", id);
        let (reader, session) = parse_acting("reader", request.reader.as_ref())?;
        self.check_anonymous(id, &reader, session).await?;
        let seq = parse_seq("seq", request.seq)?;
        let (read_seq, unread_count) = self.store.mark_read(id, &reader, seq).await?;
        ok(v1::MarkReadResponse {
            read_seq,
            unread_count,
        })
    }

    async fn send_typing(
        &self,
        request: Request<v1::SendTypingRequest>,
    ) -> GrpcResult<v1::SendTypingResponse> {
        let request = request.into_inner();
        let id = ConversationId::parse("conversation_id", &request.conversation_id)?;
        chat_common::rpc::record("conversation_id", id);
        let (sender, session) = parse_acting("sender", request.sender.as_ref())?;
        let conversation = self.store.get_conversation(id).await?;
        conversation.authorize(&sender, session)?;
        self.store.typing(id, &sender).await?;
        ok(v1::SendTypingResponse {})
    }

    type StreamConversationStream = Outbound<ConversationDelivery, v1::StreamConversationResponse>;

    async fn stream_conversation(
        &self,
        request: Request<v1::StreamConversationRequest>,
    ) -> GrpcResult<Self::StreamConversationStream> {
        let request = request.into_inner();
        let id = ConversationId::parse("conversation_id", &request.conversation_id)?;
        chat_common::rpc::record("conversation_id", id);
        let (viewer, session) = parse_acting("viewer", request.viewer.as_ref())?;
        let after_seq = parse_seq("after_seq", request.after_seq)?;
        let after_change = request
            .after_change
            .map(|c| parse_seq("after_change", c))
            .transpose()?;
        // Subscribe before reading, so nothing committed in between is missed.
        let subscription = self.hub.subscribe_conversation(id.0)?;
        let conversation = self.store.get_conversation(id).await?;
        conversation.authorize(&viewer, session)?;
        if after_seq > conversation.head_seq {
            return Err(Error::CursorOutOfRange {
                field: "after_seq",
                message: format!("is beyond the newest message ({})", conversation.head_seq),
            }
            .into());
        }
        conversation.check_kept("after_seq", after_seq)?;
        if let Some(after_change) = after_change
            && after_change > conversation.change_seq
        {
            return Err(Error::CursorOutOfRange {
                field: "after_change",
                message: format!("is beyond the newest change ({})", conversation.change_seq),
            }
            .into());
        }
        let out = Out::new();
        let presence = self.hub.presence().enter(&viewer);
        // The stream's logic logs inside the RPC's span: its lines carry the trace id too.
        let logic = streams::conversation_stream(
            self.streams.clone(),
            subscription,
            conversation,
            viewer,
            (after_seq, after_change),
            out.clone(),
        )
        .in_current_span();
        ok(Outbound::run(
            Box::pin(logic),
            out,
            convert::conversation_response,
            &self.streams.shutdown,
            "your last seq",
        )
        .holding(presence))
    }

    type StreamInboxStream = Outbound<InboxDelivery, v1::StreamInboxResponse>;

    async fn stream_inbox(
        &self,
        request: Request<v1::StreamInboxRequest>,
    ) -> GrpcResult<Self::StreamInboxStream> {
        let request = request.into_inner();
        let owner = owner(request.participant.as_ref())?;
        let resumed = !request.cursor.is_empty();
        let cursor = if resumed {
            Some(InboxCursor::decode("cursor", &request.cursor)?)
        } else {
            None
        };
        let subscription = self.hub.subscribe_inbox(&owner)?;
        let cursor = match cursor {
            Some(cursor) => cursor,
            None => InboxCursor::at(self.store.current_snapshot().await?),
        };
        // Read before the stream is answered, so a client that opens it and then asks
        // GetUnreadSummary misses no change: any after this read is sent on the stream.
        let summary = self.store.unread_summary(&owner).await?;
        let out = Out::new();
        let presence = self.hub.presence().enter(&owner);
        let logic = streams::inbox_stream(
            self.streams.clone(),
            subscription,
            owner,
            cursor,
            summary,
            resumed,
            out.clone(),
        )
        .in_current_span();
        ok(Outbound::run(
            Box::pin(logic),
            out,
            convert::inbox_response,
            &self.streams.shutdown,
            "your last cursor",
        )
        .holding(presence))
    }

    async fn get_unread_summary(
        &self,
        request: Request<v1::GetUnreadSummaryRequest>,
    ) -> GrpcResult<v1::GetUnreadSummaryResponse> {
        let request = request.into_inner();
        let owner = owner(request.participant.as_ref())?;
        let summary = self.store.unread_summary(&owner).await?;
        ok(v1::GetUnreadSummaryResponse {
            unread_messages: summary.unread_messages,
            unread_conversations: summary.unread_conversations,
        })
    }

    async fn search_messages(
        &self,
        request: Request<v1::SearchMessagesRequest>,
    ) -> GrpcResult<v1::SearchMessagesResponse> {
        let request = request.into_inner();
        let owner = owner(request.participant.as_ref())?;
        let text = SearchQuery::parse("query", &request.query)?;
        let conversation = if request.conversation_id.is_empty() {
            None
        } else {
            let id = ConversationId::parse("conversation_id", &request.conversation_id)?;
            chat_common::rpc::record("conversation_id", id);
            Some(id)
        };
        let (default, max) = SEARCH_PAGE;
        let size = PageSize::parse("page_size", request.page_size, default, max)?.0;
        // The text as JSON: no query can pass for another by containing a separator.
        let bound = serde_json::to_string(&text.0).unwrap_or_default();
        let query = format!(
            "search/{:?}/{}/{conversation:?}/{bound}",
            owner.role(),
            owner.id(),
        );
        let after: Option<SearchKey> =
            self.pages
                .decode("page_token", &query, &request.page_token)?;
        if let Some(id) = conversation {
            self.store
                .get_conversation(id)
                .await?
                .authorize(&owner, None)?;
        }
        let start = self.store.search_start(&owner, &text).await?;
        if !start.searchable {
            return Err(Error::invalid(
                "query",
                "has no word to search for (only punctuation or only excluded words)",
            )
            .into());
        }
        let search = Search {
            owner: &owner,
            query: &text,
            conversation,
            after,
            limit: size + 1,
        };
        let rows = self.store.search_messages(&search, start.until).await?;
        let (hits, next_page_token) = page(&rows, size, convert::search_hit, |last| {
            self.pages.encode(&query, &last.key())
        });
        ok(v1::SearchMessagesResponse {
            hits,
            next_page_token,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(body: &str) -> v1::Message {
        v1::Message {
            body: body.to_owned(),
            ..Default::default()
        }
    }

    #[test]
    fn a_page_ends_at_its_size_or_its_byte_budget_whichever_comes_first() {
        let small: Vec<String> = (0..6).map(|i| i.to_string()).collect();
        let (items, token) = page(&small, 5, |b| message(b), Clone::clone);
        assert_eq!((items.len(), token.as_str()), (5, "4"));
        let (items, token) = page(&small[..5], 5, |b| message(b), Clone::clone);
        assert_eq!((items.len(), token.as_str()), (5, ""));

        let big: Vec<String> = (0..100)
            .map(|i| format!("{i:03}{}", "😀".repeat(4000)))
            .collect();
        let (items, token) = page(&big, 99, |b| message(b), |b| b[..3].to_owned());
        let bytes: usize = items.iter().map(prost::Message::encoded_len).sum();
        assert!(
            bytes <= PAGE_BYTES && items.len() < 99,
            "{} items",
            items.len()
        );
        assert_eq!(token, format!("{:03}", items.len() - 1));

        // One item larger than the budget still makes a page of one.
        let huge = vec!["x".repeat(PAGE_BYTES * 2), "y".to_owned()];
        let (items, token) = page(&huge, 5, |b| message(b), |b| b[..1].to_owned());
        assert_eq!((items.len(), token.as_str()), (1, "x"));
    }
}
