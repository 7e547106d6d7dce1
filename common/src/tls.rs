//! TLS for the servers, with certificates that rotate without a restart, and for the
//! client token-service uses. tonic's own `ServerTlsConfig` is fixed for the life of a
//! server, so the server side accepts connections itself: a TCP listener (TCP_NODELAY
//! on, keepalive), a rustls handshake per connection with whatever configuration is
//! current, and the streams handed to `serve_with_incoming_shutdown`. Each connection
//! carries a [`PeerInfo`] (addresses and the client certificate's SANs) that tonic puts
//! into every request's extensions, where [`crate::auth`] reads it.
//!
//! `TLS_CERT`/`TLS_KEY` (and `TLS_CLIENT_CA`) are re-read on SIGHUP and when their
//! modification time changes; a new connection gets the new files, open ones keep theirs.
//! A reload that fails (a half-written file) keeps the previous configuration.

use std::{
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, RwLock},
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        RootCertStore, ServerConfig,
        crypto::ring,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
        server::WebPkiClientVerifier,
    },
    server::TlsStream,
};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;

/// A TLS handshake that takes longer than this is dropped, so a silent client cannot
/// hold a slot.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Accepted connections waiting for the server to take them.
const ACCEPT_QUEUE: usize = 64;
/// TLS handshakes in progress at once; connections beyond are closed at once, so a
/// flood of silent clients costs bounded memory.
const MAX_HANDSHAKES: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("{path}: {message}")]
    Pem { path: String, message: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// What tonic knows about a connection: its addresses and, over mutual TLS, the URI and
/// DNS subject alternative names of the client certificate.
#[derive(Debug, Clone, Default)]
pub struct PeerInfo {
    pub local_addr: Option<SocketAddr>,
    pub remote_addr: Option<SocketAddr>,
    pub sans: Arc<[String]>,
    /// Whether a client certificate was presented: one without SANs is told apart from
    /// none at all.
    pub client_certificate: bool,
}

/// The URI (e.g. `spiffe://…`) and DNS names of a certificate. A certificate that does
/// not parse has none, so it identifies nobody.
pub fn subject_alt_names(der: &[u8]) -> Vec<String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return Vec::new();
    };
    let Ok(Some(extension)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    extension
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some((*uri).to_owned()),
            GeneralName::DNSName(dns) => Some((*dns).to_owned()),
            _ => None,
        })
        .collect()
}

/// One accepted connection, plaintext or TLS.
pub enum Conn {
    Plain(TcpStream, PeerInfo),
    Tls(Box<TlsStream<TcpStream>>, PeerInfo),
}

impl Connected for Conn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        match self {
            Self::Plain(_, info) | Self::Tls(_, info) => info.clone(),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s, _) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s, _) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s, _) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s, _) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s, _) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s, _) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s, _) => s.is_write_vectored(),
            Self::Tls(s, _) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s, _) => Pin::new(s).poll_flush(cx),
            Self::Tls(s, _) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s, _) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s, _) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The files a server's TLS is made of.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by it (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    fn paths(&self) -> Vec<PathBuf> {
        [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }

    fn build(&self) -> Result<ServerConfig, TlsError> {
        let provider = Arc::new(ring::default_provider());
        let certs = read_certs(&self.cert)?;
        let key = read_pem::<PrivateKeyDer<'static>>(&self.key)?;
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match &self.client_ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for cert in read_certs(ca)? {
                    roots.add(cert).map_err(|e| TlsError::Pem {
                        path: ca.display().to_string(),
                        message: e.to_string(),
                    })?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .map_err(|e| TlsError::Config(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(certs, key)
            .map_err(|e| TlsError::Pem {
                path: self.key.display().to_string(),
                message: format!("does not fit {}: {e}", self.cert.display()),
            })?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn read_pem<T: PemObject>(path: &Path) -> Result<T, TlsError> {
    T::from_pem_slice(&read(path)?).map_err(|e| TlsError::Pem {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(&read(path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.display().to_string(),
            message: "no certificate in it".into(),
        });
    }
    Ok(certs)
}

/// Modification times of `paths`, to notice a rotation.
fn stamp(paths: &[PathBuf]) -> Vec<Option<SystemTime>> {
    paths
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

/// Calls `reload` on SIGHUP and whenever one of `paths` gets a new modification time
/// (checked every `interval`), until `stop`. The signal handler is installed before this
/// returns, so a SIGHUP right after start reloads rather than kills the process.
pub fn watch_files(
    paths: Vec<PathBuf>,
    interval: Duration,
    stop: CancellationToken,
    mut reload: impl FnMut() + Send + 'static,
) -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut seen = stamp(&paths);
    async move {
        loop {
            #[cfg(unix)]
            let signal = async {
                match hangup.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let signal = std::future::pending::<()>();
            let forced = tokio::select! {
                () = stop.cancelled() => return,
                () = signal => true,
                () = tokio::time::sleep(interval) => false,
            };
            let now = stamp(&paths);
            if forced || now != seen {
                seen = now;
                reload();
            }
        }
    }
}

/// A server's TLS configuration, swapped whole when the files change.
pub struct ServerTls {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
}

impl ServerTls {
    /// Reads the files once; they must be valid at start.
    ///
    /// # Errors
    /// When a file cannot be read, is not PEM, or the key does not fit the certificate.
    pub fn load(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        let config = files.build()?;
        Ok(Arc::new(Self {
            files,
            current: RwLock::new(Arc::new(config)),
        }))
    }

    /// Whether clients must present a certificate.
    pub fn mutual(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// Re-reads the files. On failure the previous configuration stays in use.
    ///
    /// # Errors
    /// When the new files are not usable.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = Arc::new(self.files.build()?);
        if let Ok(mut current) = self.current.write() {
            *current = config;
        }
        tracing::info!(cert = %self.files.cert.display(), "TLS certificates reloaded");
        Ok(())
    }

    fn acceptor(&self) -> Option<TlsAcceptor> {
        self.current
            .read()
            .ok()
            .map(|c| TlsAcceptor::from(Arc::clone(&c)))
    }

    /// Reloads on SIGHUP and when a file changes (see [`watch_files`]), until `stop`.
    pub fn watch(
        self: Arc<Self>,
        interval: Duration,
        stop: CancellationToken,
    ) -> impl Future<Output = ()> + Send + 'static {
        watch_files(self.files.paths(), interval, stop, move || {
            if let Err(error) = self.reload() {
                tracing::error!(%error, "TLS reload failed; keeping the previous certificates");
            }
        })
    }
}

/// Accepts connections on `listener` (TCP_NODELAY on, TCP keepalive) until `stop` or
/// until the server drops the stream, with a TLS handshake each when `tls` is set, and
/// watches the TLS files for rotation meanwhile.
pub fn incoming(
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    keepalive: Duration,
    reload_interval: Duration,
    stop: CancellationToken,
) -> ReceiverStream<io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    if let Some(tls) = &tls {
        tokio::spawn(Arc::clone(tls).watch(reload_interval, stop.clone()));
    }
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = stop.cancelled() => return,
                () = tx.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let (stream, remote_addr) = match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // EMFILE and the like: wait a little rather than spin.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if let Err(error) = tune(&stream, keepalive) {
                tracing::debug!(%error, "socket options");
            }
            let info = PeerInfo {
                local_addr: stream.local_addr().ok(),
                remote_addr: Some(remote_addr),
                sans: Arc::from([]),
                client_certificate: false,
            };
            let Some(tls) = &tls else {
                if tx.send(Ok(Conn::Plain(stream, info))).await.is_err() {
                    return;
                }
                continue;
            };
            let (Some(acceptor), Ok(permit)) =
                (tls.acceptor(), Arc::clone(&handshakes).try_acquire_owned())
            else {
                tracing::warn!(peer = %remote_addr, "too many TLS handshakes in progress; closed");
                continue;
            };
            let tx = tx.clone();
            // Handshakes run beside the accept loop, so a slow one delays nobody.
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream));
                let handshake = handshake.await;
                drop(permit);
                match handshake {
                    Ok(Ok(stream)) => {
                        let leaf = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(<[CertificateDer<'_>]>::first);
                        let info = PeerInfo {
                            sans: leaf
                                .map(|l| subject_alt_names(l))
                                .unwrap_or_default()
                                .into(),
                            client_certificate: leaf.is_some(),
                            ..info
                        };
                        let _ = tx.send(Ok(Conn::Tls(Box::new(stream), info))).await;
                    }
                    Ok(Err(error)) => {
                        tracing::debug!(%error, peer = %remote_addr, "TLS handshake failed");
                    }
                    Err(_) => tracing::debug!(peer = %remote_addr, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

fn tune(stream: &TcpStream, keepalive: Duration) -> io::Result<()> {
    // Without TCP_NODELAY Nagle adds ~40 ms to every streamed event.
    stream.set_nodelay(true)?;
    let keepalive = socket2::TcpKeepalive::new().with_time(keepalive);
    socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive)
}

/// The client side: TLS towards a server whose certificate `ca` signed, with an optional
/// client certificate for mutual TLS.
///
/// # Errors
/// When a file cannot be read.
pub fn client_tls(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<tonic::transport::ClientTlsConfig, TlsError> {
    let mut config = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(read(ca)?));
    if let Some((cert, key)) = identity {
        config = config.identity(tonic::transport::Identity::from_pem(
            read(cert)?,
            read(key)?,
        ));
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Pki;

    #[test]
    fn a_client_certificate_names_its_spiffe_id() {
        let pki = Pki::new("sans");
        let pair = pki.client("bff");
        let der = read_certs(&pair.cert).unwrap();
        assert_eq!(
            subject_alt_names(&der[0]),
            vec!["spiffe://chat.example/bff".to_owned()]
        );
        assert!(subject_alt_names(b"not a certificate").is_empty());
    }

    /// A CA, a server certificate for `localhost` and client certificates, written
    /// under `dir`, made here because the shared test PKI only issues client
    /// certificates with a SAN.
    fn pki_with_clients(dir: &Path, clients: &[(&str, Vec<rcgen::SanType>)]) -> TlsFiles {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
        std::fs::create_dir_all(dir).unwrap();
        let mut ca = CertificateParams::default();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        std::fs::write(dir.join("ca.pem"), ca.self_signed(&ca_key).unwrap().pem()).unwrap();
        let issuer = Issuer::from_params(&ca, &ca_key);
        let issue = |name: &str, sans: Vec<SanType>| {
            let mut params = CertificateParams::default();
            params.subject_alt_names = sans;
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &issuer).unwrap();
            std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
            std::fs::write(dir.join(format!("{name}-key.pem")), key.serialize_pem()).unwrap();
        };
        issue(
            "server",
            vec![SanType::DnsName("localhost".try_into().unwrap())],
        );
        for (name, sans) in clients {
            issue(name, sans.clone());
        }
        TlsFiles {
            cert: dir.join("server.pem"),
            key: dir.join("server-key.pem"),
            client_ca: Some(dir.join("ca.pem")),
        }
    }

    /// Connects to `addr` over TLS presenting the client certificate `name` from `dir`.
    async fn connect(
        addr: SocketAddr,
        dir: &Path,
        name: &str,
    ) -> tokio_rustls::client::TlsStream<TcpStream> {
        use tokio_rustls::rustls::{ClientConfig, pki_types::ServerName};
        let mut roots = RootCertStore::empty();
        for cert in read_certs(&dir.join("ca.pem")).unwrap() {
            roots.add(cert).unwrap();
        }
        let config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(
                read_certs(&dir.join(format!("{name}.pem"))).unwrap(),
                read_pem(&dir.join(format!("{name}-key.pem"))).unwrap(),
            )
            .unwrap();
        let tcp = TcpStream::connect(addr).await.unwrap();
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_client_certificate_without_san_is_told_apart_from_none() {
        use rcgen::SanType;
        use tokio_stream::StreamExt;
        let dir = std::env::temp_dir().join(format!("chat-tls-no-san-{}", std::process::id()));
        let spiffe = SanType::URI("spiffe://chat.example/bff".try_into().unwrap());
        let files = pki_with_clients(&dir, &[("no-san", vec![]), ("bff", vec![spiffe])]);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let tls = ServerTls::load(files).unwrap();
        let mut accepted = incoming(
            listener,
            Some(tls),
            Duration::from_secs(60),
            Duration::from_secs(60),
            stop.clone(),
        );
        for (client, sans) in [
            ("no-san", vec![]),
            ("bff", vec!["spiffe://chat.example/bff"]),
        ] {
            let _client = connect(addr, &dir, client).await;
            let conn = tokio::time::timeout(Duration::from_secs(10), accepted.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            let info = conn.connect_info();
            assert!(info.client_certificate, "{client}");
            assert_eq!(&info.sans[..], &sans[..], "{client}");
        }
        stop.cancel();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn unusable_files_are_refused_with_their_path() {
        let pki = Pki::new("bad-files");
        let (a, b) = (pki.server("a"), pki.server("b"));
        let files = |cert: &Path, key: &Path| TlsFiles {
            cert: cert.to_owned(),
            key: key.to_owned(),
            client_ca: None,
        };
        assert!(files(&a.cert, &a.key).build().is_ok());
        let mismatch = files(&a.cert, &b.key).build().unwrap_err().to_string();
        assert!(mismatch.contains("does not fit"), "{mismatch}");
        let missing = files(&pki.dir.join("nope.pem"), &a.key)
            .build()
            .unwrap_err();
        assert!(missing.to_string().contains("nope.pem"), "{missing}");
        let not_pem = files(&a.key, &a.key).build().unwrap_err();
        assert!(not_pem.to_string().contains("a-key.pem"), "{not_pem}");
    }
}
