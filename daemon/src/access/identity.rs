//! Who is calling: the principal named by the client certificate that mutual TLS verified.
//!
//! The principal is the certificate's first SAN URI (e.g. `spiffe://host/agent/web`), else its subject
//! CN. It is worked out once per connection, at the handshake, and reaches handlers as a typed request
//! extension ([`Principal`]).
//!
//! The two sources never name the same principal: a SAN URI principal must start with a URI scheme
//! (`scheme:`), and a CN principal must contain no `:`. A certificate that breaks this (a CN such as
//! `spiffe://brainstem.dev/admin`, or a SAN URI with no scheme) names no principal, so its calls answer
//! UNAUTHENTICATED; a CN can therefore never pose as a SAN URI that a grant names.
//!
//! A third source serves the flag-evaluation unix socket alone: the kernel-reported uid of the
//! connecting process (`SO_PEERCRED`), named `unix:uid:<uid>`. The `unix:` scheme is reserved for it:
//! a certificate whose SAN URI uses it names no principal, so no certificate can pose as a local uid.

use std::fmt;
use std::sync::Arc;

use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// Where a principal's name came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrincipalSource {
    SanUri,
    CommonName,
    /// A unix-socket peer's uid (`unix:uid:<uid>`).
    UnixPeer,
}

/// The scheme reserved for unix-socket peers; no certificate may name it.
pub const UNIX_SCHEME: &str = "unix:";

/// The principal of a unix-socket peer whose kernel-reported uid is `uid`.
pub fn unix_principal(uid: u32) -> Principal {
    Principal {
        name: format!("{UNIX_SCHEME}uid:{uid}"),
        source: PrincipalSource::UnixPeer,
    }
}

impl PrincipalSource {
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalSource::SanUri => "san_uri",
            PrincipalSource::CommonName => "common_name",
            PrincipalSource::UnixPeer => "unix_peer",
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub source: PrincipalSource,
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("client certificate is not valid DER: {0}")]
    Malformed(String),
    #[error("client certificate names no principal (no SAN URI and no subject CN)")]
    NoPrincipal,
    #[error(
        "client certificate's subject CN contains ':', which only SAN URI principals may; put a URI identity in a SAN URI"
    )]
    UriLikeCommonName,
    #[error("client certificate's first SAN URI has no URI scheme, so it names no principal")]
    SchemelessUri,
    #[error(
        "client certificate's SAN URI uses the scheme \"unix:\", which is reserved for unix-socket peers"
    )]
    ReservedScheme,
}

use brainstem_keys::pki::has_uri_scheme;

/// Extracts the principal from a DER certificate: first SAN URI (which must have a scheme), else subject
/// CN (which must contain no `:`).
pub fn principal_from_der(der: &[u8]) -> Result<Principal, IdentityError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|err| IdentityError::Malformed(err.to_string()))?;
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        let uri = san.value.general_names.iter().find_map(|name| match name {
            GeneralName::URI(uri) if !uri.is_empty() => Some(*uri),
            _ => None,
        });
        if let Some(uri) = uri {
            if !has_uri_scheme(uri) {
                return Err(IdentityError::SchemelessUri);
            }
            if uri
                .get(..UNIX_SCHEME.len())
                .is_some_and(|scheme| scheme.eq_ignore_ascii_case(UNIX_SCHEME))
            {
                return Err(IdentityError::ReservedScheme);
            }
            return Ok(Principal {
                name: uri.to_owned(),
                source: PrincipalSource::SanUri,
            });
        }
    }
    let cn = cert
        .subject()
        .iter_common_name()
        .find_map(|attr| attr.as_str().ok().filter(|s| !s.is_empty()));
    match cn {
        Some(cn) if cn.contains(':') => Err(IdentityError::UriLikeCommonName),
        Some(cn) => Ok(Principal {
            name: cn.to_owned(),
            source: PrincipalSource::CommonName,
        }),
        None => Err(IdentityError::NoPrincipal),
    }
}

/// Per-connection facts, fixed at the handshake and attached to every request on the connection.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote_addr: Option<std::net::SocketAddr>,
    /// `Err` when the certificate verified but names no principal: its calls answer UNAUTHENTICATED.
    pub principal: Result<Arc<Principal>, IdentityError>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};

    fn der(params: CertificateParams) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    /// What the dev PKI mints for a name is read back as exactly that name: names with a `:` as SAN
    /// URIs (any scheme, not only `scheme://`), others as CNs; a `:` without a scheme is refused.
    #[test]
    fn minted_client_certificates_name_their_principal() {
        let dir = tempfile::tempdir().unwrap();
        let pki = brainstem_keys::pki::DevPki::new(dir.path());
        pki.ensure().unwrap();
        let issuer = pki.issuer().unwrap();
        for name in ["urn:brainstem:agent", "spiffe://org/agent/web", "reader"] {
            let (pem, _key) = brainstem_keys::pki::client_certificate(&issuer, name, 1).unwrap();
            let der = pem_to_der(&pem);
            assert_eq!(principal_from_der(&der).unwrap().name, name);
        }
        for bad in ["1x:y", ":nothing", "unix:uid:0"] {
            assert!(
                brainstem_keys::pki::client_certificate(&issuer, bad, 1).is_err(),
                "{bad}"
            );
        }
    }

    fn pem_to_der(pem: &str) -> Vec<u8> {
        let body: String = pem
            .lines()
            .filter(|line| !line.starts_with("-----"))
            .collect();
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, body).unwrap()
    }

    #[test]
    fn san_uri_wins_over_cn() {
        let mut params = CertificateParams::new(vec!["host.example".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, "web");
        params
            .subject_alt_names
            .push(SanType::URI("spiffe://host/agent/web".try_into().unwrap()));
        let p = principal_from_der(&der(params)).unwrap();
        assert_eq!(p.name, "spiffe://host/agent/web");
        assert_eq!(p.source, PrincipalSource::SanUri);
    }

    /// No certificate can pose as a unix-socket peer: the `unix:` scheme names nobody, in any case.
    #[test]
    fn the_unix_scheme_is_reserved_for_socket_peers() {
        for uri in ["unix:uid:0", "UNIX:uid:1000"] {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.distinguished_name.push(DnType::CommonName, "root");
            params
                .subject_alt_names
                .push(SanType::URI(uri.try_into().unwrap()));
            assert_eq!(
                principal_from_der(&der(params)),
                Err(IdentityError::ReservedScheme),
                "{uri}"
            );
        }
        let peer = unix_principal(1000);
        assert_eq!(peer.name, "unix:uid:1000");
        assert_eq!(peer.source.as_str(), "unix_peer");
    }

    #[test]
    fn cn_when_no_san_uri() {
        // A DNS SAN is not an identity; the CN is used.
        let mut params = CertificateParams::new(vec!["host.example".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, "reader");
        let p = principal_from_der(&der(params)).unwrap();
        assert_eq!(p.name, "reader");
        assert_eq!(p.source, PrincipalSource::CommonName);
    }

    #[test]
    fn no_principal_and_garbage_are_errors() {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "only-org");
        assert_eq!(
            principal_from_der(&der(params)),
            Err(IdentityError::NoPrincipal)
        );
        assert!(matches!(
            principal_from_der(b"not a certificate"),
            Err(IdentityError::Malformed(_))
        ));
    }

    /// Issue 9: a CN of `spiffe://brainstem.dev/admin` (no SAN) must not become the admin principal
    /// that grants name by SAN URI; nor may any CN that reads as `scheme:…`.
    #[test]
    fn a_cn_that_looks_like_a_uri_names_no_principal() {
        for cn in [
            "spiffe://brainstem.dev/admin",
            "urn:brainstem:admin",
            "admin:",
            "x:y",
        ] {
            let mut params = CertificateParams::new(vec!["host.example".to_owned()]).unwrap();
            params.distinguished_name.push(DnType::CommonName, cn);
            assert_eq!(
                principal_from_der(&der(params)),
                Err(IdentityError::UriLikeCommonName),
                "{cn}"
            );
        }
        // The same name as a SAN URI is the principal, from the other namespace.
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, "admin");
        params.subject_alt_names.push(SanType::URI(
            "spiffe://brainstem.dev/admin".try_into().unwrap(),
        ));
        let p = principal_from_der(&der(params)).unwrap();
        assert_eq!(
            (p.name.as_str(), p.source),
            ("spiffe://brainstem.dev/admin", PrincipalSource::SanUri)
        );
    }

    #[test]
    fn a_san_uri_without_a_scheme_names_no_principal() {
        for uri in ["reader", "/agent/web", "1x:y", ":nothing"] {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.distinguished_name.push(DnType::CommonName, "reader");
            params
                .subject_alt_names
                .push(SanType::URI(uri.try_into().unwrap()));
            assert_eq!(
                principal_from_der(&der(params)),
                Err(IdentityError::SchemelessUri),
                "{uri}"
            );
        }
    }

    #[test]
    fn uri_schemes() {
        for yes in ["spiffe://x", "urn:a:b", "a+b-c.d:x", "A:"] {
            assert!(has_uri_scheme(yes), "{yes}");
        }
        for no in ["reader", ":x", "1a:x", "a b:x", "web/x:y", ""] {
            assert!(!has_uri_scheme(no), "{no}");
        }
    }
}
