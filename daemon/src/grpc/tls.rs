//! Server-side TLS: rustls (ring provider) requiring a client certificate signed by the configured CA.
//! The config sits behind an [`arc_swap::ArcSwap`] so a reload swaps certificates for new connections
//! while established ones keep theirs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

use crate::crypto::files::{FileError, read_private};
use crate::grpc::config::TlsPaths;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error(transparent)]
    Key(#[from] FileError),
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// Installs ring as the process-wide rustls provider. Safe to call more than once.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file_err = |reason: String| TlsError::File {
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|err| file_err(err.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| file_err(format!("not valid PEM: {err}")))?;
    if certs.is_empty() {
        return Err(file_err("no CERTIFICATE block found".to_owned()));
    }
    Ok(certs)
}

/// Builds the server's rustls config from PEM files: CA (for client certificates), chain, key.
pub fn server_config(paths: &TlsPaths) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs(&paths.ca)? {
        roots.add(cert).map_err(|err| TlsError::File {
            path: paths.ca.clone(),
            reason: format!("not a usable CA certificate: {err}"),
        })?;
    }
    let chain = read_certs(&paths.cert)?;
    let key_pem = read_private(&paths.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|err| TlsError::File {
        path: paths.key.clone(),
        reason: format!("no usable private key: {err}"),
    })?;
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// When the certificates in use expire (Unix seconds), for the expiry gauges; `None` when a file
/// cannot be read or parsed here (the TLS setup itself reports why).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CertificateExpiry {
    /// The server's own certificate (the chain's first).
    pub server: Option<i64>,
    /// The CA that signs client certificates: the earliest of the CA file's certificates.
    pub ca: Option<i64>,
}

/// Reads the expiry of the server and CA certificates named by `paths`.
pub fn certificate_expiry(paths: &TlsPaths) -> CertificateExpiry {
    let not_after = |der: &CertificateDer<'_>| {
        use x509_parser::prelude::FromDer;
        x509_parser::prelude::X509Certificate::from_der(der.as_ref())
            .ok()
            .map(|(_, cert)| cert.validity().not_after.timestamp())
    };
    CertificateExpiry {
        server: read_certs(&paths.cert)
            .ok()
            .and_then(|chain| chain.first().and_then(not_after)),
        ca: read_certs(&paths.ca)
            .ok()
            .and_then(|certs| certs.iter().filter_map(not_after).min()),
    }
}

/// The live server TLS configuration; [`ReloadableTls::replace`] takes effect for new connections.
#[derive(Debug)]
pub struct ReloadableTls {
    current: ArcSwap<rustls::ServerConfig>,
}

impl ReloadableTls {
    pub fn new(config: Arc<rustls::ServerConfig>) -> Self {
        ReloadableTls {
            current: ArcSwap::new(config),
        }
    }

    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.load_full())
    }

    pub fn replace(&self, config: Arc<rustls::ServerConfig>) {
        self.current.store(config);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::pki::DevPki;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn loads_dev_pki_and_reports_bad_files() {
        install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let pki = DevPki::new(dir.path());
        pki.ensure().unwrap();
        let paths = TlsPaths {
            ca: pki.ca_cert(),
            cert: pki.server_cert(),
            key: pki.server_key(),
        };
        server_config(&paths).expect("dev PKI loads");
        let expiry = certificate_expiry(&paths);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        for at in [expiry.server, expiry.ca] {
            let at = at.expect("the dev PKI's certificates parse");
            assert!(at > now + 86_400, "{at} is not in the future");
        }
        assert_eq!(
            certificate_expiry(&TlsPaths {
                cert: dir.path().join("nope.pem"),
                ..paths.clone()
            })
            .server,
            None
        );

        let missing = TlsPaths {
            ca: dir.path().join("nope.pem"),
            ..paths.clone()
        };
        let err = server_config(&missing).unwrap_err().to_string();
        assert!(err.contains("nope.pem"), "{err}");

        let not_pem = dir.path().join("empty.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let err = server_config(&TlsPaths {
            cert: not_pem,
            ..paths.clone()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("no CERTIFICATE"), "{err}");

        std::fs::set_permissions(&paths.key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = server_config(&paths).unwrap_err().to_string();
        assert!(err.contains("readable by group or others"), "{err}");
    }
}
