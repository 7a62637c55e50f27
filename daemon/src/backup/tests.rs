use std::sync::Arc;

use super::*;
use crate::store::config::FlushPolicy;
use crate::store::trees;

fn store_config() -> StoreConfig {
    StoreConfig {
        flush: FlushPolicy::Always,
        flush_interval_ms: 100,
        cache_capacity_bytes: 8 << 20,
        min_free_bytes: 0,
    }
}

fn key_file(dir: &Path, name: &str, byte: u8) -> PathBuf {
    let path = dir.join(name);
    crate::crypto::files::write_private(&path, &[byte; 32]).unwrap();
    path
}

/// A store with some entries, its key file, and a backup of it (no audit log).
fn backed_up(dir: &Path) -> (PathBuf, Vec<u8>) {
    let key_path = key_file(dir, "master.key", 7);
    let state = dir.join("source");
    let store = Store::open(&state, &store_config()).unwrap();
    let keys =
        Arc::new(KeySet::open(&store, MasterKey::load(&key_path).unwrap(), &key_path).unwrap());
    let episodic = store.tree(trees::EPISODIC).unwrap();
    for i in 0..50u64 {
        episodic.put(&i.to_be_bytes(), &i).unwrap();
    }
    let backups = Backups::new(store.clone(), keys.clone());
    let created = backups.create().unwrap();
    assert_eq!(created.header.trees[trees::EPISODIC], 50);
    assert!(created.writer_pause < Duration::from_secs(5));
    drop((episodic, backups, keys));
    store.close().unwrap();
    (key_path, created.file)
}

#[test]
fn a_backup_restores_into_an_absent_dir_and_the_key_opens_it() {
    let dir = tempfile::tempdir().unwrap();
    let (key_path, file) = backed_up(dir.path());
    let target = dir.path().join("restored");
    let key = MasterKey::load(&key_path).unwrap();
    let restored = restore(&file, &key, Some(&key_path), &target, &store_config()).unwrap();
    assert_eq!(restored.header.trees[trees::EPISODIC], 50);
    assert!(target.join(DEV_KEY_FILE).is_file());
    let store = Store::open(&target, &store_config()).unwrap();
    // The restored meta/master_key names the same key: the key set opens.
    let copied = target.join(DEV_KEY_FILE);
    KeySet::open(&store, MasterKey::load(&copied).unwrap(), &copied).unwrap();
    assert_eq!(
        store
            .tree(trees::EPISODIC)
            .unwrap()
            .get::<u64>(&9u64.to_be_bytes())
            .unwrap(),
        Some(9)
    );
    store.close().unwrap();
}

#[test]
fn refused_restores_leave_the_target_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let (key_path, file) = backed_up(dir.path());
    let key = MasterKey::load(&key_path).unwrap();
    let target = dir.path().join("target");
    std::fs::create_dir(&target).unwrap();
    let listing = |d: &Path| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let parent_before = listing(dir.path());

    // Damaged, truncated, another key.
    let mut flipped = file.clone();
    let at = flipped.len() - 10;
    flipped[at] ^= 1;
    let other = MasterKey::new(&[9u8; 32]).unwrap();
    let cases: Vec<(&str, &[u8], &MasterKey)> = vec![
        ("flipped", &flipped, &key),
        ("truncated", &file[..file.len() / 2], &key),
        ("wrong key", &file, &other),
    ];
    for (what, bytes, key) in cases {
        let err = restore(bytes, key, None, &target, &store_config()).unwrap_err();
        assert!(listing(&target).is_empty(), "{what} wrote into the target");
        assert_eq!(
            listing(dir.path()),
            parent_before,
            "{what} left something beside it"
        );
        if what == "wrong key" {
            assert!(matches!(err, BackupError::WrongKey { .. }), "{err}");
        }
    }

    // A target that holds anything but master.key is refused.
    std::fs::write(target.join("stray"), b"x").unwrap();
    let err = restore(&file, &key, None, &target, &store_config()).unwrap_err();
    assert!(matches!(err, BackupError::NotEmpty { .. }), "{err}");
    assert_eq!(listing(&target), vec!["stray".to_owned()]);
}

#[test]
fn a_newer_schema_in_the_header_is_refused_before_opening() {
    let dir = tempfile::tempdir().unwrap();
    let key_path = key_file(dir.path(), "k", 3);
    let key = MasterKey::load(&key_path).unwrap();
    let mut plain = Vec::new();
    format::encode_end(&mut plain);
    let meta = format::Meta {
        schema: BTreeMap::from([("store".to_owned(), crate::store::SCHEMA_VERSION + 1)]),
        master_key_id: key.id().to_owned(),
        ..Default::default()
    };
    let file = format::write(meta, [1; 16], &plain, |p, a| key.seal(p, a)).unwrap();
    let target = dir.path().join("t");
    let err = restore(&file, &key, None, &target, &store_config()).unwrap_err();
    assert!(matches!(err, BackupError::Schema(_)), "{err}");
    assert!(err.to_string().contains("newer"), "{err}");
    assert!(!target.exists());
}

#[test]
fn retention_keeps_the_newest_and_touches_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    for stamp in [5u64, 1, 3, 2, 4] {
        std::fs::write(dir.path().join(format!("brainstem-{stamp}.bsbackup")), b"x").unwrap();
    }
    std::fs::write(dir.path().join("brainstem-notes.bsbackup"), b"x").unwrap();
    std::fs::write(dir.path().join("other"), b"x").unwrap();
    let removed = worker::prune(dir.path(), 2);
    assert_eq!(removed.len(), 3);
    let mut left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        [
            "brainstem-4.bsbackup",
            "brainstem-5.bsbackup",
            "brainstem-notes.bsbackup",
            "other"
        ]
    );
}

#[test]
fn the_schedule_writes_verifiable_private_files_and_keeps_the_newest() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key_path = key_file(dir.path(), "master.key", 5);
    let store = Store::open(&dir.path().join("state"), &store_config()).unwrap();
    let keys =
        Arc::new(KeySet::open(&store, MasterKey::load(&key_path).unwrap(), &key_path).unwrap());
    let backups = Arc::new(Backups::new(store.clone(), keys.clone()));
    let out = dir.path().join("backups");
    let config = config::BackupConfig {
        interval_seconds: 60,
        directory: out.display().to_string(),
        keep: 2,
    };
    let schedule = worker::BackupSchedule::new(backups.clone(), &config);
    let mut written = Vec::new();
    for _ in 0..3 {
        written.push(schedule.once().unwrap());
        std::thread::sleep(Duration::from_millis(3));
    }
    let left: Vec<PathBuf> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(!written[0].exists(), "the oldest was kept");
    for path in &left {
        let bytes = std::fs::read(path).unwrap();
        format::verify(&bytes).unwrap();
        let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", path.display());
    }
    drop((schedule, backups, keys));
    store.close().unwrap();
}

/// The dev drill with the key copied first: a target holding only `master.key` is accepted, and
/// the key stays there for the dev-mode daemon.
#[test]
fn a_target_holding_only_the_key_is_restored_into_and_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let (key_path, file) = backed_up(dir.path());
    let target = dir.path().join("drill");
    std::fs::create_dir(&target).unwrap();
    let copied = target.join(DEV_KEY_FILE);
    crate::crypto::files::write_private(&copied, &std::fs::read(&key_path).unwrap()).unwrap();
    let key = MasterKey::load(&copied).unwrap();
    restore(&file, &key, None, &target, &store_config()).unwrap();
    assert_eq!(
        std::fs::read(&copied).unwrap(),
        std::fs::read(&key_path).unwrap()
    );
    let store = Store::open(&target, &store_config()).unwrap();
    KeySet::open(&store, MasterKey::load(&copied).unwrap(), &copied).unwrap();
    assert_eq!(store.tree(trees::EPISODIC).unwrap().len(), 50);
    store.close().unwrap();
}

/// Every scheduled run is in the audit trail: a success names the file it wrote, a failure (the
/// directory cannot be created) is recorded as not allowed with the error.
#[tokio::test]
async fn scheduled_runs_are_audited_both_ways() {
    use crate::access::audit::{AuditLog, AuditQuery};
    use crate::access::config::AuditConfig;
    let dir = tempfile::tempdir().unwrap();
    let key_path = key_file(dir.path(), "master.key", 9);
    let store = Store::open(&dir.path().join("state"), &store_config()).unwrap();
    let keys =
        Arc::new(KeySet::open(&store, MasterKey::load(&key_path).unwrap(), &key_path).unwrap());
    let backups = Arc::new(Backups::new(store.clone(), keys.clone()));
    let tasks = crate::runtime::tasks::Tasks::new();
    // No writer runs: the records stay queued until `finish` writes them, as at a stop.
    let (log, _writer) =
        AuditLog::open(&dir.path().join("state"), &AuditConfig::default(), &tasks).unwrap();
    backups.set_parts(log.clone(), tasks.clone());

    let good = worker::BackupSchedule::new(
        backups.clone(),
        &config::BackupConfig {
            interval_seconds: 60,
            directory: dir.path().join("backups").display().to_string(),
            keep: 1,
        },
    );
    let written = good.once().unwrap();
    // A regular file where the directory should be: the run fails.
    let blocked = dir.path().join("not-a-dir");
    std::fs::write(&blocked, b"x").unwrap();
    let bad = worker::BackupSchedule::new(
        backups.clone(),
        &config::BackupConfig {
            interval_seconds: 60,
            directory: blocked.join("sub").display().to_string(),
            keep: 1,
        },
    );
    assert!(bad.once().is_err());

    assert_eq!(log.finish().await, 0, "nothing lost");
    let (records, _) = log
        .query(&AuditQuery {
            action: worker::ACTION.to_owned(),
            ..AuditQuery::default()
        })
        .unwrap();
    assert_eq!(records.len(), 2, "{records:?}");
    let (ok, failed) = (&records[0], &records[1]);
    assert!(ok.allowed);
    assert_eq!(ok.principal, "brainstemd");
    assert!(ok.resource.starts_with("backup:"), "{}", ok.resource);
    assert!(
        ok.reasons[0].contains(&written.display().to_string()),
        "{:?}",
        ok.reasons
    );
    assert!(!failed.allowed);
    assert!(failed.resource.ends_with("/sub"), "{}", failed.resource);
    assert!(
        failed.reasons[0].starts_with("failed: "),
        "{:?}",
        failed.reasons
    );
    drop((good, bad, backups, keys, log));
    store.close().unwrap();
}
