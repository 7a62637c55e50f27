//! The master keys in use and the record that says which key the state is sealed under.
//!
//! `meta/master_key` ([`KeyState`]) names the current key's id and, while a master-key rotation is
//! unfinished, the key it moves to and that key's file. At start ([`KeySet::open`]) the configured
//! key is checked against it before anything is unsealed:
//!
//! - the record names the configured key: the state is sealed under it. If a rotation to another
//!   key was interrupted, that key's file is read too: values re-wrapped so far open with it, the
//!   rest with the configured key, and new seals use the new key until a re-run finishes;
//! - the configured key is the target of an interrupted rotation: the old key's file is read too;
//! - the configured key was replaced by a finished rotation, or is simply another key: the start is
//!   refused with the key file, both ids and (after a rotation) the new key's file. Nothing is
//!   written before the check, so a wrong key overwrites nothing.
//!
//! The record is first written once the token signing keys opened with the configured key, so a
//! state from before this record existed is adopted only with the key that really seals it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use crate::crypto::MasterKey;
use crate::store::{Record, Store, StoreError, Tree, trees, unix_ms_now};

const STATE_KEY: &[u8] = b"master_key";

/// `meta/master_key`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyState {
    /// The key everything is sealed under once no rotation is unfinished.
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<Rotation>,
    /// The last finished rotation, to tell an operator who starts with the old key where the new
    /// one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced: Option<Rotation>,
}

impl Record for KeyState {
    const VERSION: u8 = 1;
}

/// A rotation from one key to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rotation {
    pub from: String,
    pub from_file: String,
    pub to: String,
    pub to_file: String,
    pub at_unix_ms: u64,
}

/// Why the keys could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("master key {path}: {reason}")]
    Key { path: String, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The keys in use: `current` seals; `previous` (during a rotation) still opens what it sealed.
#[derive(Debug)]
pub struct Keys {
    pub current: Arc<MasterKey>,
    pub current_file: PathBuf,
    pub previous: Option<Arc<MasterKey>>,
}

impl Keys {
    /// The key with this id, if it is in use.
    pub fn by_id(&self, id: &str) -> Option<&Arc<MasterKey>> {
        std::iter::once(&self.current)
            .chain(self.previous.as_ref())
            .find(|k| k.id() == id)
    }

    /// Every key in use, current first.
    pub fn all(&self) -> Vec<Arc<MasterKey>> {
        std::iter::once(self.current.clone())
            .chain(self.previous.clone())
            .collect()
    }
}

/// Re-seals one subsystem's material under the key set's current key during a master-key rotation
/// (e.g. the registry's card-signing key); `Err` leaves the rotation unfinished, to be run again.
pub type Resealer =
    Arc<dyn Fn() -> futures::future::BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// The daemon's master keys, shared by every subsystem that seals (token signing keys, secrets).
pub struct KeySet {
    keys: ArcSwap<Keys>,
    meta: Tree,
    /// Serialises rotations.
    rotating: tokio::sync::Mutex<()>,
    /// Subsystems that keep sealed material of their own, re-sealed before a rotation finishes.
    resealers: std::sync::Mutex<Vec<(&'static str, Resealer)>>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet")
            .field("keys", &self.keys.load())
            .finish()
    }
}

fn load(path: &Path) -> Result<MasterKey, KeyError> {
    MasterKey::load(path).map_err(|err| KeyError::Key {
        path: path.display().to_string(),
        reason: err.to_string(),
    })
}

impl KeySet {
    /// Checks the configured key (read from `path`) against the state's record; see the module docs.
    pub fn open(store: &Store, configured: MasterKey, path: &Path) -> Result<KeySet, KeyError> {
        let meta = store.tree(trees::META)?;
        let state: Option<KeyState> = meta.get(STATE_KEY)?;
        let configured = Arc::new(configured);
        let refuse = |reason: String| KeyError::Key {
            path: path.display().to_string(),
            reason,
        };
        let keys = match state {
            None => Keys {
                current: configured,
                current_file: path.to_owned(),
                previous: None,
            },
            Some(state) if state.id == configured.id() => match &state.rotation {
                None => Keys {
                    current: configured,
                    current_file: path.to_owned(),
                    previous: None,
                },
                Some(rotation) => {
                    let new = Arc::new(load(Path::new(&rotation.to_file)).map_err(|err| {
                        refuse(format!(
                            "an unfinished master-key rotation to key {} needs its file: {err}",
                            rotation.to
                        ))
                    })?);
                    if new.id() != rotation.to {
                        return Err(refuse(format!(
                            "an unfinished master-key rotation moves to key {} in {}, which now holds key {}; restore that file and run `brainstemctl secrets rotate-master-key --new-key-file {}` again",
                            rotation.to,
                            rotation.to_file,
                            new.id(),
                            rotation.to_file
                        )));
                    }
                    tracing::warn!(
                        from = %rotation.from,
                        to = %rotation.to,
                        new_key_file = %rotation.to_file,
                        "a master-key rotation is unfinished: both keys are in use until `brainstemctl secrets rotate-master-key` runs again with the same file"
                    );
                    Keys {
                        current: new,
                        current_file: PathBuf::from(&rotation.to_file),
                        previous: Some(configured),
                    }
                }
            },
            Some(state) => match &state.rotation {
                Some(rotation) if rotation.to == configured.id() => {
                    let old = Arc::new(load(Path::new(&rotation.from_file)).map_err(|err| {
                        refuse(format!(
                            "an unfinished master-key rotation from key {} needs the old key's file: {err}",
                            rotation.from
                        ))
                    })?);
                    if old.id() != rotation.from {
                        return Err(refuse(format!(
                            "an unfinished master-key rotation from key {} needs that key in {}; it now holds key {}",
                            rotation.from,
                            rotation.from_file,
                            old.id()
                        )));
                    }
                    Keys {
                        current: configured,
                        current_file: path.to_owned(),
                        previous: Some(old),
                    }
                }
                _ => {
                    let hint = match &state.replaced {
                        Some(r) if r.from == configured.id() && r.to == state.id => format!(
                            "; it was replaced by key {} from {} (unix ms {}): point [keys] master_key_file (or the master.key credential) at that key",
                            r.to, r.to_file, r.at_unix_ms
                        ),
                        _ => String::new(),
                    };
                    return Err(refuse(format!(
                        "not the key this state was sealed with: it is key {}, the state needs key {}{hint}; nothing was changed",
                        configured.id(),
                        state.id
                    )));
                }
            },
        };
        Ok(KeySet {
            keys: ArcSwap::from_pointee(keys),
            meta,
            rotating: tokio::sync::Mutex::new(()),
            resealers: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Records the current key as the one the state is sealed under, if nothing is recorded yet
    /// (call once the sealed material opened with it).
    pub fn adopt(&self) -> Result<(), StoreError> {
        if self.meta.get::<KeyState>(STATE_KEY)?.is_none() {
            let state = KeyState {
                id: self.current().id().to_owned(),
                rotation: None,
                replaced: None,
            };
            self.meta.put_durable(STATE_KEY, &state)?;
        }
        Ok(())
    }

    /// The keys in use now.
    pub fn keys(&self) -> Arc<Keys> {
        self.keys.load_full()
    }

    /// The key new seals use.
    pub fn current(&self) -> Arc<MasterKey> {
        self.keys.load().current.clone()
    }

    /// Starts (or resumes) a rotation to `new`, read from `new_file`: records it durably, then makes
    /// `new` the sealing key with the old one still opening. Returns the guard that keeps other
    /// rotations out until [`KeySet::finish`].
    pub async fn begin(
        &self,
        new: MasterKey,
        new_file: &Path,
    ) -> Result<tokio::sync::MutexGuard<'_, ()>, String> {
        let guard = self.rotating.lock().await;
        let keys = self.keys();
        let state: Option<KeyState> = self.meta.get(STATE_KEY).map_err(|e| e.to_string())?;
        let state = state.unwrap_or(KeyState {
            id: keys.current.id().to_owned(),
            rotation: None,
            replaced: None,
        });
        let new_file = new_file.display().to_string();
        match &state.rotation {
            Some(r) if r.to != new.id() => {
                return Err(format!(
                    "a rotation to key {} from {} is unfinished; run it again with that file first",
                    r.to, r.to_file
                ));
            }
            Some(_) => {}
            None if state.id == new.id() => {
                return Err(format!("key {} is already the master key", new.id()));
            }
            None => {
                let rotation = Rotation {
                    from: state.id.clone(),
                    from_file: keys.current_file.display().to_string(),
                    to: new.id().to_owned(),
                    to_file: new_file.clone(),
                    at_unix_ms: unix_ms_now(),
                };
                let recorded = KeyState {
                    rotation: Some(rotation),
                    ..state.clone()
                };
                self.meta
                    .put_async(STATE_KEY, &recorded)
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        if keys.current.id() != new.id() {
            self.keys.store(Arc::new(Keys {
                current: Arc::new(new),
                current_file: PathBuf::from(new_file),
                previous: Some(keys.current.clone()),
            }));
        }
        Ok(guard)
    }

    /// Registers a subsystem's re-sealing step (at set-up), run by [`KeySet::reseal_registered`].
    pub fn add_resealer(&self, name: &'static str, resealer: Resealer) {
        self.resealers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((name, resealer));
    }

    /// Runs every registered re-sealing step under the current key (between [`KeySet::begin`] and
    /// [`KeySet::finish`]); the first failure names its subsystem.
    pub async fn reseal_registered(&self) -> Result<usize, String> {
        let resealers: Vec<(&'static str, Resealer)> = self
            .resealers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for (name, reseal) in &resealers {
            reseal().await.map_err(|err| format!("{name}: {err}"))?;
        }
        Ok(resealers.len())
    }

    /// Ends a rotation whose material is all re-sealed: the new key is the only one in use.
    pub async fn finish(&self, _guard: tokio::sync::MutexGuard<'_, ()>) -> Result<(), StoreError> {
        let keys = self.keys();
        let state: Option<KeyState> = self.meta.get(STATE_KEY)?;
        let rotation = state.and_then(|s| s.rotation);
        let done = KeyState {
            id: keys.current.id().to_owned(),
            rotation: None,
            replaced: rotation,
        };
        self.meta.put_async(STATE_KEY, &done).await?;
        self.keys.store(Arc::new(Keys {
            current: keys.current.clone(),
            current_file: keys.current_file.clone(),
            previous: None,
        }));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::config::{FlushPolicy, StoreConfig};

    fn store(dir: &Path) -> Store {
        let config = StoreConfig {
            flush: FlushPolicy::Always,
            flush_interval_ms: 100,
            cache_capacity_bytes: 8 << 20,
            min_free_bytes: 0,
        };
        Store::open(&dir.join("state"), &config).unwrap()
    }

    fn key_file(dir: &Path, name: &str, byte: u8) -> PathBuf {
        let path = dir.join(name);
        crate::crypto::files::write_private(&path, &[byte; 32]).unwrap();
        path
    }

    #[tokio::test]
    async fn the_recorded_key_is_required_and_a_rotation_survives_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let old = key_file(dir.path(), "old.key", 1);
        let new = key_file(dir.path(), "new.key", 2);
        let wrong = key_file(dir.path(), "wrong.key", 3);

        let set = KeySet::open(&store, MasterKey::load(&old).unwrap(), &old).unwrap();
        set.adopt().unwrap();
        let old_id = set.current().id().to_owned();
        let err = KeySet::open(&store, MasterKey::load(&wrong).unwrap(), &wrong).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("wrong.key") && text.contains("not the key") && text.contains(&old_id),
            "{text}"
        );

        // Begin a rotation, then "crash": a start with the old key uses both.
        let guard = set
            .begin(MasterKey::load(&new).unwrap(), &new)
            .await
            .unwrap();
        drop(guard);
        let resumed = KeySet::open(&store, MasterKey::load(&old).unwrap(), &old).unwrap();
        let keys = resumed.keys();
        assert_eq!(keys.current.id(), MasterKey::load(&new).unwrap().id());
        assert_eq!(keys.previous.as_ref().unwrap().id(), old_id);
        // A start already switched to the new key reads the old one from its file.
        let switched = KeySet::open(&store, MasterKey::load(&new).unwrap(), &new).unwrap();
        assert_eq!(switched.keys().previous.as_ref().unwrap().id(), old_id);
        // Another target is refused while this one is unfinished.
        assert!(
            resumed
                .begin(MasterKey::load(&wrong).unwrap(), &wrong)
                .await
                .unwrap_err()
                .contains("unfinished")
        );

        let guard = resumed
            .begin(MasterKey::load(&new).unwrap(), &new)
            .await
            .unwrap();
        resumed.finish(guard).await.unwrap();
        assert!(resumed.keys().previous.is_none());
        // The old key is now refused, naming the new key's file.
        let text = KeySet::open(&store, MasterKey::load(&old).unwrap(), &old)
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("replaced by key") && text.contains("new.key"),
            "{text}"
        );
        assert!(KeySet::open(&store, MasterKey::load(&new).unwrap(), &new).is_ok());
        assert!(
            resumed
                .begin(MasterKey::load(&new).unwrap(), &new)
                .await
                .unwrap_err()
                .contains("already")
        );
    }
}
