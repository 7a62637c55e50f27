use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::hmac;

use super::*;
use crate::crypto::keyset::KeySet;
use crate::store::config::{FlushPolicy, StoreConfig};

const T0: u64 = 1_800_000_000;
const ADMIN: &str = "spiffe://h/admin";
const WEB: &str = "spiffe://h/agent/web";
const MASTER: [u8; 32] = [0x5a; 32];

fn settings() -> TokensConfig {
    TokensConfig {
        max_ttl_seconds: 3600,
        rotate_after_seconds: 0,
        retire_after_seconds: 7200,
    }
}

fn holdings(caps: &[&str]) -> Holdings {
    Holdings {
        roles: std::sync::Arc::from([]),
        capabilities: caps.iter().map(|c| (*c).to_owned()).collect(),
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    settings: TokensConfig,
    store: Option<Store>,
    service: Option<TokenService>,
    admin: Holdings,
}

fn store_config() -> StoreConfig {
    StoreConfig {
        flush: FlushPolicy::Always,
        flush_interval_ms: 100,
        cache_capacity_bytes: 8 << 20,
        min_free_bytes: 0,
    }
}

impl Fixture {
    fn new(settings: TokensConfig) -> Fixture {
        let mut fixture = Fixture {
            dir: tempfile::tempdir().unwrap(),
            clock: Arc::new(ManualClock::new(T0)),
            settings,
            store: None,
            service: None,
            admin: holdings(&["*"]),
        };
        fixture.reopen();
        fixture
    }

    /// Drops the service and the store and opens both again: a daemon restart.
    fn reopen(&mut self) {
        self.service = None;
        if let Some(store) = self.store.take() {
            store.close().unwrap();
        }
        let store = Store::open(self.dir.path(), &store_config()).unwrap();
        let master = std::sync::Arc::new(
            KeySet::open(&store, MasterKey::new(&MASTER).unwrap(), Path::new("t.key")).unwrap(),
        );
        self.service =
            Some(TokenService::open(&self.settings, master, &store, self.clock.clone()).unwrap());
        self.store = Some(store);
    }

    fn svc(&self) -> &TokenService {
        self.service.as_ref().unwrap()
    }

    fn admin(&self) -> Requester<'_> {
        Requester {
            principal: ADMIN,
            holdings: &self.admin,
        }
    }

    async fn issue(&self, caps: &[&str], ttl: u64) -> IssuedToken {
        self.svc()
            .issue(self.admin(), issue_request(WEB, caps, ttl))
            .await
            .unwrap()
    }

    async fn attenuate(
        &self,
        parent: &str,
        caps: &[&str],
        ttl: u64,
    ) -> Result<IssuedToken, TokenError> {
        self.svc()
            .attenuate(
                WEB,
                AttenuateRequest {
                    token: parent.to_owned(),
                    capabilities: caps.iter().map(|c| (*c).to_owned()).collect(),
                    ttl_seconds: ttl,
                },
            )
            .await
    }

    fn rejection(&self, token: &str, capability: Option<&str>) -> Rejection {
        self.svc()
            .verify(token, capability)
            .expect_err("the token must be refused")
    }
}

fn issue_request(principal: &str, caps: &[&str], ttl: u64) -> IssueRequest {
    IssueRequest {
        principal: principal.to_owned(),
        capabilities: caps.iter().map(|c| (*c).to_owned()).collect(),
        ttl_seconds: ttl,
    }
}

fn fields(err: TokenError) -> Vec<String> {
    match err {
        TokenError::Invalid(violations) => violations.into_iter().map(|v| v.field).collect(),
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
}

#[tokio::test]
async fn issued_token_verifies_until_it_expires() {
    let f = Fixture::new(settings());
    let issued = f.issue(&["vision.*", "web.read"], 60).await;
    assert_eq!(issued.expires_at, T0 + 60);
    assert_eq!(issued.id.len(), 32);
    let verified = f.svc().verify(&issued.token, None).unwrap();
    assert_eq!(verified.principal, WEB);
    assert_eq!(verified.issuer, ADMIN);
    assert_eq!(verified.capabilities, ["vision.*", "web.read"]);
    assert!(
        f.svc()
            .verify(&issued.token, Some("vision.capture"))
            .is_ok()
    );
    assert!(f.svc().verify(&issued.token, Some("vision.*")).is_ok());
    let not = f.rejection(&issued.token, Some("web.post"));
    assert_eq!(not.kind, RejectKind::NotCovered);
    assert!(not.to_string().starts_with("not_covered: "), "{not}");
    assert_eq!(
        f.rejection(&issued.token, Some("*")).kind,
        RejectKind::NotCovered
    );

    f.clock.advance(59);
    assert!(
        f.svc().verify(&issued.token, None).is_ok(),
        "valid in its last second"
    );
    f.clock.advance(1);
    let expired = f.rejection(&issued.token, None);
    assert_eq!(expired.kind, RejectKind::Expired);
    assert!(expired.detail.contains("expired at"), "{expired}");
}

#[tokio::test]
async fn revocation_survives_restart() {
    let mut f = Fixture::new(settings());
    let keep = f.issue(&["web.read"], 600).await;
    let gone = f.issue(&["web.read"], 600).await;
    let outcome = f.svc().revoke(f.admin(), &gone.id).await.unwrap();
    assert!(!outcome.already_revoked);
    assert_eq!(f.rejection(&gone.token, None).kind, RejectKind::Revoked);

    f.reopen();
    assert_eq!(f.rejection(&gone.token, None).kind, RejectKind::Revoked);
    assert!(
        f.svc().verify(&keep.token, None).is_ok(),
        "keys survive too"
    );
    let again = f.svc().revoke(f.admin(), &gone.id).await.unwrap();
    assert!(again.already_revoked, "idempotent");
    let listed = f.svc().list(f.admin(), None, false).unwrap();
    let states: Vec<_> = listed.iter().map(|t| (t.id.as_str(), t.revoked)).collect();
    assert!(states.contains(&(gone.id.as_str(), true)), "{states:?}");
    assert!(states.contains(&(keep.id.as_str(), false)), "{states:?}");
}

#[tokio::test]
async fn attenuation_cannot_widen_capabilities_or_life() {
    let f = Fixture::new(settings());
    let parent = f.issue(&["vision.*", "web.read"], 600).await;

    let child = f
        .attenuate(&parent.token, &["vision.capture"], 60)
        .await
        .unwrap();
    assert_eq!(child.parent_id.as_deref(), Some(parent.id.as_str()));
    assert_eq!(child.expires_at, T0 + 60);
    let verified = f.svc().verify(&child.token, None).unwrap();
    assert_eq!(
        verified.principal, WEB,
        "the child keeps the parent's principal"
    );
    assert_eq!(verified.parents, std::slice::from_ref(&parent.id));
    assert_eq!(
        f.rejection(&child.token, Some("vision.stream")).kind,
        RejectKind::NotCovered
    );
    assert_eq!(
        f.rejection(&child.token, Some("web.read")).kind,
        RejectKind::NotCovered
    );

    // Wider capabilities: refused, from the parent and from the child alike.
    for (token, caps) in [
        (&parent.token, &["web.post"][..]),
        (&parent.token, &["*"][..]),
        (&parent.token, &["web.*"][..]),
        (&child.token, &["vision.*"][..]),
        (&child.token, &["web.read"][..]),
    ] {
        match f.attenuate(token, caps, 10).await {
            Err(TokenError::Denied(reason)) => assert!(reason.contains("only narrows"), "{reason}"),
            other => panic!("{caps:?}: expected a refusal, got {other:?}"),
        }
    }
    // A longer life: refused, naming ttl_seconds.
    let err = f
        .attenuate(&parent.token, &["web.read"], 601)
        .await
        .unwrap_err();
    assert_eq!(fields(err), ["ttl_seconds"]);
    let err = f
        .attenuate(&child.token, &["vision.capture"], 61)
        .await
        .unwrap_err();
    assert_eq!(fields(err), ["ttl_seconds"]);
    // 0: as long as the parent, never longer.
    let same = f.attenuate(&parent.token, &["web.read"], 0).await.unwrap();
    assert_eq!(same.expires_at, parent.expires_at);
    // An expired parent cannot be attenuated.
    f.clock.advance(600);
    match f.attenuate(&parent.token, &["web.read"], 0).await {
        Err(TokenError::ParentRejected(r)) => assert_eq!(r.kind, RejectKind::Expired),
        other => panic!("expected ParentRejected, got {other:?}"),
    }
    // Bad input is named.
    let err = f.attenuate("", &["Bad Cap"], 1).await.unwrap_err();
    assert_eq!(fields(err), ["token", "capabilities[0]"]);
}

#[tokio::test]
async fn revoking_a_parent_revokes_its_descendants() {
    let mut f = Fixture::new(settings());
    let root = f.issue(&["vision.*"], 600).await;
    let sibling = f.issue(&["vision.*"], 600).await;
    let child = f.attenuate(&root.token, &["vision.*"], 300).await.unwrap();
    let grandchild = f
        .attenuate(&child.token, &["vision.capture"], 100)
        .await
        .unwrap();

    let outcome = f.svc().revoke(f.admin(), &root.id).await.unwrap();
    assert_eq!(outcome.descendants, 2);
    for token in [&root.token, &child.token, &grandchild.token] {
        assert_eq!(f.rejection(token, None).kind, RejectKind::Revoked);
    }
    assert!(
        f.rejection(&grandchild.token, None)
            .detail
            .contains(&root.id)
    );
    assert!(f.svc().verify(&sibling.token, None).is_ok());
    // A descendant of a revoked token reports it as already revoked.
    assert!(
        f.svc()
            .revoke(f.admin(), &child.id)
            .await
            .unwrap()
            .already_revoked
    );

    f.reopen();
    assert_eq!(
        f.rejection(&grandchild.token, None).kind,
        RejectKind::Revoked
    );
    let listed = f.svc().list(f.admin(), Some(WEB), false).unwrap();
    let revoked: Vec<_> = listed
        .iter()
        .filter(|t| t.revoked)
        .map(|t| t.id.clone())
        .collect();
    assert_eq!(revoked.len(), 3, "{listed:?}");
    assert!(!revoked.contains(&sibling.id));
}

#[tokio::test]
async fn rotated_keys_verify_until_retired() {
    let mut f = Fixture::new(TokensConfig {
        max_ttl_seconds: 2000,
        rotate_after_seconds: 0,
        retire_after_seconds: 1000,
    });
    let old = f.issue(&["web.read"], 2000).await;
    assert!(old.token.starts_with("bst1.k1."), "{}", old.token);

    f.clock.advance(10);
    let (kid, keys) = f.svc().rotate_key().await.unwrap();
    assert_eq!(kid, "k2");
    assert_eq!(keys.len(), 2);
    assert!(keys[0].active && keys[0].retires_at.is_none());
    assert_eq!(
        (keys[1].key_id.as_str(), keys[1].retires_at),
        ("k1", Some(T0 + 1010))
    );
    let new = f.issue(&["web.read"], 2000).await;
    assert!(
        new.token.starts_with("bst1.k2."),
        "new tokens use the new key"
    );
    assert!(
        f.svc().verify(&old.token, None).is_ok(),
        "the old key still verifies"
    );

    f.reopen();
    assert!(
        f.svc().verify(&old.token, None).is_ok(),
        "after a restart too"
    );

    f.clock.set(T0 + 1009);
    assert!(f.svc().verify(&old.token, Some("web.read")).is_ok());
    f.clock.set(T0 + 1010);
    let retired = f.rejection(&old.token, None);
    assert_eq!(retired.kind, RejectKind::KeyRetired, "{retired}");
    assert!(f.svc().verify(&new.token, None).is_ok());

    let done = f.svc().maintain().await.unwrap();
    assert_eq!(done.retired, ["k1"]);
    assert_eq!(f.svc().keys().len(), 1);
    f.reopen();
    assert_eq!(
        f.rejection(&old.token, None).kind,
        RejectKind::KeyRetired,
        "tombstone kept"
    );
    // A later rotation never reuses a retired id.
    assert_eq!(f.svc().rotate_key().await.unwrap().0, "k3");
}

#[tokio::test]
async fn keys_rotate_on_schedule() {
    let f = Fixture::new(TokensConfig {
        max_ttl_seconds: 100,
        rotate_after_seconds: 500,
        retire_after_seconds: 100,
    });
    assert_eq!(f.svc().maintain().await.unwrap().rotated, None);
    f.clock.advance(499);
    assert_eq!(f.svc().maintain().await.unwrap().rotated, None);
    f.clock.advance(1);
    assert_eq!(
        f.svc().maintain().await.unwrap().rotated.as_deref(),
        Some("k2")
    );
    f.clock.advance(100);
    let done = f.svc().maintain().await.unwrap();
    assert_eq!((done.rotated, done.retired), (None, vec!["k1".to_owned()]));
}

#[tokio::test]
async fn tampered_truncated_wrong_kid_and_garbage_tokens_are_refused() {
    let f = Fixture::new(settings());
    let issued = f.issue(&["web.read"], 600).await;
    let token = issued.token.clone();
    let parts: Vec<&str> = token.split('.').collect();

    // Widen the capabilities inside the payload, keeping the old signature.
    let mut claims: serde_json::Value =
        serde_json::from_slice(&B64.decode(parts[2]).unwrap()).unwrap();
    claims["cap"] = serde_json::json!(["*"]);
    let forged = format!(
        "bst1.k1.{}.{}",
        B64.encode(serde_json::to_vec(&claims).unwrap()),
        parts[3]
    );
    assert_eq!(f.rejection(&forged, None).kind, RejectKind::BadSignature);

    // One character changed in the payload or the signature.
    for index in [12, token.len() - 3] {
        let mut bytes = token.clone().into_bytes();
        bytes[index] = if bytes[index] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(bytes).unwrap();
        assert_eq!(
            f.rejection(&altered, None).kind,
            RejectKind::BadSignature,
            "{index}"
        );
    }
    // Truncated anywhere.
    for cut in [token.len() - 1, token.len() - 20, token.len() / 2, 8, 3] {
        let short = &token[..cut];
        let rejection = f.rejection(short, None);
        assert!(
            matches!(
                rejection.kind,
                RejectKind::BadSignature | RejectKind::Malformed
            ),
            "{cut}: {rejection}"
        );
    }
    // A key id this daemon never had; another existing key id (the MAC binds the id).
    let unknown = token.replacen("bst1.k1.", "bst1.k9.", 1);
    let rejection = f.rejection(&unknown, None);
    assert_eq!(rejection.kind, RejectKind::UnknownKey);
    assert!(rejection.detail.contains("k9"), "{rejection}");
    f.svc().rotate_key().await.unwrap();
    let swapped = token.replacen("bst1.k1.", "bst1.k2.", 1);
    assert_eq!(f.rejection(&swapped, None).kind, RejectKind::BadSignature);
    // Signed by someone else's key.
    let foreign_key = hmac::Key::new(hmac::HMAC_SHA256, &[9; 32]);
    let foreign = format::encode("k1", &foreign_key, &claims_of(&f, &token)).unwrap();
    assert_eq!(f.rejection(&foreign, None).kind, RejectKind::BadSignature);
    // Garbage.
    for garbage in [
        "",
        "bst1",
        "not a token",
        "bst1.k1.e30.",
        "....",
        "bst2.k1.e30.AAAA",
    ] {
        assert_eq!(
            f.rejection(garbage, None).kind,
            RejectKind::Malformed,
            "{garbage:?}"
        );
    }
    // The original still verifies.
    assert!(f.svc().verify(&token, None).is_ok());
}

fn claims_of(f: &Fixture, token: &str) -> format::Claims {
    let v = f.svc().verify(token, None).unwrap();
    format::Claims {
        id: v.id,
        principal: v.principal,
        issuer: v.issuer,
        capabilities: v.capabilities,
        issued_at: v.issued_at,
        expires_at: v.expires_at,
        parents: v.parents,
    }
}

#[tokio::test]
async fn issuer_cannot_mint_more_than_it_holds() {
    let f = Fixture::new(settings());
    let vision = holdings(&["vision.*", "web.read"]);
    let issuer = Requester {
        principal: "spiffe://h/agent/vision",
        holdings: &vision,
    };
    let ok = f
        .svc()
        .issue(
            issuer,
            issue_request(WEB, &["vision.capture", "vision.*", "web.read"], 60),
        )
        .await
        .unwrap();
    assert_eq!(
        f.svc().verify(&ok.token, None).unwrap().issuer,
        "spiffe://h/agent/vision"
    );
    for caps in [
        &["*"][..],
        &["web.*"][..],
        &["vision.capture", "secrets.read"][..],
    ] {
        let err = f
            .svc()
            .issue(issuer, issue_request(WEB, caps, 60))
            .await
            .unwrap_err();
        assert!(matches!(err, TokenError::Denied(_)), "{caps:?}: {err:?}");
        let status = ServiceError::from(err);
        assert!(
            matches!(status, ServiceError::PermissionDenied(_)),
            "{status:?}"
        );
    }
    let nothing = Holdings::default();
    let err = f
        .svc()
        .issue(
            Requester {
                principal: "nobody",
                holdings: &nothing,
            },
            issue_request(WEB, &["web.read"], 60),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, TokenError::Denied(_)));
}

#[tokio::test]
async fn bad_inputs_name_their_fields() {
    let f = Fixture::new(settings());
    let cases: Vec<(IssueRequest, Vec<&str>)> = vec![
        (issue_request("", &["web.read"], 60), vec!["principal"]),
        (issue_request("a b", &["web.read"], 60), vec!["principal"]),
        (issue_request(WEB, &[], 60), vec!["capabilities"]),
        (
            issue_request(WEB, &["Web.Read"], 60),
            vec!["capabilities[0]"],
        ),
        (
            issue_request(WEB, &["web.read", "a..b"], 60),
            vec!["capabilities[1]"],
        ),
        (issue_request(WEB, &["web.read"], 0), vec!["ttl_seconds"]),
        (issue_request(WEB, &["web.read"], 3601), vec!["ttl_seconds"]),
        (
            issue_request("", &["*.x"], 0),
            vec!["principal", "capabilities[0]", "ttl_seconds"],
        ),
    ];
    for (request, expected) in cases {
        let err = f.svc().issue(f.admin(), request.clone()).await.unwrap_err();
        assert_eq!(fields(err), expected, "{request:?}");
    }
    let err = f
        .svc()
        .issue(f.admin(), issue_request(WEB, &["web.read"], 3601))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("max_ttl_seconds"), "{err}");
    for bad in ["", "xyz", "../../etc", &"g".repeat(32), &"A".repeat(32)] {
        let err = f.svc().revoke(f.admin(), bad).await.unwrap_err();
        assert_eq!(fields(err), ["id"], "{bad:?}");
    }
    let err = f
        .svc()
        .revoke(f.admin(), &"0".repeat(32))
        .await
        .unwrap_err();
    assert!(matches!(err, TokenError::NotFound(_)), "{err:?}");
}

#[tokio::test]
async fn signing_keys_are_not_stored_in_plaintext() {
    let f = Fixture::new(settings());
    let issued = f.issue(&["web.read"], 60).await;
    let (signed, mac_b64) = issued.token.rsplit_once('.').unwrap();
    let mac = B64.decode(mac_b64).unwrap();
    let raw = f
        .store
        .as_ref()
        .unwrap()
        .tree(trees::TOKEN_KEYS)
        .unwrap()
        .raw(b"k1")
        .unwrap()
        .expect("k1 is stored");
    let record: KeyRecord = crate::store::decode(&raw).unwrap();
    let sealed = record.sealed.expect("a live key is sealed");
    let mut candidates = raw.clone();
    candidates.extend(
        base64::engine::general_purpose::STANDARD
            .decode(&sealed.ciphertext)
            .unwrap(),
    );
    // No 32-byte window of what is stored is the key that signed the token.
    for window in candidates.windows(32) {
        let key = hmac::Key::new(hmac::HMAC_SHA256, window);
        assert_ne!(hmac::sign(&key, signed.as_bytes()).as_ref(), &mac[..]);
    }
    // Nor is the master key anywhere in the database files.
    for entry in walk(&f.dir.path().join("db")) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(
            !bytes.windows(32).any(|w| w == MASTER),
            "master key found in {}",
            entry.display()
        );
    }
    // Another master key cannot open the keys: the start fails closed.
    drop(f.service);
    let store = f.store.unwrap();
    let other = std::sync::Arc::new(
        KeySet::open(
            &store,
            MasterKey::new(&[1; 32]).unwrap(),
            Path::new("t.key"),
        )
        .unwrap(),
    );
    match TokenService::open(&settings(), other, &store, f.clock.clone()) {
        Err(TokenError::Undecryptable { kid }) => assert_eq!(kid, "k1"),
        other => panic!("expected Undecryptable, got {other:?}"),
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test]
async fn master_key_file_must_be_private_and_32_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.key");
    crate::crypto::files::write_private(&path, &[3; 16]).unwrap();
    let err = load_master_key(&path).unwrap_err();
    assert!(err.to_string().contains("32 bytes"), "{err}");
    crate::crypto::files::write_private(&path, &[3; 32]).unwrap();
    assert!(load_master_key(&path).is_ok());
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = load_master_key(&path).unwrap_err();
    assert!(err.to_string().contains("group or others"), "{err}");
}

#[tokio::test]
async fn list_and_revoke_respect_ownership() {
    let f = Fixture::new(settings());
    let for_web = f.issue(&["web.read"], 600).await;
    let for_other = f
        .svc()
        .issue(
            f.admin(),
            issue_request("spiffe://h/agent/other", &["web.read"], 600),
        )
        .await
        .unwrap();
    let plain = holdings(&["tokens.list", "tokens.revoke", "web.read"]);
    let web = Requester {
        principal: WEB,
        holdings: &plain,
    };
    let mine: Vec<_> = f
        .svc()
        .list(web, None, false)
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(mine, std::slice::from_ref(&for_web.id));
    assert_eq!(f.svc().list(f.admin(), None, false).unwrap().len(), 2);
    assert_eq!(
        f.svc()
            .list(f.admin(), Some("spiffe://h/agent/other"), false)
            .unwrap()[0]
            .id,
        for_other.id
    );
    let err = f.svc().revoke(web, &for_other.id).await.unwrap_err();
    assert!(matches!(err, TokenError::Denied(_)), "{err:?}");
    // A principal may give up its own token.
    assert!(
        !f.svc()
            .revoke(web, &for_web.id)
            .await
            .unwrap()
            .already_revoked
    );
}

#[tokio::test]
async fn expired_records_are_purged_in_the_background_pass() {
    let mut f = Fixture::new(settings());
    let short = f.issue(&["web.read"], 10).await;
    let long = f.issue(&["web.read"], 3600).await;
    f.svc().revoke(f.admin(), &short.id).await.unwrap();
    f.svc().revoke(f.admin(), &long.id).await.unwrap();

    f.clock.advance(10 + PURGE_GRACE_SECONDS - 1);
    let done = f.svc().maintain().await.unwrap();
    assert_eq!((done.purged_issued, done.purged_revocations), (0, 0));
    assert_eq!(
        f.svc().list(f.admin(), None, true).unwrap().len(),
        2,
        "expired but in its grace period"
    );
    f.clock.advance(1);
    let done = f.svc().maintain().await.unwrap();
    assert_eq!((done.purged_issued, done.purged_revocations), (1, 1));
    assert_eq!(f.rejection(&short.token, None).kind, RejectKind::Expired);
    f.reopen();
    assert_eq!(f.rejection(&long.token, None).kind, RejectKind::Revoked);
    let ids: Vec<_> = f
        .svc()
        .list(f.admin(), None, true)
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(ids, [long.id]);
    let store = f.store.as_ref().unwrap();
    assert_eq!(store.tree(trees::TOKENS_REVOKED).unwrap().len(), 1);
}

#[tokio::test]
async fn presented_tokens_must_name_the_caller() {
    let f = Fixture::new(settings());
    let issued = f.issue(&["vision.*"], 60).await;
    let verified = f.svc().verify_presented(&issued.token, WEB).unwrap();
    assert!(verified.allows("vision.capture"));
    assert!(!verified.allows("vision"));
    assert!(!verified.allows("web.read"));
    match f
        .svc()
        .verify_presented(&issued.token, "spiffe://h/agent/thief")
    {
        Err(TokenError::Rejected(r)) => assert_eq!(r.kind, RejectKind::PrincipalMismatch),
        other => panic!("expected a principal mismatch, got {other:?}"),
    }
    match f.svc().verify_presented("junk", WEB) {
        Err(err @ TokenError::Rejected(_)) => {
            assert!(matches!(
                ServiceError::from(err),
                ServiceError::PermissionDenied(_)
            ))
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test]
async fn scoped_attenuation_only_narrows_the_resources() {
    let f = Fixture::new(settings());
    let parent = f.issue(&["secrets.read:/agents/*"], 600).await;

    // Narrower: a subtree, then one path inside it.
    let web = f
        .attenuate(&parent.token, &["secrets.read:/agents/web/*"], 60)
        .await
        .unwrap();
    let key = f
        .attenuate(&web.token, &["secrets.read:/agents/web/key"], 30)
        .await
        .unwrap();
    let verified = f.svc().verify(&key.token, None).unwrap();
    assert!(verified.allows_on("secrets.read", "/agents/web/key"));
    assert!(!verified.allows_on("secrets.read", "/agents/web/other"));
    assert!(verified.allows_family("secrets.read"));
    assert!(!verified.allows("secrets.read"), "scoped is not everywhere");

    // Wider, sideways or unscoped: refused.
    for (token, caps) in [
        (&web.token, &["secrets.read:/agents/*"][..]),
        (&web.token, &["secrets.read:/agents/db/*"][..]),
        (&web.token, &["secrets.read:/agents/web"][..]),
        (&web.token, &["secrets.read"][..]),
        (&parent.token, &["secrets.read:/*"][..]),
        (&parent.token, &["secrets.*:/agents/*"][..]),
        (&key.token, &["secrets.read:/agents/web/*"][..]),
    ] {
        match f.attenuate(token, caps, 10).await {
            Err(TokenError::Denied(reason)) => assert!(reason.contains("only narrows"), "{reason}"),
            other => panic!("{caps:?}: expected a refusal, got {other:?}"),
        }
    }
    // Verify with a scoped pattern asks "does the token cover it?".
    assert!(
        f.svc()
            .verify(&web.token, Some("secrets.read:/agents/web/x"))
            .is_ok()
    );
    assert_eq!(
        f.rejection(&web.token, Some("secrets.read")).kind,
        RejectKind::NotCovered
    );
    // A malformed scope is named like any bad capability.
    let err = f
        .attenuate(&parent.token, &["secrets.read:/agents/../etc"], 10)
        .await
        .unwrap_err();
    assert_eq!(fields(err), ["capabilities[0]"]);
}

#[tokio::test]
async fn an_issuer_with_a_scoped_grant_issues_only_inside_it() {
    let f = Fixture::new(settings());
    let scoped = holdings(&["secrets.read:/agents/web/*", "tokens.issue"]);
    let issuer = Requester {
        principal: WEB,
        holdings: &scoped,
    };
    let ok = f
        .svc()
        .issue(
            issuer,
            issue_request(WEB, &["secrets.read:/agents/web/x/*"], 60),
        )
        .await;
    assert!(ok.is_ok(), "{ok:?}");
    for caps in [&["secrets.read"][..], &["secrets.read:/agents/*"][..]] {
        match f.svc().issue(issuer, issue_request(WEB, caps, 60)).await {
            Err(TokenError::Denied(_)) => {}
            other => panic!("{caps:?}: expected a refusal, got {other:?}"),
        }
    }
}

/// Revoke and List read the records they concern, not every token ever issued: with 300 tokens of
/// another principal stored, listing and revoking WEB's read only WEB's (a count of records read,
/// kept by the service). Holds across a restart, where the index is rebuilt, and after a purge.
#[tokio::test]
async fn revoke_and_list_look_up_instead_of_scanning() {
    let mut f = Fixture::new(settings());
    const OTHER: &str = "spiffe://h/agent/other";
    for _ in 0..300 {
        f.svc()
            .issue(f.admin(), issue_request(OTHER, &["web.read"], 600))
            .await
            .unwrap();
    }
    let root = f.issue(&["web.read", "web.write"], 600).await;
    let child = f.attenuate(&root.token, &["web.read"], 0).await.unwrap();
    let short = f.issue(&["web.read"], 10).await;

    let plain = holdings(&["tokens.list", "tokens.revoke", "web.read", "web.write"]);
    let web = Requester {
        principal: WEB,
        holdings: &plain,
    };
    fn listed(f: &Fixture, who: Requester<'_>, principal: Option<&str>) -> (Vec<String>, u64) {
        let before = f.svc().records_read();
        let ids = f
            .svc()
            .list(who, principal, true)
            .unwrap()
            .into_iter()
            .map(|t| t.id)
            .collect();
        (ids, f.svc().records_read() - before)
    }
    let (ids, read) = listed(&f, web, None);
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert_eq!(read, 3, "listing WEB's tokens read {read} records");
    let (ids, read) = listed(&f, f.admin(), Some(WEB));
    assert_eq!((ids.len(), read), (3, 3));
    // An administrator listing everyone reads everything: all of it is the answer.
    let (ids, read) = listed(&f, f.admin(), None);
    assert_eq!((ids.len(), read), (303, 303));

    let before = f.svc().records_read();
    let outcome = f.svc().revoke(web, &root.id).await.unwrap();
    assert_eq!(outcome.descendants, 1);
    assert_eq!(
        f.svc().records_read() - before,
        1,
        "revoke read more than its record"
    );
    assert_eq!(f.rejection(&child.token, None).kind, RejectKind::Revoked);

    // Rebuilt at open.
    f.reopen();
    let (ids, read) = listed(&f, web, None);
    assert_eq!((ids.len(), read), (3, 3));
    let before = f.svc().records_read();
    assert!(f.svc().revoke(web, &root.id).await.unwrap().already_revoked);
    assert_eq!(f.svc().records_read() - before, 1);

    // A purged token leaves the index with its record.
    f.clock.advance(10 + PURGE_GRACE_SECONDS);
    assert_eq!(f.svc().maintain().await.unwrap().purged_issued, 1);
    let (ids, read) = listed(&f, web, None);
    assert!(!ids.contains(&short.id), "{ids:?}");
    assert_eq!((ids.len(), read), (2, 2));
}
