//! One tower layer around every RPC, on both sides of a call.
//!
//! [`ServerLayer`] (on `Server::builder().layer(..)`) gives each RPC a span named `rpc`
//! whose parent is the W3C `traceparent` the caller sent, counts it in
//! `grpc_server_started_total`, `grpc_server_handled_total`,
//! `grpc_server_handling_seconds`, and its messages in `grpc_server_msg_received_total`
//! and `grpc_server_msg_sent_total` (labels `grpc_service`, `grpc_method`, `grpc_type`,
//! `grpc_code`, the names Grafana's gRPC dashboards expect), and writes one log line when
//! it ends (target `grpc`: service, method, code, latency, trace id and the ids the
//! handler recorded with [`record`]). A server stream ends when its last frame is sent.
//!
//! Spans follow OpenTelemetry's RPC conventions: named `package.Service/Method`, with
//! `rpc.system`, `rpc.service`, `rpc.method` and `rpc.grpc.status_code`, and status ERROR
//! only where the conventions call the outcome a failure (on a server: UNKNOWN,
//! DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS; a caller's mistake
//! such as NOT_FOUND is not one). Health checks and reflection get DEBUG spans, which the
//! trace filter leaves out by default (see [`crate::telemetry`]). In log lines the
//! `rpc.*` fields read `grpc_service`, `grpc_method` and `grpc_code` as before.
//!
//! Without an exporter there is no OpenTelemetry layer ([`crate::telemetry`]): the
//! server's `rpc` span then keeps the caller's trace (or a new one) itself, for its log
//! lines and for the calls its handler makes.
//!
//! [`ClientLayer`] (around a `Channel`) sends the current span's context as
//! `traceparent` and counts `grpc_client_started_total`, `grpc_client_handled_total`,
//! `grpc_client_handling_seconds`, `grpc_client_msg_sent_total` and
//! `grpc_client_msg_received_total`.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::{Duration, Instant},
};

use http_body::{Body, Frame, SizeHint};
use opentelemetry::{
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId},
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use pin_project_lite::pin_project;
use prost::Message;
use tonic::{Code, Status, codegen::Bytes};
use tower::{Layer, Service};
use tracing::{Instrument, Level, Span, field, instrument::Instrumented};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{Registry, registry::LookupSpan};

/// Records `value` as the field `name` of the current RPC's log line and span. `name`
/// is one of `provider_id`, `customer_id`, `conversation_id`, `request_id`,
/// `session_id`, `token_id`, `replayed`; other names are ignored.
pub fn record(name: &'static str, value: impl std::fmt::Display) {
    Span::current().record(name, field::display(value));
}

/// gRPC's canonical code names, as Go's `codes.Code.String()` writes them (the
/// `grpc_code` label of go-grpc-prometheus, which dashboards filter on).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// What the layer knows about a method, from the descriptor sets.
#[derive(Clone, Debug)]
struct Method {
    service: &'static str,
    method: &'static str,
    kind: &'static str,
    /// Health and reflection: logged at debug, probes would drown everything else.
    quiet: bool,
}

const UNKNOWN: Method = Method {
    service: "unknown",
    method: "unknown",
    kind: "unary",
    quiet: false,
};

/// Every method a server serves (or a client calls), by path. A path not in it is
/// labelled `unknown`, so a caller cannot grow the label space.
#[derive(Clone, Debug)]
struct Methods(Arc<HashMap<String, Method>>);

impl Methods {
    /// `api` plus health and reflection.
    fn with_standard(api: &[u8]) -> Self {
        let sets = [
            api,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ];
        let mut methods = HashMap::new();
        for set in sets {
            let Ok(set) = prost_types::FileDescriptorSet::decode(set) else {
                continue;
            };
            for file in set.file {
                let package = file.package.unwrap_or_default();
                for service in file.service {
                    let service_name = match (package.as_str(), service.name) {
                        (_, None) => continue,
                        ("", Some(name)) => name,
                        (package, Some(name)) => format!("{package}.{name}"),
                    };
                    // Leaked once per name: the set is fixed at start and small.
                    let service_name: &'static str = Box::leak(service_name.into_boxed_str());
                    let quiet = service_name.starts_with("grpc.health.")
                        || service_name.starts_with("grpc.reflection.");
                    for method in service.method {
                        let Some(name) = method.name else { continue };
                        let kind = match (
                            method.client_streaming.unwrap_or(false),
                            method.server_streaming.unwrap_or(false),
                        ) {
                            (false, false) => "unary",
                            (false, true) => "server_stream",
                            (true, false) => "client_stream",
                            (true, true) => "bidi_stream",
                        };
                        let path = format!("/{service_name}/{name}");
                        methods.insert(
                            path,
                            Method {
                                service: service_name,
                                method: Box::leak(name.into_boxed_str()),
                                kind,
                                quiet,
                            },
                        );
                    }
                }
            }
        }
        Self(Arc::new(methods))
    }

    fn get(&self, path: &str) -> Method {
        self.0.get(path).cloned().unwrap_or(UNKNOWN)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Server,
    Client,
}

impl Side {
    /// The counters of messages this side receives and sends.
    fn message_counters(self, m: &Method) -> (metrics::Counter, metrics::Counter) {
        let (received, sent) = match self {
            Self::Server => (
                "grpc_server_msg_received_total",
                "grpc_server_msg_sent_total",
            ),
            Self::Client => (
                "grpc_client_msg_received_total",
                "grpc_client_msg_sent_total",
            ),
        };
        let counter = |name: &'static str| {
            metrics::counter!(name, "grpc_service" => m.service, "grpc_method" => m.method,
                "grpc_type" => m.kind)
        };
        (counter(received), counter(sent))
    }
}

/// Counts the messages of a gRPC body from its length-prefixed framing (a flag byte and
/// a 4-byte big-endian length before each message), across data frames that split a
/// message or carry several.
#[derive(Debug, Default)]
struct Framing {
    header: [u8; 5],
    header_len: usize,
    /// Bytes of the current message still to come.
    remaining: u64,
}

impl Framing {
    /// The messages that begin in `bytes`.
    fn feed(&mut self, mut bytes: &[u8]) -> u64 {
        let mut messages = 0;
        while !bytes.is_empty() {
            if self.remaining > 0 {
                let skip =
                    usize::try_from(self.remaining).map_or(bytes.len(), |r| r.min(bytes.len()));
                self.remaining -= skip as u64;
                bytes = &bytes[skip..];
                continue;
            }
            let take = (5 - self.header_len).min(bytes.len());
            self.header[self.header_len..self.header_len + take].copy_from_slice(&bytes[..take]);
            self.header_len += take;
            bytes = &bytes[take..];
            if self.header_len == 5 {
                let [_, a, b, c, d] = self.header;
                self.remaining = u64::from(u32::from_be_bytes([a, b, c, d]));
                self.header_len = 0;
                messages += 1;
            }
        }
        messages
    }
}

/// Counts the messages of a body into `counter` as its data frames pass.
#[derive(Debug)]
struct MessageCount {
    framing: Framing,
    counter: metrics::Counter,
}

impl MessageCount {
    fn new(counter: metrics::Counter) -> Self {
        Self {
            framing: Framing::default(),
            counter,
        }
    }

    fn frame<E>(&mut self, frame: Option<&Result<Frame<Bytes>, E>>) {
        if let Some(Ok(frame)) = frame
            && let Some(data) = frame.data_ref()
        {
            let messages = self.framing.feed(data);
            if messages > 0 {
                self.counter.increment(messages);
            }
        }
    }
}

pin_project! {
    /// A request body whose messages are counted.
    pub struct Counted<B> {
        #[pin]
        body: B,
        count: MessageCount,
    }
}

impl<B: Body<Data = Bytes>> Body for Counted<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.body.poll_frame(cx));
        this.count.frame(frame.as_ref());
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// One call in flight; its outcome is recorded exactly once, when it ends or, if it is
/// dropped first, as cancelled (or past its deadline).
struct Call {
    side: Side,
    method: Method,
    span: Span,
    started: Instant,
    deadline: Option<Duration>,
    done: bool,
}

impl Call {
    fn start(side: Side, method: Method, span: Span, deadline: Option<Duration>) -> Self {
        let name = match side {
            Side::Server => "grpc_server_started_total",
            Side::Client => "grpc_client_started_total",
        };
        metrics::counter!(name, "grpc_service" => method.service, "grpc_method" => method.method,
            "grpc_type" => method.kind)
        .increment(1);
        Self {
            side,
            method,
            span,
            started: Instant::now(),
            deadline,
            done: false,
        }
    }

    fn finish(&mut self, code: Code, message: &str) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let elapsed = self.started.elapsed();
        let m = &self.method;
        let (handled, seconds) = match self.side {
            Side::Server => ("grpc_server_handled_total", "grpc_server_handling_seconds"),
            Side::Client => ("grpc_client_handled_total", "grpc_client_handling_seconds"),
        };
        let code_name = code_name(code);
        metrics::counter!(handled, "grpc_service" => m.service, "grpc_method" => m.method,
            "grpc_type" => m.kind, "grpc_code" => code_name)
        .increment(1);
        metrics::histogram!(seconds, "grpc_service" => m.service, "grpc_method" => m.method,
            "grpc_type" => m.kind)
        .record(elapsed.as_secs_f64());

        self.span
            .record("rpc.grpc.status_code", i64::from(code as i32));
        if failed(self.side, code) {
            self.span.record("otel.status_code", "ERROR");
        }
        let latency_ms = (elapsed.as_secs_f64() * 1e6).round() / 1e3;
        let message = (!message.is_empty()).then_some(message);
        let _entered = self.span.enter();
        let grpc_code = code_name;
        match (self.side, code) {
            (Side::Server, Code::Internal | Code::Unknown | Code::DataLoss) => {
                tracing::warn!(target: "grpc", grpc_code, latency_ms, grpc_message = message, "rpc");
            }
            (Side::Server, _) if !m.quiet => {
                tracing::info!(target: "grpc", grpc_code, latency_ms, grpc_message = message, "rpc");
            }
            _ => {
                tracing::debug!(target: "grpc", grpc_code, latency_ms, grpc_message = message, "rpc");
            }
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if !self.done {
            let late = self.deadline.is_some_and(|d| self.started.elapsed() >= d);
            let code = if late {
                Code::DeadlineExceeded
            } else {
                Code::Cancelled
            };
            self.finish(code, "");
        }
    }
}

/// Whether an outcome is a failure in OpenTelemetry's gRPC conventions: on a server only
/// the codes that say the server failed, on a client any code but OK.
fn failed(side: Side, code: Code) -> bool {
    match side {
        Side::Server => matches!(
            code,
            Code::Unknown
                | Code::DeadlineExceeded
                | Code::Unimplemented
                | Code::Internal
                | Code::Unavailable
                | Code::DataLoss
        ),
        Side::Client => code != Code::Ok,
    }
}

/// The span of one RPC at `level`, with the conventions' attributes; `name` is `rpc` on
/// a server, `rpc.client` on a client. The ids are declared on the server's so that
/// handlers can [`record`] them.
macro_rules! rpc_span {
    ($level:expr, "rpc", $method:expr) => {
        tracing::span!(
            target: "grpc",
            $level,
            "rpc",
            otel.name = format_args!("{}/{}", $method.service, $method.method),
            otel.kind = "server",
            otel.status_code = field::Empty,
            rpc.system = "grpc",
            rpc.service = $method.service,
            rpc.method = $method.method,
            rpc.grpc.status_code = field::Empty,
            trace_id = field::Empty,
            provider_id = field::Empty,
            customer_id = field::Empty,
            conversation_id = field::Empty,
            request_id = field::Empty,
            session_id = field::Empty,
            token_id = field::Empty,
            replayed = field::Empty,
        )
    };
    ($level:expr, "rpc.client", $method:expr) => {
        tracing::span!(
            target: "grpc",
            $level,
            "rpc.client",
            otel.name = format_args!("{}/{}", $method.service, $method.method),
            otel.kind = "client",
            otel.status_code = field::Empty,
            rpc.system = "grpc",
            rpc.service = $method.service,
            rpc.method = $method.method,
            rpc.grpc.status_code = field::Empty,
        )
    };
}

/// The `grpc-timeout` header (`<digits><H|M|S|m|u|n>`), if any.
fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let text = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    let value: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(value.saturating_mul(3600)),
        "M" => Duration::from_secs(value.saturating_mul(60)),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    })
}

/// The W3C trace an RPC belongs to when no OpenTelemetry layer keeps one (no exporter):
/// the caller's, else a new sampled one, as the SDK's default sampler would decide. It
/// lives in the extensions of the server's `rpc` span, so the RPC's log lines name it and
/// the calls its handler makes carry it on.
#[derive(Clone, Debug)]
struct Trace {
    id: TraceId,
    flags: TraceFlags,
    /// The caller's `tracestate`, passed on as it came.
    state: String,
}

impl Trace {
    /// Keeps the caller's trace (or a new one) in `span`; returns its id.
    fn keep(span: &Span, remote: &SpanContext) -> TraceId {
        let trace = if remote.is_valid() {
            Self {
                id: remote.trace_id(),
                flags: remote.trace_flags(),
                state: remote.trace_state().header(),
            }
        } else {
            Self {
                id: TraceId::from(rand::random::<u128>().max(1)),
                flags: TraceFlags::SAMPLED,
                state: String::new(),
            }
        };
        let id = trace.id;
        in_registry(span, |span| span.extensions_mut().insert(trace));
        id
    }

    /// The trace kept by the innermost RPC span around the current one.
    fn current() -> Option<Self> {
        in_registry(&Span::current(), |span| {
            span.scope()
                .find_map(|span| span.extensions().get::<Self>().cloned())
        })
        .flatten()
    }

    /// `traceparent` (with a new id for the outgoing call) and `tracestate`.
    fn inject(&self, headers: &mut http::HeaderMap) {
        let call = SpanId::from(rand::random::<u64>().max(1));
        let parent = format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.id,
            call,
            self.flags.to_u8()
        );
        let mut injector = HeaderInjector(headers);
        injector.set("traceparent", parent);
        if !self.state.is_empty() {
            injector.set("tracestate", self.state.clone());
        }
    }
}

/// `f` on `span`'s entry in the registry, when the subscriber keeps one (a disabled span
/// or a subscriber without a registry has none).
fn in_registry<R>(
    span: &Span,
    f: impl FnOnce(tracing_subscriber::registry::SpanRef<'_, Registry>) -> R,
) -> Option<R> {
    span.with_subscriber(|(id, dispatch)| {
        let registry = dispatch.downcast_ref::<Registry>()?;
        registry.span(id).map(f)
    })
    .flatten()
}

/// Whether `meta` is the span [`ServerLayer`] gives each RPC (and not a health check's or
/// reflection's, which are DEBUG): the spans that keep the trace without an exporter.
pub(crate) fn is_rpc_span(meta: &tracing::Metadata<'_>) -> bool {
    meta.is_span()
        && meta.target() == "grpc"
        && meta.name() == "rpc"
        && *meta.level() <= Level::INFO
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// The per-RPC layer of a server. Add it first, so it sees every RPC.
#[derive(Clone, Debug)]
pub struct ServerLayer {
    methods: Methods,
    timeout: Option<Duration>,
}

impl ServerLayer {
    /// `descriptor_set`: the encoded `FileDescriptorSet` of the served API (health and
    /// reflection are known already). `timeout`: the server's own request deadline, so
    /// a call it cut short counts as DeadlineExceeded rather than cancelled.
    pub fn new(descriptor_set: &[u8], timeout: Option<Duration>) -> Self {
        Self {
            methods: Methods::with_standard(descriptor_set),
            timeout,
        }
    }
}

impl<S> Layer<S> for ServerLayer {
    type Service = ServerService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ServerService {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ServerService<S> {
    inner: S,
    layer: ServerLayer,
}

impl<S, B, R> Service<http::Request<B>> for ServerService<S>
where
    S: Service<http::Request<Counted<B>>, Response = http::Response<R>>,
{
    type Response = http::Response<Observed<R>>;
    type Error = S::Error;
    type Future = Pending<Instrumented<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = self.layer.methods.get(request.uri().path());
        // ERROR, so the span (and the ids its log lines carry) exists whatever RUST_LOG
        // says; probes at DEBUG, so they are neither logged nor exported by default.
        let span = if method.quiet {
            rpc_span!(Level::DEBUG, "rpc", method)
        } else {
            rpc_span!(Level::ERROR, "rpc", method)
        };
        let parent = TraceContextPropagator::new().extract(&HeaderExtractor(request.headers()));
        let remote = parent.span().span_context().clone();
        let _ = span.set_parent(parent);
        let own = span.context().span().span_context().trace_id();
        // Without the OpenTelemetry layer (no exporter) the span keeps the trace itself.
        let trace_id = if own == TraceId::INVALID {
            Trace::keep(&span, &remote)
        } else {
            own
        };
        if trace_id != TraceId::INVALID {
            span.record("trace_id", field::display(trace_id));
        }
        let deadline = [grpc_timeout(request.headers()), self.layer.timeout]
            .into_iter()
            .flatten()
            .min();
        let (received, sent) = Side::Server.message_counters(&method);
        let request = request.map(|body| Counted {
            body,
            count: MessageCount::new(received),
        });
        let call = Call::start(Side::Server, method, span.clone(), deadline);
        let future = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        Pending {
            future: future.instrument(span),
            call: Some(call),
            side: Side::Server,
            messages: Some(MessageCount::new(sent)),
        }
    }
}

/// The client layer: wrap the channel of a generated client with it.
#[derive(Clone, Debug)]
pub struct ClientLayer {
    methods: Methods,
}

impl ClientLayer {
    /// `descriptor_set`: the encoded `FileDescriptorSet` of the API called.
    pub fn new(descriptor_set: &[u8]) -> Self {
        Self {
            methods: Methods::with_standard(descriptor_set),
        }
    }
}

impl<S> Layer<S> for ClientLayer {
    type Service = ClientService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientService {
            inner,
            methods: self.methods.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ClientService<S> {
    inner: S,
    methods: Methods,
}

// A channel takes tonic's own body type only, so the counted body is boxed back into it.
impl<S, R> Service<http::Request<tonic::body::Body>> for ClientService<S>
where
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<R>>,
{
    type Response = http::Response<Observed<R>>;
    type Error = S::Error;
    type Future = Pending<Instrumented<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> Self::Future {
        let method = self.methods.get(request.uri().path());
        // A dependency probe (a health check) is not worth a trace of its own.
        let span = if method.quiet {
            rpc_span!(Level::DEBUG, "rpc.client", method)
        } else {
            rpc_span!(Level::INFO, "rpc.client", method)
        };
        let context = span.context();
        if context.span().span_context().is_valid() {
            TraceContextPropagator::new()
                .inject_context(&context, &mut HeaderInjector(request.headers_mut()));
        } else if let Some(trace) = Trace::current() {
            trace.inject(request.headers_mut());
        }
        let deadline = grpc_timeout(request.headers());
        let (received, sent) = Side::Client.message_counters(&method);
        let request = request.map(|body| {
            tonic::body::Body::new(Counted {
                body,
                count: MessageCount::new(sent),
            })
        });
        let call = Call::start(Side::Client, method, span.clone(), deadline);
        Pending {
            future: self.inner.call(request).instrument(span),
            call: Some(call),
            side: Side::Client,
            messages: Some(MessageCount::new(received)),
        }
    }
}

pin_project! {
    /// The response future of either layer.
    pub struct Pending<F> {
        #[pin]
        future: F,
        call: Option<Call>,
        side: Side,
        // The counter of the response's messages, handed to its body.
        messages: Option<MessageCount>,
    }
}

impl<F, R, E> Future for Pending<F>
where
    F: Future<Output = Result<http::Response<R>, E>>,
{
    type Output = Result<http::Response<Observed<R>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.future.poll(cx));
        let mut call = this.call.take();
        let messages = this.messages.take();
        Poll::Ready(match result {
            Ok(response) => {
                // A trailers-only response (an error) carries its status in the headers.
                if let Some(status) = Status::from_header_map(response.headers())
                    && let Some(mut call) = call.take()
                {
                    call.finish(status.code(), status.message());
                }
                // The server's deadline bounds the handler, not a stream it returned.
                if let Some(call) = call.as_mut()
                    && *this.side == Side::Server
                {
                    call.deadline = None;
                }
                Ok(response.map(|body| Observed {
                    body,
                    call,
                    messages,
                }))
            }
            Err(error) => {
                if let Some(mut call) = call {
                    // A client that never got a response could not reach the server.
                    let code = match this.side {
                        Side::Client => Code::Unavailable,
                        Side::Server => Code::Unknown,
                    };
                    call.finish(code, "");
                }
                Err(error)
            }
        })
    }
}

pin_project! {
    /// A response body that records its call's outcome from the trailers and counts its
    /// messages.
    pub struct Observed<B> {
        #[pin]
        body: B,
        call: Option<Call>,
        messages: Option<MessageCount>,
    }
}

impl<B: Body<Data = Bytes>> Body for Observed<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.body.poll_frame(cx));
        if let Some(messages) = this.messages.as_mut() {
            messages.frame(frame.as_ref());
        }
        let outcome = match &frame {
            Some(Ok(frame)) => frame.trailers_ref().map(|trailers| {
                Status::from_header_map(trailers).map_or((Code::Unknown, String::new()), |s| {
                    (s.code(), s.message().to_owned())
                })
            }),
            Some(Err(_)) => Some((Code::Unknown, "the body failed".to_owned())),
            None => Some((Code::Unknown, "no trailers".to_owned())),
        };
        if let Some((code, message)) = outcome
            && let Some(mut call) = this.call.take()
        {
            call.finish(code, &message);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_sdk::{
        error::OTelSdkResult,
        trace::{SdkTracerProvider, SpanData, SpanExporter},
    };

    use super::*;

    #[test]
    fn methods_come_from_the_descriptor_sets() {
        let methods = Methods::with_standard(&[]);
        let watch = methods.get("/grpc.health.v1.Health/Watch");
        assert_eq!(
            (watch.service, watch.method),
            ("grpc.health.v1.Health", "Watch")
        );
        assert_eq!(watch.kind, "server_stream");
        assert!(watch.quiet);
        let info = methods.get("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo");
        assert_eq!(info.kind, "bidi_stream");
        assert_eq!(methods.get("/no.Such/Thing").service, "unknown");
    }

    /// Spans as the OTLP exporter would get them.
    #[derive(Clone, Debug, Default)]
    struct Collect(Arc<std::sync::Mutex<Vec<SpanData>>>);

    impl SpanExporter for Collect {
        fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
            self.0.lock().unwrap().extend(batch);
            std::future::ready(Ok(()))
        }
    }

    /// A descriptor set with one unary method, `/chat.test.Echo/Say`.
    fn echo() -> Vec<u8> {
        use prost_types::{
            FileDescriptorProto, FileDescriptorSet, MethodDescriptorProto, ServiceDescriptorProto,
        };
        FileDescriptorSet {
            file: vec![FileDescriptorProto {
                package: Some("chat.test".into()),
                service: vec![ServiceDescriptorProto {
                    name: Some("Echo".into()),
                    method: vec![MethodDescriptorProto {
                        name: Some("Say".into()),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
        .encode_to_vec()
    }

    fn request(path: &str) -> http::Request<tonic::body::Body> {
        http::Request::builder()
            .uri(format!("http://localhost{path}"))
            .body(tonic::body::Body::empty())
            .unwrap()
    }

    /// Calls `path` through a [`ServerLayer`] around a handler that answers `code`.
    fn serve(layer: &ServerLayer, path: &str, code: Code) {
        let mut service = layer.layer(tower::service_fn(
            move |_: http::Request<Counted<tonic::body::Body>>| {
                std::future::ready(Ok::<_, std::convert::Infallible>(
                    Status::new(code, "").into_http::<tonic::body::Body>(),
                ))
            },
        ));
        let _ = futures::executor::block_on(service.call(request(path)));
    }

    /// Calls `path` through a [`ClientLayer`] around a server that answers `code`.
    fn call(layer: &ClientLayer, path: &str, code: Code) {
        let mut service = layer.layer(tower::service_fn(
            move |_: http::Request<tonic::body::Body>| {
                std::future::ready(Ok::<_, std::convert::Infallible>(
                    Status::new(code, "").into_http::<tonic::body::Body>(),
                ))
            },
        ));
        let _ = futures::executor::block_on(service.call(request(path)));
    }

    /// The spans exported while `f` runs, with the services' own subscriber.
    fn exported(f: impl FnOnce()) -> Vec<SpanData> {
        let collect = Collect::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(collect.clone())
            .build();
        let subscriber = crate::telemetry::subscriber(
            "rpc-test",
            crate::telemetry::LogFormat::Json,
            std::io::sink,
            false,
            Some(&provider),
        );
        tracing::subscriber::with_default(subscriber, f);
        let _ = provider.force_flush();
        collect.0.lock().unwrap().clone()
    }

    /// The `traceparent` and `tracestate` that a call made inside an RPC's handler sends,
    /// under the services' subscriber without an exporter and with logs off (the trace
    /// must not depend on `RUST_LOG`), when the RPC came with `incoming` (`traceparent`,
    /// `tracestate`).
    fn passed_on(incoming: &[(&'static str, &'static str)]) -> (String, String) {
        let sent = Arc::new(std::sync::Mutex::new((String::new(), String::new())));
        let seen = Arc::clone(&sent);
        let server = ServerLayer::new(&echo(), None);
        let client = ClientLayer::new(&echo());
        let subscriber = crate::telemetry::subscriber_logging(
            "rpc-test",
            crate::telemetry::LogFormat::Json,
            std::io::sink,
            false,
            None,
            tracing_subscriber::EnvFilter::new("off"),
        );
        tracing::subscriber::with_default(subscriber, || {
            let mut service = server.layer(tower::service_fn(
                move |_: http::Request<Counted<tonic::body::Body>>| {
                    let seen = Arc::clone(&seen);
                    let mut downstream = client.layer(tower::service_fn(
                        move |request: http::Request<tonic::body::Body>| {
                            let header = |name| {
                                request
                                    .headers()
                                    .get(name)
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or_default()
                                    .to_owned()
                            };
                            *seen.lock().unwrap() = (header("traceparent"), header("tracestate"));
                            std::future::ready(Ok::<_, std::convert::Infallible>(
                                Status::new(Code::Ok, "").into_http::<tonic::body::Body>(),
                            ))
                        },
                    ));
                    async move {
                        let _ = downstream.call(request("/chat.test.Echo/Say")).await;
                        Ok::<_, std::convert::Infallible>(
                            Status::new(Code::Ok, "").into_http::<tonic::body::Body>(),
                        )
                    }
                },
            ));
            let mut call = request("/chat.test.Echo/Say");
            for (name, value) in incoming {
                call.headers_mut()
                    .insert(*name, http::HeaderValue::from_static(value));
            }
            let _ = futures::executor::block_on(service.call(call));
        });
        sent.lock().unwrap().clone()
    }

    #[test]
    fn without_an_exporter_the_callers_trace_is_passed_on_with_a_new_parent() {
        let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let (parent, state) = passed_on(&[("traceparent", caller), ("tracestate", "vendor=x")]);
        let parts: Vec<&str> = parent.split('-').collect();
        assert_eq!(parts.len(), 4, "{parent}");
        assert_eq!(parts[1], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(parts[2].len(), 16);
        assert_ne!(
            parts[2], "00f067aa0ba902b7",
            "the outgoing call is a span of its own"
        );
        assert_eq!(parts[3], "01");
        assert_eq!(state, "vendor=x");

        // Not sampled upstream: not sampled downstream either.
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let (parent, _) = passed_on(&[("traceparent", unsampled)]);
        assert!(parent.ends_with("-00"), "{parent}");
    }

    #[test]
    fn without_an_exporter_or_a_caller_trace_an_rpc_starts_its_own() {
        let (first, state) = passed_on(&[]);
        let (second, _) = passed_on(&[]);
        // A malformed `traceparent` is no trace: the RPC starts its own.
        let (third, _) = passed_on(&[("traceparent", "00-not-a-trace-01")]);
        assert!(!third.contains("not-a-trace"), "{third}");
        for parent in [&first, &second, &third] {
            let parts: Vec<&str> = parent.split('-').collect();
            assert_eq!(parts.len(), 4, "{parent}");
            assert_eq!(parts[1].len(), 32);
            assert_ne!(parts[1], "0".repeat(32));
            assert_eq!(parts[3], "01");
        }
        assert_ne!(first.split('-').nth(1), second.split('-').nth(1));
        assert!(state.is_empty());
    }

    fn attributes(span: &SpanData) -> HashMap<String, opentelemetry::Value> {
        span.attributes
            .iter()
            .map(|kv| (kv.key.to_string(), kv.value.clone()))
            .collect()
    }

    #[test]
    fn server_spans_follow_the_rpc_conventions_and_fail_only_for_server_faults() {
        let layer = ServerLayer::new(&echo(), None);
        let spans = exported(|| {
            serve(&layer, "/chat.test.Echo/Say", Code::NotFound);
            serve(&layer, "/chat.test.Echo/Say", Code::Internal);
            serve(&layer, "/grpc.health.v1.Health/Check", Code::Ok);
        });
        assert_eq!(
            spans.len(),
            2,
            "the health check is not exported: {spans:#?}"
        );
        for span in &spans {
            assert_eq!(span.name, "chat.test.Echo/Say");
            assert_eq!(span.span_kind, opentelemetry::trace::SpanKind::Server);
            let attributes = attributes(span);
            assert_eq!(attributes["rpc.system"], "grpc".into());
            assert_eq!(attributes["rpc.service"], "chat.test.Echo".into());
            assert_eq!(attributes["rpc.method"], "Say".into());
            for key in attributes.keys() {
                assert!(
                    !key.starts_with("code.")
                        && !key.starts_with("thread.")
                        && !["busy_ns", "idle_ns", "target", "level"].contains(&key.as_str()),
                    "tracing's bookkeeping exported: {key}"
                );
            }
        }
        let code = |span: &SpanData| attributes(span)["rpc.grpc.status_code"].clone();
        assert_eq!(code(&spans[0]), opentelemetry::Value::I64(5));
        assert_eq!(
            spans[0].status,
            opentelemetry::trace::Status::Unset,
            "NOT_FOUND is the caller's"
        );
        assert_eq!(code(&spans[1]), opentelemetry::Value::I64(13));
        assert!(matches!(
            spans[1].status,
            opentelemetry::trace::Status::Error { .. }
        ));
    }

    #[test]
    fn client_spans_fail_for_any_code_and_dependency_probes_are_not_exported() {
        let layer = ClientLayer::new(&echo());
        let spans = exported(|| {
            call(&layer, "/chat.test.Echo/Say", Code::NotFound);
            call(&layer, "/grpc.health.v1.Health/Check", Code::Ok);
        });
        assert_eq!(spans.len(), 1, "{spans:#?}");
        assert_eq!(spans[0].span_kind, opentelemetry::trace::SpanKind::Client);
        assert_eq!(attributes(&spans[0])["rpc.method"], "Say".into());
        assert!(matches!(
            spans[0].status,
            opentelemetry::trace::Status::Error { .. }
        ));
    }

    #[test]
    fn messages_are_counted_from_their_framing_however_the_frames_split_them() {
        let message = |len: u32| {
            let mut bytes = vec![0];
            bytes.extend_from_slice(&len.to_be_bytes());
            bytes.extend(std::iter::repeat_n(7, len as usize));
            bytes
        };
        let body: Vec<u8> = [message(3), message(0), message(300), message(1)].concat();
        // All at once, byte by byte, and in uneven pieces.
        assert_eq!(Framing::default().feed(&body), 4);
        let mut framing = Framing::default();
        assert_eq!(body.iter().map(|b| framing.feed(&[*b])).sum::<u64>(), 4);
        let mut framing = Framing::default();
        let counted: u64 = body.chunks(7).map(|c| framing.feed(c)).sum();
        assert_eq!(counted, 4);
        // A header split across frames counts once, when it is complete.
        let mut framing = Framing::default();
        assert_eq!(framing.feed(&body[..2]), 0);
        assert_eq!(framing.feed(&body[2..5]), 1);
    }

    #[test]
    fn grpc_timeouts_parse() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(grpc_timeout(&headers), None);
        headers.insert("grpc-timeout", http::HeaderValue::from_static("250m"));
        assert_eq!(grpc_timeout(&headers), Some(Duration::from_millis(250)));
        headers.insert("grpc-timeout", http::HeaderValue::from_static("3S"));
        assert_eq!(grpc_timeout(&headers), Some(Duration::from_secs(3)));
        headers.insert("grpc-timeout", http::HeaderValue::from_static("x"));
        assert_eq!(grpc_timeout(&headers), None);
    }
}
