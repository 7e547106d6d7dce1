//! What the platform sees: Prometheus metrics after real calls, and probes that fit
//! Kubernetes (liveness stays SERVING in a database outage; readiness follows the
//! database and turns NOT_SERVING first on SIGTERM).

use std::time::Duration;

use chat_common::scrape::{get, sample, scrape};
use chat_proto::v1;
use tonic::{Code, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use uuid::Uuid;

use chat_common::testing::status::eventually;

use crate::helpers::{
    connect, create, free_addr, fresh_database, open_stream, provider, send, spawn_app_with,
    spawn_app_with_flags, wait_serving,
};

const READINESS: &str = "chat.v1.ConversationService";

fn handled(text: &str, method: &str, code: &str) -> f64 {
    sample(
        text,
        "grpc_server_handled_total",
        &[
            ("grpc_service", "chat.v1.ConversationService"),
            ("grpc_method", method),
            ("grpc_type", "unary"),
            ("grpc_code", code),
        ],
    )
}

#[tokio::test]
async fn metrics_count_every_rpc_with_its_code_and_the_service_figures() {
    let database = fresh_database().await;
    let url = database.url().to_owned();
    let mut app = spawn_app_with(&url, &["--metrics-addr", "127.0.0.1:0"]).await;
    let metrics = app.metrics.expect("metrics address");
    let before = scrape(metrics).await.unwrap();

    let id = create(&mut app.client, "p1").await.conversation_id;
    send(&mut app.client, &id, provider("p1"), "hello")
        .await
        .unwrap();
    let refused = send(&mut app.client, &id, provider("someone-else"), "hi")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let missing = app
        .client
        .get_conversation(v1::GetConversationRequest {
            conversation_id: Uuid::new_v4().to_string(),
            viewer: None,
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let mut stream = open_stream(&mut app.client, &id, provider("p1"), 0).await;
    stream.message().await.unwrap();

    let after = scrape(metrics).await.unwrap();
    let delta = |f: &dyn Fn(&str) -> f64| f(&after) - f(&before);
    assert!(delta(&|t| handled(t, "CreateConversation", "OK")) >= 1.0);
    assert!(delta(&|t| handled(t, "SendMessage", "OK")) >= 1.0);
    assert!(delta(&|t| handled(t, "SendMessage", "PermissionDenied")) >= 1.0);
    assert!(delta(&|t| handled(t, "GetConversation", "NotFound")) >= 1.0);
    let started = |t: &str| {
        sample(
            t,
            "grpc_server_started_total",
            &[
                ("grpc_method", "StreamConversation"),
                ("grpc_type", "server_stream"),
            ],
        )
    };
    assert!(delta(&started) >= 1.0, "{after}");
    let latency = |t: &str| {
        sample(
            t,
            "grpc_server_handling_seconds_count",
            &[("grpc_method", "SendMessage")],
        )
    };
    assert!(delta(&latency) >= 2.0);
    // Service figures: the open stream, the batch its message went out in, the pool.
    assert!(sample(&after, "chat_streams_open", &[("kind", "conversation")]) >= 1.0);
    assert!(delta(&|t| sample(t, "chat_send_batch_size_count", &[])) >= 1.0);
    assert!(delta(&|t| sample(t, "chat_send_write_seconds_count", &[])) >= 1.0);
    assert!(sample(&after, "chat_db_pool_max_connections", &[]) >= 1.0);
    assert!(after.contains("chat_db_pool_connections{state=\"in_use\"}"));
    // The writer pools: SendMessage's writer keeps the connection its batch used.
    let writers = |pool: &str, state: &str| {
        sample(
            &after,
            "chat_db_writer_pool_connections",
            &[("pool", pool), ("state", state)],
        )
    };
    assert_eq!(writers("send", "kept"), 1.0, "{after}");
    assert_eq!(writers("send", "in_use"), 0.0);
    let max = |pool: &str| {
        sample(
            &after,
            "chat_db_writer_pool_max_connections",
            &[("pool", pool)],
        )
    };
    assert_eq!(max("send"), 4.0, "2 x SEND_WRITERS");
    assert_eq!(max("create"), 2.0);
    assert!(
        writers("create", "idle") >= 1.0,
        "the create went back to its pool"
    );

    // The stream ends: it is counted as handled once it is over.
    drop(stream);
    let ended = |t: &str| {
        sample(
            t,
            "grpc_server_handled_total",
            &[
                ("grpc_method", "StreamConversation"),
                ("grpc_code", "Canceled"),
            ],
        )
    };
    // A cancelled stream is counted as Canceled.
    let (ended, before) = (&ended, &before);
    eventually(Duration::from_secs(5), || async move {
        (ended(&scrape(metrics).await.unwrap()) > ended(before)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_scrape_passes_promtools_rules_with_counters_from_zero_and_messages_counted() {
    let mut app = spawn_app_with_flags(&["--metrics-addr", "127.0.0.1:0"]).await;
    let metrics = app.metrics.expect("metrics address");
    let first = scrape(metrics).await.unwrap();
    // Alerts on these need a series before the first event.
    for series in [
        "chat_stream_lagged_total ",
        "chat_listener_reconnects_total ",
        "chat_send_replanned_total ",
        "chat_stream_resyncs_total{cause=\"listener\"} ",
        "chat_stream_message_reads_total{source=\"own\"} ",
    ] {
        assert!(
            first.lines().any(|l| l.starts_with(series)),
            "no `{series}` in the first scrape:\n{first}"
        );
    }
    for process in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        assert!(sample(&first, process, &[]) > 0.0, "{process}");
    }

    let id = create(&mut app.client, "p1").await.conversation_id;
    for body in ["one", "two", "three"] {
        send(&mut app.client, &id, provider("p1"), body)
            .await
            .unwrap();
    }
    let before = scrape(metrics).await.unwrap();
    let mut stream = open_stream(&mut app.client, &id, provider("p1"), 0).await;
    for _ in 0..3 {
        stream.message().await.unwrap();
    }
    let after = scrape(metrics).await.unwrap();
    let messages =
        |text: &str, name: &str| sample(text, name, &[("grpc_method", "StreamConversation")]);
    let delta = |name: &str| messages(&after, name) - messages(&before, name);
    assert!(delta("grpc_server_msg_sent_total") >= 3.0, "{after}");
    assert!(delta("grpc_server_msg_received_total") >= 1.0, "{after}");
    assert_eq!(chat_common::scrape::lint(&after), Vec::<String>::new());
}

#[tokio::test]
async fn a_stream_outliving_the_request_timeout_then_cancelled_counts_as_canceled() {
    let database = fresh_database().await;
    let url = database.url().to_owned();
    let flags = ["--metrics-addr", "127.0.0.1:0", "--request-timeout", "2s"];
    let mut app = spawn_app_with(&url, &flags).await;
    let metrics = app.metrics.expect("metrics address");
    let id = create(&mut app.client, "p1").await.conversation_id;
    let count = |text: &str, code: &str| {
        sample(
            text,
            "grpc_server_handled_total",
            &[("grpc_method", "StreamConversation"), ("grpc_code", code)],
        )
    };
    let before = scrape(metrics).await.unwrap();
    let mut stream = open_stream(&mut app.client, &id, provider("p1"), 0).await;
    stream.message().await.unwrap();
    // Past the request timeout: the stream is not cut by it.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    drop(stream);
    let mut after = String::new();
    for _ in 0..100 {
        after = scrape(metrics).await.unwrap();
        if count(&after, "Canceled") > count(&before, "Canceled") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        count(&after, "Canceled") > count(&before, "Canceled"),
        "{after}"
    );
    assert!(
        count(&after, "DeadlineExceeded") <= count(&before, "DeadlineExceeded"),
        "{after}"
    );
}

async fn health(channel: &Channel, service: &str) -> ServingStatus {
    let reply = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap();
    ServingStatus::try_from(reply.into_inner().status).unwrap()
}

async fn wait_for(channel: &Channel, service: &str, want: ServingStatus) {
    for _ in 0..400 {
        if health(channel, service).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{service} never became {want:?}");
}

#[tokio::test]
async fn liveness_stays_serving_while_readiness_follows_an_unreachable_database() {
    // A database that does not exist: the service starts, alive but not ready.
    let url = format!(
        "postgres://postgres@127.0.0.1:5432/cs_test_missing_{}",
        Uuid::new_v4().simple()
    );
    let addr = free_addr();
    let config = <conversation_service::config::Config as clap::Parser>::try_parse_from([
        "conversation-service",
        "--listen",
        &addr.to_string(),
        "--database-url",
        &url,
        "--db-acquire-timeout",
        "300ms",
        "--metrics-addr",
        "127.0.0.1:0",
    ])
    .unwrap();
    let app = conversation_service::startup::Application::build(config)
        .await
        .unwrap();
    let metrics = app.metrics_addr().expect("metrics endpoint bound");
    let _stop = app.shutdown_token().drop_guard();
    tokio::spawn(app.run_until_stopped());
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    // Several health rounds pass: readiness never turns on, liveness never turns off,
    // over gRPC and over the plain-HTTP probes alike.
    for _ in 0..5 {
        assert_eq!(health(&channel, "").await, ServingStatus::Serving);
        assert_eq!(health(&channel, READINESS).await, ServingStatus::NotServing);
        assert_eq!(get(metrics, "/livez").await.unwrap().0, 200);
        assert_eq!(get(metrics, "/readyz").await.unwrap().0, 503);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn the_http_probes_say_ready_while_the_database_answers() {
    let app = spawn_app_with_flags(&["--metrics-addr", "127.0.0.1:0"]).await;
    let metrics = app.metrics.expect("metrics endpoint bound");
    let mut ready = 0;
    for _ in 0..100 {
        ready = get(metrics, "/readyz").await.unwrap().0;
        if ready == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ready, 200);
    assert_eq!(get(metrics, "/livez").await.unwrap().0, 200);
    assert_eq!(get(metrics, "/nothing-here").await.unwrap().0, 404);
}

#[tokio::test]
async fn sigterm_turns_readiness_off_first_and_keeps_serving_until_the_delay_ends() {
    let database = fresh_database().await;
    let url = database.url().to_owned();
    let addr = free_addr();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_conversation-service"))
        .args(["--listen", &addr.to_string(), "--database-url", &url])
        // Long enough never to end on its own during the test: a second signal ends it.
        .args(["--drain-delay", "10m"])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_serving(addr).await;
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    let kill = |pid: u32| {
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap()
    };
    assert!(kill(child.id()).success());
    wait_for(&channel, READINESS, ServingStatus::NotServing).await;
    assert_eq!(health(&channel, "").await, ServingStatus::Serving);
    // Still answering while load balancers take it out of rotation.
    let mut client = connect(addr).await;
    create(&mut client, "p1").await;

    // A second SIGTERM skips the rest of the delay: it drains and exits cleanly.
    assert!(kill(child.id()).success());
    let exited = tokio::task::spawn_blocking(move || {
        for _ in 0..400 {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status.success());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        None
    })
    .await
    .unwrap();
    assert_eq!(exited, Some(true));
}

/// The listener times a probe notice it sends itself every 2 s, and reads how full
/// PostgreSQL's notification queue is: both are gauges.
#[tokio::test]
async fn the_listener_reports_its_lag_and_the_notification_queue() {
    let database = fresh_database().await;
    let url = database.url().to_owned();
    let app = spawn_app_with(&url, &["--metrics-addr", "127.0.0.1:0"]).await;
    let metrics = app.metrics.expect("metrics address");
    let mut text = String::new();
    for _ in 0..100 {
        text = scrape(metrics).await.unwrap();
        if text.contains("chat_listener_lag_seconds") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lag = sample(&text, "chat_listener_lag_seconds", &[]);
    assert!(lag > 0.0 && lag < 1.0, "{text}");
    assert!(text.contains("chat_notify_queue_usage "), "{text}");
    let usage = sample(&text, "chat_notify_queue_usage", &[]);
    assert!((0.0..0.5).contains(&usage), "{usage}");
}

mod collector {
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    };
    use tokio::sync::mpsc;
    use tonic::{Request, Response, Status};

    /// An OTLP trace receiver: every export request goes to the channel.
    pub struct Collector(pub mpsc::UnboundedSender<ExportTraceServiceRequest>);

    #[tonic::async_trait]
    impl TraceService for Collector {
        async fn export(
            &self,
            request: Request<ExportTraceServiceRequest>,
        ) -> Result<Response<ExportTraceServiceResponse>, Status> {
            let _ = self.0.send(request.into_inner());
            Ok(Response::new(ExportTraceServiceResponse {
                partial_success: None,
            }))
        }
    }

    pub fn server(collector: Collector) -> TraceServiceServer<Collector> {
        TraceServiceServer::new(collector)
    }
}

#[tokio::test]
async fn with_an_otlp_endpoint_each_rpc_is_exported_as_a_span_of_the_callers_trace() {
    let (spans, mut exported) = tokio::sync::mpsc::unbounded_channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(collector::server(collector::Collector(spans)))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );

    let database = fresh_database().await;
    let url = database.url().to_owned();
    let addr = free_addr();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_conversation-service"))
        .args(["--listen", &addr.to_string(), "--database-url", &url])
        .args(["--drain-delay", "0s"])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("OTEL_SERVICE_NAME", "conversations-eu")
        .env_remove("OTEL_RESOURCE_ATTRIBUTES")
        .env_remove("TRACE_FILTER")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_serving(addr).await;
    let trace_id = Uuid::new_v4().as_u128();
    let parent_span = 0x00f0_67aa_0ba9_02b7_u64;
    let mut request = tonic::Request::new(v1::CreateConversationRequest {
        request_id: Uuid::new_v4().to_string(),
        provider_id: "p1".into(),
        ..Default::default()
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id:032x}-{parent_span:016x}-01")
            .parse()
            .unwrap(),
    );
    connect(addr)
        .await
        .create_conversation(request)
        .await
        .unwrap();

    // Stopping flushes what the batch exporter still holds.
    let stopped = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    let exited = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(exited.success());

    // The exports were answered before the process exited: all are in the channel.
    let mut resources = Vec::new();
    while let Ok(export) = exported.try_recv() {
        resources.extend(export.resource_spans);
    }
    let spans: Vec<_> = resources
        .iter()
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
        .collect();
    let found = spans
        .iter()
        .find(|s| s.trace_id == trace_id.to_be_bytes())
        .expect("the collector got the RPC's span");
    assert_eq!(found.name, "chat.v1.ConversationService/CreateConversation");
    assert_eq!(found.parent_span_id, parent_span.to_be_bytes());
    // OpenTelemetry's RPC conventions, and none of tracing's bookkeeping.
    let attribute = |key: &str| {
        found
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.clone())
            .and_then(|v| v.value)
    };
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    assert_eq!(
        attribute("rpc.system"),
        Some(Any::StringValue("grpc".into()))
    );
    assert_eq!(
        attribute("rpc.service"),
        Some(Any::StringValue("chat.v1.ConversationService".into()))
    );
    assert_eq!(
        attribute("rpc.method"),
        Some(Any::StringValue("CreateConversation".into()))
    );
    assert_eq!(attribute("rpc.grpc.status_code"), Some(Any::IntValue(0)));
    for kv in &found.attributes {
        assert!(
            !kv.key.starts_with("code.")
                && !kv.key.starts_with("thread.")
                && kv.key != "busy_ns"
                && kv.key != "idle_ns",
            "{}",
            kv.key
        );
    }
    // wait_serving made health checks: not exported by default.
    assert!(
        spans.iter().all(|s| !s.name.starts_with("grpc.health")),
        "{:?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    // OTEL_SERVICE_NAME names the service.
    let service_name = resources[0]
        .resource
        .as_ref()
        .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
        .and_then(|kv| kv.value.clone())
        .and_then(|v| v.value);
    assert_eq!(
        service_name,
        Some(Any::StringValue("conversations-eu".into()))
    );
}

/// Runs the binary on an already migrated database with stdout piped (not a terminal),
/// stops it, and returns what it wrote.
async fn output_of_a_run(database_url: &str, envs: &[(&str, &str)]) -> String {
    let addr = free_addr();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_conversation-service"));
    command
        .args([
            "--listen",
            &addr.to_string(),
            "--database-url",
            database_url,
        ])
        .args(["--drain-delay", "0s"])
        .env_remove("LOG_FORMAT")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped());
    for (key, value) in envs {
        command.env(key, value);
    }
    let child = command.spawn().unwrap();
    wait_serving(addr).await;
    let mut client = connect(addr).await;
    create(&mut client, "p1").await;
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let output = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test]
async fn logs_off_a_terminal_have_no_colours_one_json_shape_and_no_migration_notice() {
    let database = fresh_database().await;
    let url = database.url().to_owned();
    // Migrated once, so the next start meets an existing _sqlx_migrations table.
    drop(spawn_app_with(&url, &[]).await);

    let text = output_of_a_run(&url, &[]).await;
    assert!(text.contains("serving"), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "ANSI escapes in piped output: {text}"
    );
    assert!(!text.contains("_sqlx_migrations"), "{text}");
    assert!(
        text.contains("grpc_method=\"CreateConversation\""),
        "{text}"
    );

    let json = output_of_a_run(&url, &[("LOG_FORMAT", "json")]).await;
    let lines: Vec<serde_json::Value> = json
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    for line in &lines {
        for key in ["timestamp", "level", "app", "target", "message"] {
            assert!(line.get(key).is_some(), "{key} missing in {line}");
        }
        assert_eq!(line["app"], "conversation-service");
    }
    let rpc = lines
        .iter()
        .find(|l| l["message"] == "rpc" && l["grpc_method"] == "CreateConversation")
        .expect("the per-RPC line");
    assert_eq!(rpc["grpc_code"], "OK");
    assert_eq!(rpc["grpc_service"], "chat.v1.ConversationService");
    assert_eq!(rpc["provider_id"], "p1");
    assert!(rpc["conversation_id"].is_string());
    assert_eq!(rpc["trace_id"].as_str().map(str::len), Some(32));
    assert!(rpc["latency_ms"].is_f64());

    // The notice is only hidden, not gone: asking for sqlx's lines shows it.
    let loud = output_of_a_run(&url, &[("RUST_LOG", "info,sqlx=info")]).await;
    assert!(loud.contains("_sqlx_migrations"), "{loud}");
}
