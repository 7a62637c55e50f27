//! Envelope encryption: every secret version gets its own random 256-bit data key; the value is
//! sealed with it (AES-256-GCM, ring) and the data key is sealed with the master key. Both seals
//! bind the secret's path and version as associated data, so a ciphertext or a wrapped key copied
//! to another path or version does not open: [`OpenError`], never another secret's plaintext.
//!
//! Layout of both seals: `nonce (12) || ciphertext || tag (16)`. Data keys and plaintext buffers
//! are wiped (`zeroize`) when dropped.

use ring::aead::{AES_256_GCM, LessSafeKey, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::crypto::master::{open_with, seal_with};
use crate::crypto::{CryptoError, MasterKey};

const DATA_KEY_LEN: usize = 32;

/// A sealed version: which master key wrapped its data key, the wrapped key, the sealed value.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sealed {
    pub kek: String,
    pub wrapped_key: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

/// A [`Sealed`] borrowed from where it is stored (a Get opens it without copying it first).
#[derive(Clone, Copy)]
pub struct SealedRef<'a> {
    /// The master key's id; checked to be UTF-8 only where it is looked up or kept.
    pub kek: &'a [u8],
    pub wrapped_key: &'a [u8],
    pub ciphertext: &'a [u8],
}

impl Sealed {
    pub fn as_ref(&self) -> SealedRef<'_> {
        SealedRef {
            kek: self.kek.as_bytes(),
            wrapped_key: &self.wrapped_key,
            ciphertext: &self.ciphertext,
        }
    }
}

impl SealedRef<'_> {
    /// `None` when the master key's id is not UTF-8.
    pub fn to_owned(self) -> Option<Sealed> {
        Some(Sealed {
            kek: std::str::from_utf8(self.kek).ok()?.to_owned(),
            wrapped_key: self.wrapped_key.to_vec(),
            ciphertext: self.ciphertext.to_vec(),
        })
    }

    /// The master key's id, if it is UTF-8 (every id this daemon writes is hex).
    pub fn kek_id(&self) -> Option<&str> {
        std::str::from_utf8(self.kek).ok()
    }
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealed")
            .field("kek", &self.kek)
            .field("ciphertext_bytes", &self.ciphertext.len())
            .finish_non_exhaustive()
    }
}

/// Why a version does not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("its data key does not unwrap with the master key")]
    Key,
    #[error("its ciphertext does not open with its data key")]
    Value,
}

/// The associated data of a data key (`kind` "key") or a value ("value"):
/// `brainstem secret <kind>\0<path>\0<version, big-endian>`. One buffer serves both of a seal or
/// an open (one allocation, not two).
struct Ad(Vec<u8>);

impl Ad {
    fn new(path: &str) -> Ad {
        Ad(Vec::with_capacity(32 + path.len()))
    }

    fn of(&mut self, kind: &str, path: &str, version: u64) -> &[u8] {
        let ad = &mut self.0;
        ad.clear();
        ad.extend_from_slice(b"brainstem secret ");
        ad.extend_from_slice(kind.as_bytes());
        ad.push(0);
        ad.extend_from_slice(path.as_bytes());
        ad.push(0);
        ad.extend_from_slice(&version.to_be_bytes());
        ad
    }
}

/// Seals `value` as version `version` of `path`.
pub fn seal(
    master: &MasterKey,
    rng: &SystemRandom,
    path: &str,
    version: u64,
    value: &[u8],
) -> Result<Sealed, CryptoError> {
    let mut data_key = Zeroizing::new([0u8; DATA_KEY_LEN]);
    rng.fill(&mut data_key[..])
        .map_err(|_| CryptoError::Random)?;
    let mut ad = Ad::new(path);
    let wrapped_key = master.seal(&data_key[..], ad.of("key", path, version))?;
    let key = LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, &data_key[..]).map_err(|_| CryptoError::Random)?,
    );
    let ciphertext = seal_with(&key, rng, value, ad.of("value", path, version))?;
    Ok(Sealed {
        kek: master.id().to_owned(),
        wrapped_key,
        ciphertext,
    })
}

/// A version's data key, unwrapped and ready to open its value. It remembers the wrapped form it
/// came from: [`DataKey::unwraps`] tells whether it is the key of a stored version as read now,
/// so a kept one is used only for the very bytes it was unwrapped from (a version whose wrapped
/// key is damaged on disk, or re-wrapped under a new master key, is unwrapped again).
///
/// ring does not wipe a key schedule when it is dropped; the raw key bytes are wiped.
pub struct DataKey {
    kek: Box<[u8]>,
    wrapped: Box<[u8]>,
    key: LessSafeKey,
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKey")
            .field("kek", &String::from_utf8_lossy(&self.kek))
            .finish_non_exhaustive()
    }
}

impl DataKey {
    /// Unwraps the data key of version `version` of `path` with `master`.
    pub fn unwrap(
        master: &MasterKey,
        path: &str,
        version: u64,
        sealed: SealedRef<'_>,
    ) -> Result<DataKey, OpenError> {
        let mut ad = Ad::new(path);
        let data_key = master
            .unseal(sealed.wrapped_key, ad.of("key", path, version))
            .map_err(|_| OpenError::Key)?;
        let key =
            LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &data_key).map_err(|_| OpenError::Key)?);
        Ok(DataKey {
            kek: sealed.kek.into(),
            wrapped: sealed.wrapped_key.into(),
            key,
        })
    }

    /// Is this the key `sealed`'s wrapped key unwraps to (the same master key, the same bytes)?
    /// The caller keeps a data key per path and version, and the wrapped key's seal binds both.
    pub fn unwraps(&self, sealed: SealedRef<'_>) -> bool {
        *self.kek == *sealed.kek && *self.wrapped == *sealed.wrapped_key
    }

    /// Opens the sealed value (`ciphertext`, as [`Sealed::ciphertext`]) of version `version` of
    /// `path` (whose key this is). The plaintext is wiped when the returned buffer is dropped.
    pub fn open(
        &self,
        path: &str,
        version: u64,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, OpenError> {
        open_with(
            &self.key,
            ciphertext,
            Ad::new(path).of("value", path, version),
        )
        .ok_or(OpenError::Value)
    }
}

/// Re-wraps the data key of a sealed version under `new` (master-key rotation); the value's
/// ciphertext is untouched.
pub fn rewrap(
    old: &MasterKey,
    new: &MasterKey,
    path: &str,
    version: u64,
    sealed: &Sealed,
) -> Result<Sealed, OpenError> {
    let mut ad = Ad::new(path);
    let data_key = old
        .unseal(&sealed.wrapped_key, ad.of("key", path, version))
        .map_err(|_| OpenError::Key)?;
    let wrapped_key = new
        .seal(&data_key, ad.of("key", path, version))
        .map_err(|_| OpenError::Key)?;
    Ok(Sealed {
        kek: new.id().to_owned(),
        wrapped_key,
        ciphertext: sealed.ciphertext.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn master(b: u8) -> MasterKey {
        MasterKey::new(&[b; 32]).unwrap()
    }

    fn open(
        master: &MasterKey,
        path: &str,
        version: u64,
        sealed: SealedRef<'_>,
    ) -> Result<Zeroizing<Vec<u8>>, OpenError> {
        DataKey::unwrap(master, path, version, sealed)?.open(path, version, sealed.ciphertext)
    }

    #[test]
    fn a_version_opens_only_at_its_path_and_version() {
        let m = master(1);
        let rng = SystemRandom::new();
        let sealed = seal(&m, &rng, "/a/b", 3, b"hunter2-but-longer").unwrap();
        assert_eq!(sealed.kek, m.id());
        assert_eq!(
            &open(&m, "/a/b", 3, sealed.as_ref()).unwrap()[..],
            b"hunter2-but-longer"
        );
        assert_eq!(open(&m, "/a/c", 3, sealed.as_ref()), Err(OpenError::Key));
        assert_eq!(open(&m, "/a/b", 4, sealed.as_ref()), Err(OpenError::Key));
        assert_eq!(
            open(&master(2), "/a/b", 3, sealed.as_ref()),
            Err(OpenError::Key)
        );
        // A value moved under another version's (valid) data key still does not open.
        let other = seal(&m, &rng, "/a/b", 4, b"x").unwrap();
        let swapped = Sealed {
            ciphertext: sealed.ciphertext.clone(),
            ..other
        };
        assert_eq!(open(&m, "/a/b", 4, swapped.as_ref()), Err(OpenError::Value));
        assert!(!format!("{sealed:?}").contains("wrapped"));
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let m = master(1);
        let sealed = seal(&m, &SystemRandom::new(), "/p", 1, b"value").unwrap();
        for i in 0..sealed.ciphertext.len() {
            let mut bad = sealed.clone();
            bad.ciphertext[i] ^= 1;
            assert_eq!(
                open(&m, "/p", 1, bad.as_ref()),
                Err(OpenError::Value),
                "byte {i}"
            );
        }
        for i in 0..sealed.wrapped_key.len() {
            let mut bad = sealed.clone();
            bad.wrapped_key[i] ^= 1;
            assert_eq!(
                open(&m, "/p", 1, bad.as_ref()),
                Err(OpenError::Key),
                "key byte {i}"
            );
        }
        let mut short = sealed.clone();
        short.ciphertext.truncate(10);
        assert_eq!(open(&m, "/p", 1, short.as_ref()), Err(OpenError::Value));
    }

    #[test]
    fn rewrapping_keeps_the_value_and_moves_the_key() {
        let (old, new) = (master(1), master(2));
        let sealed = seal(&old, &SystemRandom::new(), "/p", 1, b"value").unwrap();
        let moved = rewrap(&old, &new, "/p", 1, &sealed).unwrap();
        assert_eq!(moved.kek, new.id());
        assert_eq!(moved.ciphertext, sealed.ciphertext);
        assert_eq!(&open(&new, "/p", 1, moved.as_ref()).unwrap()[..], b"value");
        assert_eq!(open(&old, "/p", 1, moved.as_ref()), Err(OpenError::Key));
        assert_eq!(rewrap(&new, &old, "/p", 1, &sealed), Err(OpenError::Key));
    }

    #[test]
    fn a_kept_data_key_serves_only_the_wrapped_bytes_it_came_from() {
        let (old, new) = (master(1), master(2));
        let rng = SystemRandom::new();
        let sealed = seal(&old, &rng, "/p", 1, b"value").unwrap();
        let key = DataKey::unwrap(&old, "/p", 1, sealed.as_ref()).unwrap();
        assert!(key.unwraps(sealed.as_ref()));
        assert_eq!(
            &key.open("/p", 1, &sealed.ciphertext).unwrap()[..],
            b"value"
        );
        assert_eq!(
            format!("{key:?}"),
            format!("DataKey {{ kek: {:?}, .. }}", old.id())
        );
        // Re-wrapped under another master key: the same data key, but not the same bytes.
        let moved = rewrap(&old, &new, "/p", 1, &sealed).unwrap();
        assert!(!key.unwraps(moved.as_ref()));
        for i in 0..sealed.wrapped_key.len() {
            let mut bad = sealed.clone();
            bad.wrapped_key[i] ^= 1;
            assert!(!key.unwraps(bad.as_ref()), "key byte {i}");
        }
        let mut bad = sealed.clone();
        bad.kek = "other".into();
        assert!(!key.unwraps(bad.as_ref()));
        let mut bad = sealed.clone();
        bad.kek.push('0');
        assert!(!key.unwraps(bad.as_ref()));
        // The value is still authenticated: a flipped byte, or another version's value, fails.
        let mut bad = sealed.clone();
        bad.ciphertext[13] ^= 1;
        assert_eq!(key.open("/p", 1, &bad.ciphertext), Err(OpenError::Value));
        let other = seal(&old, &rng, "/p", 2, b"value").unwrap();
        assert!(!key.unwraps(other.as_ref()));
        assert_eq!(key.open("/p", 1, &other.ciphertext), Err(OpenError::Value));
        assert_eq!(key.open("/p", 2, &sealed.ciphertext), Err(OpenError::Value));
    }
}
