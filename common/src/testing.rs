//! Test support (feature `test-support`): a throwaway PKI made with rcgen at test time, so
//! no key material is checked in. Identities match `config/callers.example.toml`.
//! Throwaway databases, conversation-service processes and status assertions live in the
//! submodules.

pub mod cpu;
pub mod database;
pub mod process;
pub mod status;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// The SPIFFE trust domain of the example callers file.
pub const TRUST_DOMAIN: &str = "spiffe://chat.example";
/// The bearer token of the example file's `mesh-bff` caller (only its hash is in the file).
pub const EXAMPLE_BFF_TOKEN: &str = "example-bff-token-change-me";

/// A lazy TLS channel to `addr` (as `localhost`) trusting the CA in `ca`, presenting
/// `identity` when given (mutual TLS).
///
/// # Panics
/// When a file cannot be read or the TLS settings are refused (tests only).
#[allow(clippy::unwrap_used)]
pub fn tls_channel(addr: SocketAddr, ca: &Path, identity: Option<&Pair>) -> Channel {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()))
        .domain_name("localhost");
    if let Some(pair) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(&pair.cert).unwrap(),
            std::fs::read(&pair.key).unwrap(),
        ));
    }
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect_lazy()
}

/// The example callers file shipped in `config/`.
pub fn example_callers_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/callers.example.toml")
}

/// A certificate authority in a temporary directory (removed on drop).
pub struct Pki {
    pub dir: PathBuf,
    params: CertificateParams,
    key: KeyPair,
}

/// Paths of a certificate and its key.
#[derive(Debug, Clone)]
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    /// A new CA named `name`; its certificate is written to `ca.pem`.
    ///
    /// # Panics
    /// When key generation or writing fails (tests only).
    #[allow(clippy::unwrap_used)]
    pub fn new(name: &str) -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "chat-pki-{}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            name
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join("ca.pem"), cert.pem()).unwrap();
        Self { dir, params, key }
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A server certificate for `localhost` and 127.0.0.1, written as `<file>.pem` /
    /// `<file>-key.pem`.
    pub fn server(&self, file: &str) -> Pair {
        self.issue(
            file,
            vec![
                SanType::DnsName("localhost".try_into().unwrap_or_else(|_| unreachable!())),
                SanType::IpAddress([127, 0, 0, 1].into()),
            ],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate whose SAN is the SPIFFE id `spiffe://chat.example/<workload>`.
    pub fn client(&self, workload: &str) -> Pair {
        let uri = format!("{TRUST_DOMAIN}/{workload}");
        self.issue(
            workload,
            vec![SanType::URI(
                uri.as_str().try_into().unwrap_or_else(|_| unreachable!()),
            )],
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }

    #[allow(clippy::unwrap_used)]
    fn issue(&self, file: &str, sans: Vec<SanType>, usage: ExtendedKeyUsagePurpose) -> Pair {
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        params.extended_key_usages = vec![usage];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, file);
        params.distinguished_name = dn;
        let key = KeyPair::generate().unwrap();
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        let pair = Pair {
            cert: self.dir.join(format!("{file}.pem")),
            key: self.dir.join(format!("{file}-key.pem")),
        };
        // Key first, then certificate: a watcher that sees the new certificate finds its key.
        std::fs::write(&pair.key, key.serialize_pem()).unwrap();
        std::fs::write(&pair.cert, cert.pem()).unwrap();
        pair
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
