//! The model-card signing key: one Ed25519 key, generated at the first start and stored sealed under
//! the master key (`k:card-signing`, the key id as associated data, like the token signing keys).
//! Canonicalisation, signing and verification are `brainstem_keys::card`, shared with
//! `brainstemctl registry verify-card`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};

use crate::crypto::keyset::KeySet;
use crate::store::{Record, StoreError, Tree};

/// The key's record.
pub const KEY: &[u8] = b"k:card-signing";
/// Associated data of the seal: a sealed card key cannot pass for another sealed value.
const AAD: &[u8] = b"brainstem.registry.card-signing-key";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SealedKey {
    /// The master key that sealed it.
    master_key_id: String,
    /// `nonce || ciphertext || tag`, base64.
    sealed: String,
    /// Hex, for operators reading the store and for the check after unsealing.
    public_key: String,
    created_ms: u64,
}

impl Record for SealedKey {
    const VERSION: u8 = 1;
}

/// The daemon's card signer.
pub struct CardSigner {
    pair: Ed25519KeyPair,
    public_hex: String,
}

impl std::fmt::Debug for CardSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CardSigner")
            .field("public_key", &self.public_hex)
            .finish()
    }
}

/// Why the key could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum CardKeyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("card signing key: {0}")]
    Key(String),
}

impl CardSigner {
    /// Loads the sealed key (resealing it under the current master key when a key rotation left it
    /// under the previous one), or makes and stores one. A key sealed under a master key the daemon
    /// no longer has is replaced by a new one, with a warning: cards signed before stay verifiable
    /// with the old public key they carry.
    pub fn load_or_create(tree: &Tree, keys: &KeySet, now_ms: u64) -> Result<Self, CardKeyError> {
        let in_use = keys.keys();
        if let Some(record) = tree.get::<SealedKey>(KEY)? {
            let opened = in_use.by_id(&record.master_key_id).and_then(|master| {
                let sealed = B64.decode(&record.sealed).ok()?;
                master.unseal(&sealed, AAD).ok()
            });
            match opened
                .and_then(|pkcs8| Ed25519KeyPair::from_pkcs8(&pkcs8).ok().map(|p| (p, pkcs8)))
            {
                Some((pair, pkcs8)) => {
                    if record.master_key_id != in_use.current.id() {
                        store(tree, keys, &pkcs8, &pair, record.created_ms)?;
                    }
                    return Ok(Self::from_pair(pair));
                }
                None => tracing::warn!(
                    old_public_key = %record.public_key,
                    "the registry's card-signing key does not open with the master keys in use; a new key signs model cards from now on (cards signed before verify with the old key)"
                ),
            }
        }
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| CardKeyError::Key("generation failed".into()))?;
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
            .map_err(|_| CardKeyError::Key("generation failed".into()))?;
        store(tree, keys, pkcs8.as_ref(), &pair, now_ms)?;
        Ok(Self::from_pair(pair))
    }

    fn from_pair(pair: Ed25519KeyPair) -> Self {
        let public_hex = brainstem_keys::signing::hex_encode(pair.public_key().as_ref());
        CardSigner { pair, public_hex }
    }

    /// The public key, hex.
    pub fn public_key_hex(&self) -> &str {
        &self.public_hex
    }

    /// `card` signed: the card file's text (canonical JSON).
    pub fn sign(&self, card: &serde_json::Value) -> String {
        brainstem_keys::card::sign_card(&self.pair, card)
    }
}

/// Re-seals the stored key under the key set's current master key when another key in use sealed
/// it (a master-key rotation in progress); `Ok(false)` when nothing needed doing.
pub async fn reseal(tree: &Tree, keys: &KeySet) -> Result<bool, CardKeyError> {
    let Some(mut record) = tree.get::<SealedKey>(KEY)? else {
        return Ok(false);
    };
    let in_use = keys.keys();
    if record.master_key_id == in_use.current.id() {
        return Ok(false);
    }
    let pkcs8 = in_use
        .by_id(&record.master_key_id)
        .and_then(|master| master.unseal(&B64.decode(&record.sealed).ok()?, AAD).ok())
        .ok_or_else(|| {
            CardKeyError::Key(format!(
                "sealed under master key {}, which is not in use",
                record.master_key_id
            ))
        })?;
    let sealed = in_use
        .current
        .seal(&pkcs8, AAD)
        .map_err(|err| CardKeyError::Key(err.to_string()))?;
    record.master_key_id = in_use.current.id().to_owned();
    record.sealed = B64.encode(sealed);
    tree.put_async(KEY, &record).await?;
    Ok(true)
}

fn store(
    tree: &Tree,
    keys: &KeySet,
    pkcs8: &[u8],
    pair: &Ed25519KeyPair,
    created_ms: u64,
) -> Result<(), CardKeyError> {
    let master = keys.current();
    let sealed = master
        .seal(pkcs8, AAD)
        .map_err(|err| CardKeyError::Key(err.to_string()))?;
    let record = SealedKey {
        master_key_id: master.id().to_owned(),
        sealed: B64.encode(sealed),
        public_key: brainstem_keys::signing::hex_encode(pair.public_key().as_ref()),
        created_ms,
    };
    tree.put_durable(KEY, &record)?;
    Ok(())
}
