//! How to reach conversation-service: address, TLS (and a client certificate for mutual
//! TLS), a bearer token for meshes that terminate TLS, and the retry settings.

use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Status};

use crate::backoff::BackoffConfig;
use crate::error::Error;

/// TLS towards the service. PEM contents, not paths, so the caller decides where they
/// come from (files, a secret store) and when to reload them (build a new client).
#[derive(Debug, Clone, Default)]
pub struct TlsConfig {
    /// The CA that signed the server's certificate.
    pub ca_pem: Vec<u8>,
    /// Certificate and key presented for mutual TLS.
    pub client_cert_pem: Option<(Vec<u8>, Vec<u8>)>,
    /// The name to check the server's certificate against, when the URL's host differs.
    pub server_name: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `http://host:port` (plaintext) or `https://host:port` (needs `tls`).
    pub url: String,
    pub tls: Option<TlsConfig>,
    /// Sent as `authorization: Bearer …` on every call.
    pub bearer_token: Option<String>,
    /// Deadline of each unary attempt.
    pub request_timeout: Duration,
    /// Attempts of `send` before its last error is returned.
    pub send_attempts: u32,
    /// A stream that delivered nothing (heartbeats included) for this long is presumed
    /// dead and reopened: three of the service's default 15 s heartbeats.
    pub idle_timeout: Duration,
    pub backoff: BackoffConfig,
}

impl ClientConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            tls: None,
            bearer_token: None,
            request_timeout: Duration::from_secs(10),
            send_attempts: 6,
            idle_timeout: Duration::from_secs(45),
            backoff: BackoffConfig::default(),
        }
    }

    /// A lazily connected channel: it connects on first use and again after the
    /// connection drops, so a restarted or replaced replica is picked up by itself.
    pub(crate) fn channel(&self) -> Result<Channel, Error> {
        let https = self.url.starts_with("https://");
        let mut endpoint = Endpoint::from_shared(self.url.clone())
            .map_err(|e| Error::Config(format!("url {:?}: {e}", self.url)))?
            .connect_timeout(Duration::from_secs(5))
            // A replica that vanished without closing the connection (a host gone, a
            // partition) is noticed within about 20 s, not at the TCP timeout.
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        match (&self.tls, https) {
            (Some(tls), true) => {
                let mut config =
                    ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&tls.ca_pem));
                if let Some((cert, key)) = &tls.client_cert_pem {
                    config = config.identity(Identity::from_pem(cert, key));
                }
                if let Some(name) = &tls.server_name {
                    config = config.domain_name(name.clone());
                }
                endpoint = endpoint
                    .tls_config(config)
                    .map_err(|e| Error::Config(format!("tls: {e}")))?;
            }
            // Never a silent plaintext fallback when TLS was asked for, nor the reverse.
            (Some(_), false) => return Err(Error::Config("tls needs an https:// url".into())),
            (None, true) => return Err(Error::Config("an https:// url needs tls (its CA)".into())),
            (None, false) => {}
        }
        Ok(endpoint.connect_lazy())
    }

    pub(crate) fn credentials(&self) -> Result<Credentials, Error> {
        let authorization = self
            .bearer_token
            .as_ref()
            .map(|token| {
                format!("Bearer {token}")
                    .parse::<MetadataValue<Ascii>>()
                    .map_err(|_| Error::Config("the bearer token is not valid header text".into()))
            })
            .transpose()?;
        Ok(Credentials { authorization })
    }
}

/// Adds the bearer token to every call.
#[derive(Clone)]
pub struct Credentials {
    authorization: Option<MetadataValue<Ascii>>,
}

impl Interceptor for Credentials {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}
