//! Several conversation-service replicas in `--conversation-service` (comma-separated):
//! calls are balanced over them, so a replica that is down does not stop redemptions.

use std::time::Duration;

use chat_proto::v1::{ConversationState, GetConversationRequest, GetSessionRequest};

use crate::helpers::{
    NOWHERE, eventually, new_provider, spawn_app_with, spawn_fresh_conversation_service,
    temp_db_path,
};

#[tokio::test]
async fn conversations_are_created_through_any_listed_replica() {
    let conv = spawn_fresh_conversation_service().await;
    // The first replica listed is down; the old single-address client would only try it.
    let urls = format!("{NOWHERE}, {}", conv.url);
    let app = spawn_app_with(temp_db_path(), &urls, &[]).await;
    let prov = new_provider();
    let mut sessions = Vec::new();
    for _ in 0..4 {
        let issued = app.issue(&prov, 1).await;
        let redeemed = app.redeem(&prov, &issued.secret).await.unwrap();
        sessions.push(redeemed.session_secret);
    }
    for secret in sessions {
        let conversation_id = eventually(Duration::from_secs(15), || {
            let mut tokens = app.tokens.clone();
            let secret = secret.clone();
            async move {
                let session = tokens
                    .get_session(GetSessionRequest {
                        session_secret: secret,
                    })
                    .await
                    .ok()?
                    .into_inner()
                    .session?;
                (session.conversation_state() == ConversationState::Ready)
                    .then_some(session.conversation_id)
            }
        })
        .await;
        let found = conv
            .client
            .clone()
            .get_conversation(GetConversationRequest {
                conversation_id,
                viewer: None,
            })
            .await;
        assert!(found.is_ok(), "{found:?}");
    }
    app.stop().await;
    conv.stop().await;
}

#[tokio::test]
async fn an_empty_or_malformed_replica_list_is_refused_at_start() {
    use clap::Parser;
    use token_service::{config::Config, startup::Application};
    for urls in [" , ", "http://ok:1,not a url"] {
        let args = crate::helpers::test_args(&temp_db_path(), urls);
        let config = Config::try_parse_from(args).unwrap();
        assert!(Application::build(config).await.is_err(), "{urls:?}");
    }
}
