//! Who is calling: the principal named by the client certificate that mutual TLS verified.
//!
//! The principal is the certificate's first SAN URI (e.g. `spiffe://host/agent/web`), else its subject
//! CN. It is worked out once per connection, at the handshake, and reaches handlers as a typed request
//! extension ([`Principal`]).

use std::fmt;
use std::sync::Arc;

use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// Where a principal's name came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrincipalSource {
    SanUri,
    CommonName,
}

impl PrincipalSource {
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalSource::SanUri => "san_uri",
            PrincipalSource::CommonName => "common_name",
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
}

/// Extracts the principal from a DER certificate: first SAN URI, else subject CN.
pub fn principal_from_der(der: &[u8]) -> Result<Principal, IdentityError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|err| IdentityError::Malformed(err.to_string()))?;
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        let uri = san.value.general_names.iter().find_map(|name| match name {
            GeneralName::URI(uri) if !uri.is_empty() => Some(*uri),
            _ => None,
        });
        if let Some(uri) = uri {
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
}
