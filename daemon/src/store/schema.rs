//! Per-subsystem schema versions and migrations.
//!
//! A subsystem that keeps data in the store declares a [`Schema`]: its name, the version this build
//! writes, and the steps that bring older data up to it. [`Store::open`](super::Store::open) runs the
//! pending steps of every registered schema in order and records each subsystem's version in the
//! `meta` tree under `schema_version/<subsystem>`, one step at a time, so an interrupted migration
//! resumes from the last recorded step. Data from a newer build (a recorded version above this build's)
//! stops the open rather than being misread.
//!
//! A subsystem with no recorded version is at version 1: its first layout, written before it (or the
//! store) recorded versions. A step may be run again if the process dies between its writes and the
//! record of its version, so it must be safe to repeat (use [`Store::transaction`](super::Store::transaction)
//! to make each step's writes atomic).

use super::{Store, StoreError, trees};

/// The versioned layout of one subsystem's trees.
#[derive(Debug, Clone, Copy)]
pub struct Schema {
    /// Unique among subsystems; names the `meta` record (`schema_version/<subsystem>`).
    pub subsystem: &'static str,
    /// The version this build reads and writes.
    pub version: u32,
    /// Steps from older versions; at most one starts at each version.
    pub migrations: &'static [SubsystemMigration],
}

/// One step of a subsystem's migration, from `from` to `to` (greater).
#[derive(Debug, Clone, Copy)]
pub struct SubsystemMigration {
    pub from: u32,
    pub to: u32,
    pub run: fn(&Store) -> Result<(), StoreError>,
}

/// The version a subsystem without a record is at.
pub const FIRST_VERSION: u32 = 1;

/// The subsystem schemas [`Store::open`](super::Store::open) brings up to date. A subsystem whose
/// stored layout changes adds its `SCHEMA` here with the step that migrates the old one.
pub const REGISTERED: &[Schema] = &[];

fn version_key(subsystem: &str) -> Vec<u8> {
    format!("schema_version/{subsystem}").into_bytes()
}

impl Store {
    /// The recorded schema version of a subsystem ([`FIRST_VERSION`] when none is recorded).
    pub fn subsystem_schema_version(&self, subsystem: &str) -> Result<u32, StoreError> {
        Ok(self
            .tree(trees::META)?
            .get::<u32>(&version_key(subsystem))?
            .unwrap_or(FIRST_VERSION))
    }

    /// Runs the pending steps of `schema` and records the version reached.
    pub(super) fn migrate_subsystem(&self, schema: &Schema) -> Result<(), StoreError> {
        let meta = self.tree(trees::META)?;
        let key = version_key(schema.subsystem);
        let recorded = meta.get::<u32>(&key)?;
        let mut found = recorded.unwrap_or(FIRST_VERSION);
        if found > schema.version {
            return Err(StoreError::SubsystemSchemaTooNew {
                subsystem: schema.subsystem.to_owned(),
                found,
                supported: schema.version,
            });
        }
        while found < schema.version {
            let step = schema
                .migrations
                .iter()
                .find(|m| m.from == found && m.to > found && m.to <= schema.version)
                .ok_or_else(|| StoreError::NoMigration {
                    subsystem: schema.subsystem.to_owned(),
                    from: found,
                    to: schema.version,
                })?;
            tracing::info!(
                subsystem = schema.subsystem,
                from = step.from,
                to = step.to,
                "migrating subsystem schema"
            );
            (step.run)(self)?;
            meta.put_durable(&key, &step.to)?;
            found = step.to;
        }
        if recorded != Some(found) {
            meta.put_durable(&key, &found)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::store::Tree;
    use crate::store::config::{FlushPolicy, StoreConfig};

    fn config() -> StoreConfig {
        StoreConfig {
            flush: FlushPolicy::Always,
            flush_interval_ms: 100,
            cache_capacity_bytes: 8 << 20,
            min_free_bytes: 0,
        }
    }

    fn widgets(store: &Store) -> Tree {
        store.tree(trees::EPISODIC).unwrap()
    }

    static ONE_TO_TWO: AtomicUsize = AtomicUsize::new(0);
    static TWO_TO_THREE: AtomicUsize = AtomicUsize::new(0);

    /// v1 stored a count as u32 under `count`; v2 renames the key; v3 stores it as u64.
    fn one_to_two(store: &Store) -> Result<(), StoreError> {
        ONE_TO_TWO.fetch_add(1, Ordering::SeqCst);
        let tree = widgets(store);
        if let Some(count) = tree.get::<u32>(b"count")? {
            tree.put(b"widgets.count", &count)?;
            tree.remove(b"count")?;
        }
        Ok(())
    }

    fn two_to_three(store: &Store) -> Result<(), StoreError> {
        TWO_TO_THREE.fetch_add(1, Ordering::SeqCst);
        let tree = widgets(store);
        if let Some(count) = tree.get::<u32>(b"widgets.count")? {
            tree.put(b"widgets.count64", &u64::from(count))?;
            tree.remove(b"widgets.count")?;
        }
        Ok(())
    }

    const WIDGETS_V1: Schema = Schema {
        subsystem: "widgets",
        version: 1,
        migrations: &[],
    };

    const WIDGETS_V3: Schema = Schema {
        subsystem: "widgets",
        version: 3,
        migrations: &[
            SubsystemMigration {
                from: 2,
                to: 3,
                run: two_to_three,
            },
            SubsystemMigration {
                from: 1,
                to: 2,
                run: one_to_two,
            },
        ],
    };

    #[test]
    fn pending_migrations_run_once_in_order_and_are_recorded() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open_with(dir.path(), &config(), &[WIDGETS_V1]).unwrap();
            assert_eq!(store.subsystem_schema_version("widgets").unwrap(), 1);
            widgets(&store).put(b"count", &7u32).unwrap();
            store.close().unwrap();
        }
        {
            let store = Store::open_with(dir.path(), &config(), &[WIDGETS_V3]).unwrap();
            assert_eq!(ONE_TO_TWO.load(Ordering::SeqCst), 1);
            assert_eq!(TWO_TO_THREE.load(Ordering::SeqCst), 1);
            assert_eq!(store.subsystem_schema_version("widgets").unwrap(), 3);
            let tree = widgets(&store);
            assert_eq!(tree.get::<u64>(b"widgets.count64").unwrap(), Some(7));
            assert!(tree.raw(b"count").unwrap().is_none());
            assert!(tree.raw(b"widgets.count").unwrap().is_none());
            drop(tree);
            store.close().unwrap();
        }
        // Re-opening at the same version runs nothing again.
        let store = Store::open_with(dir.path(), &config(), &[WIDGETS_V3]).unwrap();
        assert_eq!(ONE_TO_TWO.load(Ordering::SeqCst), 1);
        assert_eq!(TWO_TO_THREE.load(Ordering::SeqCst), 1);
        assert_eq!(store.subsystem_schema_version("widgets").unwrap(), 3);
        // Other subsystems and the store's own version are untouched.
        assert_eq!(store.subsystem_schema_version("gadgets").unwrap(), 1);
        assert_eq!(
            store.schema_version().unwrap(),
            crate::store::SCHEMA_VERSION
        );
        store.close().unwrap();

        // An older build (knows only v1) refuses the v3 data instead of misreading it.
        match Store::open_with(dir.path(), &config(), &[WIDGETS_V1]) {
            Err(StoreError::SubsystemSchemaTooNew {
                subsystem,
                found,
                supported,
            }) => assert_eq!((subsystem.as_str(), found, supported), ("widgets", 3, 1)),
            other => panic!("expected SubsystemSchemaTooNew, got {other:?}"),
        }
    }

    #[test]
    fn a_gap_in_the_steps_stops_the_open() {
        const GAP: Schema = Schema {
            subsystem: "gap",
            version: 3,
            migrations: &[SubsystemMigration {
                from: 2,
                to: 3,
                run: |_| Ok(()),
            }],
        };
        let dir = tempfile::tempdir().unwrap();
        match Store::open_with(dir.path(), &config(), &[GAP]) {
            Err(StoreError::NoMigration {
                subsystem,
                from,
                to,
            }) => {
                assert_eq!((subsystem.as_str(), from, to), ("gap", 1, 3));
            }
            other => panic!("expected NoMigration, got {other:?}"),
        }
        // Nothing was recorded: the subsystem is still at its first version.
        let store = Store::open_with(dir.path(), &config(), &[]).unwrap();
        assert_eq!(store.subsystem_schema_version("gap").unwrap(), 1);
    }
}
