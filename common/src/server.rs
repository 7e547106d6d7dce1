//! Server settings both services apply the same way: how long a connection may take to
//! start HTTP/2, keepalive, how old a connection may grow, and what a request over the
//! size limit answers.

use std::{
    future::Future,
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use futures::{Stream, TryFutureExt, TryStreamExt, future::MapOk};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::Sleep,
};
use tonic::{
    Code, Status,
    codegen::http,
    transport::{Server, server::Connected},
};

use tower::layer::util::{Identity, Stack};

use crate::{duration::parse_duration, error::ServiceError, rpc::ServerLayer};

/// Connection settings, the same flags and defaults in both services.
#[derive(Debug, Clone, clap::Args)]
pub struct Connections {
    /// A new connection that has not sent the HTTP/2 preface and its first SETTINGS
    /// frame within this time is closed.
    #[arg(long, env = "HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,

    /// HTTP/2 ping and TCP keepalive interval; a ping unanswered for 10 s closes the
    /// connection.
    #[arg(long, env = "KEEPALIVE", default_value = "30s", value_parser = parse_duration)]
    pub keepalive: Duration,

    /// After this long a connection is told to go away (HTTP/2 GOAWAY): calls in
    /// progress and open streams finish on it, new calls open a new connection, so
    /// clients rebalance behind L4 load balancers.
    #[arg(long, env = "MAX_CONNECTION_AGE", default_value = "30m", value_parser = parse_duration)]
    pub max_connection_age: Duration,
}

/// How long an HTTP/2 ping may go unanswered.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

impl Connections {
    /// A server builder with these settings (and TCP_NODELAY, which tail latency needs).
    pub fn server(&self) -> Server {
        let keepalive = self.keepalive.max(Duration::from_secs(1));
        Server::builder()
            .http2_keepalive_interval(Some(keepalive))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
            .max_connection_age(self.max_connection_age.max(Duration::from_secs(1)))
            .tcp_nodelay(true)
    }

    /// The server every RPC of both services goes through: these settings, the request
    /// deadline, and the per-RPC span, metrics and log line ([`ServerLayer`]) around
    /// whatever layers the service adds inside.
    pub fn rpc_server(
        &self,
        request_timeout: Duration,
        descriptor_set: &[u8],
    ) -> Server<Stack<ServerLayer, Identity>> {
        self.server()
            .timeout(request_timeout)
            .layer(ServerLayer::new(descriptor_set, Some(request_timeout)))
    }

    /// The accepted connections (plain or after TLS), each closed if it does not start
    /// HTTP/2 in time.
    pub fn handshake_deadline<IO>(
        &self,
        incoming: impl Stream<Item = io::Result<IO>>,
    ) -> impl Stream<Item = io::Result<HandshakeDeadline<IO>>> {
        let timeout = self.handshake_timeout.max(Duration::from_millis(10));
        incoming.map_ok(move |io| HandshakeDeadline::new(io, timeout))
    }
}

/// The client's part of the HTTP/2 handshake: the 24-byte preface and a SETTINGS frame
/// header.
const HANDSHAKE_BYTES: usize = 24 + 9;

/// A connection that must deliver the client's HTTP/2 handshake before a deadline:
/// until it has, a read that would wait past the deadline fails, and the server closes
/// the connection. hyper itself would wait for the preface forever.
pub struct HandshakeDeadline<IO> {
    io: IO,
    deadline: Option<Pin<Box<Sleep>>>,
    received: usize,
}

impl<IO> HandshakeDeadline<IO> {
    pub fn new(io: IO, timeout: Duration) -> Self {
        Self {
            io,
            deadline: Some(Box::pin(tokio::time::sleep(timeout))),
            received: 0,
        }
    }
}

impl<IO: Connected> Connected for HandshakeDeadline<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for HandshakeDeadline<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        let Some(deadline) = this.deadline.as_mut() else {
            return polled;
        };
        match &polled {
            Poll::Ready(Ok(())) => {
                this.received += buf.filled().len() - before;
                if this.received >= HANDSHAKE_BYTES {
                    this.deadline = None;
                }
            }
            Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no HTTP/2 handshake within the handshake timeout",
                )));
            }
            _ => {}
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for HandshakeDeadline<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// The ErrorInfo reason of a request above the size limit.
pub const REQUEST_TOO_LARGE: &str = "REQUEST_TOO_LARGE";

/// Answers a request above the size limit with RESOURCE_EXHAUSTED and an ErrorInfo
/// (`REQUEST_TOO_LARGE`), as gRPC's status code table says, instead of tonic's
/// OUT_OF_RANGE without details. tonic refuses such a request before any handler runs,
/// so the refusal is a trailers-only response whose status is in the headers.
#[derive(Debug, Clone, Copy, Default)]
pub struct OversizeLayer;

impl<S> tower::Layer<S> for OversizeLayer {
    type Service = Oversize<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Oversize { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Oversize<S> {
    inner: S,
}

impl<S, B, R> tower::Service<http::Request<B>> for Oversize<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = MapOk<S::Future, fn(http::Response<R>) -> http::Response<R>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        self.inner.call(request).map_ok(rewrite::<R> as fn(_) -> _)
    }
}

fn rewrite<R>(mut response: http::Response<R>) -> http::Response<R> {
    let Some(status) = Status::from_header_map(response.headers()) else {
        return response;
    };
    if status.code() != Code::OutOfRange
        || !status
            .message()
            .contains("decoded message length too large")
    {
        return response;
    }
    let exhausted = crate::error::to_status(&RequestTooLarge);
    let headers = response.headers_mut();
    for name in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
        headers.remove(name);
    }
    // Our own status and ASCII message always make valid headers.
    let _ = exhausted.add_header(headers);
    response
}

/// A request over the message size limit.
struct RequestTooLarge;

impl std::fmt::Display for RequestTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request is larger than the configured limit")
    }
}

impl ServiceError for RequestTooLarge {
    fn code(&self) -> Code {
        Code::ResourceExhausted
    }

    fn reason(&self) -> &str {
        REQUEST_TOO_LARGE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::StatusExt;

    #[test]
    fn connection_durations_take_every_documented_form() {
        use clap::Parser;
        #[derive(Parser)]
        struct Flags {
            #[command(flatten)]
            connections: Connections,
        }
        let flags = Flags::try_parse_from([
            "x",
            "--max-connection-age",
            "1h",
            "--keepalive",
            "1m30s",
            "--handshake-timeout",
            "250ms",
        ])
        .expect("durations parse");
        assert_eq!(
            flags.connections.max_connection_age,
            Duration::from_secs(3600)
        );
        assert_eq!(flags.connections.keepalive, Duration::from_secs(90));
        assert_eq!(
            flags.connections.handshake_timeout,
            Duration::from_millis(250)
        );
    }

    #[tokio::test]
    async fn a_silent_connection_fails_its_read_at_the_deadline_a_talking_one_never() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, server) = tokio::io::duplex(64);
        let mut silent = HandshakeDeadline::new(server, Duration::from_millis(50));
        let mut buf = [0u8; 8];
        let error = silent.read(&mut buf).await.expect_err("deadline");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        drop(client);

        let (mut client, server) = tokio::io::duplex(64);
        let mut talking = HandshakeDeadline::new(server, Duration::from_millis(50));
        client
            .write_all(&[0u8; HANDSHAKE_BYTES])
            .await
            .expect("write");
        let mut buf = [0u8; HANDSHAKE_BYTES];
        talking.read_exact(&mut buf).await.expect("handshake bytes");
        tokio::time::sleep(Duration::from_millis(80)).await;
        client.write_all(b"later").await.expect("write");
        let mut later = [0u8; 5];
        talking
            .read_exact(&mut later)
            .await
            .expect("no deadline after the handshake");
    }

    fn response_with(status: &Status) -> http::Response<()> {
        let mut response = http::Response::new(());
        status.add_header(response.headers_mut()).expect("headers");
        response
    }

    #[test]
    fn only_tonics_size_refusal_becomes_resource_exhausted() {
        let oversize = Status::out_of_range(
            "Error, decoded message length too large: found 70000 bytes, the limit is: 65536 bytes",
        );
        let rewritten = rewrite(response_with(&oversize));
        let status = Status::from_header_map(rewritten.headers()).expect("status");
        assert_eq!(status.code(), Code::ResourceExhausted);
        let info = status.get_details_error_info().expect("ErrorInfo");
        assert_eq!(
            (info.reason.as_str(), info.domain.as_str()),
            (REQUEST_TOO_LARGE, "chat.v1")
        );

        let own = Status::out_of_range("after_seq: is beyond the newest message");
        let kept = rewrite(response_with(&own));
        let status = Status::from_header_map(kept.headers()).expect("status");
        assert_eq!(status.code(), Code::OutOfRange);
    }
}
