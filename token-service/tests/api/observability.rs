//! What the platform sees: Prometheus metrics after real calls (this service's RPCs, its
//! calls to conversation-service, the outbox and SQLite), and one trace over both
//! services for a RedeemToken, visible in both services' log lines.

use std::{
    io::Write,
    sync::{Arc, Mutex},
    time::Duration,
};

use chat_common::{
    scrape::{sample, scrape},
    telemetry::{LogFormat, subscriber, tracer_provider},
};
use chat_proto::v1::{ConversationState, RedeemTokenRequest};
use serde_json::Value;
use tonic::Code;
use uuid::Uuid;

use crate::helpers::{
    TestApp, eventually, new_provider, spawn_app_with, spawn_fresh_conversation_service,
    temp_db_path,
};

/// token-service that waits long enough for conversation-service on a busy machine, so
/// a redemption's conversation is created inline (within the RPC and its trace).
async fn spawn_patient_app(conversation_url: &str, extra: &[&str]) -> TestApp {
    let mut flags = vec!["--inline-wait", "20s", "--call-timeout", "10s"];
    flags.extend_from_slice(extra);
    spawn_app_with(temp_db_path(), conversation_url, &flags).await
}

fn server(text: &str, method: &str, code: &str) -> f64 {
    sample(
        text,
        "grpc_server_handled_total",
        &[
            ("grpc_service", "chat.v1.TokenService"),
            ("grpc_method", method),
            ("grpc_type", "unary"),
            ("grpc_code", code),
        ],
    )
}

#[tokio::test]
async fn metrics_count_rpcs_calls_to_conversation_service_and_the_store() {
    let conv = spawn_fresh_conversation_service().await;
    let app = spawn_patient_app(&conv.url, &["--metrics-addr", "127.0.0.1:0"]).await;
    let metrics = app.metrics.expect("metrics address");
    let before = scrape(metrics).await.unwrap();

    let prov = new_provider();
    let issued = app.issue(&prov, 1).await;
    let redeemed = app.redeem(&prov, &issued.secret).await.unwrap();
    let session = redeemed.session.unwrap();
    assert_eq!(
        session.conversation_state,
        ConversationState::Ready as i32,
        "created inline"
    );
    // Guesses: unknown links until the caller is refused for guessing.
    let mut refused = false;
    for _ in 0..12 {
        let guess = app.redeem(&prov, &format!("ctk_{}", "x".repeat(43))).await;
        refused |= guess.unwrap_err().code() == Code::ResourceExhausted;
    }
    assert!(refused);

    let after = scrape(metrics).await.unwrap();
    let delta = |f: &dyn Fn(&str) -> f64| f(&after) - f(&before);
    assert!(delta(&|t| server(t, "IssueToken", "OK")) >= 1.0, "{after}");
    assert!(delta(&|t| server(t, "RedeemToken", "OK")) >= 1.0);
    assert!(delta(&|t| server(t, "RedeemToken", "ResourceExhausted")) >= 1.0);
    assert!(
        delta(
            &|t| server(t, "RedeemToken", "NotFound") + server(t, "RedeemToken", "InvalidArgument")
        ) >= 1.0
    );
    let client = |t: &str| {
        sample(
            t,
            "grpc_client_handled_total",
            &[
                ("grpc_service", "chat.v1.ConversationService"),
                ("grpc_method", "CreateConversation"),
                ("grpc_code", "OK"),
            ],
        )
    };
    assert!(delta(&client) >= 1.0);
    let client_latency = |t: &str| {
        sample(
            t,
            "grpc_client_handling_seconds_count",
            &[("grpc_method", "CreateConversation")],
        )
    };
    assert!(delta(&client_latency) >= 1.0);
    assert!(delta(&|t| sample(t, "token_failed_guesses_total", &[])) >= 10.0);
    assert!(delta(&|t| sample(t, "token_failed_guess_refusals_total", &[])) >= 1.0);
    assert!(delta(&|t| sample(t, "token_sqlite_call_seconds_count", &[])) >= 3.0);
    assert!(after.contains("token_sqlite_queue_length"));
    // The outbox figures come with the health probe (every 100 ms in tests).
    eventually(Duration::from_secs(10), || async move {
        let text = scrape(metrics).await.ok()?;
        (text.contains("token_outbox_depth")
            && text.contains("token_outbox_oldest_pending_age_seconds")
            && text.contains("token_outbox_failed_jobs"))
        .then_some(())
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn the_scrape_passes_promtools_rules_with_counters_from_zero_and_histograms() {
    let app = spawn_app_with(
        temp_db_path(),
        crate::helpers::NOWHERE,
        &["--metrics-addr", "127.0.0.1:0"],
    )
    .await;
    let metrics = app.metrics.expect("metrics address");
    let first = scrape(metrics).await.unwrap();
    // Alerts on these need a series before the first event.
    for series in [
        "token_failed_guesses_total ",
        "token_failed_guess_refusals_total ",
    ] {
        assert!(
            first.lines().any(|l| l.starts_with(series)),
            "no `{series}` in the first scrape:\n{first}"
        );
    }
    assert!(sample(&first, "process_open_fds", &[]) > 0.0, "{first}");

    app.issue(&new_provider(), 1).await;
    let after = scrape(metrics).await.unwrap();
    // A histogram, so it can be summed across replicas (a summary cannot).
    assert!(
        after.contains("# TYPE token_sqlite_group_calls histogram"),
        "{after}"
    );
    assert_eq!(chat_common::scrape::lint(&after), Vec::<String>::new());
    app.stop().await;
}

/// Log lines written to memory.
#[derive(Clone, Default)]
pub(crate) struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    /// Everything written so far.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    fn lines(&self) -> Vec<Value> {
        let bytes = self.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }
}

/// The per-RPC line of `service/method`.
fn rpc_line<'a>(
    lines: &'a [Value],
    service: &str,
    method: &str,
    trace_id: &str,
) -> Option<&'a Value> {
    lines.iter().find(|l| {
        l["message"] == "rpc"
            && l["grpc_service"] == service
            && l["grpc_method"] == method
            && l["trace_id"] == trace_id
    })
}

// Current-thread runtime: both services run on this thread, so the capturing
// subscriber set here sees everything they log.
#[tokio::test(flavor = "current_thread")]
async fn a_redeem_is_one_trace_over_both_services_and_every_rpc_line_has_a_trace_id() {
    let capture = Capture::default();
    let sink = capture.clone();
    let provider = tracer_provider("token-chat-test");
    let _logs = tracing::subscriber::set_default(subscriber(
        "token-chat-test",
        LogFormat::Json,
        move || sink.clone(),
        false,
        provider.as_ref(),
    ));
    let conv = spawn_fresh_conversation_service().await;
    let app = spawn_patient_app(&conv.url, &[]).await;
    let prov = new_provider();
    let issued = app.issue(&prov, 1).await;

    let trace_id = format!("{:032x}", Uuid::new_v4().as_u128());
    let mut request = tonic::Request::new(RedeemTokenRequest {
        request_id: Uuid::new_v4().to_string(),
        provider_id: prov.clone(),
        secret: issued.secret.clone(),
        customer_id: String::new(),
        new_conversation: false,
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-00f067aa0ba902b7-01")
            .parse()
            .unwrap(),
    );
    let redeemed = app
        .tokens
        .clone()
        .redeem_token(request)
        .await
        .unwrap()
        .into_inner();
    let session = redeemed.session.unwrap();
    assert_eq!(session.conversation_state, ConversationState::Ready as i32);

    let lines = capture.lines();
    let redeem = rpc_line(&lines, "chat.v1.TokenService", "RedeemToken", &trace_id)
        .expect("token-service's RedeemToken line carries the caller's trace id");
    assert_eq!(redeem["grpc_code"], "OK");
    assert_eq!(redeem["session_id"], session.session_id.as_str());
    assert_eq!(redeem["conversation_id"], session.conversation_id.as_str());
    assert!(redeem["latency_ms"].as_f64().is_some());
    let create = rpc_line(
        &lines,
        "chat.v1.ConversationService",
        "CreateConversation",
        &trace_id,
    )
    .expect("conversation-service's CreateConversation line is in the same trace");
    assert_eq!(create["conversation_id"], session.conversation_id.as_str());
    assert_eq!(create["grpc_code"], "OK");

    // Without a traceparent a call starts its own trace, and its line names it.
    let issue = lines
        .iter()
        .find(|l| l["message"] == "rpc" && l["grpc_method"] == "IssueToken")
        .expect("IssueToken's line");
    let own = issue["trace_id"].as_str().unwrap_or_default();
    assert_eq!(own.len(), 32, "{issue}");
    assert_ne!(own, trace_id);
    app.stop().await;
}

#[tokio::test]
async fn json_logs_have_the_same_shape_as_conversation_services() {
    let db_path = temp_db_path();
    let addr = crate::helpers::free_addr();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_token-service"))
        .args(["--listen", &addr.to_string()])
        .arg("--database")
        .arg(&db_path)
        .args(["--conversation-service", crate::helpers::NOWHERE])
        .args(["--drain-delay", "0s"])
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    let mut tokens = chat_proto::v1::token_service_client::TokenServiceClient::new(channel);
    let issued = eventually(Duration::from_secs(10), || {
        let mut tokens = tokens.clone();
        async move {
            tokens
                .issue_token(chat_proto::v1::IssueTokenRequest {
                    provider_id: "p1".into(),
                    label: "l".into(),
                    ttl: None,
                    max_uses: 1,
                })
                .await
                .ok()
        }
    })
    .await
    .into_inner();
    let refused = tokens
        .check_token(chat_proto::v1::CheckTokenRequest {
            provider_id: "p1".into(),
            secret: "nonsense".into(),
        })
        .await;
    assert!(refused.is_err());
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let output = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    for line in &lines {
        for key in ["timestamp", "level", "app", "target", "message"] {
            assert!(line.get(key).is_some(), "{key} missing in {line}");
        }
        assert_eq!(line["app"], "token-service");
    }
    let issue = lines
        .iter()
        .find(|l| l["message"] == "rpc" && l["grpc_method"] == "IssueToken")
        .expect("IssueToken's line");
    assert_eq!(issue["grpc_code"], "OK");
    assert_eq!(issue["token_id"], issued.token.unwrap().token_id.as_str());
    assert!(!text.contains(&issued.secret), "a secret in the logs");
    let check = lines
        .iter()
        .find(|l| l["message"] == "rpc" && l["grpc_method"] == "CheckToken")
        .expect("CheckToken's line");
    assert_ne!(check["grpc_code"], "OK");
    assert!(check["grpc_message"].is_string());
}
