//! The generated `EventService` trait: the event feed for other internal services
//! (see `store/events.rs` for its order and `realtime/events.rs` for its streams).

use chat_proto::v1::{self, event::Payload, event_service_server::EventService};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::{STREAM_BUFFER, convert, outbound::Outbound};
use crate::{
    domain::{ConsumerName, FeedFilter, FeedKind, FeedPosition, PageSize, Participant},
    error::Error,
    realtime::events::{FeedContext, FeedDelivery, feed_stream},
    store::{FeedEvent, FeedPayload},
};

const EVENTS_PAGE: (i64, i64) = (100, 1000);
/// Participants one GetPresence may ask about.
const MAX_PRESENCE: usize = 100;

pub struct EventApi {
    feed: FeedContext,
}

impl EventApi {
    pub fn new(feed: FeedContext) -> Self {
        Self { feed }
    }

    /// Where a stream starts: after the cursor given, after the consumer's acknowledged
    /// position, or (neither) after the newest event now.
    async fn start(&self, after: &str, consumer: &str) -> Result<FeedPosition, Error> {
        match (after.is_empty(), consumer.is_empty()) {
            (false, false) => Err(Error::invalid(
                "consumer",
                "give either after or consumer, not both",
            )),
            (false, true) => FeedPosition::parse("after", after),
            (true, false) => {
                let consumer = ConsumerName::parse("consumer", consumer)?;
                self.feed.store.consumer_position(&consumer).await
            }
            (true, true) => self.feed.store.feed_head().await,
        }
    }
}

#[tonic::async_trait]
impl EventService for EventApi {
    type StreamEventsStream = Outbound<FeedDelivery, v1::StreamEventsResponse>;

    #[tracing::instrument(skip_all)]
    async fn stream_events(
        &self,
        request: Request<v1::StreamEventsRequest>,
    ) -> Result<Response<Self::StreamEventsStream>, Status> {
        let request = request.into_inner();
        let filter = FeedFilter::parse(&request.kinds, &request.provider_ids)?;
        let after = self.start(&request.after, &request.consumer).await?;
        // Checked here, so a bad or expired cursor fails the call rather than the stream.
        self.feed.store.check_feed_cursor("after", after).await?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(feed_stream(self.feed.clone(), after, filter, tx).in_current_span());
        Ok(Response::new(Outbound::new(
            rx,
            stream_response,
            &self.feed.shutdown,
            "the cursor of the last event received",
        )))
    }

    #[tracing::instrument(skip_all)]
    async fn list_events(
        &self,
        request: Request<v1::ListEventsRequest>,
    ) -> Result<Response<v1::ListEventsResponse>, Status> {
        let request = request.into_inner();
        let filter = FeedFilter::parse(&request.kinds, &request.provider_ids)?;
        let size = PageSize::parse("page_size", request.page_size, EVENTS_PAGE.0, EVENTS_PAGE.1)?;
        let store = &self.feed.store;
        let after = if request.after.is_empty() {
            store.feed_oldest().await?
        } else {
            FeedPosition::parse("after", &request.after)?
        };
        let page = store.feed_page("after", after, size.0, &filter).await?;
        Ok(Response::new(v1::ListEventsResponse {
            events: page.events.into_iter().map(event).collect(),
            next_after: page.next.cursor(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn ack_events(
        &self,
        request: Request<v1::AckEventsRequest>,
    ) -> Result<Response<v1::AckEventsResponse>, Status> {
        let request = request.into_inner();
        let consumer = ConsumerName::parse("consumer", &request.consumer)?;
        let position = FeedPosition::parse("cursor", &request.cursor)?;
        let kept = self.feed.store.ack_feed(&consumer, position).await?;
        Ok(Response::new(v1::AckEventsResponse {
            cursor: kept.cursor(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn get_presence(
        &self,
        request: Request<v1::GetPresenceRequest>,
    ) -> Result<Response<v1::GetPresenceResponse>, Status> {
        let request = request.into_inner();
        if request.participants.len() > MAX_PRESENCE {
            return Err(Error::invalid("participants", "at most 100").into());
        }
        let participants = request
            .participants
            .iter()
            .map(|p| Participant::parse_owner("participants", Some(p)))
            .collect::<Result<Vec<_>, _>>()?;
        let online = self.feed.store.presence(&participants).await?;
        let presences = participants
            .iter()
            .zip(online)
            .map(|(participant, online)| v1::PresenceChanged {
                participant: Some(convert::participant(participant)),
                online,
            })
            .collect();
        Ok(Response::new(v1::GetPresenceResponse { presences }))
    }
}

fn stream_response(delivery: FeedDelivery) -> v1::StreamEventsResponse {
    use v1::stream_events_response::Item;
    let item = match delivery {
        FeedDelivery::Event(e) => Item::Event(event(*e)),
        FeedDelivery::Heartbeat => Item::Heartbeat(v1::Heartbeat {
            time: Some(convert::timestamp(chrono::Utc::now())),
        }),
    };
    v1::StreamEventsResponse { item: Some(item) }
}

fn kind(kind: FeedKind) -> v1::EventKind {
    match kind {
        FeedKind::ConversationCreated => v1::EventKind::ConversationCreated,
        FeedKind::CustomerUpdated => v1::EventKind::CustomerUpdated,
        FeedKind::StatusChanged => v1::EventKind::StatusChanged,
        FeedKind::MessageSent => v1::EventKind::MessageSent,
        FeedKind::ReadPositionMoved => v1::EventKind::ReadPositionMoved,
        FeedKind::PresenceChanged => v1::EventKind::PresenceChanged,
        FeedKind::UnreadReminder => v1::EventKind::UnreadReminder,
        FeedKind::CustomerErased => v1::EventKind::CustomerErased,
        FeedKind::MessageEdited => v1::EventKind::MessageEdited,
        FeedKind::MessageDeleted => v1::EventKind::MessageDeleted,
    }
}

fn event(event: FeedEvent) -> v1::Event {
    let conversation_id = event
        .conversation_id()
        .map(|id| id.to_string())
        .unwrap_or_default();
    let payload = match event.payload {
        FeedPayload::Conversation(row) if event.kind == FeedKind::CustomerErased => row
            .erasure()
            .map(|erasure| Payload::CustomerErased(convert::customer_erased(erasure))),
        FeedPayload::Conversation(row) => {
            Some(Payload::Conversation(convert::conversation(&row, None)))
        }
        FeedPayload::Status(status) => Some(Payload::StatusChanged(v1::StatusChanged {
            conversation_id: conversation_id.clone(),
            status: convert::status(status).into(),
        })),
        FeedPayload::Message(row) => Some(Payload::Message(convert::into_message(row))),
        FeedPayload::Change {
            message,
            change_seq,
        } => {
            let message = Some(convert::into_message(message));
            Some(if event.kind == FeedKind::MessageDeleted {
                Payload::MessageDeleted(v1::MessageDeleted {
                    message,
                    change_seq,
                })
            } else {
                Payload::MessageEdited(v1::MessageEdited {
                    message,
                    change_seq,
                })
            })
        }
        FeedPayload::Read {
            role,
            reader_id,
            seq,
        } => Some(Payload::ReadReceipt(v1::ReadReceipt {
            conversation_id: conversation_id.clone(),
            reader: Some(convert::participant(&Participant::stored(role, reader_id))),
            read_seq: seq,
        })),
        FeedPayload::Presence {
            participant,
            online,
        } => Some(Payload::PresenceChanged(v1::PresenceChanged {
            participant: Some(convert::participant(&participant)),
            online,
        })),
        FeedPayload::Reminder {
            participant,
            unread,
            first_unread_seq,
            preview,
        } => Some(Payload::UnreadReminder(v1::UnreadReminder {
            conversation_id: conversation_id.clone(),
            participant: Some(convert::participant(&participant)),
            unread_count: unread,
            first_unread_seq,
            preview,
        })),
        FeedPayload::Missing => None,
    };
    v1::Event {
        cursor: event.position.cursor(),
        kind: kind(event.kind).into(),
        conversation_id,
        provider_id: event.provider_id.unwrap_or_default(),
        record_time: Some(convert::timestamp(event.recorded_at)),
        payload,
    }
}
