//! A session and its conversation never disagree (both services, real gRPC): retries
//! bound to their first request, refusals that reach the caller, one session's calls
//! applied in order.

use chat_proto::v1::{ConversationState, RedeemTokenRequest};
use tonic::Code;
use uuid::Uuid;

use crate::helpers::{
    assert_refused, fresh_database, list_all, new_provider, provider, spawn_app_with,
    spawn_conversation_service, temp_db_path,
};

#[tokio::test]
async fn a_redeem_retry_with_another_customer_or_new_conversation_is_refused() {
    let conv = spawn_conversation_service(&fresh_database().await, "127.0.0.1:0").await;
    let app = spawn_app_with(temp_db_path(), &conv.url, &[]).await;
    let prov = new_provider();
    let link = app.issue(&prov, 0).await;
    let first = RedeemTokenRequest {
        request_id: Uuid::new_v4().to_string(),
        provider_id: prov.clone(),
        secret: link.secret.clone(),
        customer_id: "cust-a".into(),
        new_conversation: false,
    };
    let redeemed = app.redeem_req(first.clone()).await.unwrap();
    let session = redeemed.session.unwrap();
    assert_eq!(session.conversation_state(), ConversationState::Ready);

    let before = app.db_dump();
    for mismatched in [
        RedeemTokenRequest {
            customer_id: "cust-b".into(),
            ..first.clone()
        },
        RedeemTokenRequest {
            customer_id: String::new(),
            ..first.clone()
        },
        RedeemTokenRequest {
            new_conversation: true,
            ..first.clone()
        },
    ] {
        assert_refused(
            app.redeem_req(mismatched).await,
            Code::InvalidArgument,
            "REQUEST_ID_REUSED",
        );
    }
    assert_eq!(app.db_dump(), before, "a refused retry changed something");
    assert_eq!(list_all(&conv.client, provider(&prov)).await.len(), 1);

    // The same request again is still a plain retry.
    let again = app.redeem_req(first).await.unwrap().session.unwrap();
    assert_eq!(again.session_id, session.session_id);
    assert_eq!(again.conversation_id, session.conversation_id);
    app.stop().await;
    conv.stop().await;
}
