//! The secrets store against a real (temporary) sled store: KV v2 semantics, sealing, rotation,
//! damage, paging, reopening.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use zeroize::Zeroizing;

use super::*;
use crate::crypto::MasterKey;
use crate::store::config::{FlushPolicy, StoreConfig};
use crate::store::{Store, trees};

const T0: u64 = 1_800_000_000_000;

struct Fixture {
    dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    config: config::SecretsConfig,
    store: Option<Store>,
    /// This fixture's own log redactor (the process-wide one is shared by every test); replaced to
    /// stand for a restart.
    redactor: &'static Redactor,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture {
            dir: tempfile::tempdir().unwrap(),
            clock: Arc::new(ManualClock::new(T0)),
            config: config::SecretsConfig::default(),
            store: None,
            redactor: Box::leak(Box::new(Redactor::new())),
        }
    }

    fn open_with(&mut self, key: u8) -> Secrets {
        if self.store.is_none() {
            let config = StoreConfig {
                flush: FlushPolicy::Always,
                flush_interval_ms: 100,
                cache_capacity_bytes: 8 << 20,
                min_free_bytes: 0,
            };
            self.store = Some(Store::open(&self.dir.path().join("state"), &config).unwrap());
        }
        let tree = self.store.as_ref().unwrap().tree(trees::SECRETS).unwrap();
        let master = MasterKey::new(&[key; 32]).unwrap();
        let keys = KeySet::open(
            self.store.as_ref().unwrap(),
            master,
            std::path::Path::new("test.key"),
        )
        .unwrap();
        Secrets::open_with_redactor(
            tree,
            Arc::new(keys),
            &self.config,
            self.clock.clone(),
            self.redactor,
        )
        .unwrap()
    }

    /// Drops `secrets` and opens the store again with a fresh redactor, as a restarted daemon does.
    fn restart(&mut self, secrets: Secrets) -> Secrets {
        drop(secrets);
        self.redactor = Box::leak(Box::new(Redactor::new()));
        self.open()
    }

    /// Whether the fixture's redactor removes `value` from a log line.
    fn redacts(&self, value: &str) -> bool {
        let line = format!("value {value} logged");
        let out = self.redactor.redact(&line);
        assert!(
            out == line || out == "value [redacted] logged",
            "{value}: {out}"
        );
        out != line
    }

    fn open(&mut self) -> Secrets {
        self.open_with(7)
    }

    fn tree(&self) -> Tree {
        self.store.as_ref().unwrap().tree(trees::SECRETS).unwrap()
    }
}

fn me() -> Actor {
    Actor {
        principal: "tester".into(),
        correlation_id: "c-1".into(),
    }
}

fn put_req(path: &str, value: &[u8], cas: Option<u64>) -> PutRequest {
    PutRequest {
        path: path.to_owned(),
        value: Some(Zeroizing::new(value.to_vec())),
        cas,
        rotation_period_s: 0,
        generator: None,
    }
}

/// A put of a generated value that rotates every `rotation_period_s`.
fn rotating_req(path: &str, rotation_period_s: u64, generator: Generator) -> PutRequest {
    PutRequest {
        path: path.to_owned(),
        value: None,
        cas: None,
        rotation_period_s,
        generator: Some(generator),
    }
}

fn not_found(err: ServiceError) -> String {
    match err {
        ServiceError::NotFound(why) => why,
        other => panic!("expected NOT_FOUND, got {other:?}"),
    }
}

fn precondition(err: ServiceError) -> String {
    match err {
        ServiceError::FailedPrecondition(why) => why,
        other => panic!("expected FAILED_PRECONDITION, got {other:?}"),
    }
}

#[tokio::test]
async fn versions_count_up_and_each_reads_back() {
    let mut f = Fixture::new();
    let s = f.open();
    for i in 1..=3u64 {
        let w = s
            .put(
                &me(),
                put_req("/a/db", format!("value-{i}").as_bytes(), None),
            )
            .await
            .unwrap();
        assert_eq!(w.version, i);
    }
    let latest = s.get("/a/db", None).unwrap();
    assert_eq!(
        (latest.value.as_slice(), latest.version),
        (&b"value-3"[..], 3)
    );
    assert_eq!(s.get("/a/db", Some(1)).unwrap().value, b"value-1");
    assert_eq!(
        s.get("/a/db", Some(0)).unwrap().version,
        3,
        "0 means latest"
    );
    assert!(not_found(s.get("/a/db", Some(4)).err().unwrap()).contains("current version is 3"));
    assert!(not_found(s.get("/nope", None).err().unwrap()).contains("/nope does not exist"));
}

#[tokio::test]
async fn check_and_set_names_the_current_version() {
    let mut f = Fixture::new();
    let s = f.open();
    assert_eq!(
        s.put(&me(), put_req("/p", b"one", Some(0)))
            .await
            .unwrap()
            .version,
        1
    );
    let why = precondition(
        s.put(&me(), put_req("/p", b"two", Some(0)))
            .await
            .unwrap_err(),
    );
    assert!(why.contains("already exists (current version 1)"), "{why}");
    let why = precondition(
        s.put(&me(), put_req("/p", b"two", Some(5)))
            .await
            .unwrap_err(),
    );
    assert!(why.contains("current version of /p is 1, not 5"), "{why}");
    assert_eq!(
        s.put(&me(), put_req("/p", b"two", Some(1)))
            .await
            .unwrap()
            .version,
        2
    );
    assert_eq!(
        s.get("/p", None).unwrap().value,
        b"two",
        "a refused write changed nothing"
    );

    s.update_metadata(
        &me(),
        "/p",
        MetadataUpdate {
            cas_required: Some(true),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let why = precondition(
        s.put(&me(), put_req("/p", b"three", None))
            .await
            .unwrap_err(),
    );
    assert!(
        why.contains("requires check-and-set: send cas = 2"),
        "{why}"
    );
    assert_eq!(
        s.put(&me(), put_req("/p", b"three", Some(2)))
            .await
            .unwrap()
            .version,
        3
    );
}

#[tokio::test]
async fn concurrent_check_and_set_lets_exactly_one_win() {
    let mut f = Fixture::new();
    let s = Arc::new(f.open());
    s.put(&me(), put_req("/race", b"v1", None)).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..16 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.put(
                &me(),
                put_req("/race", format!("writer-{i}").as_bytes(), Some(1)),
            )
            .await
        }));
    }
    let mut won = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(w) => {
                assert_eq!(w.version, 2);
                won += 1;
            }
            Err(err) => assert!(precondition(err).contains("is 2, not 1")),
        }
    }
    assert_eq!(won, 1);
}

#[tokio::test]
async fn old_versions_are_pruned_beyond_max_versions() {
    let mut f = Fixture::new();
    f.config.max_versions = 3;
    let s = f.open();
    for i in 1..=5u64 {
        s.put(&me(), put_req("/p", format!("v{i}-value").as_bytes(), None))
            .await
            .unwrap();
    }
    let meta = s.metadata("/p").unwrap();
    assert_eq!(
        meta.versions.keys().copied().collect::<Vec<_>>(),
        vec![3, 4, 5]
    );
    assert_eq!((meta.oldest(), meta.current), (3, 5));
    assert!(
        not_found(s.get("/p", Some(2)).err().unwrap())
            .contains("was pruned (the oldest kept is 3)")
    );
    // Their sealed values are gone from the store too.
    assert!(f.tree().raw(&version_key("/p", 1)).unwrap().is_none());
    assert!(f.tree().raw(&version_key("/p", 3)).unwrap().is_some());
    // Lowering max_versions prunes at once.
    s.update_metadata(
        &me(),
        "/p",
        MetadataUpdate {
            max_versions: Some(1),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(s.metadata("/p").unwrap().versions.len(), 1);
    assert_eq!(s.get("/p", None).unwrap().value, b"v5-value");
}

#[tokio::test]
async fn delete_undelete_destroy_follow_vault() {
    let mut f = Fixture::new();
    let s = f.open();
    for v in [b"first-value", b"secnd-value", b"third-value"] {
        s.put(&me(), put_req("/p", v, None)).await.unwrap();
    }
    // Empty version list: the current one.
    assert_eq!(
        s.set_versions(&me(), "/p", &[], VersionOp::Delete)
            .await
            .unwrap(),
        vec![3]
    );
    assert!(not_found(s.get("/p", None).err().unwrap()).contains("version 3 of /p is deleted"));
    assert_eq!(s.get("/p", Some(2)).unwrap().value, b"secnd-value");
    // Deleting again changes nothing.
    assert!(
        s.set_versions(&me(), "/p", &[3], VersionOp::Delete)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.set_versions(&me(), "/p", &[3], VersionOp::Undelete)
            .await
            .unwrap(),
        vec![3]
    );
    assert_eq!(s.get("/p", None).unwrap().value, b"third-value");

    assert_eq!(
        s.set_versions(&me(), "/p", &[1, 2], VersionOp::Destroy)
            .await
            .unwrap(),
        vec![1, 2]
    );
    assert!(
        not_found(s.get("/p", Some(1)).err().unwrap()).contains("version 1 of /p is destroyed")
    );
    assert!(
        f.tree().raw(&version_key("/p", 1)).unwrap().is_none(),
        "ciphertext and data key wiped"
    );
    // A destroyed version cannot be undeleted or deleted.
    assert!(
        s.set_versions(&me(), "/p", &[1], VersionOp::Undelete)
            .await
            .unwrap()
            .is_empty()
    );
    let meta = s.metadata("/p").unwrap();
    let state = |v: u64| meta.state_of(&meta.versions[&v], s.now_ms());
    assert!(matches!(state(1), VersionState::Destroyed(_)));
    assert_eq!(state(3), VersionState::Live);
    // Unknown versions are named.
    assert!(
        not_found(
            s.set_versions(&me(), "/p", &[9], VersionOp::Delete)
                .await
                .unwrap_err()
        )
        .contains("version 9 of /p does not exist")
    );
}

#[tokio::test]
async fn versions_older_than_delete_version_after_read_as_deleted() {
    let mut f = Fixture::new();
    let s = f.open();
    s.put(&me(), put_req("/p", b"old-value", None))
        .await
        .unwrap();
    s.update_metadata(
        &me(),
        "/p",
        MetadataUpdate {
            delete_after_s: Some(60),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    f.clock.advance_ms(30_000);
    s.put(&me(), put_req("/p", b"new-value", None))
        .await
        .unwrap();
    f.clock.advance_ms(31_000);
    assert!(not_found(s.get("/p", Some(1)).err().unwrap()).contains("is deleted"));
    assert_eq!(s.get("/p", Some(2)).unwrap().value, b"new-value");
}

#[tokio::test]
async fn rotation_runs_when_due_and_after_downtime() {
    let mut f = Fixture::new();
    {
        let s = f.open();
        let w = s
            .put(&me(), rotating_req("/svc/token", 3600, Generator::Hex(40)))
            .await
            .unwrap();
        assert_eq!(w.version, 1);
        let first = s.get("/svc/token", None).unwrap().value;
        assert_eq!(first.len(), 40);
        assert_eq!(s.next_rotation_ms(), Some(T0 + 3_600_000));
        f.clock.advance_ms(3_599_000);
        assert_eq!(s.rotate_due().await, 0, "not due yet");
        f.clock.advance_ms(1_000);
        assert_eq!(s.rotate_due().await, 1);
        let meta = s.metadata("/svc/token").unwrap();
        assert_eq!(meta.current, 2);
        assert_eq!(meta.versions[&2].origin, Origin::Rotate);
        assert_ne!(s.get("/svc/token", None).unwrap().value, first);
        assert_eq!(s.next_rotation_ms(), Some(T0 + 7_200_000));
    }
    // Stopped across two periods: one rotation at the next start, then the schedule goes on.
    f.clock.advance_ms(8_000_000);
    let s = f.open();
    assert!(s.next_rotation_ms().unwrap() <= s.now_ms());
    assert_eq!(s.rotate_due().await, 1);
    assert_eq!(s.metadata("/svc/token").unwrap().current, 3);
    assert_eq!(s.rotate_due().await, 0);
    // RotateNow needs a generator.
    s.put(&me(), put_req("/plain", b"static-value", None))
        .await
        .unwrap();
    assert!(precondition(s.rotate(&me(), "/plain").await.unwrap_err()).contains("no generator"));
    assert_eq!(s.rotate(&me(), "/svc/token").await.unwrap().version, 4);
}

/// Whether the rotation worker would wake now (a stored wake-up is taken).
async fn woken(s: &Secrets) -> bool {
    tokio::time::timeout(std::time::Duration::ZERO, s.schedule_changed())
        .await
        .is_ok()
}

#[tokio::test]
async fn only_a_changed_due_time_wakes_the_rotation_worker() {
    let mut f = Fixture::new();
    let s = f.open();
    woken(&s).await;
    // A secret without a rotation period: the schedule is untouched, the worker sleeps on.
    s.put(&me(), put_req("/plain", b"static-value", None))
        .await
        .unwrap();
    s.put(&me(), put_req("/plain", b"static-value-2", None))
        .await
        .unwrap();
    assert!(
        !woken(&s).await,
        "a put without a rotation period woke the worker"
    );
    s.put(&me(), rotating_req("/svc/token", 60, Generator::Hex(40)))
        .await
        .unwrap();
    assert!(woken(&s).await, "a new due time must wake the worker");
    // A put a second later moves the due time (period from now).
    f.clock.advance_ms(1_000);
    s.put(&me(), put_req("/svc/token", b"manual-value", None))
        .await
        .unwrap();
    assert!(woken(&s).await, "a moved due time must wake the worker");
    assert_eq!(s.next_rotation_ms(), Some(T0 + 61_000));
    // Deleting a version leaves the due time where it is.
    s.set_versions(&me(), "/svc/token", &[1], VersionOp::Delete)
        .await
        .unwrap();
    assert!(!woken(&s).await);
}

/// A rotation that failed is tried again later; once that succeeds the path has one due time again
/// (a stale retry entry left in the past rotated the path at every look of the worker).
#[tokio::test]
async fn a_rotation_retried_after_a_failure_is_then_due_once_a_period() {
    let mut f = Fixture::new();
    let s = f.open();
    s.put(&me(), rotating_req("/svc/token", 60, Generator::Hex(40)))
        .await
        .unwrap();
    let due = T0 + 60_000;
    assert_eq!(s.next_rotation_ms(), Some(due));
    f.clock.advance_ms(60_000);
    // What `rotate_due` does when the rotation fails at its due time.
    s.postpone_rotation(
        due,
        "/svc/token".into(),
        s.now_ms() + super::ROTATION_RETRY_MS,
    );
    assert_eq!(s.rotate_due().await, 0, "not before the retry");
    assert_eq!(
        s.metadata("/svc/token").unwrap().next_rotation_ms,
        Some(s.now_ms() + super::ROTATION_RETRY_MS)
    );
    f.clock.advance_ms(super::ROTATION_RETRY_MS);
    assert_eq!(s.rotate_due().await, 1, "the retry");
    assert_eq!(s.next_rotation_ms(), Some(s.now_ms() + 60_000));
    assert_eq!(s.rotate_due().await, 0, "rotated again at once");
    assert_eq!(s.metadata("/svc/token").unwrap().current, 2);
    // A put of the path between a failed rotation and its postponement already moved the due
    // time: the postponement then changes nothing.
    let stale = s.next_rotation_ms().unwrap();
    f.clock.advance_ms(60_000);
    s.put(&me(), put_req("/svc/token", b"manual-value", None))
        .await
        .unwrap();
    let moved = s.now_ms() + 60_000;
    s.postpone_rotation(stale, "/svc/token".into(), s.now_ms() + 1_000);
    assert_eq!(s.next_rotation_ms(), Some(moved));
    assert_eq!(
        s.metadata("/svc/token").unwrap().next_rotation_ms,
        Some(moved)
    );
    assert_eq!(s.rotate_due().await, 0);
}

#[tokio::test]
async fn a_rotation_period_needs_a_generator() {
    let mut f = Fixture::new();
    let s = f.open();
    let err = s
        .put(
            &me(),
            PutRequest {
                rotation_period_s: 60,
                ..put_req("/p", b"value-123", None)
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, ServiceError::InvalidArgument(ref v) if v[0].field == "generator"),
        "{err:?}"
    );
    assert!(s.metadata("/p").is_err(), "nothing written");
}

#[tokio::test]
async fn a_damaged_version_is_data_loss_and_the_others_still_read() {
    let mut f = Fixture::new();
    let s = f.open();
    for v in [b"value-one", b"value-two"] {
        s.put(&me(), put_req("/p", v, None)).await.unwrap();
    }
    let tree = f.tree();
    let key = version_key("/p", 1);
    let mut record: StoredVersion = tree.get(&key).unwrap().unwrap();
    record.0.ciphertext[14] ^= 0x01;
    tree.put(&key, &record).unwrap();
    let why = data_loss(&s, "/p", Some(1));
    assert!(why.contains("version 1 of /p is damaged"), "{why}");
    assert!(!why.contains("value-one"));
    assert_eq!(s.get("/p", Some(2)).unwrap().value, b"value-two");

    // A sealed version copied to another path or version does not open there.
    s.put(&me(), put_req("/q", b"value-q", None)).await.unwrap();
    let two: StoredVersion = tree.get(&version_key("/p", 2)).unwrap().unwrap();
    tree.put(&version_key("/q", 1), &two).unwrap();
    assert!(matches!(
        s.get("/q", Some(1)),
        Err(ServiceError::DataLoss(_))
    ));
}

/// How many data keys `s` keeps, and whether it keeps the one of `version` of `path`.
fn kept(s: &Secrets, path: &str, version: u64) -> (usize, bool) {
    let state = s.read_state();
    (state.kept_key_count, state.kept(path, version).is_some())
}

/// The bytes of sealed values `s` keeps, and whether it keeps that of `version` of `path`.
fn kept_value(s: &Secrets, path: &str, version: u64) -> (usize, bool) {
    let state = s.read_state();
    let whole = state
        .kept(path, version)
        .is_some_and(|kept| kept.sealed_value.is_some());
    (state.kept_value_bytes, whole)
}

/// Flips one byte of the stored ciphertext of `version` of `path`; returns the record as it was.
fn damage_value(f: &Fixture, path: &str, version: u64) -> StoredVersion {
    let tree = f.tree();
    let good: StoredVersion = tree.get(&version_key(path, version)).unwrap().unwrap();
    let mut bad = StoredVersion(good.0.clone());
    bad.0.ciphertext[14] ^= 0x01;
    tree.put(&version_key(path, version), &bad).unwrap();
    good
}

/// Why reading `version` of `path` is DATA_LOSS (fails the test if it is anything else).
fn data_loss(s: &Secrets, path: &str, version: Option<u64>) -> String {
    match s.get(path, version) {
        Err(ServiceError::DataLoss(why)) => why,
        Err(other) => panic!("expected DATA_LOSS, got {other:?}"),
        Ok(_) => panic!("expected DATA_LOSS, got a value"),
    }
}

#[tokio::test]
async fn a_kept_data_key_opens_only_the_version_as_stored_when_it_was_kept() {
    let mut f = Fixture::new();
    // Keys only: every Get reads its value from the store.
    f.config.sealed_value_cache_bytes = 0;
    let s = f.open();
    for v in [b"value-one", b"value-two"] {
        s.put(&me(), put_req("/p", v, None)).await.unwrap();
    }
    assert_eq!(kept(&s, "/p", 1), (0, false), "a put keeps no key");
    for _ in 0..2 {
        assert_eq!(s.get("/p", Some(1)).unwrap().value, b"value-one");
    }
    assert_eq!(kept(&s, "/p", 1), (1, true));

    // Damage on disk after the key is kept is found all the same.
    let tree = f.tree();
    let key = version_key("/p", 1);
    let good: StoredVersion = tree.get(&key).unwrap().unwrap();
    let mut bad = StoredVersion(good.0.clone());
    bad.0.wrapped_key[20] ^= 0x01;
    tree.put(&key, &bad).unwrap();
    assert!(data_loss(&s, "/p", Some(1)).contains("its data key does not unwrap"));
    let mut bad = StoredVersion(good.0.clone());
    bad.0.ciphertext[14] ^= 0x01;
    tree.put(&key, &bad).unwrap();
    assert!(data_loss(&s, "/p", Some(1)).contains("its ciphertext does not open"));
    // Version 2, its key kept too, copied over version 1 does not open as version 1.
    assert_eq!(s.get("/p", Some(2)).unwrap().value, b"value-two");
    let two: StoredVersion = tree.get(&version_key("/p", 2)).unwrap().unwrap();
    tree.put(&key, &two).unwrap();
    data_loss(&s, "/p", Some(1));
    tree.put(&key, &good).unwrap();
    assert_eq!(s.get("/p", Some(1)).unwrap().value, b"value-one");
    assert_eq!(kept(&s, "/p", 1), (2, true));

    // Destroy takes the version's key out; a soft delete does not.
    s.set_versions(&me(), "/p", &[2], VersionOp::Delete)
        .await
        .unwrap();
    assert_eq!(kept(&s, "/p", 2), (2, true));
    s.set_versions(&me(), "/p", &[1], VersionOp::Destroy)
        .await
        .unwrap();
    assert_eq!(kept(&s, "/p", 1), (1, false));
}

#[tokio::test]
async fn kept_data_keys_are_bounded_and_leave_with_their_versions() {
    let mut f = Fixture::new();
    f.config.data_key_cache = 2;
    f.config.max_versions = 2;
    let s = f.open();
    for (path, value) in [("/a", "a-one"), ("/a", "a-two"), ("/b", "b-one")] {
        s.put(&me(), put_req(path, value.as_bytes(), None))
            .await
            .unwrap();
    }
    assert_eq!(s.get("/a", Some(1)).unwrap().value, b"a-one");
    assert_eq!(s.get("/a", Some(2)).unwrap().value, b"a-two");
    // Full: the third key is not kept, and the read is served all the same.
    assert_eq!(s.get("/b", None).unwrap().value, b"b-one");
    assert_eq!(kept(&s, "/b", 1), (2, false));
    // A third version of /a prunes version 1 and its key; the room is taken again.
    s.put(&me(), put_req("/a", b"a-three", None)).await.unwrap();
    assert_eq!(kept(&s, "/a", 1), (1, false));
    assert_eq!(s.get("/b", None).unwrap().value, b"b-one");
    assert_eq!(kept(&s, "/b", 1), (2, true));
    // Lowering max_versions prunes as well.
    s.update_metadata(
        &me(),
        "/a",
        MetadataUpdate {
            max_versions: Some(1),
            ..MetadataUpdate::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(kept(&s, "/a", 2), (1, false));

    // 0 keeps none.
    f.config.data_key_cache = 0;
    let s = f.restart(s);
    assert_eq!(s.get("/b", None).unwrap().value, b"b-one");
    assert_eq!(kept(&s, "/b", 1), (0, false));
}

#[tokio::test]
async fn a_version_kept_whole_is_read_without_the_store_until_it_leaves() {
    let mut f = Fixture::new();
    let s = f.open();
    for v in [b"value-one", b"value-two"] {
        s.put(&me(), put_req("/p", v, None)).await.unwrap();
    }
    assert_eq!(kept_value(&s, "/p", 1), (0, false), "a put keeps nothing");
    assert_eq!(s.get("/p", Some(1)).unwrap().value, b"value-one");
    // nonce (12) + "value-one" (9) + tag (16), as stored.
    assert_eq!(kept_value(&s, "/p", 1), (37, true));

    // The store's copy is no longer read: damage to it after the version was kept goes unseen
    // while the version is kept, and a version not kept still finds it.
    let good = damage_value(&f, "/p", 1);
    for _ in 0..2 {
        assert_eq!(s.get("/p", Some(1)).unwrap().value, b"value-one");
    }
    damage_value(&f, "/p", 2);
    assert!(data_loss(&s, "/p", Some(2)).contains("ciphertext does not open"));
    assert_eq!(kept_value(&s, "/p", 2), (37, false));
    // A restart keeps nothing: the damage is found.
    let s = f.restart(s);
    assert!(data_loss(&s, "/p", Some(1)).contains("ciphertext does not open"));
    f.tree().put(&version_key("/p", 1), &good).unwrap();
    assert_eq!(s.get("/p", Some(1)).unwrap().value, b"value-one");
    assert_eq!(kept_value(&s, "/p", 1), (37, true));

    // A soft delete keeps it (Undelete reverses it) but the Get answers NOT_FOUND all the same.
    s.set_versions(&me(), "/p", &[1], VersionOp::Delete)
        .await
        .unwrap();
    assert!(matches!(
        s.get("/p", Some(1)),
        Err(ServiceError::NotFound(_))
    ));
    assert_eq!(kept_value(&s, "/p", 1), (37, true));
    s.set_versions(&me(), "/p", &[1], VersionOp::Undelete)
        .await
        .unwrap();
    assert_eq!(s.get("/p", Some(1)).unwrap().value, b"value-one");
    // Destroy takes it out with its key, and the bytes it held.
    s.set_versions(&me(), "/p", &[1], VersionOp::Destroy)
        .await
        .unwrap();
    assert_eq!(kept_value(&s, "/p", 1), (0, false));
    assert_eq!(kept(&s, "/p", 1), (0, false));
    assert!(matches!(
        s.get("/p", Some(1)),
        Err(ServiceError::NotFound(_))
    ));
}

#[tokio::test]
async fn kept_sealed_values_stay_within_their_byte_budget() {
    let mut f = Fixture::new();
    // Room for one 37-byte sealed value, not two.
    f.config.sealed_value_cache_bytes = 60;
    f.config.max_versions = 2;
    let s = f.open();
    for (path, value) in [("/a", "a-value-1"), ("/a", "a-value-2")] {
        s.put(&me(), put_req(path, value.as_bytes(), None))
            .await
            .unwrap();
    }
    assert_eq!(s.get("/a", Some(1)).unwrap().value, b"a-value-1");
    assert_eq!(s.get("/a", Some(2)).unwrap().value, b"a-value-2");
    assert_eq!(kept_value(&s, "/a", 1), (37, true));
    // Over the budget: the key is kept, the value is read from the store (so its damage is found).
    assert_eq!(kept_value(&s, "/a", 2), (37, false));
    assert_eq!(kept(&s, "/a", 2), (2, true));
    let good = damage_value(&f, "/a", 2);
    data_loss(&s, "/a", Some(2));
    f.tree().put(&version_key("/a", 2), &good).unwrap();
    // A third version prunes version 1: its bytes are handed back, and the next version read
    // (unwrapped afresh) may keep its value.
    s.put(&me(), put_req("/a", b"a-value-3", None))
        .await
        .unwrap();
    assert_eq!(kept_value(&s, "/a", 1), (0, false));
    assert_eq!(s.get("/a", Some(3)).unwrap().value, b"a-value-3");
    assert_eq!(kept_value(&s, "/a", 3), (37, true));
    // The key kept without its value stays so: it does not take the room (nothing is unwrapped).
    assert_eq!(s.get("/a", Some(2)).unwrap().value, b"a-value-2");
    assert_eq!(kept_value(&s, "/a", 2), (37, false));

    // 0 keeps no value at all.
    f.config.sealed_value_cache_bytes = 0;
    let s = f.restart(s);
    assert_eq!(s.get("/a", Some(3)).unwrap().value, b"a-value-3");
    assert_eq!(kept_value(&s, "/a", 3), (0, false));
    assert_eq!(kept(&s, "/a", 3), (1, true));
}

impl Record for StoredVersionV1 {
    const VERSION: u8 = 1;
}

/// Rewrites version `v` of `path` as record version 1 (JSON with base64 fields), as builds before
/// the binary record wrote it.
fn as_version_1(tree: &Tree, path: &str, v: u64) {
    let key = version_key(path, v);
    let StoredVersion(sealed) = tree.get(&key).unwrap().unwrap();
    let old = StoredVersionV1 {
        kek: sealed.kek,
        key: B64.encode(&sealed.wrapped_key),
        value: B64.encode(&sealed.ciphertext),
    };
    tree.put(&key, &old).unwrap();
    assert_eq!(tree.raw(&key).unwrap().unwrap()[1], 1);
}

#[tokio::test]
async fn versions_stored_as_json_still_read_and_new_ones_are_binary() {
    let mut f = Fixture::new();
    // Every Get reads its record from the store (the records are damaged after being read).
    f.config.sealed_value_cache_bytes = 0;
    let s = f.open();
    for v in [b"value-one", b"value-two"] {
        s.put(&me(), put_req("/p", v, None)).await.unwrap();
    }
    let tree = f.tree();
    // Binary: envelope header, the key id, the wrapped data key (nonce, key, tag) and the sealed
    // value (nonce, value, tag), nothing else.
    let raw = tree.raw(&version_key("/p", 2)).unwrap().unwrap();
    let kek = s.keys.current().id().len();
    assert_eq!(raw[1], 2);
    assert_eq!(raw.len(), 6 + 1 + kek + 2 + (12 + 32 + 16) + (12 + 9 + 16));
    as_version_1(&tree, "/p", 1);
    drop(s);
    // Read at once and after a restart (which opens every version for the log redactor).
    let s = f.open();
    assert_eq!(s.get("/p", Some(1)).unwrap().value, b"value-one");
    assert_eq!(s.get("/p", None).unwrap().value, b"value-two");
    // A version 1 record with a flipped byte is DATA_LOSS for that version only.
    let old: StoredVersionV1 = match tree.get::<StoredVersion>(&version_key("/p", 1)) {
        Ok(Some(StoredVersion(sealed))) => StoredVersionV1 {
            kek: sealed.kek,
            key: B64.encode(&sealed.wrapped_key),
            value: {
                let mut bytes = sealed.ciphertext;
                bytes[13] ^= 0x80;
                B64.encode(&bytes)
            },
        },
        other => panic!("{:?}", other.map(|_| ())),
    };
    tree.put(&version_key("/p", 1), &old).unwrap();
    assert!(matches!(
        s.get("/p", Some(1)),
        Err(ServiceError::DataLoss(_))
    ));
    assert_eq!(s.get("/p", Some(2)).unwrap().value, b"value-two");
    // A truncated binary record is damaged, not misread.
    let mut short: StoredVersion = tree.get(&version_key("/p", 2)).unwrap().unwrap();
    short.0.wrapped_key.truncate(3);
    tree.put(&version_key("/p", 2), &short).unwrap();
    assert!(matches!(
        s.get("/p", Some(2)),
        Err(ServiceError::DataLoss(_))
    ));
}

#[tokio::test]
async fn another_master_key_reads_nothing() {
    let mut f = Fixture::new();
    f.open()
        .put(&me(), put_req("/p", b"value-one", None))
        .await
        .unwrap();
    let other = f.open_with(8);
    let why = data_loss(&other, "/p", None);
    assert!(why.contains("sealed under master key"), "{why}");
}

#[tokio::test]
async fn state_survives_reopening() {
    let mut f = Fixture::new();
    {
        let s = f.open();
        s.put(&me(), put_req("/a", b"value-a1", None))
            .await
            .unwrap();
        s.put(&me(), put_req("/a", b"value-a2", None))
            .await
            .unwrap();
        s.set_versions(&me(), "/a", &[1], VersionOp::Delete)
            .await
            .unwrap();
    }
    let s = f.open();
    let meta = s.metadata("/a").unwrap();
    assert_eq!(meta.current, 2);
    assert!(meta.versions[&1].deleted_ms.is_some());
    assert_eq!(s.get("/a", None).unwrap().value, b"value-a2");
    assert_eq!(
        s.put(&me(), put_req("/a", b"value-a3", Some(2)))
            .await
            .unwrap()
            .version,
        3
    );
}

#[tokio::test]
async fn list_pages_through_a_folder_and_hides_what_the_caller_may_not_read() {
    let mut f = Fixture::new();
    let s = f.open();
    for p in ["/a/x", "/a/y", "/a/z", "/a-b", "/a", "/ab/c", "/b/q"] {
        s.put(&me(), put_req(p, b"value-123", None)).await.unwrap();
    }
    let all = |_: &str| true;
    let (page, next) = s.list("/a", None, 2, all);
    assert_eq!(page, vec!["/a", "/a/x"]);
    let (page, next) = s.list("/a", next.as_deref(), 2, all);
    assert_eq!(page, vec!["/a/y", "/a/z"]);
    assert!(next.is_none() || s.list("/a", next.as_deref(), 2, all).0.is_empty());
    assert_eq!(s.list("", None, 100, all).0.len(), 7);
    let (visible, _) = s.list("", None, 100, |p| p.starts_with("/a/"));
    assert_eq!(visible, vec!["/a/x", "/a/y", "/a/z"]);
}

#[tokio::test]
async fn watchers_hear_every_change_without_its_value() {
    let mut f = Fixture::new();
    let s = f.open();
    let mut rx = s.subscribe();
    s.put(&me(), put_req("/w", b"value-w1", None))
        .await
        .unwrap();
    s.set_versions(&me(), "/w", &[1], VersionOp::Delete)
        .await
        .unwrap();
    s.set_versions(&me(), "/w", &[1], VersionOp::Destroy)
        .await
        .unwrap();
    let kinds: Vec<(ChangeKind, u64)> = (0..3)
        .map(|_| {
            let c = rx.try_recv().unwrap();
            assert_eq!(c.path, "/w");
            assert!(!format!("{c:?}").contains("value-w1"));
            (c.kind, c.version)
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            (ChangeKind::Put, 1),
            (ChangeKind::Delete, 1),
            (ChangeKind::Destroy, 1)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_puts_share_flushes() {
    let mut f = Fixture::new();
    let s = Arc::new(f.open());
    let before = f.store.as_ref().unwrap().commit_stats();
    let mut tasks = Vec::new();
    for i in 0..64 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for j in 0..8 {
                s.put(
                    &me(),
                    put_req(
                        &format!("/load/{i}"),
                        format!("value-{i}-{j}").as_bytes(),
                        None,
                    ),
                )
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let after = f.store.as_ref().unwrap().commit_stats();
    let (writes, flushes) = (after.writes - before.writes, after.flushes - before.flushes);
    assert_eq!(writes, 512);
    assert!(
        flushes < writes,
        "{writes} durable puts took {flushes} flushes: no group commit"
    );
    assert_eq!(s.get("/load/63", None).unwrap().value, b"value-63-7");
}

#[test]
fn custom_metadata_keeps_vaults_limits() {
    let ok: BTreeMap<String, String> = (0..64)
        .map(|i| (format!("k{i}"), "v".repeat(512)))
        .collect();
    assert!(check_custom(&ok).is_ok());
    let mut too_many = ok.clone();
    too_many.insert("k64".into(), "v".into());
    assert!(check_custom(&too_many).is_err());
    let long_key: BTreeMap<String, String> = [("k".repeat(129), "v".into())].into();
    assert!(check_custom(&long_key).is_err());
    let long_value: BTreeMap<String, String> = [("k".into(), "v".repeat(513))].into();
    match check_custom(&long_value) {
        Err(ServiceError::InvalidArgument(v)) => assert_eq!(v[0].field, "custom_metadata[k]"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn values_never_show_in_debug_output() {
    let sealed = envelope::seal(
        &MasterKey::new(&[1; 32]).unwrap(),
        &SystemRandom::new(),
        "/p",
        1,
        b"super-secret-value",
    )
    .unwrap();
    let text = format!("{sealed:?}");
    assert!(!text.contains("super"));
    assert!(!text.contains(&B64.encode(&sealed.ciphertext)));
}

#[tokio::test]
async fn a_master_key_rotation_rewraps_every_data_key_and_resumes_after_a_crash() {
    let mut f = Fixture::new();
    f.open(); // the store
    let store = f.store.clone().unwrap();
    let old = f.dir.path().join("old.key");
    let new = f.dir.path().join("new.key");
    crate::crypto::files::write_private(&old, &[1; 32]).unwrap();
    crate::crypto::files::write_private(&new, &[2; 32]).unwrap();
    let open_with = |path: &std::path::Path| {
        let keys = Arc::new(KeySet::open(&store, MasterKey::load(path).unwrap(), path).unwrap());
        let secrets = Secrets::open(f.tree(), keys.clone(), &f.config, f.clock.clone()).unwrap();
        (keys, secrets)
    };
    let (keys, s) = open_with(&old);
    keys.adopt().unwrap();
    for i in 0..5 {
        s.put(
            &me(),
            put_req(&format!("/r/{i}"), format!("value-{i}-a").as_bytes(), None),
        )
        .await
        .unwrap();
        s.put(
            &me(),
            put_req(&format!("/r/{i}"), format!("value-{i}-b").as_bytes(), None),
        )
        .await
        .unwrap();
    }
    let kek = |path: &str, v: u64| -> String {
        f.tree()
            .get::<StoredVersion>(&version_key(path, v))
            .unwrap()
            .unwrap()
            .0
            .kek
    };
    let old_id = kek("/r/0", 1);
    // Both versions of /r/1 as an older build wrote them (record version 1, JSON and base64).
    for v in [1, 2] {
        as_version_1(&f.tree(), "/r/1", v);
    }

    // Begin, write one version under the new key, "crash" before re-wrapping anything.
    let guard = keys
        .begin(MasterKey::load(&new).unwrap(), &new)
        .await
        .unwrap();
    s.put(&me(), put_req("/r/0", b"value-0-c", None))
        .await
        .unwrap();
    drop(guard);
    drop(s);
    drop(keys);
    let new_id = kek("/r/0", 3);
    assert_ne!(old_id, new_id);

    // The start with the old key still configured reads everything with one of the two keys.
    let (keys, s) = open_with(&old);
    assert_eq!(s.get("/r/0", Some(1)).unwrap().value, b"value-0-a");
    assert_eq!(s.get("/r/0", Some(3)).unwrap().value, b"value-0-c");
    // The re-run finishes: every data key moves, no value changes.
    let guard = keys
        .begin(MasterKey::load(&new).unwrap(), &new)
        .await
        .unwrap();
    assert_eq!(s.rewrap_all().await.unwrap(), 10);
    keys.finish(guard).await.unwrap();
    assert_eq!(s.rewrap_all().await.unwrap(), 0, "nothing left to re-wrap");
    for i in 0..5 {
        assert_eq!(kek(&format!("/r/{i}"), 1), new_id);
        assert_eq!(
            s.get(&format!("/r/{i}"), Some(2)).unwrap().value,
            format!("value-{i}-b").as_bytes()
        );
    }
    // What the read before the re-wrap kept was taken out with the re-wrap: the version is
    // unwrapped again, under the new key, and kept as now stored.
    assert!(s.read_state().kept("/r/0", 1).is_none());
    assert_eq!(s.get("/r/0", Some(1)).unwrap().value, b"value-0-a");
    let stored: StoredVersion = f.tree().get(&version_key("/r/0", 1)).unwrap().unwrap();
    let kept = s.read_state().kept("/r/0", 1).unwrap();
    assert!(kept.key.unwraps(stored.0.as_ref()));
    assert_eq!(kept.sealed_value.as_deref(), Some(&stored.0.ciphertext[..]));
    // The re-wrap rewrote the version 1 records in the current (binary) form.
    let raw = f.tree().raw(&version_key("/r/1", 1)).unwrap().unwrap();
    assert_eq!(raw[1], 2);
    drop(s);
    drop(keys);
    // Afterwards only the new key opens the state, and the old one is refused naming the new file.
    let err = KeySet::open(&store, MasterKey::load(&old).unwrap(), &old)
        .unwrap_err()
        .to_string();
    assert!(err.contains("new.key"), "{err}");
    let (_, s) = open_with(&new);
    assert_eq!(s.get("/r/4", None).unwrap().value, b"value-4-b");
}

#[tokio::test]
async fn a_change_the_audit_log_cannot_record_is_not_made() {
    use crate::access::audit::AuditQuery;
    use crate::config::Config;
    use crate::runtime::tasks::Tasks;
    use crate::supervisor::SupervisorBuilder;
    use tokio_util::sync::CancellationToken;

    let mut f = Fixture::new();
    let s = f.open();
    // The default configuration: `secrets.*` fails closed.
    let config = Config::default();
    assert!(
        config
            .audit
            .fail_closed_actions
            .iter()
            .any(|a| a == "secrets.*")
    );
    let (tasks, token) = (Tasks::new(), CancellationToken::new());
    let audit_dir = f.dir.path().join("audit-state");
    std::fs::create_dir_all(&audit_dir).unwrap();
    let (audit, writer) = AuditLog::open(&audit_dir, &config.audit, &tasks).unwrap();
    let mut builder = SupervisorBuilder::new(config.supervisor.clone(), f.store.clone().unwrap());
    builder.add_worker(writer);
    let _supervisor = builder.start(&tasks, token.clone(), None).await;
    s.set_audit(audit.clone());

    s.put(&me(), put_req("/audited", b"value-one-1", None))
        .await
        .unwrap();
    let (records, _) = audit.query(&AuditQuery::default()).unwrap();
    let last = records.last().expect("on disk before the put was answered");
    assert_eq!(
        (last.action.as_str(), last.resource.as_str()),
        ("secrets.put", "secret:/audited")
    );
    assert_eq!(
        (last.principal.as_str(), last.correlation_id.as_str()),
        ("tester", "c-1")
    );
    assert_eq!(last.reasons, ["versions 1"]);
    // A change of several versions names each of them, never a value.
    for value in [b"listed-value-1", b"listed-value-2"] {
        s.put(&me(), put_req("/listed", value, None)).await.unwrap();
    }
    s.set_versions(&me(), "/listed", &[1, 2], VersionOp::Delete)
        .await
        .unwrap();
    let (records, _) = audit.query(&AuditQuery::default()).unwrap();
    let last = records.last().unwrap();
    assert_eq!(
        (last.action.as_str(), last.resource.as_str()),
        ("secrets.delete", "secret:/listed")
    );
    assert_eq!(last.reasons, ["versions 1,2"]);

    s.put(&me(), rotating_req("/rotating", 60, Generator::Hex(16)))
        .await
        .unwrap();

    // The writer stops: the next change is refused and nothing changes.
    token.cancel();
    tasks.close();
    tasks.wait().await;
    match s
        .put(&me(), put_req("/audited", b"value-two-2", None))
        .await
    {
        Err(ServiceError::Unavailable(why)) => {
            assert!(
                why.contains("cannot record secrets.put on /audited"),
                "{why}"
            );
            assert!(!why.contains("value-two"));
        }
        other => panic!("expected UNAVAILABLE, got {other:?}"),
    }
    assert!(matches!(
        s.set_versions(&me(), "/audited", &[1], VersionOp::Destroy)
            .await,
        Err(ServiceError::Unavailable(_))
    ));
    assert_eq!(s.metadata("/audited").unwrap().current, 1);
    assert_eq!(s.get("/audited", None).unwrap().value, b"value-one-1");
    // The refused value is taken back out of the log redactor; the refused destroy kept its value in.
    assert!(!f.redacts("value-two-2"));
    assert!(f.redacts("value-one-1"));
    // A scheduled rotation that cannot be made is tried again a minute later.
    f.clock.advance_ms(60_000);
    assert_eq!(s.rotate_due().await, 0);
    assert_eq!(s.metadata("/rotating").unwrap().current, 1);
    assert_eq!(s.next_rotation_ms(), Some(s.now_ms() + 60_000));
}

/// A put whose caller gives up once the change is queued: the committer applies it and mirrors it
/// all the same, and the path's lock is released, so the next put of the path is the next version
/// and both read back (memory never falls behind the disk).
#[tokio::test]
async fn a_put_given_up_while_queued_is_still_mirrored_and_unlocks_its_path() {
    let mut f = Fixture::new();
    let s = f.open();
    let store = f.store.as_ref().unwrap();
    let submitted = store.commits_submitted();
    store.hold_commits(true);
    let queued = async {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while store.commits_submitted() == submitted {
            assert!(std::time::Instant::now() < deadline, "the put never queued");
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    };
    let actor = me();
    tokio::select! {
        result = s.put(&actor, put_req("/given/up", b"first-value", None)) => {
            panic!("answered while the committer was held: {result:?}")
        }
        () = queued => {}
    }
    // The put's future is gone; the committer still holds its change.
    store.hold_commits(false);
    let second = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        s.put(&me(), put_req("/given/up", b"second-value", None)),
    )
    .await
    .expect("the path's lock was released")
    .unwrap();
    assert_eq!(second.version, 2);
    assert_eq!(s.get("/given/up", Some(1)).unwrap().value, b"first-value");
    assert_eq!(s.get("/given/up", None).unwrap().value, b"second-value");
    assert_eq!(s.metadata("/given/up").unwrap().versions.len(), 2);
}

/// Concurrent puts to many paths share groups: every one is answered with its own version and
/// reads back, and they took fewer sled batches than puts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_puts_share_sled_batches_and_each_reads_back() {
    const PUTS: u64 = 48;
    let mut f = Fixture::new();
    let s = Arc::new(f.open());
    let store = f.store.as_ref().unwrap();
    let before = store.commit_stats();
    let submitted = store.commits_submitted();
    store.hold_commits(true);
    let puts: Vec<_> = (0..PUTS)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                let path = format!("/many/{}", i % 16);
                let value = format!("value-{i}");
                let written = s
                    .put(&me(), put_req(&path, value.as_bytes(), None))
                    .await
                    .unwrap();
                (path, value, written.version)
            })
        })
        .collect();
    // Puts of paths that share a lock stripe wait for each other: one per stripe queues at once,
    // and those share one group (one sled batch), so the puts take fewer batches than puts.
    let mut stripes: Vec<Arc<tokio::sync::Mutex<()>>> = Vec::new();
    for i in 0..16 {
        let stripe = s.stripe(&format!("/many/{i}"));
        if !stripes.iter().any(|s| Arc::ptr_eq(s, &stripe)) {
            stripes.push(stripe);
        }
    }
    assert!(stripes.len() >= 2);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while store.commits_submitted() < submitted + stripes.len() as u64 {
        assert!(
            std::time::Instant::now() < deadline,
            "the puts never queued"
        );
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    store.hold_commits(false);
    let mut seen = std::collections::BTreeSet::new();
    for put in puts {
        let (path, value, version) = put.await.unwrap();
        assert!(
            seen.insert((path.clone(), version)),
            "{path} v{version} twice"
        );
        assert_eq!(s.get(&path, Some(version)).unwrap().value, value.as_bytes());
    }
    for i in 0..16 {
        assert_eq!(s.metadata(&format!("/many/{i}")).unwrap().current, 3);
    }
    let after = store.commit_stats();
    assert!(
        after.batches - before.batches < PUTS,
        "{PUTS} puts took {} sled batches",
        after.batches - before.batches
    );
}

/// Metadata as builds before the binary record wrote it (record version 1, JSON).
#[derive(Serialize, Deserialize)]
struct MetaV1(SecretMeta);

impl Record for MetaV1 {
    const VERSION: u8 = 1;
}

fn full_meta() -> SecretMeta {
    let mut meta = SecretMeta::new(T0);
    meta.updated_ms = T0 + 5;
    meta.current = 7;
    meta.max_versions = 3;
    meta.cas_required = true;
    meta.delete_after_s = 3600;
    meta.rotation_period_s = 86_400;
    meta.generator = Some("alphanumeric:32".to_owned());
    meta.next_rotation_ms = Some(T0 + 86_400_000);
    meta.custom
        .insert("owner".to_owned(), "web-team ü".to_owned());
    meta.custom.insert("empty".to_owned(), String::new());
    for (version, deleted_ms, destroyed_ms, origin) in [
        (5, None, None, Origin::Put),
        (6, Some(T0 + 1), None, Origin::Rotate),
        (7, Some(T0 + 2), Some(T0 + 3), Origin::Put),
    ] {
        meta.versions.insert(
            version,
            VersionInfo {
                created_ms: T0 + version,
                deleted_ms,
                destroyed_ms,
                origin,
            },
        );
    }
    meta
}

#[test]
fn binary_metadata_round_trips_every_field_and_refuses_damage() {
    for meta in [full_meta(), SecretMeta::new(T0)] {
        let bytes = crate::store::encode(&meta).unwrap();
        assert_eq!(bytes[1], 2);
        assert_eq!(crate::store::decode::<SecretMeta>(&bytes).unwrap(), meta);
        // Smaller than the JSON it replaces.
        let json = crate::store::encode(&MetaV1(meta.clone())).unwrap();
        assert!(
            bytes.len() < json.len(),
            "{} vs {}",
            bytes.len(),
            json.len()
        );
    }
    // Every truncation (checksum recomputed, so only the parser can notice) and trailing bytes are
    // an error, never a panic or a misread.
    let mut payload = Vec::new();
    full_meta().write_payload(&mut payload).unwrap();
    for cut in 0..payload.len() {
        assert!(
            SecretMeta::read_payload(&payload[..cut]).is_err(),
            "cut {cut}"
        );
    }
    payload.push(0);
    assert!(SecretMeta::read_payload(&payload).is_err());
}

#[tokio::test]
async fn metadata_stored_as_json_still_reads_and_the_next_change_writes_it_binary() {
    let mut f = Fixture::new();
    let s = f.open();
    s.put(&me(), put_req("/p", b"value-one", None))
        .await
        .unwrap();
    let tree = f.tree();
    let old: SecretMeta = tree.get(&meta_key("/p")).unwrap().unwrap();
    tree.put(&meta_key("/p"), &MetaV1(old.clone())).unwrap();
    assert_eq!(tree.raw(&meta_key("/p")).unwrap().unwrap()[1], 1);
    drop(s);
    let s = f.open();
    assert_eq!(*s.metadata("/p").unwrap(), old);
    assert_eq!(s.get("/p", None).unwrap().value, b"value-one");
    s.put(&me(), put_req("/p", b"value-two", Some(1)))
        .await
        .unwrap();
    assert_eq!(tree.raw(&meta_key("/p")).unwrap().unwrap()[1], 2);
    drop(s);
    let s = f.open();
    let meta = s.metadata("/p").unwrap();
    assert_eq!(meta.current, 2);
    assert_eq!(meta.versions[&1], old.versions[&1]);
    assert_eq!(s.get("/p", Some(1)).unwrap().value, b"value-one");
}

/// Pruning and destroying take a value out of the log redactor by what remembering it counted (the
/// pruned version is not decrypted), and a value another version still holds stays redacted.
#[tokio::test]
async fn pruned_and_destroyed_values_leave_the_redactor_and_stored_ones_stay() {
    let mut f = Fixture::new();
    f.config.max_versions = 2;
    let s = f.open();
    let put = |path: &'static str, value: &'static str| {
        let s = &s;
        async move {
            s.put(&me(), put_req(path, value.as_bytes(), None))
                .await
                .unwrap()
                .version
        }
    };
    put("/a", "value-one-aaaa").await;
    put("/a", "value-two-bbbb").await;
    put("/b", "value-one-aaaa").await;
    put("/c", "short").await;
    // A value with escaped forms (a quote and a control byte): three fingerprints.
    put("/e", "quo\"ted\u{1}value").await;
    assert!(f.redacts("value-one-aaaa") && f.redacts("value-two-bbbb"));
    assert_eq!(f.redactor.remembered(), 2 + 3);

    // /a v1 goes, but /b v1 holds the same value.
    assert_eq!(put("/a", "value-3-cccccc").await, 3);
    assert_eq!(s.metadata("/a").unwrap().oldest(), 2);
    assert!(f.redacts("value-one-aaaa"));
    // /a v2 goes, but v4 holds the same value.
    put("/a", "value-two-bbbb").await;
    assert!(f.redacts("value-two-bbbb"));
    // /a v3 goes, and nothing else holds it.
    put("/a", "value-5-eeeeee").await;
    assert!(!f.redacts("value-3-cccccc"));
    assert!(f.redacts("value-two-bbbb") && f.redacts("value-5-eeeeee"));
    // A value too short to be remembered has nothing to forget.
    put("/c", "tiny").await;
    put("/c", "small").await;
    assert_eq!(s.metadata("/c").unwrap().oldest(), 2);

    // Destroy: /b v1 was the last holder of its value.
    s.set_versions(&me(), "/b", &[1], VersionOp::Destroy)
        .await
        .unwrap();
    assert!(!f.redacts("value-one-aaaa"));
    // Destroying a version already destroyed changes nothing (no second forget).
    s.set_versions(&me(), "/a", &[4], VersionOp::Destroy)
        .await
        .unwrap();
    assert!(!f.redacts("value-two-bbbb"));
    s.set_versions(&me(), "/a", &[4], VersionOp::Destroy)
        .await
        .unwrap();
    // Deleting keeps the value stored, and redacted.
    s.set_versions(&me(), "/a", &[5], VersionOp::Delete)
        .await
        .unwrap();
    assert!(f.redacts("value-5-eeeeee"));

    // Lowering max_versions prunes at once: /e's three forms go together.
    put("/e", "value-e2-ffffff").await;
    s.update_metadata(
        &me(),
        "/e",
        MetadataUpdate {
            max_versions: Some(1),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(!f.redacts("quo\"ted\u{1}value"));
    // Left: /a v5 and /e v2.
    assert_eq!(f.redactor.remembered(), 2);
    assert!(f.redacts("value-e2-ffffff"));
}

/// A restarted daemon remembers every stored value again, and what it counted: pruning and
/// destroying after the restart still take values out.
#[tokio::test]
async fn after_a_restart_pruning_and_destroy_still_forget() {
    let mut f = Fixture::new();
    f.config.max_versions = 2;
    let s = f.open();
    for (path, value) in [
        ("/a", "value-one-aaaa"),
        ("/a", "value-two-bbbb"),
        ("/b", "value-bee-bbbb"),
        ("/b", "value-two-bbbb"),
    ] {
        s.put(&me(), put_req(path, value.as_bytes(), None))
            .await
            .unwrap();
    }
    s.set_versions(&me(), "/b", &[1], VersionOp::Destroy)
        .await
        .unwrap();
    let s = f.restart(s);
    assert_eq!(f.redactor.remembered(), 2);
    assert!(f.redacts("value-one-aaaa") && f.redacts("value-two-bbbb"));
    assert!(!f.redacts("value-bee-bbbb"));

    s.put(&me(), put_req("/a", b"value-3-cccccc", None))
        .await
        .unwrap();
    assert!(!f.redacts("value-one-aaaa"));
    // /a v2 is gone; /b v2 still holds its value.
    s.put(&me(), put_req("/a", b"value-4-dddddd", None))
        .await
        .unwrap();
    assert!(f.redacts("value-two-bbbb"));
    s.set_versions(&me(), "/b", &[2], VersionOp::Destroy)
        .await
        .unwrap();
    assert!(!f.redacts("value-two-bbbb"));
    assert_eq!(f.redactor.remembered(), 2);
    assert!(f.redacts("value-3-cccccc") && f.redacts("value-4-dddddd"));
}

/// A version destroyed or pruned while a Get reads it: the store drops its record before the change
/// is mirrored in memory, so the Get can find the record gone while the metadata it read still
/// says live. It answers NOT_FOUND, as a moment later; a record missing for any other reason is
/// still DATA_LOSS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_gone_while_it_was_read_is_not_found_rather_than_data_loss() {
    let mut f = Fixture::new();
    f.config.max_versions = 2;
    let s = f.open();
    for v in [b"value-one", b"value-two"] {
        s.put(&me(), put_req("/p", v, None)).await.unwrap();
    }
    let lost = || ServiceError::DataLoss("version is missing from the store".to_owned());
    s.set_versions(&me(), "/p", &[1], VersionOp::Destroy)
        .await
        .unwrap();
    let err = s.gone_while_read("/p", 1, lost());
    assert!(
        matches!(&err, ServiceError::NotFound(m) if m.contains("destroyed")),
        "{err:?}"
    );
    s.put(&me(), put_req("/p", b"value-three", None))
        .await
        .unwrap();
    let err = s.gone_while_read("/p", 1, lost());
    assert!(
        matches!(&err, ServiceError::NotFound(m) if m.contains("pruned")),
        "{err:?}"
    );
    // Still stored as far as the metadata knows: the loss stands.
    let err = s.gone_while_read("/p", 2, lost());
    assert!(matches!(err, ServiceError::DataLoss(_)), "{err:?}");
    f.tree().remove(&version_key("/p", 2)).unwrap();
    assert!(data_loss(&s, "/p", Some(2)).contains("missing from the store"));

    // Gets racing destroys: never DATA_LOSS.
    let s = Arc::new(s);
    let reader = {
        let s = s.clone();
        tokio::spawn(async move {
            let mut answers = 0;
            loop {
                for version in 3..=40 {
                    match s.get("/p", Some(version)) {
                        Ok(_) | Err(ServiceError::NotFound(_)) => answers += 1,
                        Err(other) => panic!("version {version}: {other:?}"),
                    }
                }
                if s.metadata("/p").unwrap().current >= 40 {
                    return answers;
                }
                tokio::task::yield_now().await;
            }
        })
    };
    for _ in 3..=40 {
        let written = s
            .put(&me(), put_req("/p", b"value-racing", None))
            .await
            .unwrap();
        s.set_versions(&me(), "/p", &[written.version], VersionOp::Destroy)
            .await
            .unwrap();
    }
    assert!(reader.await.unwrap() > 0);
}
