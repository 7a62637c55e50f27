//! Writes across several trees, all or nothing (sled transactions behind the store's API).
//!
//! ```ignore
//! store.transaction(&[&issued, &revoked], |tx| {
//!     tx.insert(&issued, id, &claims)?;
//!     if tx.get::<RevocationRecord>(&revoked, id)?.is_some() {
//!         return Err(TxError::abort(MyError::Revoked));
//!     }
//!     tx.remove(&revoked, id)?;
//!     Ok(())
//! })?;
//! ```
//!
//! The body sees its own writes; other writers see all of them or none. Values keep the store's
//! envelope (version tag, checksum). When the body returns an error nothing is written. sled runs the
//! body again if a concurrent transaction conflicts with it, so the body must have no effects outside
//! the transaction (compute, read and write through `tx` only). The commit is flushed before
//! `transaction` returns when the flush policy is `always`.

use std::marker::PhantomData;

use sled::transaction::{
    ConflictableTransactionError, TransactionError as SledTransactionError, TransactionalTree,
    UnabortableTransactionError,
};

use super::{Record, Store, StoreError, Tree, decode, encode};

/// Why a transaction did not commit.
#[derive(Debug, thiserror::Error)]
pub enum TransactionError<E> {
    /// The body returned [`TxError::abort`] with this error.
    #[error("transaction aborted: {0}")]
    Aborted(E),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The error a transaction body returns: an abort with the caller's error, or a store failure from a
/// [`Transaction`] call (propagate those with `?`).
pub struct TxError<E>(Failure<E>);

enum Failure<E> {
    Abort(E),
    Store(StoreError),
    Sled(UnabortableTransactionError),
}

impl<E> TxError<E> {
    /// Rolls the transaction back; `transaction` returns [`TransactionError::Aborted`] with `err`.
    pub fn abort(err: E) -> Self {
        TxError(Failure::Abort(err))
    }
}

impl<E: std::fmt::Debug> std::fmt::Debug for TxError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Failure::Abort(err) => f.debug_tuple("Abort").field(err).finish(),
            Failure::Store(err) => f.debug_tuple("Store").field(err).finish(),
            Failure::Sled(err) => f.debug_tuple("Sled").field(err).finish(),
        }
    }
}

impl<E> From<StoreError> for TxError<E> {
    fn from(err: StoreError) -> Self {
        TxError(Failure::Store(err))
    }
}

impl<E> From<UnabortableTransactionError> for TxError<E> {
    fn from(err: UnabortableTransactionError) -> Self {
        TxError(Failure::Sled(err))
    }
}

/// What sled carries through an abort: the caller's error or one of ours.
enum Aborted<E> {
    Caller(E),
    Store(StoreError),
}

impl<E> From<TxError<E>> for ConflictableTransactionError<Aborted<E>> {
    fn from(err: TxError<E>) -> Self {
        match err.0 {
            Failure::Abort(err) => ConflictableTransactionError::Abort(Aborted::Caller(err)),
            Failure::Store(err) => ConflictableTransactionError::Abort(Aborted::Store(err)),
            Failure::Sled(err) => err.into(),
        }
    }
}

/// The trees of one transaction, as the body sees them.
pub struct Transaction<'a, E> {
    trees: &'a [TransactionalTree],
    names: &'a [&'static str],
    _error: PhantomData<fn() -> E>,
}

impl<E> Transaction<'_, E> {
    fn view(&self, tree: &Tree) -> &TransactionalTree {
        let index = self
            .names
            .iter()
            .position(|name| *name == tree.name)
            .unwrap_or_else(|| {
                panic!(
                    "tree {} is not part of this transaction ({:?})",
                    tree.name, self.names
                )
            });
        &self.trees[index]
    }

    /// Writes one value (encoded in the store's envelope).
    pub fn insert<T: Record>(&self, tree: &Tree, key: &[u8], value: &T) -> Result<(), TxError<E>> {
        let bytes = encode(value).map_err(|source| StoreError::Encode {
            tree: tree.name.to_owned(),
            source,
        })?;
        self.view(tree).insert(key, bytes)?;
        Ok(())
    }

    /// Reads one value, including this transaction's own writes. A damaged value is
    /// [`StoreError::Corrupt`].
    pub fn get<T: Record>(&self, tree: &Tree, key: &[u8]) -> Result<Option<T>, TxError<E>> {
        match self.view(tree).get(key)? {
            None => Ok(None),
            Some(bytes) => decode(&bytes).map(Some).map_err(|reason| {
                StoreError::Corrupt {
                    tree: tree.name.to_owned(),
                    key: String::from_utf8_lossy(key).into_owned(),
                    reason,
                }
                .into()
            }),
        }
    }

    /// Removes a key; whether it was there.
    pub fn remove(&self, tree: &Tree, key: &[u8]) -> Result<bool, TxError<E>> {
        Ok(self.view(tree).remove(key)?.is_some())
    }
}

impl Store {
    /// Runs `body` over `trees` as one atomic, isolated transaction and commits its writes together
    /// (see the module docs). `trees` must be trees of this store, each named once.
    pub fn transaction<R, E, F>(&self, trees: &[&Tree], body: F) -> Result<R, TransactionError<E>>
    where
        F: Fn(&Transaction<'_, E>) -> Result<R, TxError<E>>,
    {
        self.refuse_if_full()?;
        let result = self.commit(trees, body)?;
        if self.flush == crate::store::config::FlushPolicy::Always {
            self.flush_written()?;
        }
        Ok(result)
    }

    /// [`Store::transaction`] whose flush does not block a runtime thread.
    pub async fn transaction_async<R, E, F>(
        &self,
        trees: &[&Tree],
        body: F,
    ) -> Result<R, TransactionError<E>>
    where
        F: Fn(&Transaction<'_, E>) -> Result<R, TxError<E>>,
    {
        self.refuse_if_full()?;
        // sled runs the transaction on the calling thread and may wait on its write lock.
        let result = super::off_the_runtime(|| self.commit(trees, body))?;
        if self.flush == crate::store::config::FlushPolicy::Always {
            self.flush_written_async().await?;
        }
        Ok(result)
    }

    fn commit<R, E, F>(&self, trees: &[&Tree], body: F) -> Result<R, TransactionError<E>>
    where
        F: Fn(&Transaction<'_, E>) -> Result<R, TxError<E>>,
    {
        let names: Vec<&'static str> = trees.iter().map(|t| t.name).collect();
        for (i, name) in names.iter().enumerate() {
            assert!(
                !names[..i].contains(name),
                "tree {name} named twice in one transaction"
            );
        }
        let sled_trees: Vec<&sled::Tree> = trees.iter().map(|t| &t.tree).collect();
        // A snapshot sees the whole transaction or none of it.
        let _writing = self.handles.gate.enter();
        let outcome = sled::Transactional::<Aborted<E>>::transaction(
            sled_trees.as_slice(),
            |views: &Vec<TransactionalTree>| {
                let tx = Transaction {
                    trees: views,
                    names: &names,
                    _error: PhantomData,
                };
                body(&tx).map_err(ConflictableTransactionError::from)
            },
        );
        match outcome {
            Ok(result) => Ok(result),
            Err(SledTransactionError::Abort(Aborted::Caller(err))) => {
                Err(TransactionError::Aborted(err))
            }
            Err(SledTransactionError::Abort(Aborted::Store(err))) => {
                Err(TransactionError::Store(err))
            }
            Err(SledTransactionError::Storage(err)) => Err(TransactionError::Store(err.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::config::{FlushPolicy, StoreConfig};
    use crate::store::trees;

    fn open(dir: &std::path::Path) -> Store {
        let config = StoreConfig {
            flush: FlushPolicy::Always,
            flush_interval_ms: 100,
            cache_capacity_bytes: 8 << 20,
            min_free_bytes: 0,
        };
        Store::open(dir, &config).unwrap()
    }

    #[derive(Debug, PartialEq)]
    struct Injected;

    #[test]
    fn a_failure_after_the_first_write_leaves_both_trees_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let issued = store.tree(trees::TOKENS_ISSUED).unwrap();
        let revoked = store.tree(trees::TOKENS_REVOKED).unwrap();
        issued.put(b"before", &1u64).unwrap();

        let result = store.transaction(&[&issued, &revoked], |tx| {
            tx.insert(&issued, b"a", &10u64)?;
            tx.remove(&issued, b"before")?;
            // The body sees its own write…
            assert_eq!(tx.get::<u64>(&issued, b"a")?, Some(10));
            Err::<(), _>(TxError::abort(Injected))
        });
        assert!(matches!(result, Err(TransactionError::Aborted(Injected))));
        // …and nobody else ever does: neither tree changed.
        assert_eq!(issued.get::<u64>(b"a").unwrap(), None);
        assert_eq!(issued.get::<u64>(b"before").unwrap(), Some(1));
        assert!(revoked.is_empty());

        // The same writes without the failure land in both trees together.
        store
            .transaction(&[&issued, &revoked], |tx| {
                tx.insert(&issued, b"a", &10u64)?;
                tx.insert(&revoked, b"a", &20u64)?;
                Ok::<_, TxError<Injected>>(())
            })
            .unwrap();
        assert_eq!(issued.get::<u64>(b"a").unwrap(), Some(10));
        assert_eq!(revoked.get::<u64>(b"a").unwrap(), Some(20));
        drop((issued, revoked));
        store.close().unwrap();

        // Committed means durable, in the store's envelope.
        let store = open(dir.path());
        let issued = store.tree(trees::TOKENS_ISSUED).unwrap();
        let revoked = store.tree(trees::TOKENS_REVOKED).unwrap();
        assert_eq!(issued.get::<u64>(b"a").unwrap(), Some(10));
        assert_eq!(revoked.get::<u64>(b"a").unwrap(), Some(20));
        assert_eq!(
            issued.raw(b"a").unwrap().unwrap()[0],
            crate::store::ENVELOPE_TAG
        );
    }

    #[test]
    fn a_store_error_inside_the_body_rolls_back_and_is_returned() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let a = store.tree(trees::TOKENS_ISSUED).unwrap();
        let b = store.tree(trees::TOKENS_REVOKED).unwrap();
        // A value that is not a valid envelope: reading it inside the body fails the transaction.
        store
            .db
            .open_tree(trees::TOKENS_REVOKED)
            .unwrap()
            .insert(b"junk", b"junk".to_vec())
            .unwrap();
        let result = store.transaction(&[&a, &b], |tx| {
            tx.insert(&a, b"x", &1u64)?;
            tx.get::<u64>(&b, b"junk")?;
            Ok::<_, TxError<Injected>>(())
        });
        assert!(matches!(
            result,
            Err(TransactionError::Store(StoreError::Corrupt { .. }))
        ));
        assert_eq!(a.get::<u64>(b"x").unwrap(), None);
    }

    #[tokio::test]
    async fn async_transactions_commit_across_trees() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let a = store.tree(trees::TOKENS_ISSUED).unwrap();
        let b = store.tree(trees::TOKENS_REVOKED).unwrap();
        let moved = store
            .transaction_async(&[&a, &b], |tx| {
                let value = tx.get::<u64>(&a, b"k")?.unwrap_or(5);
                tx.remove(&a, b"k")?;
                tx.insert(&b, b"k", &value)?;
                Ok::<_, TxError<Injected>>(value)
            })
            .await
            .unwrap();
        assert_eq!(moved, 5);
        assert_eq!(b.get::<u64>(b"k").unwrap(), Some(5));
    }
}
