//! Server settings both services apply the same way: what a request over the size limit
//! answers.

use std::{
    collections::HashMap,
    task::{Context, Poll},
};

use futures::{TryFutureExt, future::MapOk};
use tonic::{Code, Status, codegen::http};
use tonic_types::{ErrorDetails, StatusExt};

/// The ErrorInfo reason of a request above the size limit.
pub const REQUEST_TOO_LARGE: &str = "REQUEST_TOO_LARGE";

/// Answers a request above the size limit with RESOURCE_EXHAUSTED and an ErrorInfo
/// (`REQUEST_TOO_LARGE`), as gRPC's status code table says, instead of tonic's
/// OUT_OF_RANGE without details. tonic refuses such a request before any handler runs,
/// so the refusal is a trailers-only response whose status is in the headers.
#[derive(Debug, Clone, Copy)]
pub struct OversizeLayer {
    domain: &'static str,
}

impl OversizeLayer {
    /// `domain` is the ErrorInfo domain of the service's reasons.
    pub fn new(domain: &'static str) -> Self {
        Self { domain }
    }
}

impl<S> tower::Layer<S> for OversizeLayer {
    type Service = Oversize<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Oversize {
            inner,
            domain: self.domain,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Oversize<S> {
    inner: S,
    domain: &'static str,
}

impl<S, B, R> tower::Service<http::Request<B>> for Oversize<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = MapOk<S::Future, Box<dyn FnOnce(http::Response<R>) -> http::Response<R> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let domain = self.domain;
        self.inner
            .call(request)
            .map_ok(Box::new(move |response| rewrite(response, domain)))
    }
}

fn rewrite<R>(mut response: http::Response<R>, domain: &'static str) -> http::Response<R> {
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
    let details = ErrorDetails::with_error_info(REQUEST_TOO_LARGE, domain, HashMap::new());
    let exhausted = Status::with_error_details(
        Code::ResourceExhausted,
        "the request is larger than the configured limit",
        details,
    );
    let headers = response.headers_mut();
    for name in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
        headers.remove(name);
    }
    // Our own status and ASCII message always make valid headers.
    let _ = exhausted.add_header(headers);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let rewritten = rewrite(response_with(&oversize), "chat.v1");
        let status = Status::from_header_map(rewritten.headers()).expect("status");
        assert_eq!(status.code(), Code::ResourceExhausted);
        let info = status.get_details_error_info().expect("ErrorInfo");
        assert_eq!(
            (info.reason.as_str(), info.domain.as_str()),
            (REQUEST_TOO_LARGE, "chat.v1")
        );

        let own = Status::out_of_range("after_seq: is beyond the newest message");
        let kept = rewrite(response_with(&own), "chat.v1");
        let status = Status::from_header_map(kept.headers()).expect("status");
        assert_eq!(status.code(), Code::OutOfRange);
    }
}
