//! The registry against a real (temporary) store and real files: hashing, tamper detection, alias
//! history on an injected clock, lineage and cycles, drift on generated series, signed cards,
//! reopening, and every bad input the issue names.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::*;
use crate::crypto::MasterKey;
use crate::crypto::keyset::KeySet;
use crate::store::config::{FlushPolicy, StoreConfig};
use crate::store::{Store, trees};

const T0: u64 = 1_800_000_000_000;
const DAY_MS: u64 = 86_400_000;

struct Fixture {
    dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    store: Option<Store>,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture {
            dir: tempfile::tempdir().unwrap(),
            clock: Arc::new(ManualClock::new(T0)),
            store: None,
        }
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn artifacts(&self) -> PathBuf {
        self.state_dir().join("artifacts")
    }

    fn open(&mut self) -> Registry {
        self.open_with(7)
    }

    fn keys(&self, key: u8) -> KeySet {
        KeySet::open(
            self.store.as_ref().unwrap(),
            MasterKey::new(&[key; 32]).unwrap(),
            Path::new("test.key"),
        )
        .unwrap()
    }

    fn open_with(&mut self, key: u8) -> Registry {
        if self.store.is_none() {
            let config = StoreConfig {
                flush: FlushPolicy::Always,
                flush_interval_ms: 100,
                cache_capacity_bytes: 8 << 20,
                min_free_bytes: 0,
            };
            self.store = Some(Store::open(&self.state_dir(), &config).unwrap());
        }
        let keys = self.keys(key);
        let store = self.store.as_ref().unwrap();
        let config = config::RegistryConfig {
            hash_buffer_bytes: 4096,
            ..config::RegistryConfig::default()
        };
        Registry::open(
            store.tree(trees::REGISTRY).unwrap(),
            &keys,
            &config,
            &self.state_dir(),
            self.clock.clone(),
        )
        .unwrap()
    }

    /// Closes the store (a clean stop) so the next `open` reads it from disk.
    fn close(&mut self) {
        if let Some(store) = self.store.take() {
            store.close().unwrap();
        }
    }

    /// A file under the artifact root with `bytes`; returns its path.
    fn file(&self, name: &str, bytes: &[u8]) -> String {
        std::fs::create_dir_all(self.artifacts()).unwrap();
        let path = self.artifacts().join(name);
        std::fs::write(&path, bytes).unwrap();
        path.display().to_string()
    }
}

fn me() -> Actor {
    Actor {
        principal: "tester".into(),
        correlation_id: "c-1".into(),
    }
}

fn them() -> Actor {
    Actor {
        principal: "operator".into(),
        correlation_id: "c-2".into(),
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    brainstem_keys::signing::hex_encode(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

fn registration(name: &str, version: &str, weights: &str) -> Registration {
    Registration {
        name: name.into(),
        version: version.into(),
        algorithm: "resnet".into(),
        weights_path: weights.into(),
        ..Registration::default()
    }
}

fn fields(err: &ServiceError) -> Vec<String> {
    match err {
        ServiceError::InvalidArgument(v) => v.iter().map(|v| v.field.clone()).collect(),
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
}

#[tokio::test]
async fn registration_hashes_real_files_streaming_and_checks_declared_hashes() {
    let mut f = Fixture::new();
    let registry = f.open();
    // Larger than several buffers, not a multiple of the buffer size.
    let weights: Vec<u8> = (0..100_003u32).map(|i| (i % 251) as u8).collect();
    let dataset = b"label,x\n1,2\n".to_vec();
    let wpath = f.file("w.bin", &weights);
    let dpath = f.file("d.csv", &dataset);
    let mut request = registration("vision/detector", "1.2.0", &wpath);
    request.weights_sha256 = Some(sha256_hex(&weights).to_uppercase());
    request.dataset_path = dpath;
    request.metrics.insert("accuracy".into(), 0.93);
    let record = registry.register(&me(), request).await.unwrap();
    assert_eq!(record.version, "1.2.0");
    assert_eq!(record.weights.sha256, sha256_hex(&weights));
    assert_eq!(record.weights.size, weights.len() as u64);
    assert_eq!(
        record.dataset.as_ref().unwrap().sha256,
        sha256_hex(&dataset)
    );
    assert_eq!(record.created_by, "tester");
    assert_eq!(record.created_ms, T0);

    // A declared hash that differs: FAILED_PRECONDITION naming both hashes.
    let wrong = "0".repeat(64);
    let mut request = registration("vision/detector", "1.3.0", &wpath);
    request.weights_sha256 = Some(wrong.clone());
    match registry.register(&me(), request).await {
        Err(ServiceError::FailedPrecondition(why)) => {
            assert!(
                why.contains(&wrong) && why.contains(&sha256_hex(&weights)),
                "{why}"
            );
        }
        other => panic!("{other:?}"),
    }
    // Nothing was stored for it.
    assert!(matches!(
        registry.get("vision/detector", "1.3.0"),
        Err(ServiceError::NotFound(_))
    ));
}

#[tokio::test]
async fn versions_auto_increment_and_latest_skips_archived_ones() {
    let mut f = Fixture::new();
    let registry = f.open();
    let w = f.file("w", b"weights");
    let first = registry
        .register(&me(), registration("m", "", &w))
        .await
        .unwrap();
    assert_eq!(first.version, "1.0.0");
    registry
        .register(&me(), registration("m", "1.4.2", &w))
        .await
        .unwrap();
    let next = registry
        .register(&me(), registration("m", "", &w))
        .await
        .unwrap();
    assert_eq!(next.version, "1.4.3");
    assert_eq!(registry.get_latest("m").unwrap().record.version, "1.4.3");
    let update = VersionUpdate {
        status: Some(VersionStatus::Archived),
        ..VersionUpdate::default()
    };
    registry
        .update_version(&me(), "m", "1.4.3", update)
        .await
        .unwrap();
    assert_eq!(registry.get_latest("m").unwrap().record.version, "1.4.2");
    let (versions, next) = registry.list_versions("m", None, 2).unwrap();
    let names: Vec<_> = versions.iter().map(|v| v.record.version.clone()).collect();
    assert_eq!(names, ["1.4.3", "1.4.2"]);
    let (rest, none) = registry.list_versions("m", next.as_deref(), 2).unwrap();
    assert_eq!(rest[0].record.version, "1.0.0");
    assert!(none.is_none());
    // Pre-releases sort below their release.
    registry
        .register(&me(), registration("m", "2.0.0-rc.1", &w))
        .await
        .unwrap();
    registry
        .register(&me(), registration("m", "2.0.0", &w))
        .await
        .unwrap();
    assert_eq!(registry.get_latest("m").unwrap().record.version, "2.0.0");
}

#[tokio::test]
async fn tampered_and_missing_files_are_reported_per_file() {
    let mut f = Fixture::new();
    let registry = f.open();
    let w = f.file("w", b"weights v1");
    let mut request = registration("m", "1.0.0", &w);
    request.dataset_path = f.file("d", b"dataset");
    registry.register(&me(), request).await.unwrap();
    let checks = registry.verify_artifacts("m", "1.0.0").await.unwrap();
    assert!(checks.iter().all(|c| c.result == "ok"), "{checks:?}");

    std::fs::write(&w, b"weights v2").unwrap();
    std::fs::remove_file(f.artifacts().join("d")).unwrap();
    let checks = registry.verify_artifacts("m", "1.0.0").await.unwrap();
    assert_eq!(checks[0].role, "weights");
    assert_eq!(checks[0].result, "mismatch");
    assert_eq!(checks[0].actual_sha256, sha256_hex(b"weights v2"));
    assert_eq!(checks[1].role, "dataset");
    assert_eq!(checks[1].result, "missing");

    // A file replaced by a symlink (even to identical bytes) is not what was registered.
    let outside = f.dir.path().join("outside");
    std::fs::write(&outside, b"weights v1").unwrap();
    std::fs::remove_file(&w).unwrap();
    std::os::unix::fs::symlink(&outside, &w).unwrap();
    let checks = registry.verify_artifacts("m", "1.0.0").await.unwrap();
    assert_eq!(checks[0].result, "mismatch");
}

#[tokio::test]
async fn paths_outside_the_roots_and_symlinks_leading_out_are_refused() {
    let mut f = Fixture::new();
    let registry = f.open();
    let outside = f.dir.path().join("secret.bin");
    std::fs::write(&outside, b"not yours").unwrap();
    let outside = outside.display().to_string();
    let denied = |r: Result<Arc<VersionRecord>, ServiceError>| {
        assert!(matches!(r, Err(ServiceError::PermissionDenied(_))), "{r:?}");
    };
    denied(
        registry
            .register(&me(), registration("m", "1.0.0", &outside))
            .await,
    );
    denied(
        registry
            .register(&me(), registration("m", "1.0.0", "/etc/hostname"))
            .await,
    );
    // `..` that climbs out.
    let climbing = format!("{}/../../secret.bin", f.artifacts().display());
    f.file("placeholder", b"x");
    denied(
        registry
            .register(&me(), registration("m", "1.0.0", &climbing))
            .await,
    );
    // A symlink inside the root that leads out of it.
    let link = f.artifacts().join("link.bin");
    std::os::unix::fs::symlink(&outside, &link).unwrap();
    denied(
        registry
            .register(
                &me(),
                registration("m", "1.0.0", &link.display().to_string()),
            )
            .await,
    );
    // A dataset outside is refused the same way.
    let mut request = registration("m", "1.0.0", &f.file("w", b"w"));
    request.dataset_path = outside.clone();
    denied(registry.register(&me(), request).await);
    // A symlink that stays inside the root is fine.
    let inner = f.artifacts().join("inner.bin");
    std::os::unix::fs::symlink(f.artifacts().join("w"), &inner).unwrap();
    registry
        .register(
            &me(),
            registration("m", "1.0.0", &inner.display().to_string()),
        )
        .await
        .unwrap();
    // A missing file under the root is NOT_FOUND; a relative path INVALID_ARGUMENT.
    let missing = f.artifacts().join("nope").display().to_string();
    assert!(matches!(
        registry
            .register(&me(), registration("m", "2.0.0", &missing))
            .await,
        Err(ServiceError::NotFound(_))
    ));
    let err = registry
        .register(&me(), registration("m", "2.0.0", "relative/w"))
        .await
        .unwrap_err();
    assert_eq!(fields(&err), ["weights_path"]);
}

#[tokio::test]
async fn aliases_keep_their_history_and_answer_what_held_them_at_a_time() {
    let mut f = Fixture::new();
    let registry = f.open();
    let w = f.file("w", b"w");
    for v in ["1.0.0", "1.1.0", "2.0.0"] {
        registry
            .register(&me(), registration("m", v, &w))
            .await
            .unwrap();
    }
    assert_eq!(
        registry
            .set_alias(&me(), "m", "production", Some("1.0.0"))
            .await
            .unwrap(),
        None
    );
    f.clock.advance_ms(DAY_MS);
    assert_eq!(
        registry
            .set_alias(&them(), "m", "production", Some("1.1.0"))
            .await
            .unwrap()
            .as_deref(),
        Some("1.0.0")
    );
    // Setting the same version again changes nothing.
    registry
        .set_alias(&them(), "m", "production", Some("1.1.0"))
        .await
        .unwrap();
    f.clock.advance_ms(DAY_MS);
    registry
        .set_alias(&me(), "m", "production", Some("2.0.0"))
        .await
        .unwrap();
    f.clock.advance_ms(DAY_MS);
    registry
        .set_alias(&them(), "m", "production", None)
        .await
        .unwrap();

    let history = registry.alias_history("m", "production", None).unwrap();
    let versions: Vec<_> = history.iter().map(|s| s.version.as_str()).collect();
    assert_eq!(versions, ["1.0.0", "1.1.0", "2.0.0"]);
    assert_eq!(history[0].principal, "tester");
    assert_eq!(history[0].ended_by.as_deref(), Some("operator"));
    assert_eq!(
        (history[0].from_ms, history[0].to_ms),
        (T0, Some(T0 + DAY_MS))
    );
    assert_eq!(history[1].principal, "operator");
    assert_eq!(history[2].to_ms, Some(T0 + 3 * DAY_MS));

    // "Which version was production at time T."
    assert_eq!(registry.alias_at("m", "production", T0 - 1).unwrap(), None);
    assert_eq!(
        registry.alias_at("m", "production", T0).unwrap().as_deref(),
        Some("1.0.0")
    );
    assert_eq!(
        registry
            .alias_at("m", "production", T0 + DAY_MS + 5)
            .unwrap()
            .as_deref(),
        Some("1.1.0")
    );
    assert_eq!(
        registry
            .alias_at("m", "production", T0 + 2 * DAY_MS)
            .unwrap()
            .as_deref(),
        Some("2.0.0")
    );
    assert_eq!(
        registry
            .alias_at("m", "production", T0 + 4 * DAY_MS)
            .unwrap(),
        None
    );

    // Aliases show on the versions they name now.
    registry
        .set_alias(&me(), "m", "staging", Some("2.0.0"))
        .await
        .unwrap();
    assert_eq!(registry.get("m", "2.0.0").unwrap().aliases, ["staging"]);
    // An archived version cannot take an alias.
    let archive = VersionUpdate {
        status: Some(VersionStatus::Archived),
        ..VersionUpdate::default()
    };
    registry
        .update_version(&me(), "m", "1.0.0", archive)
        .await
        .unwrap();
    assert!(matches!(
        registry
            .set_alias(&me(), "m", "production", Some("1.0.0"))
            .await,
        Err(ServiceError::FailedPrecondition(_))
    ));
    // The history survives a reopen.
    drop(registry);
    f.close();
    let registry = f.open();
    assert_eq!(
        registry.alias_history("m", "production", None).unwrap(),
        history
    );
}

#[tokio::test]
async fn lineage_answers_ancestors_and_descendants_and_refuses_cycles() {
    let mut f = Fixture::new();
    let registry = f.open();
    let w = f.file("w", b"w");
    registry
        .register(&me(), registration("base", "1.0.0", &w))
        .await
        .unwrap();
    let mut tuned = registration("tuned", "1.0.0", &w);
    tuned.parents = vec![("base".into(), "1.0.0".into(), "fine-tuned-from".into())];
    registry.register(&me(), tuned).await.unwrap();
    let mut small = registration("small", "1.0.0", &w);
    small.parents = vec![("tuned".into(), "1.0.0".into(), "distilled-from".into())];
    registry.register(&me(), small).await.unwrap();

    let (ancestors, descendants) = registry.lineage("small", "1.0.0", 0).unwrap();
    let names: Vec<_> = ancestors
        .iter()
        .map(|n| (n.name.as_str(), n.depth))
        .collect();
    assert_eq!(names, [("tuned", 1), ("base", 2)]);
    assert_eq!(ancestors[0].relationship, Relationship::DistilledFrom);
    assert!(descendants.is_empty());
    let (_, descendants) = registry.lineage("base", "1.0.0", 0).unwrap();
    let names: Vec<_> = descendants
        .iter()
        .map(|n| (n.name.as_str(), n.depth))
        .collect();
    assert_eq!(names, [("tuned", 1), ("small", 2)]);
    let (_, near) = registry.lineage("base", "1.0.0", 1).unwrap();
    assert_eq!(near.len(), 1);

    // base ← tuned ← small: making small a parent of base closes a cycle.
    let cycle = registry
        .add_parent(&me(), "base", "1.0.0", ("small", "1.0.0", "retrained-from"))
        .await;
    assert!(
        matches!(cycle, Err(ServiceError::FailedPrecondition(ref why)) if why.contains("cycle")),
        "{cycle:?}"
    );
    let own = registry
        .add_parent(&me(), "base", "1.0.0", ("base", "1.0.0", "retrained-from"))
        .await;
    assert!(matches!(own, Err(ServiceError::FailedPrecondition(_))));
    let mut itself = registration("self", "1.0.0", &w);
    itself.parents = vec![("self".into(), "1.0.0".into(), "fine-tuned-from".into())];
    assert!(matches!(
        registry.register(&me(), itself).await,
        Err(ServiceError::FailedPrecondition(_))
    ));
    // A link that closes no cycle is accepted, once.
    registry
        .register(&me(), registration("other", "1.0.0", &w))
        .await
        .unwrap();
    registry
        .add_parent(
            &me(),
            "small",
            "1.0.0",
            ("other", "1.0.0", "distilled-from"),
        )
        .await
        .unwrap();
    assert!(matches!(
        registry
            .add_parent(
                &me(),
                "small",
                "1.0.0",
                ("other", "1.0.0", "distilled-from")
            )
            .await,
        Err(ServiceError::AlreadyExists(_))
    ));
    // An unknown parent is NOT_FOUND.
    let mut orphan = registration("orphan", "1.0.0", &w);
    orphan.parents = vec![("ghost".into(), "1.0.0".into(), "fine-tuned-from".into())];
    assert!(matches!(
        registry.register(&me(), orphan).await,
        Err(ServiceError::NotFound(_))
    ));
    // The children index is rebuilt at open.
    drop(registry);
    f.close();
    let registry = f.open();
    let (_, descendants) = registry.lineage("other", "1.0.0", 0).unwrap();
    assert_eq!(descendants[0].name, "small");
}

#[tokio::test]
async fn drift_compares_the_recent_window_with_the_baseline() {
    let mut f = Fixture::new();
    let registry = f.open();
    let w = f.file("w", b"w");
    let mut request = registration("m", "1.0.0", &w);
    request.metrics.insert("accuracy".into(), 0.90);
    registry.register(&me(), request).await.unwrap();
    registry
        .register(&me(), registration("n", "1.0.0", &w))
        .await
        .unwrap();

    // 30 days of daily accuracy: steady around 0.90 for 23 days, then 0.84 (−6.7 %) for 7.
    let series = |day: u64| {
        if day < 23 {
            0.90 + ((day % 3) as f64 - 1.0) * 0.002
        } else {
            0.84
        }
    };
    for day in 0..30 {
        let at = T0 + day * DAY_MS;
        registry
            .record_quality_metric("m", "1.0.0", "accuracy", series(day), Some(at))
            .await
            .unwrap();
        registry
            .record_quality_metric("n", "1.0.0", "accuracy", series(day), Some(at))
            .await
            .unwrap();
    }
    f.clock.advance_ms(29 * DAY_MS + 1);
    let week = 7 * 86_400;
    // Baseline from registration: 0.90 → 0.84 is −6.67 %: drifted at 5 %, not at 10 %.
    let drift = registry
        .detect_drift("m", "1.0.0", "accuracy", 5.0, week)
        .unwrap();
    assert!(drift.drifted, "{drift:?}");
    assert_eq!(drift.baseline_source, "registered");
    assert!((drift.recent - 0.84).abs() < 1e-9);
    assert!(
        (drift.relative_change_percent + 6.666).abs() < 0.01,
        "{drift:?}"
    );
    assert_eq!(drift.recent_samples, 7);
    assert!(
        !registry
            .detect_drift("m", "1.0.0", "accuracy", 10.0, week)
            .unwrap()
            .drifted
    );

    // No registered value: the first window's mean is the baseline.
    let drift = registry
        .detect_drift("n", "1.0.0", "accuracy", 5.0, week)
        .unwrap();
    assert_eq!(drift.baseline_source, "first-window");
    assert_eq!(drift.baseline_samples, 7);
    assert!(drift.drifted);
    // Over the steady part only (a window that ends before the drop) nothing drifts.
    let mut g = Fixture::new();
    let other = g.open();
    let w = g.file("w", b"w");
    other
        .register(&me(), registration("s", "1.0.0", &w))
        .await
        .unwrap();
    for day in 0..20 {
        other
            .record_quality_metric(
                "s",
                "1.0.0",
                "accuracy",
                series(day),
                Some(T0 + day * DAY_MS),
            )
            .await
            .unwrap();
    }
    g.clock.advance_ms(19 * DAY_MS + 1);
    let drift = other
        .detect_drift("s", "1.0.0", "accuracy", 5.0, week)
        .unwrap();
    assert!(!drift.drifted, "{drift:?}");

    // No recent samples: FAILED_PRECONDITION; bad inputs: INVALID_ARGUMENT with the field.
    g.clock.advance_ms(30 * DAY_MS);
    assert!(matches!(
        other.detect_drift("s", "1.0.0", "accuracy", 5.0, week),
        Err(ServiceError::FailedPrecondition(_))
    ));
    let err = other
        .detect_drift("s", "1.0.0", "accuracy", f64::NAN, 0)
        .unwrap_err();
    assert_eq!(fields(&err), ["threshold_percent", "window_seconds"]);
}

#[tokio::test]
async fn the_drift_worker_fires_once_per_episode() {
    let mut f = Fixture::new();
    let registry = Arc::new(f.open());
    let w = f.file("w", b"w");
    let mut request = registration("m", "1.0.0", &w);
    request.metrics.insert("accuracy".into(), 0.9);
    registry.register(&me(), request).await.unwrap();
    let rule = config::DriftRule {
        name: "acc".into(),
        model: "m".into(),
        version: "1.0.0".into(),
        metric: "accuracy".into(),
        threshold_percent: 5.0,
        window_seconds: 3600,
    };
    let worker = drift::RegistryDrift::new(
        registry.clone(),
        vec![rule],
        std::time::Duration::from_secs(1),
    );
    let mut state = vec![false];
    assert!(worker.check(&mut state).is_empty(), "no data yet");
    registry
        .record_quality_metric("m", "1.0.0", "accuracy", 0.5, None)
        .await
        .unwrap();
    assert_eq!(worker.check(&mut state), ["acc"]);
    assert!(
        worker.check(&mut state).is_empty(),
        "still drifting: not fired again"
    );
    f.clock.advance_ms(7_200_000);
    registry
        .record_quality_metric("m", "1.0.0", "accuracy", 0.9, None)
        .await
        .unwrap();
    assert!(worker.check(&mut state).is_empty());
    assert_eq!(state, [false]);
}

#[tokio::test]
async fn the_card_is_canonical_signed_and_fails_when_one_byte_changes() {
    let mut f = Fixture::new();
    let registry = f.open();
    let w = f.file("w", b"weights");
    let mut request = registration("vision/detector", "1.0.0", &w);
    request.card.intended_use = "Counting parcels on the conveyor.".into();
    request.card.caveats = "Not for people.".into();
    request.metrics.insert("accuracy".into(), 0.93);
    registry.register(&me(), request).await.unwrap();
    let card = registry.export_card("vision/detector", "1.0.0").unwrap();
    let key = brainstem_keys::card::parse_public_key(registry.public_key_hex()).unwrap();
    let content = brainstem_keys::card::verify_card(&card, &key).unwrap();
    assert_eq!(content["name"], "vision/detector");
    assert_eq!(content["weights"]["sha256"], sha256_hex(b"weights"));
    assert_eq!(content["sections"]["caveats"], "Not for people.");
    // One changed byte anywhere: refused.
    let at = card.find("parcels").unwrap();
    let mut changed = card.clone().into_bytes();
    changed[at] = b'P';
    let changed = String::from_utf8(changed).unwrap();
    assert!(brainstem_keys::card::verify_card(&changed, &key).is_err());
    let mut last_sig = card.clone().into_bytes();
    let sig_at = card.rfind("\"}}").unwrap() - 1;
    last_sig[sig_at] = if last_sig[sig_at] == b'0' { b'1' } else { b'0' };
    assert!(
        brainstem_keys::card::verify_card(&String::from_utf8(last_sig).unwrap(), &key).is_err()
    );

    // The key is sealed in the store and the same after a reopen.
    let public = registry.public_key_hex().to_owned();
    drop(registry);
    let tree = f.store.as_ref().unwrap().tree(trees::REGISTRY).unwrap();
    assert!(tree.raw(card::KEY).unwrap().is_some());
    drop(tree);
    f.close();
    let registry = f.open();
    assert_eq!(registry.public_key_hex(), public);
    brainstem_keys::card::verify_card(&card, &key).unwrap();
}

#[tokio::test]
async fn registrations_deployments_and_updates_survive_a_reopen() {
    let mut f = Fixture::new();
    let registry = f.open();
    let w = f.file("w", b"w");
    let mut request = registration("m", "1.0.0", &w);
    request.tags.insert("team".into(), "vision".into());
    request.training_config = serde_json::json!({"epochs": 10, "lr": 0.001})
        .as_object()
        .unwrap()
        .clone();
    registry.register(&me(), request).await.unwrap();
    registry
        .record_deployment(&them(), "m", "1.0.0", "production", "grpc://edge-1")
        .await
        .unwrap();
    let update = VersionUpdate {
        description: Some("first".into()),
        ..VersionUpdate::default()
    };
    let before = registry
        .update_version(&me(), "m", "1.0.0", update)
        .await
        .unwrap()
        .record;
    drop(registry);
    f.close();
    let registry = f.open();
    let after = registry.get("m", "1.0.0").unwrap().record;
    assert_eq!(after, before);
    assert_eq!(after.deployments[0].deployed_by, "operator");
    assert_eq!(after.training_config["epochs"], 10);
    let (names, _) = registry.list_models(None, 10, |_| true);
    assert_eq!(names, ["m"]);
}

#[tokio::test]
async fn every_bad_input_gets_its_code_and_field() {
    let mut f = Fixture::new();
    let registry = f.open();
    let w = f.file("w", b"w");
    registry
        .register(&me(), registration("m", "1.0.0", &w))
        .await
        .unwrap();

    // Unknown model or version: NOT_FOUND.
    assert!(matches!(
        registry.get("ghost", "1.0.0"),
        Err(ServiceError::NotFound(_))
    ));
    assert!(matches!(
        registry.get("m", "9.9.9"),
        Err(ServiceError::NotFound(_))
    ));
    assert!(matches!(
        registry.get_latest("ghost"),
        Err(ServiceError::NotFound(_))
    ));
    assert!(matches!(
        registry.alias_history("m", "production", None),
        Err(ServiceError::NotFound(_))
    ));
    assert!(matches!(
        registry
            .record_quality_metric("m", "2.0.0", "acc", 1.0, None)
            .await,
        Err(ServiceError::NotFound(_))
    ));
    assert!(matches!(
        registry
            .set_alias(&me(), "m", "production", Some("2.0.0"))
            .await,
        Err(ServiceError::NotFound(_))
    ));
    assert!(matches!(
        registry.verify_artifacts("m", "2.0.0").await,
        Err(ServiceError::NotFound(_))
    ));
    assert!(matches!(
        registry.export_card("m", "2.0.0"),
        Err(ServiceError::NotFound(_))
    ));
    // Duplicate version: ALREADY_EXISTS.
    assert!(matches!(
        registry
            .register(&me(), registration("m", "1.0.0", &w))
            .await,
        Err(ServiceError::AlreadyExists(_))
    ));

    // Invalid names, versions, metric values: INVALID_ARGUMENT naming the field.
    let long = "x".repeat(129);
    for name in [
        "",
        "Upper",
        "-lead",
        "a//b",
        "/abs",
        "a/../b",
        long.as_str(),
    ] {
        let err = registry
            .register(&me(), registration(name, "1.0.0", &w))
            .await
            .unwrap_err();
        assert_eq!(fields(&err), ["name"], "{name:?}");
    }
    for version in [
        "1",
        "1.0",
        "01.0.0",
        "1.0.0+build",
        "v1.0.0",
        "1.0.0-",
        "a.b.c",
    ] {
        let err = registry
            .register(&me(), registration("m", version, &w))
            .await
            .unwrap_err();
        assert_eq!(fields(&err), ["version"], "{version:?}");
    }
    let mut request = registration("m", "3.0.0", &w);
    request.metrics.insert("accuracy".into(), f64::NAN);
    request.metrics.insert("loss".into(), f64::INFINITY);
    request.weights_sha256 = Some("abc".into());
    let err = registry.register(&me(), request).await.unwrap_err();
    assert_eq!(
        fields(&err),
        ["weights_sha256", "metrics[accuracy]", "metrics[loss]"]
    );
    for value in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let err = registry
            .record_quality_metric("m", "1.0.0", "accuracy", value, None)
            .await
            .unwrap_err();
        assert_eq!(fields(&err), ["value"]);
    }
    let err = registry
        .set_alias(&me(), "m", "bad alias", Some("x"))
        .await
        .unwrap_err();
    assert_eq!(fields(&err), ["alias", "version"]);
    let mut request = registration("m", "4.0.0", &w);
    request.parents = vec![("m".into(), "1.0.0".into(), "copied-from".into())];
    let err = registry.register(&me(), request).await.unwrap_err();
    assert_eq!(fields(&err), ["parents[0].relationship"]);
    let err = registry
        .register(&me(), registration("m", "4.0.0", ""))
        .await
        .unwrap_err();
    assert_eq!(fields(&err), ["weights_path"]);
    let err = registry
        .record_deployment(&me(), "m", "1.0.0", "", "x")
        .await
        .unwrap_err();
    assert_eq!(fields(&err), ["environment"]);
}

#[test]
fn semver_orders_by_precedence() {
    let v = |s: &str| Semver::parse(s).unwrap();
    assert!(v("1.0.0-alpha") < v("1.0.0-alpha.1"));
    assert!(v("1.0.0-alpha.1") < v("1.0.0-beta"));
    assert!(v("1.0.0-beta.2") < v("1.0.0-beta.11"));
    assert!(v("1.0.0-rc.1") < v("1.0.0"));
    assert!(v("1.0.0") < v("1.0.1"));
    assert!(v("1.9.0") < v("1.10.0"));
    assert_eq!(v("1.2.3-rc.1").to_string(), "1.2.3-rc.1");
    assert_eq!(v("1.2.3").next_patch().to_string(), "1.2.4");
}

#[tokio::test]
async fn a_master_key_rotation_reseals_the_card_key() {
    let mut f = Fixture::new();
    let registry = f.open_with(7);
    let public = registry.public_key_hex().to_owned();
    drop(registry);
    let keys = f.keys(7);
    let tree = f.store.as_ref().unwrap().tree(trees::REGISTRY).unwrap();
    let guard = keys
        .begin(MasterKey::new(&[8; 32]).unwrap(), Path::new("new.key"))
        .await
        .unwrap();
    assert!(card::reseal(&tree, &keys).await.unwrap());
    assert!(!card::reseal(&tree, &keys).await.unwrap(), "done once");
    keys.finish(guard).await.unwrap();
    drop((keys, tree));
    // Only the new key from now on: the same card key opens.
    let registry = f.open_with(8);
    assert_eq!(registry.public_key_hex(), public);
}
