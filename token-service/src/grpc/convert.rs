//! Domain values to wire messages.

use chat_proto::v1 as pb;

use crate::domain::{CustomerLink, Session, Timestamp, Token, TokenState};

pub fn timestamp(t: Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

pub fn token_state(state: TokenState) -> pb::TokenState {
    match state {
        TokenState::Valid => pb::TokenState::Valid,
        TokenState::Expired => pb::TokenState::Expired,
        TokenState::Revoked => pb::TokenState::Revoked,
        TokenState::Exhausted => pb::TokenState::Exhausted,
    }
}

pub fn token(t: &Token, now: Timestamp) -> pb::ChatToken {
    pb::ChatToken {
        token_id: t.token_id.to_string(),
        provider_id: t.provider_id.as_str().to_owned(),
        label: t.label.clone(),
        create_time: Some(timestamp(t.create_time)),
        expire_time: Some(timestamp(t.expire_time)),
        max_uses: i32::try_from(t.max_uses).unwrap_or(i32::MAX),
        use_count: i32::try_from(t.use_count).unwrap_or(i32::MAX),
        revoke_time: t.revoke_time.map(timestamp),
        state: token_state(t.state(now)).into(),
    }
}

pub fn session(s: &Session) -> pb::Session {
    let state = if s.conversation_id.is_some() {
        pb::ConversationState::Ready
    } else {
        pb::ConversationState::Pending
    };
    let (link_state, link_error_reason) = match &s.link {
        CustomerLink::None => (pb::CustomerLinkState::Unspecified, String::new()),
        CustomerLink::Pending => (pb::CustomerLinkState::Pending, String::new()),
        CustomerLink::Linked => (pb::CustomerLinkState::Linked, String::new()),
        CustomerLink::Failed { reason } => (pb::CustomerLinkState::Failed, reason.clone()),
    };
    pb::Session {
        session_id: s.session_id.to_string(),
        token_id: s.token_id.to_string(),
        provider_id: s.provider_id.as_str().to_owned(),
        customer_id: s
            .customer_id
            .as_ref()
            .map(|c| c.as_str().to_owned())
            .unwrap_or_default(),
        conversation_id: s
            .conversation_id
            .as_ref()
            .map(|id| id.as_str().to_owned())
            .unwrap_or_default(),
        conversation_state: state.into(),
        create_time: Some(timestamp(s.create_time)),
        end_time: s.end_time.map(timestamp),
        customer_link_state: link_state.into(),
        link_error_reason,
    }
}

/// `/u/{provider_id}/c/{secret}`. Provider ids and secrets hold only characters a path
/// segment allows as they are; anything else would be percent-encoded.
pub fn link_path(provider_id: &str, secret: &str) -> String {
    let mut segment = String::with_capacity(provider_id.len());
    for b in provider_id.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:@".contains(&b) {
            segment.push(char::from(b));
        } else {
            segment.push_str(&format!("%{b:02X}"));
        }
    }
    format!("/u/{segment}/c/{secret}")
}
