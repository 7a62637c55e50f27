//! Dev-mode PKI: a local CA, a server certificate for localhost and a client certificate per principal,
//! minted with rcgen (ECDSA P-256). Keys go through [`crate::files`].
//!
//! Files under `<state_dir>/pki/`: `ca.pem`, `ca.key`, `server.pem`, `server.key`, `admin.pem`,
//! `admin.key`; and `<state_dir>/master.key` (32 random bytes, for the secrets store). Keys are 0600 and
//! written atomically (temp file + rename), so a crash never leaves half a key.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::files::{
    FileError, create_private_dir, io_err, read_private, write_private, write_public,
};

/// The principal of the dev admin certificate the dev PKI mints (`admin.pem`).
pub const DEV_ADMIN_PRINCIPAL: &str = "spiffe://brainstem.dev/admin";

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path}: readable by group or others (mode {mode:o}); chmod 600 it")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("invalid principal {principal:?}: {reason}")]
    Principal { principal: String, reason: String },
}

impl From<FileError> for PkiError {
    fn from(err: FileError) -> Self {
        match err {
            FileError::Io { path, source } => PkiError::Io { path, source },
            FileError::Permissions { path, mode } => PkiError::Permissions { path, mode },
        }
    }
}

/// Dev-mode file layout under a state directory.
#[derive(Debug, Clone)]
pub struct DevPki {
    pub dir: PathBuf,
}

/// What [`DevPki::ensure`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ensured {
    Created,
    Existing,
}

impl DevPki {
    pub fn new(state_dir: &Path) -> Self {
        DevPki {
            dir: state_dir.join("pki"),
        }
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.pem")
    }
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server.key")
    }
    pub fn admin_cert(&self) -> PathBuf {
        self.dir.join("admin.pem")
    }
    pub fn admin_key(&self) -> PathBuf {
        self.dir.join("admin.key")
    }
    pub fn master_key(&self) -> PathBuf {
        self.dir
            .parent()
            .map_or_else(|| PathBuf::from("master.key"), |p| p.join("master.key"))
    }

    /// Creates whatever of the dev PKI is missing. Existing files are kept, so certificates handed to
    /// clients stay valid across restarts. A missing CA means everything is minted anew.
    pub fn ensure(&self) -> Result<Ensured, PkiError> {
        create_private_dir(&self.dir).map_err(io_err(&self.dir))?;
        let mut created = false;
        if !self.ca_cert().exists() || !self.ca_key().exists() {
            let (params, key) = ca_params()?;
            let cert = params.self_signed(&key)?;
            write_private(&self.ca_key(), key.serialize_pem().as_bytes())?;
            write_public(&self.ca_cert(), cert.pem().as_bytes())?;
            // Leaves signed by an old CA would no longer verify.
            for stale in [self.server_cert(), self.admin_cert()] {
                let _ = std::fs::remove_file(stale);
            }
            created = true;
        }
        if !self.server_cert().exists() || !self.server_key().exists() {
            let issuer = self.issuer()?;
            let (cert, key) = server_certificate(&issuer)?;
            write_private(&self.server_key(), key.as_bytes())?;
            write_public(&self.server_cert(), cert.as_bytes())?;
            created = true;
        }
        if !self.admin_cert().exists() || !self.admin_key().exists() {
            let issuer = self.issuer()?;
            let (cert, key) = client_certificate(&issuer, DEV_ADMIN_PRINCIPAL, 825)?;
            write_private(&self.admin_key(), key.as_bytes())?;
            write_public(&self.admin_cert(), cert.as_bytes())?;
            created = true;
        }
        let master = self.master_key();
        if !master.exists() {
            let mut key = [0u8; 32];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key).map_err(
                |_| PkiError::Io {
                    path: master.clone(),
                    source: std::io::Error::other("system random source failed"),
                },
            )?;
            write_private(&master, &key)?;
            created = true;
        }
        Ok(if created {
            Ensured::Created
        } else {
            Ensured::Existing
        })
    }

    /// The dev CA as a signer.
    pub fn issuer(&self) -> Result<Issuer<'static, KeyPair>, PkiError> {
        let key_pem = read_private(&self.ca_key())?;
        let key = KeyPair::from_pem(&String::from_utf8_lossy(&key_pem))?;
        let cert_pem = std::fs::read_to_string(self.ca_cert()).map_err(io_err(&self.ca_cert()))?;
        Ok(Issuer::from_ca_cert_pem(&cert_pem, key)?)
    }

    /// Mints a client certificate for `principal` and writes `<out_dir>/<file_stem>.pem` and `.key`.
    pub fn issue_client(
        &self,
        principal: &str,
        out_dir: &Path,
        validity_days: u32,
    ) -> Result<(PathBuf, PathBuf), PkiError> {
        let issuer = self.issuer()?;
        let (cert, key) = client_certificate(&issuer, principal, validity_days)?;
        create_private_dir(out_dir).map_err(io_err(out_dir))?;
        let stem = file_stem(principal);
        let cert_path = out_dir.join(format!("{stem}.pem"));
        let key_path = out_dir.join(format!("{stem}.key"));
        write_private(&key_path, key.as_bytes())?;
        write_public(&cert_path, cert.as_bytes())?;
        Ok((cert_path, key_path))
    }
}

/// A file name for a principal: its last path segment, with anything unusual replaced.
pub fn file_stem(principal: &str) -> String {
    let last = principal
        .trim_end_matches('/')
        .rsplit(['/', ':'])
        .next()
        .unwrap_or(principal);
    let stem: String = last
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if stem.is_empty() || stem.starts_with('.') {
        format!("client{stem}")
    } else {
        stem
    }
}

fn ca_params() -> Result<(CertificateParams, KeyPair), PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.distinguished_name = dn("brainstem dev CA");
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, 3650);
    Ok((params, KeyPair::generate()?))
}

fn server_certificate(issuer: &Issuer<'_, KeyPair>) -> Result<(String, String), PkiError> {
    let mut params = CertificateParams::new(vec!["localhost".to_owned()])?;
    params
        .subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    params
        .subject_alt_names
        .push(SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()));
    params.distinguished_name = dn("brainstemd");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    set_validity(&mut params, 825);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Whether `name` starts with an RFC 3986 scheme and its `:` (`ALPHA *( ALPHA / DIGIT / "+" / "-" /
/// "." ) ":"`). brainstemd takes principals with a `:` only from SAN URIs that pass this, and
/// principals without one only from CNs, so the two never name the same principal.
pub fn has_uri_scheme(name: &str) -> bool {
    let Some((scheme, _)) = name.split_once(':') else {
        return false;
    };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// A client certificate. A principal with a `:` must be a URI (`spiffe://…`, `urn:…`) and goes into
/// the SAN URI, with its last segment as CN; any other principal becomes the CN alone. Either way
/// brainstemd reads back exactly `principal`.
pub fn client_certificate(
    issuer: &Issuer<'_, KeyPair>,
    principal: &str,
    validity_days: u32,
) -> Result<(String, String), PkiError> {
    let bad = |reason: &str| PkiError::Principal {
        principal: principal.to_owned(),
        reason: reason.to_owned(),
    };
    if principal.is_empty() || principal.len() > 256 {
        return Err(bad("must be 1 to 256 characters"));
    }
    if principal
        .chars()
        .any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(bad("must not contain spaces or control characters"));
    }
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    if principal.contains(':') {
        if !has_uri_scheme(principal) {
            return Err(bad(
                "a name with ':' must be a URI with a scheme (e.g. spiffe://org/agent, urn:org:agent)",
            ));
        }
        if principal
            .get(..5)
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("unix:"))
        {
            return Err(bad(
                "the scheme unix: is reserved for unix-socket peers (unix:uid:N); brainstemd refuses it in certificates",
            ));
        }
        let uri = rcgen::string::Ia5String::try_from(principal)
            .map_err(|_| bad("a URI principal must be ASCII"))?;
        params.subject_alt_names.push(SanType::URI(uri));
        params.distinguished_name = dn(&file_stem(principal));
    } else {
        params.distinguished_name = dn(principal);
    }
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    set_validity(&mut params, validity_days);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "brainstem");
    dn.push(DnType::CommonName, common_name);
    dn
}

fn set_validity(params: &mut CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days.max(1)));
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn dev_pki_is_created_once_with_private_keys() {
        let dir = tempfile::tempdir().unwrap();
        let pki = DevPki::new(dir.path());
        assert_eq!(pki.ensure().unwrap(), Ensured::Created);
        for key in [
            pki.ca_key(),
            pki.server_key(),
            pki.admin_key(),
            pki.master_key(),
        ] {
            let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", key.display());
        }
        assert_eq!(std::fs::read(pki.master_key()).unwrap().len(), 32);
        let admin_before = std::fs::read(pki.admin_cert()).unwrap();
        assert_eq!(pki.ensure().unwrap(), Ensured::Existing);
        assert_eq!(std::fs::read(pki.admin_cert()).unwrap(), admin_before);
    }

    #[test]
    fn bad_principals_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let pki = DevPki::new(dir.path());
        pki.ensure().unwrap();
        for bad in ["", "has space", "spiffe://ünïcode/x"] {
            assert!(
                matches!(
                    pki.issue_client(bad, dir.path(), 1),
                    Err(PkiError::Principal { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn file_stems() {
        assert_eq!(file_stem("spiffe://host/agent/web"), "web");
        assert_eq!(file_stem("reader"), "reader");
        assert_eq!(file_stem("a b"), "a_b");
        assert_eq!(file_stem("../x"), "x");
        assert_eq!(file_stem(".."), "client..");
    }
}
