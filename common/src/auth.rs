//! Who is calling, and may it call this method. The callers file (`CALLERS_FILE`, TOML)
//! names each caller, how it proves who it is (a client certificate SAN such as a SPIFFE
//! id, or a bearer token of which only the SHA-256 is kept) and which full gRPC methods
//! (`/chat.v1.ConversationService/SendMessage`, or `/chat.v1.ConversationService/*`) it
//! may call. [`AuthLayer`] enforces it on every request before any handler runs: an
//! unknown or missing credential is UNAUTHENTICATED, a known caller outside its grants is
//! PERMISSION_DENIED, both with a `google.rpc.ErrorInfo` reason. The caller it recognised
//! is put into the request's extensions as a [`Caller`].
//!
//! What this proves is only *which service* calls. Fields inside a request (`viewer`,
//! `sender`, `provider_id`) say on whose behalf a granted caller acts; the services check
//! those against their own data.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::Path,
    sync::{Arc, RwLock},
    task::{Context, Poll},
};

use futures::future::{Either, Ready, ready};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::{Code, Status, codegen::http, transport::server::TcpConnectInfo};
use tower::{Layer, Service};

use crate::{
    error::{Details, ServiceError},
    tls::PeerInfo,
};

/// Methods anyone may call when the callers file does not say otherwise: health checks
/// (load balancers carry no credentials) and reflection (it only describes the API).
pub const DEFAULT_OPEN: [&str; 3] = [
    "/grpc.health.v1.Health/*",
    "/grpc.reflection.v1.ServerReflection/*",
    "/grpc.reflection.v1alpha.ServerReflection/*",
];

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: String,
        source: toml::de::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

/// The callers file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    /// A file with no `[[caller]]` closes every non-open method to everyone; it is taken
    /// only when it says so, since an empty file is more often one truncated in place.
    #[serde(default)]
    allow_no_callers: bool,
    #[serde(default)]
    open: Option<OpenSpec>,
    #[serde(default)]
    roles: BTreeMap<String, RoleSpec>,
    #[serde(default, rename = "caller")]
    callers: Vec<CallerSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenSpec {
    methods: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleSpec {
    methods: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CallerSpec {
    name: String,
    /// Subject alternative names (URI such as a SPIFFE id, or DNS) of its client
    /// certificate; any one of them identifies the caller.
    #[serde(default)]
    san: Vec<String>,
    /// Hex SHA-256 of its bearer tokens (several, so a token can be rotated).
    #[serde(default)]
    token_sha256: Vec<String>,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    methods: Vec<String>,
}

/// A set of full method paths: exact ones and whole services (`/pkg.Service/*`).
#[derive(Debug, Clone, Default)]
pub struct Grants {
    methods: HashSet<String>,
    services: HashSet<String>,
}

impl Grants {
    fn add(&mut self, pattern: &str) -> Result<(), PolicyError> {
        let invalid = || {
            PolicyError::Invalid(format!(
                "`{pattern}` is not a gRPC method path like /chat.v1.TokenService/IssueToken \
                 or /chat.v1.TokenService/*"
            ))
        };
        let rest = pattern.strip_prefix('/').ok_or_else(invalid)?;
        let (service, method) = rest.split_once('/').ok_or_else(invalid)?;
        if service.is_empty() || method.is_empty() || method.contains('/') {
            return Err(invalid());
        }
        if method == "*" {
            self.services.insert(service.to_owned());
        } else if method.contains('*') {
            return Err(invalid());
        } else {
            self.methods.insert(pattern.to_owned());
        }
        Ok(())
    }

    /// Whether `path` (`/pkg.Service/Method`) is granted.
    pub fn allows(&self, path: &str) -> bool {
        if self.methods.contains(path) {
            return true;
        }
        path.strip_prefix('/')
            .and_then(|rest| rest.split_once('/'))
            .is_some_and(|(service, _)| self.services.contains(service))
    }
}

/// A caller recognised by its credentials; handlers find it in the request extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: Arc<str>,
}

impl Caller {
    /// The name of whoever made `request`, as the callers file calls it; `anonymous` when
    /// the service runs without one.
    pub fn name_of<T>(request: &tonic::Request<T>) -> String {
        request
            .extensions()
            .get::<Self>()
            .map_or("anonymous", |caller| &caller.name)
            .to_owned()
    }
}

#[derive(Debug)]
struct Entry {
    caller: Caller,
    grants: Grants,
}

/// The parsed callers file: who may call what.
#[derive(Debug)]
pub struct Policy {
    open: Grants,
    entries: Vec<Entry>,
    by_san: HashMap<String, usize>,
    /// (SHA-256 of a token, entry index); compared in constant time, all of them.
    tokens: Vec<([u8; 32], usize)>,
}

impl Policy {
    /// Reads and checks a callers file: every method pattern well formed, every role
    /// defined, no SAN or token shared by two callers, at least one caller unless
    /// `allow_no_callers = true`.
    ///
    /// # Errors
    /// When the file cannot be read or is not a valid callers file.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            PolicyError::Parse { source, .. } => PolicyError::Parse {
                path: path.display().to_string(),
                source,
            },
            PolicyError::Invalid(message) => {
                PolicyError::Invalid(format!("{}: {message}", path.display()))
            }
            other => other,
        })
    }

    /// Parses the text of a callers file (see [`Policy::load`]).
    ///
    /// # Errors
    /// When it is not a valid callers file.
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let spec: FileSpec = toml::from_str(text).map_err(|source| PolicyError::Parse {
            path: String::new(),
            source,
        })?;
        if spec.callers.is_empty() && !spec.allow_no_callers {
            return Err(PolicyError::Invalid(
                "no [[caller]] in it, which would refuse every caller; write \
                 `allow_no_callers = true` if that is meant"
                    .to_owned(),
            ));
        }
        let mut open = Grants::default();
        match &spec.open {
            Some(section) => section.methods.iter().try_for_each(|m| open.add(m))?,
            None => DEFAULT_OPEN.iter().try_for_each(|m| open.add(m))?,
        }
        let mut policy = Self {
            open,
            entries: Vec::new(),
            by_san: HashMap::new(),
            tokens: Vec::new(),
        };
        let mut names = HashSet::new();
        for caller in &spec.callers {
            let index = policy.entries.len();
            if caller.name.trim().is_empty() || !names.insert(caller.name.clone()) {
                return Err(PolicyError::Invalid(format!(
                    "caller name `{}` is empty or used twice",
                    caller.name
                )));
            }
            if caller.san.is_empty() && caller.token_sha256.is_empty() {
                return Err(PolicyError::Invalid(format!(
                    "caller `{}` has neither `san` nor `token_sha256`: nothing identifies it",
                    caller.name
                )));
            }
            let mut grants = Grants::default();
            for role in &caller.roles {
                let role_spec = spec.roles.get(role).ok_or_else(|| {
                    PolicyError::Invalid(format!(
                        "caller `{}` has role `{role}`, which [roles] does not define",
                        caller.name
                    ))
                })?;
                role_spec.methods.iter().try_for_each(|m| grants.add(m))?;
            }
            caller.methods.iter().try_for_each(|m| grants.add(m))?;
            for san in &caller.san {
                if policy.by_san.insert(san.clone(), index).is_some() {
                    return Err(PolicyError::Invalid(format!(
                        "SAN `{san}` identifies two callers"
                    )));
                }
            }
            for hash in &caller.token_sha256 {
                let bytes = hex::decode(hash.trim())
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .ok_or_else(|| {
                        PolicyError::Invalid(format!(
                            "caller `{}`: token_sha256 must be 64 hex digits (sha256sum of the token)",
                            caller.name
                        ))
                    })?;
                if policy.tokens.iter().any(|(known, _)| *known == bytes) {
                    return Err(PolicyError::Invalid(format!(
                        "caller `{}`: a token hash is used twice",
                        caller.name
                    )));
                }
                policy.tokens.push((bytes, index));
            }
            policy.entries.push(Entry {
                caller: Caller {
                    name: Arc::from(caller.name.as_str()),
                },
                grants,
            });
        }
        Ok(policy)
    }

    /// The names of the callers, in file order.
    pub fn caller_names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| &*e.caller.name)
    }

    /// Decides one call. A bearer token, when sent, is what identifies the caller (a mesh
    /// may also present its own certificate); otherwise the client certificate does.
    /// `authorization` holds every `authorization` header of the request: more than one
    /// is refused, since a proxy that reads another one than we do would disagree with us
    /// on who is calling. `certificate` is the SANs of the client certificate, `None`
    /// when none was presented.
    ///
    /// # Errors
    /// UNAUTHENTICATED or PERMISSION_DENIED, with an ErrorInfo reason.
    pub fn authorize(
        &self,
        path: &str,
        authorization: &[&[u8]],
        certificate: Option<&[String]>,
    ) -> Result<Option<Caller>, Refusal> {
        let index = match self.identify(authorization, certificate) {
            Ok(index) => index,
            // Open methods answer whatever credentials came (or did not).
            Err(_) if self.open.allows(path) => return Ok(None),
            Err(refusal) => return Err(refusal),
        };
        let entry = &self.entries[index];
        if entry.grants.allows(path) || self.open.allows(path) {
            Ok(Some(entry.caller.clone()))
        } else {
            Err(Refusal::NotGranted {
                caller: entry.caller.clone(),
            })
        }
    }

    fn identify(
        &self,
        authorization: &[&[u8]],
        certificate: Option<&[String]>,
    ) -> Result<usize, Refusal> {
        match (authorization, certificate) {
            ([header], _) => self.by_token(header),
            ([_, _, ..], _) => Err(Refusal::DuplicateAuthorization),
            ([], None) => Err(Refusal::NoCredentials),
            ([], Some([])) => Err(Refusal::CertificateWithoutSan),
            ([], Some(sans)) => self.by_certificate(sans),
        }
    }

    fn by_certificate(&self, sans: &[String]) -> Result<usize, Refusal> {
        let mut found: Vec<usize> = sans
            .iter()
            .filter_map(|san| self.by_san.get(san).copied())
            .collect();
        found.sort_unstable();
        found.dedup();
        match found[..] {
            [] => Err(Refusal::UnknownCertificate {
                sans: sans.to_vec(),
            }),
            [index] => Ok(index),
            // Which one it was meant to be is a guess; refuse rather than pick.
            _ => Err(Refusal::AmbiguousCertificate {
                callers: found
                    .iter()
                    .map(|&i| Arc::clone(&self.entries[i].caller.name))
                    .collect(),
            }),
        }
    }

    fn by_token(&self, header: &[u8]) -> Result<usize, Refusal> {
        // RFC 9110 §11.1: the scheme is case-insensitive, then one or more spaces.
        let token = match header.iter().position(|&b| b == b' ') {
            Some(space) if header[..space].eq_ignore_ascii_case(b"bearer") => {
                header[space..].trim_ascii()
            }
            _ => return Err(Refusal::MalformedAuthorization),
        };
        if token.is_empty() {
            return Err(Refusal::MalformedAuthorization);
        }
        let presented: [u8; 32] = Sha256::digest(token).into();
        // Every stored hash is compared, so timing says nothing about which matched.
        let mut found = None;
        for (hash, index) in &self.tokens {
            if bool::from(hash.ct_eq(&presented)) {
                found = Some(*index);
            }
        }
        found.ok_or(Refusal::UnknownToken)
    }
}

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    NoCredentials,
    MalformedAuthorization,
    DuplicateAuthorization,
    UnknownToken,
    /// A client certificate was presented but names no URI or DNS SAN, the only names a
    /// callers file can list.
    CertificateWithoutSan,
    UnknownCertificate {
        sans: Vec<String>,
    },
    AmbiguousCertificate {
        callers: Vec<Arc<str>>,
    },
    NotGranted {
        caller: Caller,
    },
}

impl Refusal {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoCredentials => "CREDENTIALS_REQUIRED",
            Self::MalformedAuthorization => "MALFORMED_AUTHORIZATION",
            Self::DuplicateAuthorization => "DUPLICATE_AUTHORIZATION",
            Self::UnknownToken => "UNKNOWN_TOKEN",
            Self::CertificateWithoutSan => "CERTIFICATE_WITHOUT_SAN",
            Self::UnknownCertificate { .. } => "UNKNOWN_CERTIFICATE",
            Self::AmbiguousCertificate { .. } => "AMBIGUOUS_CERTIFICATE",
            Self::NotGranted { .. } => "METHOD_NOT_GRANTED",
        }
    }

    /// The status a caller sees: never which tokens or names exist.
    pub fn to_status(&self, path: &str) -> Status {
        crate::error::to_status(&Refused {
            refusal: self,
            path,
        })
    }

    fn code(&self) -> Code {
        match self {
            Self::NotGranted { .. } => Code::PermissionDenied,
            _ => Code::Unauthenticated,
        }
    }

    /// Writes the refusal to the log with whatever names the caller: its name when it was
    /// recognised, the callers a certificate matched, or the SANs it presented. Never a
    /// token.
    fn log(&self, path: &str, peer: Option<&PeerInfo>) {
        let remote = peer.and_then(|p| p.remote_addr);
        let (caller, callers, sans) = match self {
            Self::NotGranted { caller } => (Some(&*caller.name), None, None),
            Self::AmbiguousCertificate { callers } => (None, Some(callers), None),
            Self::UnknownCertificate { sans } => (None, None, Some(sans)),
            _ => (None, None, None),
        };
        // Fields that are None are left out of the line.
        tracing::warn!(
            method = path,
            reason = self.reason(),
            caller,
            callers = callers.map(tracing::field::debug),
            sans = sans.map(tracing::field::debug),
            peer = ?remote,
            "call refused"
        );
    }
}

/// A refusal of one method: what the caller reads (never which tokens or names exist).
struct Refused<'a> {
    refusal: &'a Refusal,
    path: &'a str,
}

impl std::fmt::Display for Refused<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.refusal {
            Refusal::NoCredentials => {
                f.write_str("a client certificate or a bearer token is required")
            }
            Refusal::MalformedAuthorization => {
                f.write_str("the authorization header must be `Bearer <token>`")
            }
            Refusal::DuplicateAuthorization => {
                f.write_str("send one authorization header, not several")
            }
            Refusal::UnknownToken => f.write_str("unknown bearer token"),
            Refusal::CertificateWithoutSan => {
                f.write_str("the client certificate has no URI or DNS subject alternative name")
            }
            Refusal::UnknownCertificate { .. } => {
                f.write_str("the client certificate names no known caller")
            }
            Refusal::AmbiguousCertificate { .. } => {
                f.write_str("the client certificate names more than one caller")
            }
            Refusal::NotGranted { caller } => {
                write!(f, "caller `{}` may not call {}", caller.name, self.path)
            }
        }
    }
}

impl ServiceError for Refused<'_> {
    fn code(&self) -> Code {
        self.refusal.code()
    }

    fn reason(&self) -> &str {
        self.refusal.reason()
    }

    fn details(&self) -> Details {
        let details = Details::none().with_metadata("method", self.path);
        match self.refusal {
            Refusal::NotGranted { caller } => details.with_metadata("caller", &*caller.name),
            _ => details,
        }
    }
}

/// The policy in force, replaced whole when the callers file is reloaded.
#[derive(Clone)]
pub struct SharedPolicy(Arc<RwLock<Arc<Policy>>>);

impl SharedPolicy {
    pub fn new(policy: Policy) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(policy))))
    }

    pub fn current(&self) -> Arc<Policy> {
        match self.0.read() {
            Ok(policy) => Arc::clone(&policy),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Re-reads `path`; a file that does not load keeps the policy in force.
    ///
    /// # Errors
    /// When the file cannot be read or is not a valid callers file.
    pub fn reload(&self, path: &Path) -> Result<(), PolicyError> {
        let policy = Arc::new(Policy::load(path)?);
        if let Ok(mut current) = self.0.write() {
            *current = policy;
        }
        Ok(())
    }
}

/// Checks every request against a [`Policy`] (or lets everything through when there is
/// none: open mode). Also puts the connection's TCP addresses where tonic's
/// `Request::remote_addr` looks for them.
#[derive(Clone)]
pub struct AuthLayer {
    policy: Option<SharedPolicy>,
}

impl AuthLayer {
    pub fn new(policy: Option<SharedPolicy>) -> Self {
        Self { policy }
    }

    /// Lets every call through.
    pub fn open() -> Self {
        Self { policy: None }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            policy: self.policy.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    policy: Option<SharedPolicy>,
}

impl<S, B, ResBody> Service<http::Request<B>> for Auth<S>
where
    S: Service<http::Request<B>, Response = http::Response<ResBody>>,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let peer = request.extensions().get::<PeerInfo>().cloned();
        if let Some(peer) = &peer {
            request.extensions_mut().insert(TcpConnectInfo {
                local_addr: peer.local_addr,
                remote_addr: peer.remote_addr,
            });
        }
        let Some(policy) = self.policy.as_ref().map(SharedPolicy::current) else {
            return Either::Left(self.inner.call(request));
        };
        let certificate = peer
            .as_ref()
            .filter(|p| p.client_certificate)
            .map(|p| &p.sans[..]);
        let path = request.uri().path();
        let authorization: Vec<&[u8]> = request
            .headers()
            .get_all(http::header::AUTHORIZATION)
            .iter()
            .map(http::HeaderValue::as_bytes)
            .collect();
        match policy.authorize(path, &authorization, certificate) {
            Ok(caller) => {
                if let Some(caller) = caller {
                    request.extensions_mut().insert(caller);
                }
                Either::Left(self.inner.call(request))
            }
            Err(refusal) => {
                refusal.log(path, peer.as_ref());
                Either::Right(ready(Ok(refusal.to_status(path).into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::StatusExt;

    const FILE: &str = r#"
        [roles.reader]
        methods = ["/chat.v1.ConversationService/GetConversation"]

        [[caller]]
        name = "token-service"
        san = ["spiffe://chat.test/token-service"]
        roles = ["reader"]
        methods = ["/chat.v1.ConversationService/CreateConversation"]

        [[caller]]
        name = "bff"
        token_sha256 = ["2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"]
        methods = ["/chat.v1.ConversationService/*"]
    "#;

    fn policy() -> Policy {
        Policy::parse(FILE).unwrap()
    }

    #[test]
    fn a_certificate_caller_gets_its_roles_and_methods_only() {
        let sans = ["spiffe://chat.test/token-service".to_owned()];
        let p = policy();
        let ok = p.authorize(
            "/chat.v1.ConversationService/GetConversation",
            &[],
            Some(&sans),
        );
        assert_eq!(ok.unwrap().unwrap().name.as_ref(), "token-service");
        assert!(
            p.authorize(
                "/chat.v1.ConversationService/CreateConversation",
                &[],
                Some(&sans)
            )
            .is_ok()
        );
        let refused = p.authorize("/chat.v1.ConversationService/SendMessage", &[], Some(&sans));
        assert_eq!(refused.unwrap_err().reason(), "METHOD_NOT_GRANTED");
    }

    #[test]
    fn a_bearer_token_is_matched_by_its_hash() {
        // sha256("secret")
        let p = policy();
        let caller = p
            .authorize(
                "/chat.v1.ConversationService/SendMessage",
                &[b"Bearer secret"],
                None,
            )
            .unwrap()
            .unwrap();
        assert_eq!(caller.name.as_ref(), "bff");
        let wrong = p.authorize(
            "/chat.v1.ConversationService/SendMessage",
            &[b"Bearer secreT"],
            None,
        );
        assert_eq!(wrong.unwrap_err(), Refusal::UnknownToken);
        let malformed = p.authorize(
            "/chat.v1.ConversationService/SendMessage",
            &[b"Basic x"],
            None,
        );
        assert_eq!(malformed.unwrap_err(), Refusal::MalformedAuthorization);
    }

    #[test]
    fn health_and_reflection_are_open_unless_the_file_says_otherwise() {
        let p = policy();
        assert!(
            p.authorize("/grpc.health.v1.Health/Check", &[], None)
                .is_ok()
        );
        assert_eq!(
            p.authorize("/chat.v1.TokenService/IssueToken", &[], None)
                .unwrap_err(),
            Refusal::NoCredentials
        );
        let unknown = ["spiffe://chat.test/stranger".to_owned()];
        assert_eq!(
            p.authorize("/chat.v1.TokenService/IssueToken", &[], Some(&unknown))
                .unwrap_err(),
            Refusal::UnknownCertificate {
                sans: unknown.to_vec()
            }
        );
        let health = p.authorize("/grpc.health.v1.Health/Check", &[b"Bearer wrong"], None);
        assert_eq!(
            health,
            Ok(None),
            "a bad token does not close an open method"
        );
        let closed = Policy::parse(&format!("[open]\nmethods = []\n{FILE}")).unwrap();
        assert_eq!(
            closed
                .authorize("/grpc.health.v1.Health/Check", &[], None)
                .unwrap_err(),
            Refusal::NoCredentials
        );
    }

    #[test]
    fn the_example_file_grants_the_documented_roles() {
        let p = Policy::load(&crate::testing::example_callers_file()).unwrap();
        let conv = |m: &str| format!("/chat.v1.ConversationService/{m}");
        let as_ = |workload: &str| [format!("spiffe://chat.example/{workload}")];
        let may = |who: &[String], method: &str| p.authorize(method, &[], Some(who)).is_ok();
        for m in ["CreateConversation", "GetConversation", "UpdateCustomer"] {
            assert!(may(&as_("token-service"), &conv(m)), "{m}");
        }
        assert!(!may(&as_("token-service"), &conv("SendMessage")));
        assert!(!may(
            &as_("token-service"),
            "/chat.v1.TokenService/IssueToken"
        ));
        assert!(may(&as_("bff"), &conv("StreamInbox")));
        assert!(may(&as_("bff"), "/chat.v1.TokenService/RedeemToken"));
        assert!(!may(&as_("bff"), &conv("UpdateCustomer")));
        assert!(may(&as_("operator"), &conv("ListMessages")));
        assert!(may(&as_("operator"), "/chat.v1.TokenService/ListTokens"));
        assert!(!may(&as_("operator"), &conv("SetConversationStatus")));
        assert!(!may(&as_("operator"), "/chat.v1.TokenService/RevokeToken"));
        assert!(may(
            &as_("operator"),
            "/chat.v1.TokenAdminService/ListFailedCalls"
        ));
        assert!(!may(
            &as_("operator"),
            "/chat.v1.TokenAdminService/DropFailedCall"
        ));
        assert!(may(
            &as_("admin"),
            "/chat.v1.TokenAdminService/BackupDatabase"
        ));
        assert!(!may(
            &as_("bff"),
            "/chat.v1.TokenAdminService/ListFailedCalls"
        ));
        let bearer = format!("Bearer {}", crate::testing::EXAMPLE_BFF_TOKEN);
        let mesh = p.authorize(&conv("SendMessage"), &[bearer.as_bytes()], None);
        assert_eq!(mesh.unwrap().unwrap().name.as_ref(), "mesh-bff");
    }

    const SEND: &str = "/chat.v1.ConversationService/SendMessage";

    #[test]
    fn two_authorization_headers_are_refused_even_when_both_are_known() {
        let p = policy();
        let refused = p.authorize(SEND, &[b"Bearer secret", b"Bearer secret"], None);
        assert_eq!(refused.unwrap_err(), Refusal::DuplicateAuthorization);
        let refused = p.authorize(SEND, &[b"Bearer secret", b"Bearer other"], None);
        assert_eq!(refused.unwrap_err().reason(), "DUPLICATE_AUTHORIZATION");
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        let p = policy();
        for header in [
            &b"BEARER secret"[..],
            b"bearer secret",
            b"bEaReR secret",
            b"Bearer   secret",
        ] {
            let caller = p.authorize(SEND, &[header], None);
            assert_eq!(
                caller.unwrap().unwrap().name.as_ref(),
                "bff",
                "{}",
                String::from_utf8_lossy(header)
            );
        }
        for header in [&b"Bearersecret"[..], b"Bearer ", b"Bearer", b"Bear secret"] {
            assert_eq!(
                p.authorize(SEND, &[header], None).unwrap_err(),
                Refusal::MalformedAuthorization,
                "{}",
                String::from_utf8_lossy(header)
            );
        }
    }

    #[test]
    fn a_certificate_without_san_is_told_apart_from_no_certificate() {
        let p = policy();
        let no_san = p.authorize(SEND, &[], Some(&[]));
        assert_eq!(no_san.unwrap_err().reason(), "CERTIFICATE_WITHOUT_SAN");
        let none = p.authorize(SEND, &[], None);
        assert_eq!(none.unwrap_err().reason(), "CREDENTIALS_REQUIRED");
    }

    #[test]
    fn a_certificate_naming_two_callers_is_refused_as_ambiguous() {
        let two = Policy::parse(&format!(
            "{FILE}\n[[caller]]\nname = \"operator\"\nsan = [\"spiffe://chat.test/operator\"]\n\
             methods = [\"/chat.v1.ConversationService/*\"]\n"
        ))
        .unwrap();
        let sans = [
            "spiffe://chat.test/operator".to_owned(),
            "spiffe://chat.test/token-service".to_owned(),
        ];
        let refused = two
            .authorize(
                "/chat.v1.ConversationService/GetConversation",
                &[],
                Some(&sans),
            )
            .unwrap_err();
        assert_eq!(refused.reason(), "AMBIGUOUS_CERTIFICATE");
        assert_eq!(
            refused,
            Refusal::AmbiguousCertificate {
                callers: vec![Arc::from("token-service"), Arc::from("operator")]
            }
        );
        // Two names of one caller, or one known name beside unknown ones, are not ambiguous.
        let one = [
            "spiffe://chat.test/token-service".to_owned(),
            "dns.example".to_owned(),
        ];
        let ok = two.authorize(
            "/chat.v1.ConversationService/GetConversation",
            &[],
            Some(&one),
        );
        assert_eq!(ok.unwrap().unwrap().name.as_ref(), "token-service");
    }

    #[test]
    fn an_empty_callers_file_is_refused_on_reload_unless_it_says_so() {
        let dir = std::env::temp_dir().join(format!("chat-callers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("callers.toml");
        std::fs::write(&path, FILE).unwrap();
        let shared = SharedPolicy::new(Policy::load(&path).unwrap());

        // Truncated in place, as a careless `>` redirect or a half-finished copy leaves it.
        std::fs::write(&path, "").unwrap();
        let error = shared.reload(&path).unwrap_err().to_string();
        assert!(error.contains("allow_no_callers"), "{error}");
        assert_eq!(
            shared.current().caller_names().collect::<Vec<_>>(),
            ["token-service", "bff"],
            "the policy in force stays"
        );
        std::fs::write(&path, "[roles.reader]\nmethods = []\n").unwrap();
        assert!(shared.reload(&path).is_err(), "roles alone are no callers");

        std::fs::write(&path, "allow_no_callers = true\n").unwrap();
        shared.reload(&path).unwrap();
        assert_eq!(shared.current().caller_names().count(), 0);
        assert_eq!(
            shared.current().authorize(SEND, &[b"Bearer secret"], None),
            Err(Refusal::UnknownToken)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Log lines written while `f` runs.
    fn logged(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Buffer(Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = buffer.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    /// Runs one request through [`AuthLayer`] with `policy`: the reason it was refused
    /// for, if it was, and what was logged. Always under a subscriber: a thread that hit
    /// the refusal's log line with none could leave it cached as disabled for the
    /// others.
    fn through_layer(
        policy: &SharedPolicy,
        headers: &[&str],
        peer: Option<PeerInfo>,
    ) -> (Option<String>, String) {
        let inner = tower::service_fn(|_: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(()))
        });
        let mut service = AuthLayer::new(Some(policy.clone())).layer(inner);
        let mut request = http::Request::builder().uri(format!("http://localhost{SEND}"));
        for header in headers {
            request = request.header(http::header::AUTHORIZATION, *header);
        }
        let mut request = request.body(()).unwrap();
        if let Some(peer) = peer {
            request.extensions_mut().insert(peer);
        }
        let mut response = None;
        let lines = logged(|| {
            response = Some(futures::executor::block_on(service.call(request)).unwrap());
        });
        let reason = response
            .and_then(|r| Status::from_header_map(r.headers()))
            .map(|status| status.get_details_error_info().unwrap().reason);
        (reason, lines)
    }

    fn reason_of(
        policy: &SharedPolicy,
        headers: &[&str],
        peer: Option<PeerInfo>,
    ) -> Option<String> {
        through_layer(policy, headers, peer).0
    }

    #[test]
    fn the_layer_reads_every_authorization_header_and_the_certificate() {
        let shared = SharedPolicy::new(policy());
        assert_eq!(reason_of(&shared, &["BEARER secret"], None), None);
        assert_eq!(
            reason_of(&shared, &["Bearer secret", "Bearer other"], None).as_deref(),
            Some("DUPLICATE_AUTHORIZATION")
        );
        let no_san = PeerInfo {
            client_certificate: true,
            ..PeerInfo::default()
        };
        assert_eq!(
            reason_of(&shared, &[], Some(no_san)).as_deref(),
            Some("CERTIFICATE_WITHOUT_SAN")
        );
        // SANs without a certificate presented cannot come from TLS; they count for nothing.
        let stray = PeerInfo {
            sans: Arc::from(["spiffe://chat.test/token-service".to_owned()]),
            ..PeerInfo::default()
        };
        assert_eq!(
            reason_of(&shared, &[], Some(stray)).as_deref(),
            Some("CREDENTIALS_REQUIRED")
        );
    }

    #[test]
    fn refusal_log_lines_name_the_caller() {
        let shared = SharedPolicy::new(policy());
        let peer = |san: &str| PeerInfo {
            sans: Arc::from([san.to_owned()]),
            client_certificate: true,
            ..PeerInfo::default()
        };
        let (refused, lines) =
            through_layer(&shared, &[], Some(peer("spiffe://chat.test/token-service")));
        assert_eq!(refused.as_deref(), Some("METHOD_NOT_GRANTED"));
        assert!(lines.contains("caller=\"token-service\""), "{lines}");
        assert!(lines.contains("METHOD_NOT_GRANTED"), "{lines}");

        let (_, lines) = through_layer(&shared, &[], Some(peer("spiffe://chat.test/stranger")));
        assert!(lines.contains("spiffe://chat.test/stranger"), "{lines}");

        let (_, lines) = through_layer(&shared, &["Bearer not-a-known-token"], None);
        assert!(lines.contains("UNKNOWN_TOKEN"), "{lines}");
        assert!(
            !lines.contains("not-a-known-token"),
            "a token is never logged: {lines}"
        );
    }

    #[test]
    fn bad_files_are_refused_with_a_reason() {
        for bad in [
            "[[caller]]\nname = \"x\"\nmethods = [\"/a/b\"]\n",
            "[[caller]]\nname = \"x\"\nsan = [\"s\"]\nmethods = [\"a/b\"]\n",
            "[[caller]]\nname = \"x\"\nsan = [\"s\"]\nmethods = [\"/a/b*\"]\n",
            "[[caller]]\nname = \"x\"\nsan = [\"s\"]\nroles = [\"nope\"]\n",
            "[[caller]]\nname = \"x\"\ntoken_sha256 = [\"abcd\"]\n",
            "[[caller]]\nname = \"x\"\nsan = [\"s\"]\n[[caller]]\nname = \"y\"\nsan = [\"s\"]\n",
            "[[caller]]\nname = \"x\"\nsan = [\"s\"]\nmetods = []\n",
            "",
            "[open]\nmethods = []\n",
        ] {
            assert!(Policy::parse(bad).is_err(), "accepted: {bad}");
        }
    }
}
