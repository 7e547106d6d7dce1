//! The security settings both servers share (`TLS_CERT`, `TLS_KEY`, `TLS_CLIENT_CA`,
//! `CALLERS_FILE`), read once at start into what startup needs: the stream of accepted
//! connections and the layer that checks callers.

use std::{io, path::PathBuf, sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::{
    auth::{AuthLayer, Policy, PolicyError, SharedPolicy},
    tls::{Conn, ServerTls, TlsError, TlsFiles, watch_files},
};

/// TLS and caller flags, flattened into each service's configuration.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SecurityArgs {
    /// PEM certificate chain of this server. With `--tls-key`, the server speaks only TLS.
    #[arg(long, env = "TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of `--tls-cert`.
    #[arg(long, env = "TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA: clients must present a certificate it signed (mutual TLS).
    #[arg(long, env = "TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// How often the TLS files and the callers file are checked for a change (SIGHUP
    /// reloads at once).
    #[arg(long, env = "TLS_RELOAD_INTERVAL", default_value = "10s", value_parser = crate::duration::parse_duration)]
    pub tls_reload_interval: Duration,

    /// TOML file naming each caller, its credentials and the methods it may call.
    /// Unset: every caller may call everything (local development only).
    #[arg(long, env = "CALLERS_FILE")]
    pub callers_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("CALLERS_FILE {0}")]
    Policy(#[from] PolicyError),
}

/// Told of every reload of the callers file: its path, and the error when it did not load.
pub type PolicyReloadHook = Arc<dyn Fn(&std::path::Path, Option<&PolicyError>) + Send + Sync>;

/// What a server runs with: its TLS configuration (if any) and its callers policy.
pub struct Security {
    tls: Option<Arc<ServerTls>>,
    policy: Option<(SharedPolicy, PathBuf)>,
    reload_interval: Duration,
    on_policy_reload: Option<PolicyReloadHook>,
}

impl Security {
    /// Reads the files named by `args`, and says loudly when the service runs open or in
    /// plaintext.
    ///
    /// # Errors
    /// When a named file is missing or invalid: a service never starts less protected
    /// than it was told to be.
    pub fn load(args: &SecurityArgs) -> Result<Self, SecurityError> {
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(ServerTls::load(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: args.tls_client_ca.clone(),
            })?),
            _ => None,
        };
        let policy = match &args.callers_file {
            Some(path) => Some((SharedPolicy::new(Policy::load(path)?), path.clone())),
            None => None,
        };
        match &tls {
            Some(tls) => tracing::info!(mutual = tls.mutual(), "TLS on"),
            None => tracing::warn!("TLS_CERT/TLS_KEY not set: serving PLAINTEXT"),
        }
        match &policy {
            Some((policy, _)) => {
                let policy = policy.current();
                let callers: Vec<&str> = policy.caller_names().collect();
                tracing::info!(?callers, "callers file loaded");
            }
            None => tracing::warn!(
                "CALLERS_FILE not set: OPEN MODE, every caller may call every method \
                 without credentials; for local development only"
            ),
        }
        Ok(Self {
            tls,
            policy,
            reload_interval: args.tls_reload_interval.max(Duration::from_millis(10)),
            on_policy_reload: None,
        })
    }

    /// Calls `hook` after each reload of the callers file, loaded or not (a service
    /// records it in its audit trail).
    pub fn on_policy_reload(&mut self, hook: PolicyReloadHook) {
        self.on_policy_reload = Some(hook);
    }

    /// The TLS configuration, to reload it by hand (SIGHUP and file changes already do).
    pub fn tls(&self) -> Option<Arc<ServerTls>> {
        self.tls.clone()
    }

    /// The layer that checks every call against the callers file.
    pub fn layer(&self) -> AuthLayer {
        AuthLayer::new(self.policy.as_ref().map(|(policy, _)| policy.clone()))
    }

    /// The accepted connections to serve (see [`crate::tls::incoming`]). While they are
    /// served, the callers file is reloaded when it changes or on SIGHUP, like the TLS
    /// files; a file that does not load keeps the policy in force.
    pub fn incoming(
        &self,
        listener: TcpListener,
        keepalive: Duration,
        stop: CancellationToken,
    ) -> ReceiverStream<io::Result<Conn>> {
        if let Some((policy, path)) = self.policy.clone() {
            let paths = vec![path.clone()];
            let hook = self.on_policy_reload.clone();
            tokio::spawn(watch_files(
                paths,
                self.reload_interval,
                stop.clone(),
                move || {
                    let outcome = policy.reload(&path);
                    match &outcome {
                        Ok(()) => tracing::info!(path = %path.display(), "callers file reloaded"),
                        Err(error) => {
                            tracing::error!(%error, "callers file not reloaded; keeping the previous one");
                        }
                    }
                    if let Some(hook) = &hook {
                        hook(&path, outcome.as_ref().err());
                    }
                },
            ));
        }
        crate::tls::incoming(
            listener,
            self.tls.clone(),
            keepalive,
            self.reload_interval,
            stop,
        )
    }
}
