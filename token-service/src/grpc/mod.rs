//! `chat.v1.TokenService`: parse the request into domain values, make one call (the store,
//! or `sessions` for the steps that reach conversation-service), build the reply. One span
//! per RPC with its ids, never a secret.

mod admin;
mod audit;
mod convert;
mod privacy;

use std::sync::Arc;

use chat_common::{seal::SealKey, tls::PeerInfo};
use chat_proto::v1::{self as pb, token_service_server::TokenService};
use tonic::{Request, Response, Status};
use tracing::{Instrument, Span, field};

use crate::{
    domain::{
        ContactDetails, CustomerId, Label, MaxUses, NewToken, PageSize, ProviderId, RequestId,
        SessionSecret, TokenCursor, TokenId, TokenSecret, Ttl, now,
    },
    error::Error,
    limiter::{CallerIdentity, FailureLimiter},
    sessions::{Sessions, record_session},
    store::{Redemption, Store},
};

pub use admin::TokenAdminGrpc;
pub use audit::{AuditGrpc, Auditor};
pub use convert::link_path;
pub use privacy::PrivacyGrpc;

#[derive(Clone)]
pub struct TokenGrpc {
    store: Store,
    sessions: Sessions,
    limiter: Arc<FailureLimiter>,
    identity: Arc<CallerIdentity>,
    page_key: SealKey,
}

impl TokenGrpc {
    pub fn new(
        store: Store,
        sessions: Sessions,
        limiter: Arc<FailureLimiter>,
        identity: CallerIdentity,
        page_key: SealKey,
    ) -> Self {
        Self {
            store,
            sessions,
            limiter,
            identity: Arc::new(identity),
            page_key,
        }
    }

    fn caller<T>(&self, request: &Request<T>) -> String {
        self.identity.key(request.metadata(), peer_address(request))
    }

    async fn issue(&self, r: pb::IssueTokenRequest) -> Result<pb::IssueTokenResponse, Error> {
        let new = NewToken {
            provider_id: ProviderId::parse("provider_id", &r.provider_id)?,
            label: Label::parse(&r.label)?,
            ttl: Ttl::parse(r.ttl.as_ref())?,
            max_uses: MaxUses::parse(r.max_uses)?,
        };
        let secret = TokenSecret::generate()?;
        let now = now();
        let token = self.store.issue_token(new, secret.hash(), now).await?;
        Span::current().record("token_id", field::display(token.token_id));
        let secret = secret.expose();
        Ok(pb::IssueTokenResponse {
            link_path: link_path(token.provider_id.as_str(), &secret),
            token: Some(convert::token(&token, now)),
            secret,
        })
    }

    async fn list(&self, r: pb::ListTokensRequest) -> Result<pb::ListTokensResponse, Error> {
        let provider_id = ProviderId::parse("provider_id", &r.provider_id)?;
        let page_size = PageSize::parse(r.page_size)?;
        let cursor = TokenCursor::decode(&self.page_key, &r.page_token, &provider_id)?;
        let mut tokens = self
            .store
            .list_tokens(provider_id.clone(), cursor, page_size.get())
            .await?;
        let mut next_page_token = String::new();
        if tokens.len() > page_size.get() as usize {
            tokens.truncate(page_size.get() as usize);
            if let Some(last) = tokens.last() {
                next_page_token = TokenCursor {
                    create_time: last.create_time,
                    token_id: last.token_id,
                }
                .encode(&self.page_key, &provider_id);
            }
        }
        let now = now();
        Ok(pb::ListTokensResponse {
            tokens: tokens.iter().map(|t| convert::token(t, now)).collect(),
            next_page_token,
        })
    }

    async fn revoke(&self, r: pb::RevokeTokenRequest) -> Result<pb::RevokeTokenResponse, Error> {
        let provider_id = ProviderId::parse("provider_id", &r.provider_id)?;
        let token_id = TokenId::parse("token_id", &r.token_id)?;
        let now = now();
        let token = self.store.revoke_token(provider_id, token_id, now).await?;
        Ok(pb::RevokeTokenResponse {
            token: Some(convert::token(&token, now)),
        })
    }

    async fn check(
        &self,
        caller: &str,
        r: pb::CheckTokenRequest,
    ) -> Result<pb::CheckTokenResponse, Error> {
        let mut guess = self.limiter.reserve(caller).await?;
        let provider_id = ProviderId::parse("provider_id", &r.provider_id)?;
        let secret = guess.settle(TokenSecret::parse(&r.secret))?;
        let token = guess.settle(self.store.check_token(provider_id, secret.hash()).await)?;
        drop(guess);
        Span::current().record("token_id", field::display(token.token_id));
        let now = now();
        Ok(pb::CheckTokenResponse {
            state: convert::token_state(token.state(now)).into(),
            token: Some(convert::token(&token, now)),
        })
    }

    async fn redeem(
        &self,
        caller: &str,
        r: pb::RedeemTokenRequest,
    ) -> Result<pb::RedeemTokenResponse, Error> {
        let mut guess = self.limiter.reserve(caller).await?;
        let request_id = RequestId::parse("request_id", &r.request_id)?;
        let provider_id = ProviderId::parse("provider_id", &r.provider_id)?;
        let customer_id = CustomerId::parse_optional("customer_id", &r.customer_id)?;
        let session_secret = SessionSecret::generate()?;
        let secret = guess.settle(TokenSecret::parse(&r.secret))?;
        let redemption = Redemption {
            request_id,
            provider_id,
            token_hash: secret.hash(),
            session_hash: session_secret.hash(),
            customer_id,
            new_conversation: r.new_conversation,
        };
        let session = self.sessions.redeem(redemption, guess).await?;
        Ok(pb::RedeemTokenResponse {
            session: Some(convert::session(&session)),
            session_secret: session_secret.expose(),
        })
    }

    async fn get_session(&self, r: pb::GetSessionRequest) -> Result<pb::GetSessionResponse, Error> {
        let secret = SessionSecret::parse(&r.session_secret)?;
        let session = self.store.session_by_secret(secret.hash()).await?;
        record_session(&session);
        Ok(pb::GetSessionResponse {
            session: Some(convert::session(&session)),
        })
    }

    async fn identify(
        &self,
        r: pb::IdentifySessionRequest,
    ) -> Result<pb::IdentifySessionResponse, Error> {
        let secret = SessionSecret::parse(&r.session_secret)?;
        let customer_id = CustomerId::parse("customer_id", &r.customer_id)?;
        let contact =
            ContactDetails::parse(r.name.as_deref(), r.email.as_deref(), r.phone.as_deref())?;
        let session = self
            .sessions
            .identify(secret.hash(), customer_id, contact)
            .await?;
        Ok(pb::IdentifySessionResponse {
            session: Some(convert::session(&session)),
        })
    }

    async fn end(&self, r: pb::EndSessionRequest) -> Result<pb::EndSessionResponse, Error> {
        let secret = SessionSecret::parse(&r.session_secret)?;
        let session = self.store.end_session(secret.hash(), now()).await?;
        record_session(&session);
        Ok(pb::EndSessionResponse {
            session: Some(convert::session(&session)),
        })
    }
}

/// The address of the connection a request came on. Connections come through
/// chat-common's acceptor, whose `PeerInfo` (not tonic's `TcpConnectInfo`, so not
/// `remote_addr()`) carries it.
fn peer_address<T>(request: &Request<T>) -> Option<std::net::SocketAddr> {
    request
        .extensions()
        .get::<PeerInfo>()
        .and_then(|p| p.remote_addr)
        .or_else(|| request.remote_addr())
}

/// The end of every RPC: the error mapped once (the per-RPC log line with its outcome
/// is written by `chat_common::rpc::ServerLayer`).
fn reply<T>(result: Result<T, Error>) -> Result<Response<T>, Status> {
    result.map(Response::new).map_err(Status::from)
}

/// The RPC's span, opened by `chat_common::rpc::ServerLayer` (it declares the id
/// fields recorded here and in the handlers), with the provider the request names.
macro_rules! rpc_span {
    ($method:literal, field::Empty) => {
        Span::current()
    };
    ($method:literal, $provider:expr) => {{
        let span = Span::current();
        span.record("provider_id", $provider);
        span
    }};
}

#[tonic::async_trait]
impl TokenService for TokenGrpc {
    async fn issue_token(
        &self,
        request: Request<pb::IssueTokenRequest>,
    ) -> Result<Response<pb::IssueTokenResponse>, Status> {
        let span = rpc_span!("IssueToken", request.get_ref().provider_id.as_str());
        async { reply(self.issue(request.into_inner()).await) }
            .instrument(span)
            .await
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let span = rpc_span!("ListTokens", request.get_ref().provider_id.as_str());
        async { reply(self.list(request.into_inner()).await) }
            .instrument(span)
            .await
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let span = rpc_span!("RevokeToken", request.get_ref().provider_id.as_str());
        span.record("token_id", request.get_ref().token_id.as_str());
        async { reply(self.revoke(request.into_inner()).await) }
            .instrument(span)
            .await
    }

    async fn check_token(
        &self,
        request: Request<pb::CheckTokenRequest>,
    ) -> Result<Response<pb::CheckTokenResponse>, Status> {
        let span = rpc_span!("CheckToken", request.get_ref().provider_id.as_str());
        let caller = self.caller(&request);
        async { reply(self.check(&caller, request.into_inner()).await) }
            .instrument(span)
            .await
    }

    async fn redeem_token(
        &self,
        request: Request<pb::RedeemTokenRequest>,
    ) -> Result<Response<pb::RedeemTokenResponse>, Status> {
        let span = rpc_span!("RedeemToken", request.get_ref().provider_id.as_str());
        let caller = self.caller(&request);
        async { reply(self.redeem(&caller, request.into_inner()).await) }
            .instrument(span)
            .await
    }

    async fn get_session(
        &self,
        request: Request<pb::GetSessionRequest>,
    ) -> Result<Response<pb::GetSessionResponse>, Status> {
        let span = rpc_span!("GetSession", field::Empty);
        async { reply(self.get_session(request.into_inner()).await) }
            .instrument(span)
            .await
    }

    async fn identify_session(
        &self,
        request: Request<pb::IdentifySessionRequest>,
    ) -> Result<Response<pb::IdentifySessionResponse>, Status> {
        let span = rpc_span!("IdentifySession", field::Empty);
        async { reply(self.identify(request.into_inner()).await) }
            .instrument(span)
            .await
    }

    async fn end_session(
        &self,
        request: Request<pb::EndSessionRequest>,
    ) -> Result<Response<pb::EndSessionResponse>, Status> {
        let span = rpc_span!("EndSession", field::Empty);
        async { reply(self.end(request.into_inner()).await) }
            .instrument(span)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peer_is_read_from_the_acceptors_peer_info() {
        let mut request = Request::new(());
        assert_eq!(peer_address(&request), None);
        let addr: std::net::SocketAddr = "192.0.2.7:4000".parse().unwrap();
        request.extensions_mut().insert(PeerInfo {
            local_addr: None,
            remote_addr: Some(addr),
            sans: std::sync::Arc::from([]),
            client_certificate: false,
        });
        assert_eq!(peer_address(&request), Some(addr));
    }
}
