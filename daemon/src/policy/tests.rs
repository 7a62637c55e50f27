use super::*;

fn builtin() -> PolicyEngine {
    PolicyEngine::new(
        PolicySource {
            dir: None,
            signing_key: None,
        }
        .load()
        .expect("the built-in set loads"),
    )
}

fn query<'q>(principal: &'q str, roles: &[&str], action: &'q str) -> Query<'q> {
    Query {
        principal: principal.into(),
        roles: roles.iter().map(|r| (*r).to_owned()).collect(),
        action: action.into(),
        resource: "res".into(),
        context: Map::new(),
    }
}

fn decide(engine: &PolicyEngine, action: &str) -> Arc<Decision> {
    engine.decide(&query("agent", &[], action)).unwrap()
}

/// A policy directory: the built-in schema plus the given files.
fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(SCHEMA_FILE), BUILTIN_SCHEMA).unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

fn load_dir(dir: &Path, key: Option<[u8; 32]>) -> Result<LoadedSet, PolicyError> {
    PolicySource {
        dir: Some(dir.to_owned()),
        signing_key: key,
    }
    .load()
}

fn errors(result: Result<LoadedSet, PolicyError>) -> String {
    match result {
        Ok(_) => panic!("the set should have been refused"),
        Err(PolicyError::Invalid(errors)) => errors.join("\n"),
    }
}

#[test]
fn seed_defaults() {
    let engine = builtin();
    for action in [
        "web.post",
        "web.tweet",
        "web.dm",
        "web.purchase",
        "web.checkout",
    ] {
        let d = decide(&engine, action);
        assert!(!d.allowed, "{action}");
        assert_eq!(d.reasons, [format!("forbid-{}", action.replace('.', "-"))]);
    }
    for action in [
        "vision.capture",
        "fs.read",
        "web.read",
        "ml.train",
        "ml.predict",
    ] {
        let d = decide(&engine, action);
        assert!(d.allowed, "{action}");
        assert_eq!(d.reasons, [format!("permit-{}", action.replace('.', "-"))]);
    }
    let write = decide(&engine, "fs.write");
    assert!(!write.allowed);
    assert_eq!(write.reasons, ["forbid-unsigned-fs-write"]);
}

#[test]
fn default_deny() {
    let engine = builtin();
    // Declared actions no policy permits: an ordinary deny, no reasons.
    for action in ["secrets.read", "vision"] {
        let d = decide(&engine, action);
        assert!(!d.allowed, "{action}");
        assert!(d.reasons.is_empty(), "{action}: {:?}", d.reasons);
    }
    // Actions neither the schema nor a policy knows (typos, made-up names): denied and marked.
    for action in ["net.scan", "web.pots", "vision.capture.raw", "a"] {
        let d = decide(&engine, action);
        assert!(!d.allowed, "{action}");
        assert_eq!(d.reasons, [crate::policy::UNKNOWN_ACTION], "{action}");
    }
}

#[test]
fn forbid_beats_permit_and_families_cover_their_members() {
    let dir = dir_with(&[
        ("default.cedar", BUILTIN_POLICIES),
        (
            "extra.cedar",
            r#"
            @id("permit-all-web")
            permit (principal, action in Action::"web", resource);
            @id("operators-speak")
            permit (principal in Role::"operator", action in Action::"voice", resource);
            "#,
        ),
    ]);
    let engine = PolicyEngine::new(load_dir(dir.path(), None).unwrap());
    let post = decide(&engine, "web.post");
    assert!(!post.allowed, "a forbid beats every permit");
    assert_eq!(post.reasons, ["forbid-web-post"]);
    let read = decide(&engine, "web.read");
    assert!(read.allowed);
    assert_eq!(read.reasons, ["permit-all-web", "permit-web-read"]);
    // A family covers members the schema never declared, at any depth.
    assert!(decide(&engine, "web.search.images").allowed);
    assert!(!decide(&engine, "webhook.call").allowed);

    let op = engine
        .decide(&query("spiffe://h/op", &["operator"], "voice.speak"))
        .unwrap();
    assert!(op.allowed);
    assert_eq!(op.reasons, ["operators-speak"]);
    assert!(
        !engine
            .decide(&query("spiffe://h/op", &["viewer"], "voice.speak"))
            .unwrap()
            .allowed
    );

    let explained = engine.explain(&query("agent", &[], "web.post")).unwrap();
    assert!(!explained.decision.allowed);
    assert_eq!(explained.matched_permits, ["permit-all-web"]);
    assert_eq!(explained.matched_forbids, ["forbid-web-post"]);
    assert_eq!(explained.action_parents, [r#"Action::"web""#]);
    assert_eq!(
        explained.context.get(SIGNED_PERMIT),
        Some(&Value::Bool(false))
    );
}

#[test]
fn file_writes_need_a_signed_policy() {
    let (pkcs8, public_hex) = generate_signing_key().unwrap();
    let key: [u8; 32] = hex_decode(&public_hex).unwrap().try_into().unwrap();
    let permit = r#"
        @id("backup-may-write")
        permit (principal == Agent::"spiffe://h/backup", action == Action::"fs.write", resource);
    "#;
    let write =
        |engine: &PolicyEngine, who: &str| engine.decide(&query(who, &[], "fs.write")).unwrap();

    // Unsigned, the permit is outweighed by the default forbid.
    let dir = dir_with(&[
        ("default.cedar", BUILTIN_POLICIES),
        ("backup.cedar", permit),
    ]);
    let engine = PolicyEngine::new(load_dir(dir.path(), Some(key)).unwrap());
    let d = write(&engine, "spiffe://h/backup");
    assert!(!d.allowed);
    assert_eq!(d.reasons, ["forbid-unsigned-fs-write"]);

    // Signed, it allows exactly what it names.
    let sig = sign(&pkcs8, permit.as_bytes()).unwrap();
    std::fs::write(dir.path().join("backup.cedar.sig"), &sig).unwrap();
    let engine = PolicyEngine::new(load_dir(dir.path(), Some(key)).unwrap());
    let d = write(&engine, "spiffe://h/backup");
    assert!(d.allowed, "{d:?}");
    assert_eq!(d.reasons, ["backup-may-write"]);
    assert!(!write(&engine, "spiffe://h/other").allowed);
    assert!(
        engine
            .current()
            .policies
            .iter()
            .any(|p| p.id == "backup-may-write" && p.signed)
    );

    // A signature over other bytes, or with no key configured, refuses the whole set.
    std::fs::write(dir.path().join("backup.cedar"), format!("{permit}\n")).unwrap();
    assert!(errors(load_dir(dir.path(), Some(key))).contains("does not match"));
    std::fs::write(dir.path().join("backup.cedar"), permit).unwrap();
    assert!(errors(load_dir(dir.path(), None)).contains("signing_public_key_file is not set"));
    std::fs::write(dir.path().join("backup.cedar.sig"), "zz").unwrap();
    assert!(errors(load_dir(dir.path(), Some(key))).contains("128 hex digits"));
}

#[test]
fn invalid_sets_are_refused_with_every_error() {
    let refused = errors(load_dir(
        dir_with(&[(
            "bad.cedar",
            r#"
            @id("typo") permit (principal, action == Action::"web.raed", resource);
            permit (principal, action == Action::"web.read", resource);
            @id("dup") permit (principal, action == Action::"fs.read", resource);
            @id("dup") permit (principal, action == Action::"ml.train", resource);
            @id("no-such-attr") permit (principal, action == Action::"ml.train", resource)
                when { context.nope == 1 };
            @id("soft") @dry_run("maybe") forbid (principal, action == Action::"web.post", resource);
            "#,
        )])
        .path(),
        None,
    ));
    assert!(refused.contains("web.raed"), "{refused}");
    assert!(refused.contains("no @id"), "{refused}");
    assert!(
        refused.contains("\"dup\" is empty or used twice"),
        "{refused}"
    );
    assert!(refused.contains("nope"), "{refused}");
    assert!(
        refused.contains("soft: @dry_run(\"maybe\") is not understood"),
        "{refused}"
    );

    let syntax = errors(load_dir(
        dir_with(&[("x.cedar", "permit (principal")]).path(),
        None,
    ));
    assert!(syntax.contains("x.cedar"), "{syntax}");

    let empty = dir_with(&[]);
    assert!(errors(load_dir(empty.path(), None)).contains("no *.cedar files"));
    std::fs::remove_file(empty.path().join(SCHEMA_FILE)).unwrap();
    std::fs::write(empty.path().join("a.cedar"), BUILTIN_POLICIES).unwrap();
    assert!(errors(load_dir(empty.path(), None)).contains(SCHEMA_FILE));
}

#[test]
fn refused_reload_keeps_the_old_set() {
    let dir = dir_with(&[("default.cedar", BUILTIN_POLICIES)]);
    let source = PolicySource {
        dir: Some(dir.path().to_owned()),
        signing_key: None,
    };
    let engine = PolicyEngine::new(source.load().unwrap());
    let before = engine.current().digest.clone();
    let fingerprint = source.fingerprint();

    std::fs::write(dir.path().join("broken.cedar"), "@id(\"x\") permit (").unwrap();
    assert_ne!(source.fingerprint(), fingerprint, "the change is noticed");
    assert!(engine.reload(&source).is_err());
    assert_eq!(engine.current().digest, before);
    assert!(decide(&engine, "vision.capture").allowed);
    assert!(
        engine
            .reload_status()
            .last_error
            .unwrap()
            .contains("broken.cedar")
    );

    std::fs::write(
        dir.path().join("broken.cedar"),
        "@id(\"x\") forbid (principal, action == Action::\"vision.capture\", resource);",
    )
    .unwrap();
    let set = engine.reload(&source).unwrap();
    assert_ne!(set.digest, before);
    assert!(!decide(&engine, "vision.capture").allowed);
    assert!(engine.reload_status().last_error.is_none());
}

#[test]
fn context_is_passed_and_checked() {
    let schema = BUILTIN_SCHEMA.replace(
        "signed_permit: Bool,",
        "signed_permit: Bool,\n  hour?: Long,",
    );
    let dir = dir_with(&[(
        "hours.cedar",
        r#"@id("office-hours") permit (principal, action == Action::"ml.train", resource)
           when { context has hour && context.hour >= 9 && context.hour < 18 };"#,
    )]);
    std::fs::write(dir.path().join(SCHEMA_FILE), schema).unwrap();
    let engine = PolicyEngine::new(load_dir(dir.path(), None).unwrap());
    let at = |hour: i64| {
        let mut q = query("agent", &[], "ml.train");
        q.context.insert("hour".into(), Value::from(hour));
        engine.decide(&q).unwrap().allowed
    };
    assert!(at(10));
    assert!(!at(20));
    assert!(
        !engine
            .decide(&query("agent", &[], "ml.train"))
            .unwrap()
            .allowed
    );

    let mut context = Map::new();
    context.insert("f".into(), serde_json::json!(1.5));
    context.insert("n".into(), Value::Null);
    context.insert("deep".into(), serde_json::json!({"a": [1, 2.5]}));
    context.insert(SIGNED_PERMIT.into(), Value::Bool(true));
    let violations = validate_query("items[3].", "p", "Web.Post", "r", &context);
    let mut fields: Vec<_> = violations.iter().map(|v| v.field.as_str()).collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            "items[3].action",
            "items[3].context.deep",
            "items[3].context.f",
            "items[3].context.n",
            "items[3].context.signed_permit",
        ]
    );
}

#[test]
fn action_names() {
    assert!(validate_action("web.post").is_ok());
    assert!(validate_action("a-b_c.d9").is_ok());
    assert!(validate_action("a").is_ok());
    assert!(validate_action("x.y.z").is_ok());
    for bad in [
        "",
        ".",
        "..",
        "web..post",
        ".web",
        "web.",
        "Web",
        "web post",
        "web.*",
        "wéb",
        "a.b.",
    ] {
        assert!(validate_action(bad).is_err(), "{bad:?}");
    }
    assert!(validate_action(&"a".repeat(MAX_ACTION_LEN + 1)).is_err());
    assert_eq!(action_prefixes("a.b.c").collect::<Vec<_>>(), ["a.b", "a"]);
    assert_eq!(action_prefixes("a").count(), 0);
}

#[test]
fn validate_text_uses_the_given_schema() {
    assert_eq!(validate_text(BUILTIN_POLICIES, BUILTIN_SCHEMA).unwrap(), 12);
    let err = validate_text(
        "@id(\"a\") permit (principal, action == Action::\"nope\", resource);",
        BUILTIN_SCHEMA,
    );
    assert!(err.is_err());
}

/// Slicing is an optimisation only: over a varied set and a grid of requests, the sliced decision
/// equals Cedar's over the whole set (permits and forbids evaluated unsliced).
#[test]
fn slices_decide_exactly_like_the_whole_set() {
    let extra = r#"
        @id("p-eq-read") permit (principal == Agent::"a1", action == Action::"web.read", resource);
        @id("p-eq-any") permit (principal == Agent::"a2", action, resource);
        @id("f-eq-web") forbid (principal == Agent::"a2", action in Action::"web", resource);
        @id("p-role-voice") permit (principal in Role::"ops", action in Action::"voice", resource);
        @id("f-role-listen") forbid (principal in Role::"muted", action == Action::"voice.listen", resource);
        @id("p-list") permit (principal, action in [Action::"ml.train", Action::"memory"], resource);
        @id("f-any-res") forbid (principal, action, resource == Resource::"blocked");
        @id("p-any-when") permit (principal, action, resource) when { resource == Resource::"open" };
    "#;
    let dir = dir_with(&[("default.cedar", BUILTIN_POLICIES), ("extra.cedar", extra)]);
    let engine = PolicyEngine::new(load_dir(dir.path(), None).unwrap());
    let set = engine.current();
    let mut compared = 0;
    for principal in ["a1", "a2", "a3"] {
        for roles in [&[][..], &["ops"][..], &["muted", "ops"][..]] {
            for action in [
                "web.read",
                "web.post",
                "web.search.x",
                "voice.listen",
                "voice.speak",
                "ml.train",
                "memory.write",
                "fs.write",
                "net.scan",
            ] {
                for resource in ["r", "blocked", "open"] {
                    let mut q = query(principal, roles, action);
                    q.resource = resource.to_owned().into();
                    let prepared = engine.prepare(&set, &q).unwrap();
                    // The slices alone (decide() adds the unknown-action mark on top).
                    let sliced = engine.evaluate_sliced(&set.slices, &prepared);
                    let permits = engine.evaluate(&set.permits, &prepared);
                    let forbids = engine.evaluate(&set.forbids, &prepared);
                    let allowed = forbids.reasons.is_empty() && permits.allowed;
                    let reasons = if allowed {
                        permits.reasons
                    } else {
                        forbids.reasons
                    };
                    assert_eq!(
                        (sliced.allowed, &sliced.reasons),
                        (allowed, &reasons),
                        "{principal} {roles:?} {action} {resource}"
                    );
                    compared += 1;
                }
            }
        }
    }
    assert_eq!(compared, 243);
}

/// The cache answers repeated requests, keeps requests apart, and never answers for an older set.
#[test]
fn cached_decisions_belong_to_their_set() {
    let dir = dir_with(&[("default.cedar", BUILTIN_POLICIES)]);
    let source = PolicySource {
        dir: Some(dir.path().to_owned()),
        signing_key: None,
    };
    let engine = PolicyEngine::new(source.load().unwrap());
    let q = query("agent", &[], "vision.capture");
    assert!(engine.decide(&q).unwrap().allowed);
    assert!(engine.decide(&q).unwrap().allowed, "from the cache");
    // Context, roles and resource are part of the request.
    let mut other = q.clone();
    other.resource = "other".into();
    other.context.insert("k".into(), Value::from(1));
    assert!(engine.decide(&other).unwrap().allowed);

    std::fs::write(
        dir.path().join("no.cedar"),
        "@id(\"no-capture\") forbid (principal, action == Action::\"vision.capture\", resource);",
    )
    .unwrap();
    engine.reload(&source).unwrap();
    let after = engine.decide(&q).unwrap();
    assert!(
        !after.allowed,
        "a new set is never answered from the old set's cache"
    );
    assert_eq!(after.reasons, ["no-capture"]);
    assert!(!engine.decide(&other).unwrap().allowed);
}
