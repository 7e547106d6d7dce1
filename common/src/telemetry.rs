//! Logs and traces, set up once per process the same way in both services.
//!
//! - One JSON shape (`--log-format json`): every line is one object with `timestamp`,
//!   `level`, `app`, `target`, `message`, the event's fields and the fields of every span
//!   it happened in (flattened, innermost wins). Inside an RPC that includes `trace_id`,
//!   `grpc_service`, `grpc_method` and the ids the handler recorded (see [`crate::rpc`]).
//! - Text (`--log-format text`, the default) without ANSI colours unless stdout is a
//!   terminal.
//! - Traces: every RPC has a W3C trace id (so `trace_id` is in the logs and `traceparent`
//!   is propagated even with no collector); spans are exported over OTLP/gRPC only when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` is set. Without it there is no OpenTelemetry layer at
//!   all: building a span per RPC only to drop it cost the service about a tenth of its
//!   CPU per SendMessage, and the RPC layer keeps the trace id itself ([`crate::rpc`]).
//!   The exporter also reads the other standard `OTEL_EXPORTER_OTLP_*` variables.
//!   `OTEL_SERVICE_NAME` (or `service.name` in `OTEL_RESOURCE_ATTRIBUTES`) names the
//!   service, else the binary's name does. Spans carry their own attributes only, none of
//!   tracing's bookkeeping (source location, thread, busy/idle time). `TRACE_FILTER` (RUST_LOG's syntax, default `info`) picks
//!   the spans exported: health checks and reflection are DEBUG, so left out unless it
//!   says `debug` (or `grpc=debug`).
//! - `RUST_LOG` filters (default `info`); PostgreSQL's notices (such as
//!   "relation _sqlx_migrations already exists, skipping") are shown only from `warn` on
//!   unless `RUST_LOG` names `sqlx` itself.

use std::{fmt, io::IsTerminal, net::SocketAddr, time::SystemTime};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use serde_json::{Map, Value};
use tracing::{Event, Subscriber, field::Field};
use tracing_subscriber::{
    EnvFilter, Layer, Registry,
    field::{RecordFields, Visit},
    fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, MakeWriter, format::Writer},
    layer::SubscriberExt,
    registry::LookupSpan,
    util::SubscriberInitExt,
};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (colours only on a terminal).
    Text,
    /// One JSON object per line, the same shape in both services.
    Json,
}

/// The observability flags both services take (`#[command(flatten)]`).
#[derive(Debug, Clone, clap::Args)]
pub struct TelemetryArgs {
    /// Log format: `text` or `json`. Filter with RUST_LOG (default `info`; the per-RPC
    /// lines have target `grpc`).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Address of the Prometheus endpoint (`GET /metrics`); off when unset.
    #[arg(long, env = "METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
}

/// Keeps the trace pipeline alive; dropping it flushes spans not exported yet.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = &self.provider {
            let _ = provider.shutdown();
        }
    }
}

/// Installs the process's subscriber writing to stdout: logs in `format`, traces
/// exported when `OTEL_EXPORTER_OTLP_ENDPOINT` is set. `app` names the service in log
/// lines and in exported traces. A second call (several apps in one test process)
/// leaves the first subscriber in place.
#[must_use = "dropping the guard stops exporting traces"]
pub fn init(app: &'static str, format: LogFormat) -> Telemetry {
    let provider = tracer_provider(app);
    let ansi = std::io::stdout().is_terminal();
    let installed = subscriber(app, format, std::io::stdout, ansi, provider.as_ref()).try_init();
    if let (Ok(()), Ok(endpoint)) = (installed, std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")) {
        tracing::info!(%endpoint, "exporting traces over OTLP");
    }
    Telemetry { provider }
}

/// The tracer provider with the OTLP exporter when `OTEL_EXPORTER_OTLP_ENDPOINT` is set
/// (and the exporter can be built), else none.
pub fn tracer_provider(app: &'static str) -> Option<SdkTracerProvider> {
    let exporting = std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some_and(|v| !v.is_empty());
    if !exporting {
        return None;
    }
    // The default resource reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES itself;
    // `app` only fills in when neither names the service.
    let mut resource = Resource::builder();
    if !service_named(
        std::env::var("OTEL_SERVICE_NAME").ok().as_deref(),
        std::env::var("OTEL_RESOURCE_ATTRIBUTES").ok().as_deref(),
    ) {
        resource = resource.with_service_name(app);
    }
    match opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
    {
        Ok(exporter) => Some(
            SdkTracerProvider::builder()
                .with_resource(resource.build())
                .with_batch_exporter(exporter)
                .build(),
        ),
        // Logging is not set up yet: say it on stderr, and run without exporting.
        Err(error) => {
            eprintln!("cannot export traces over OTLP: {error}");
            None
        }
    }
}

/// Whether the environment names the service: `OTEL_SERVICE_NAME`, or a `service.name`
/// among the comma-separated `key=value` pairs of `OTEL_RESOURCE_ATTRIBUTES`.
fn service_named(service_name: Option<&str>, resource_attributes: Option<&str>) -> bool {
    service_name.is_some_and(|name| !name.trim().is_empty())
        || resource_attributes.is_some_and(|pairs| {
            pairs
                .split(',')
                .filter_map(|pair| pair.split_once('='))
                .any(|(key, value)| key.trim() == "service.name" && !value.trim().is_empty())
        })
}

/// The name a span or event field has in log lines: the OpenTelemetry `rpc.*` attributes
/// keep the names log queries already use, and the fields that only steer the exported
/// span are left out.
fn log_name(name: &str) -> Option<&str> {
    match name {
        "rpc.service" => Some("grpc_service"),
        "rpc.method" => Some("grpc_method"),
        "rpc.system" | "rpc.grpc.status_code" => None,
        other if other.starts_with("otel.") || other.starts_with("log.") => None,
        other => Some(other),
    }
}

/// The filter of exported spans: `TRACE_FILTER`, else `info`.
fn trace_filter() -> EnvFilter {
    let from_env = std::env::var("TRACE_FILTER")
        .ok()
        .filter(|v| !v.trim().is_empty());
    EnvFilter::new(from_env.as_deref().unwrap_or("info"))
}

/// The subscriber [`init`] installs, writing to `writer` (tests capture lines this way,
/// with `tracing::subscriber::set_default`).
pub fn subscriber<W>(
    app: &'static str,
    format: LogFormat,
    writer: W,
    ansi: bool,
    provider: Option<&SdkTracerProvider>,
) -> impl Subscriber + Send + Sync + 'static
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    subscriber_logging(app, format, writer, ansi, provider, log_filter())
}

/// [`subscriber`] with `log_filter` instead of `RUST_LOG`'s.
pub(crate) fn subscriber_logging<W>(
    app: &'static str,
    format: LogFormat,
    writer: W,
    ansi: bool,
    provider: Option<&SdkTracerProvider>,
    log_filter: EnvFilter,
) -> impl Subscriber + Send + Sync + 'static
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let logs = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_ansi(ansi)
            .fmt_fields(TextFields)
            .with_filter(log_filter.clone())
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .event_format(JsonLine { app })
            .fmt_fields(JsonSpanFields)
            .with_filter(log_filter)
            .boxed(),
    };
    // Traces do not follow RUST_LOG: a quieter log must not break propagation. Without an
    // exporter the RPC spans still exist whatever RUST_LOG says: they hold the trace that
    // the calls their handlers make carry on. (One layer or the other, never an absent
    // `Option` layer: that one enables every callsite in the process.)
    let traces = match provider {
        Some(provider) => tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(app))
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_target(false)
            .with_filter(trace_filter())
            .boxed(),
        None => tracing_subscriber::layer::Identity::new()
            .with_filter(
                tracing_subscriber::filter::filter_fn(crate::rpc::is_rpc_span)
                    .with_max_level_hint(tracing::Level::INFO),
            )
            .boxed(),
    };
    Registry::default().with(logs).with(traces)
}

fn log_filter() -> EnvFilter {
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let mut filter = EnvFilter::new(from_env.as_deref().unwrap_or("info"));
    if !from_env.is_some_and(|v| v.contains("sqlx")) {
        // PostgreSQL NOTICEs, e.g. "_sqlx_migrations already exists" on every start.
        if let Ok(directive) = "sqlx::postgres::notice=warn".parse() {
            filter = filter.add_directive(directive);
        }
    }
    filter
}

/// The JSON line: fixed keys, then span fields from the root span in, then the event's.
struct JsonLine {
    app: &'static str,
}

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut fields = Map::new();
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                if let Some(recorded) = extensions.get::<FormattedFields<N>>()
                    && let Ok(Value::Object(map)) = serde_json::from_str(recorded.as_str())
                {
                    fields.extend(map);
                }
            }
        }
        event.record(&mut JsonVisitor(&mut fields));
        let fields: Map<String, Value> = fields
            .into_iter()
            .filter_map(|(key, value)| log_name(&key).map(|name| (name.to_owned(), value)))
            .collect();
        // Fixed keys first, in this order, then the fields.
        let fixed = [
            (
                "timestamp",
                humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
            ),
            ("level", meta.level().as_str().to_owned()),
            ("app", self.app.to_owned()),
            ("target", meta.target().to_owned()),
        ];
        let mut text = String::from("{");
        for (i, (key, value)) in fixed.iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            text.push_str(&format!("\"{key}\":"));
            text.push_str(&serde_json::to_string(value).map_err(|_| fmt::Error)?);
        }
        if fields.is_empty() {
            text.push('}');
        } else {
            // `{fixed` + `,` + `fields}` without the fields' opening brace.
            let rest = serde_json::to_string(&fields).map_err(|_| fmt::Error)?;
            text.push(',');
            text.push_str(&rest[1..]);
        }
        writeln!(writer, "{text}")
    }
}

/// `key=value` fields for text lines, the message first and bare, named as
/// [`log_name`] says.
struct TextFields;

impl<'w> FormatFields<'w> for TextFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut visitor = TextVisitor {
            writer: &mut writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct TextVisitor<'a, 'w> {
    writer: &'a mut Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl Visit for TextVisitor<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let Some(name) = log_name(field.name()) else {
            return;
        };
        if self.result.is_err() {
            return;
        }
        let separator = if std::mem::take(&mut self.first) {
            ""
        } else {
            " "
        };
        self.result = if name == "message" {
            write!(self.writer, "{separator}{value:?}")
        } else {
            write!(self.writer, "{separator}{name}={value:?}")
        };
    }
}

/// A span's fields for JSON lines: one JSON object, to which each later `record` appends
/// its members. (tracing's `JsonFields` parses the object and writes it whole again on
/// every `record`: three or four times per RPC.) A key recorded twice appears twice; the
/// line's parse keeps the last, as a later record would have replaced it.
struct JsonSpanFields;

impl<'w> FormatFields<'w> for JsonSpanFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut map = Map::new();
        fields.record(&mut JsonVisitor(&mut map));
        write!(writer, "{}", Value::Object(map))
    }

    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let mut map = Map::new();
        fields.record(&mut JsonVisitor(&mut map));
        if map.is_empty() {
            return Ok(());
        }
        let added = Value::Object(map).to_string();
        let text = &mut current.fields;
        if text.len() > 2 && text.ends_with('}') {
            text.pop();
            text.push(',');
            text.push_str(&added[1..]);
        } else {
            *text = added;
        }
        Ok(())
    }
}

/// Records an event's fields as JSON values.
struct JsonVisitor<'a>(&'a mut Map<String, Value>);

impl Visit for JsonVisitor<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), Value::from(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), Value::from(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), Value::from(value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0
            .insert(field.name().into(), Value::from(value.to_string()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), Value::from(format!("{value:?}")));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::ErrorKind::Other)?
                .extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn captured(format: LogFormat) -> String {
        let capture = Capture::default();
        let sink = capture.clone();
        let subscriber = subscriber("test-app", format, move || sink.clone(), false, None);
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::error_span!(
                "rpc",
                otel.kind = "server",
                rpc.system = "grpc",
                rpc.method = "Send",
                rpc.grpc.status_code = 0,
                conversation_id = tracing::field::Empty
            );
            span.record("conversation_id", "c-1");
            span.in_scope(|| tracing::info!(seq = 3, "sent"));
        });
        let bytes = capture.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    /// Span fields recorded after the span began are in the JSON line, a key recorded
    /// again shows its last value, and a span that began without fields takes them too.
    #[test]
    fn json_lines_carry_span_fields_recorded_later_with_their_last_value() {
        let capture = Capture::default();
        let sink = capture.clone();
        let subscriber = subscriber(
            "test-app",
            LogFormat::Json,
            move || sink.clone(),
            false,
            None,
        );
        tracing::subscriber::with_default(subscriber, || {
            let outer = tracing::error_span!("outer", a = 1, b = tracing::field::Empty);
            outer.record("b", "first");
            outer.record("b", "second");
            outer.in_scope(|| {
                let inner = tracing::error_span!("inner", c = tracing::field::Empty);
                inner.record("c", 3);
                inner.in_scope(|| tracing::error!("seen"));
            });
        });
        let bytes = capture.0.lock().unwrap().clone();
        let line: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(line["a"], 1);
        assert_eq!(line["b"], "second");
        assert_eq!(line["c"], 3);
        assert_eq!(line["message"], "seen");
    }

    /// Without an exporter the RPC spans exist whatever the log filter says, nothing else
    /// it leaves out is enabled, and the subscriber still tells the level below which
    /// every callsite is off (without it each of h2's and hyper's trace events would be
    /// checked at run time).
    #[test]
    fn without_an_exporter_only_rpc_spans_pass_beyond_the_log_filter() {
        let subscriber = subscriber("test-app", LogFormat::Json, std::io::sink, false, None);
        assert!(Subscriber::max_level_hint(&subscriber).is_some());
        // A trace-level callsite of a library is off for good, not checked at each event.
        let library = tracing::subscriber::with_default(tracing_subscriber::registry(), || {
            tracing::trace_span!(target: "hyper::proto", "poll").metadata()
        });
        let library = library.expect("a bare registry enables every span");
        assert!(Subscriber::register_callsite(&subscriber, library).is_never());
        let quiet = subscriber_logging(
            "test-app",
            LogFormat::Json,
            std::io::sink,
            false,
            None,
            EnvFilter::new("off"),
        );
        tracing::subscriber::with_default(quiet, || {
            assert!(!tracing::error_span!(target: "grpc", "rpc").is_disabled());
            assert!(tracing::error_span!(target: "grpc", "other").is_disabled());
        });
        tracing::subscriber::with_default(subscriber, || {
            assert!(!tracing::error_span!(target: "grpc", "rpc").is_disabled());
            assert!(tracing::debug_span!(target: "grpc", "rpc").is_disabled());
            assert!(!tracing::enabled!(target: "h2::codec", tracing::Level::TRACE));
            assert!(tracing::trace_span!(target: "hyper", "poll").is_disabled());
        });
    }

    #[test]
    fn text_lines_show_span_fields_but_not_otel_ones() {
        let text = captured(LogFormat::Text);
        assert!(
            text.contains(r#"rpc{grpc_method="Send" conversation_id="c-1"}: "#),
            "{text}"
        );
        assert!(text.contains("sent seq=3"), "{text}");
        assert!(!text.contains("otel."), "{text}");
        assert!(!text.contains("rpc."), "{text}");
        assert!(!text.contains('\u{1b}'), "{text}");
    }

    #[test]
    fn json_lines_flatten_span_and_event_fields_and_carry_no_ansi() {
        let text = captured(LogFormat::Json);
        let line: Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["app"], "test-app");
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["message"], "sent");
        assert_eq!(line["seq"], 3);
        assert_eq!(line["grpc_method"], "Send");
        assert_eq!(line["conversation_id"], "c-1");
        assert!(line.get("otel.kind").is_none());
        assert!(line.get("rpc.system").is_none(), "{line}");
        assert!(line.get("rpc.grpc.status_code").is_none(), "{line}");
        assert!(line["timestamp"].as_str().unwrap().ends_with('Z'));
        assert!(!text.contains('\u{1b}'));
    }

    #[test]
    fn the_environment_names_the_service_before_the_app_does() {
        assert!(!service_named(None, None));
        assert!(!service_named(
            Some(" "),
            Some("deployment.environment=prod")
        ));
        assert!(service_named(Some("chat-eu"), None));
        assert!(service_named(
            None,
            Some("deployment.environment=prod, service.name=chat-eu")
        ));
        assert!(!service_named(None, Some("service.name=")));
    }
}
