//! Evaluator, definitions, overrides and reloads. The fractional, semver and string vectors are
//! flagd-testbed's (`evaluator/gherkin/*.feature`, high-precision "v2" bucketing).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};

use super::*;
use crate::store::Store;
use crate::store::config::{FlushPolicy, StoreConfig};

fn set(flags: Value) -> Active {
    set_with(json!({ "flags": flags }))
}

fn set_with(file: Value) -> Active {
    let set = definition::parse(&file.to_string()).unwrap_or_else(|p| panic!("{p:#?}"));
    Active {
        set: Arc::new(set),
        overrides: Arc::new(BTreeMap::new()),
        revision: 1,
    }
}

fn eval(active: &Active, key: &str, context: Value) -> Resolution {
    evaluate_in(active, key, &context, None, 1_700_000_000).unwrap()
}

fn value(active: &Active, key: &str, context: Value) -> Value {
    eval(active, key, context).value.unwrap_or(Value::Null)
}

/// The testbed's card-suit flags and friends, written as the testbed defines them.
fn testbed() -> Active {
    let suits = |variants: Value, rule: Value| json!({"state": "ENABLED", "variants": variants, "defaultVariant": "wild", "targeting": rule});
    let four = json!({"clubs": "clubs", "diamonds": "diamonds", "hearts": "hearts", "spades": "spades", "wild": "wild"});
    let quarters = |first: Value| json!({"fractional": [first, ["clubs", 25], ["diamonds", 25], ["hearts", 25], ["spades", 25]]});
    set(json!({
        "fractional-flag": suits(four.clone(), quarters(json!({"cat": [{"var": "$flagd.flagKey"}, {"var": "user.name"}]}))),
        "fractional-flag-A-shared-seed": suits(four, quarters(json!({"cat": ["shared-seed", {"var": "user.name"}]}))),
        "fractional-flag-B-shared-seed": suits(
            json!({"clubs": "ace-of-clubs", "diamonds": "ace-of-diamonds", "hearts": "ace-of-hearts", "spades": "ace-of-spades", "wild": "wild"}),
            quarters(json!({"cat": ["shared-seed", {"var": "user.name"}]}))),
        "fractional-flag-shorthand": {"state": "ENABLED", "variants": {"heads": "heads", "tails": "tails", "draw": "draw"},
            "defaultVariant": "draw", "targeting": {"fractional": [["heads"], ["tails", 1]]}},
        "fractional-hash-edge-flag": {"state": "ENABLED", "variants": {"lower": "lower", "upper": "upper"},
            "defaultVariant": "lower", "targeting": {"fractional": [{"var": "targetingKey"}, ["lower", 50], ["upper", 50]]}},
        "fractional-single-entry-flag": {"state": "ENABLED", "variants": {"single": "single", "fallback": "fallback"},
            "defaultVariant": "fallback", "targeting": {"fractional": [["single", 1]]}},
        "fractional-nested-if-flag": {"state": "ENABLED", "variants": {"premium": "premium", "standard": "standard", "fallback": "fallback"},
            "defaultVariant": "fallback", "targeting": {"fractional": [{"var": "targetingKey"},
                [{"if": [{"==": [{"var": "tier"}, "premium"]}, "premium", "standard"]}, 50], ["standard", 50]]}},
        "fractional-nested-weight-flag": {"state": "ENABLED", "variants": {"red": "red", "blue": "blue", "fallback": "fallback"},
            "defaultVariant": "fallback", "targeting": {"fractional": [{"var": "targetingKey"},
                ["red", {"if": [{"==": [{"var": "tier"}, "premium"]}, 100, 0]}], ["blue", 10]]}},
        "fractional-as-condition-flag": {"state": "ENABLED", "variants": {"big": "hundreds", "small": "ones", "fallback": "zero"},
            "defaultVariant": "fallback", "targeting": {"if": [{"fractional": [[false, 0], [true, 100]]}, "big", "small"]}},
        "fractional-null-bucket-key-flag": {"state": "ENABLED", "variants": {"one": "one", "two": "two", "fallback": "fallback"},
            "defaultVariant": "fallback", "targeting": {"fractional": [{"var": "missing_key"}, ["one", 50], ["two", 50]]}},
        "fractional-zero-weights-flag": {"state": "ENABLED", "variants": {"one": "one", "two": "two", "fallback": "fallback"},
            "defaultVariant": "fallback", "targeting": {"fractional": [{"var": "targetingKey"}, ["one", 0], ["two", 0]]}},
        "fractional-negative-weight-flag": {"state": "ENABLED", "variants": {"one": "one", "two": "two", "fallback": "fallback"},
            "defaultVariant": "fallback", "targeting": {"fractional": [{"var": "targetingKey"}, ["one", -50], ["two", 100]]}},
    }))
}

#[test]
fn fractional_matches_flagds_vectors() {
    let flags = testbed();
    let user = |name: &str| json!({"user": {"name": name}});
    for (name, want) in [
        ("jack", "hearts"),
        ("queen", "spades"),
        ("ten", "clubs"),
        ("nine", "diamonds"),
        ("3", "clubs"),
    ] {
        let r = eval(&flags, "fractional-flag", user(name));
        assert_eq!(r.value, Some(json!(want)), "{name}");
        assert_eq!(r.reason, Reason::TargetingMatch);
    }
    for (name, a, b) in [
        ("seven", "hearts", "ace-of-hearts"),
        ("eight", "diamonds", "ace-of-diamonds"),
        ("nine", "clubs", "ace-of-clubs"),
        ("two", "spades", "ace-of-spades"),
    ] {
        assert_eq!(
            value(&flags, "fractional-flag-A-shared-seed", user(name)),
            json!(a)
        );
        assert_eq!(
            value(&flags, "fractional-flag-B-shared-seed", user(name)),
            json!(b)
        );
    }
    let tk = |key: &str| json!({"targetingKey": key});
    assert_eq!(
        value(&flags, "fractional-flag-shorthand", tk("jon@company.com")),
        json!("heads")
    );
    assert_eq!(
        value(&flags, "fractional-flag-shorthand", tk("jane@company.com")),
        json!("tails")
    );
    for (key, want) in [
        ("ejOoVL", "lower"),
        ("bY9fO-", "lower"),
        ("SI7p-", "lower"),
        ("6LvT0", "upper"),
        ("ceQdGm", "upper"),
    ] {
        assert_eq!(
            value(&flags, "fractional-hash-edge-flag", tk(key)),
            json!(want),
            "{key}"
        );
    }
    assert_eq!(
        value(
            &flags,
            "fractional-single-entry-flag",
            tk("some-targeting-key")
        ),
        json!("single")
    );
    let with = |key: &str, tier: &str| json!({"targetingKey": key, "tier": tier});
    for (key, tier, want) in [
        ("jon@company.com", "premium", "premium"),
        ("jon@company.com", "basic", "standard"),
        ("user1", "premium", "standard"),
        ("user1", "basic", "standard"),
    ] {
        assert_eq!(
            value(&flags, "fractional-nested-if-flag", with(key, tier)),
            json!(want)
        );
    }
    for (key, tier, want) in [
        ("jon@company.com", "premium", "red"),
        ("jon@company.com", "basic", "blue"),
        ("user1", "premium", "red"),
        ("user1", "basic", "blue"),
    ] {
        assert_eq!(
            value(&flags, "fractional-nested-weight-flag", with(key, tier)),
            json!(want)
        );
    }
    assert_eq!(
        value(
            &flags,
            "fractional-as-condition-flag",
            tk("some-targeting-key")
        ),
        json!("hundreds")
    );
    // No bucketing key: no match, the default variant with reason DEFAULT.
    let r = eval(&flags, "fractional-null-bucket-key-flag", json!({}));
    assert_eq!(
        (r.value, r.reason),
        (Some(json!("fallback")), Reason::Default)
    );
    let r = eval(&flags, "fractional-zero-weights-flag", tk("x"));
    assert_eq!(
        (r.value, r.reason),
        (Some(json!("fallback")), Reason::Default)
    );
    // A negative weight counts as zero.
    assert_eq!(
        value(&flags, "fractional-negative-weight-flag", tk("anyone")),
        json!("two")
    );
}

#[test]
fn the_issue_vector_buckets_rachel_at_42() {
    assert_eq!(
        murmur3_x86_32(b"headerColorrachel@faas.com", 0),
        1_805_633_606
    );
    assert_eq!(logic::bucket_of("headerColorrachel@faas.com", 100), 42);
    // Default bucketing key: flag key + targeting key, no separator.
    let flags = set(json!({"headerColor": {"state": "ENABLED",
        "variants": {"a": "a", "b": "b", "c": "c"}, "defaultVariant": "a",
        "targeting": {"fractional": [["a", 42], ["b", 1], ["c", 57]]}}}));
    assert_eq!(
        value(
            &flags,
            "headerColor",
            json!({"targetingKey": "rachel@faas.com"})
        ),
        json!("b")
    );
}

fn rollout_flag(weights: [u64; 2]) -> Active {
    set(
        json!({"rollout": {"state": "ENABLED", "variants": {"on": true, "off": false},
        "defaultVariant": "off",
        "targeting": {"fractional": [["on", weights[0]], ["off", weights[1]]]}}}),
    )
}

#[test]
fn fractional_spreads_10000_keys_evenly_and_sticks() {
    let keys: Vec<String> = (0..10_000)
        .map(|i| format!("user-{i}@example.com"))
        .collect();
    let on_for = |flags: &Active| -> Vec<bool> {
        keys.iter()
            .map(|k| value(flags, "rollout", json!({"targetingKey": k})) == json!(true))
            .collect()
    };
    let mut previous: Option<Vec<bool>> = None;
    for percent in [10, 25, 50, 75, 90] {
        let flags = rollout_flag([percent, 100 - percent]);
        let on = on_for(&flags);
        let share = on.iter().filter(|b| **b).count() as f64 / keys.len() as f64 * 100.0;
        assert!(
            (share - percent as f64).abs() <= 2.0,
            "{percent}%: {share:.2}% of keys got on"
        );
        // The same definition loaded again (a reload, a restart) buckets every key the same.
        assert_eq!(on_for(&rollout_flag([percent, 100 - percent])), on);
        if let Some(before) = previous {
            let lost = before.iter().zip(&on).filter(|(b, n)| **b && !**n).count();
            assert_eq!(lost, 0, "raising to {percent}% took {lost} keys out of on");
        }
        previous = Some(on);
    }
}

#[test]
fn semver_and_string_operators_match_the_testbed() {
    let rule = |rule: Value| {
        json!({"state": "ENABLED", "variants": {"match": "match", "no-match": "no-match"},
            "defaultVariant": "no-match", "targeting": rule})
    };
    let flags = set(json!({
        "v-prefix": rule(json!({"if": [{"sem_ver": [{"var": "version"}, "=", "v1.0.0"]}, "match", "no-match"]})),
        "partial": rule(json!({"if": [{"sem_ver": [{"var": "version"}, "^", "1"]}, "match", "no-match"]})),
        "build": rule(json!({"if": [{"sem_ver": [{"var": "version"}, "=", "1.0.0+build"]}, "match", "no-match"]})),
        "numeric": rule(json!({"if": [{"sem_ver": [{"var": "version"}, ">", "1.1"]}, "match", "no-match"]})),
        "invalid": {"state": "ENABLED", "variants": {"true": "true", "false": "false", "fallback": "fallback"},
            "defaultVariant": "fallback", "targeting": {"sem_ver": [{"var": "version"}, "=", "1.0.0"]}},
        "starts-ends": {"state": "ENABLED", "variants": {"prefix": "prefix", "postfix": "postfix", "none": "none"},
            "defaultVariant": "none", "targeting": {"if": [{"starts_with": [{"var": "id"}, "abc"]}, "prefix",
                {"if": [{"ends_with": [{"var": "id"}, "xyz"]}, "postfix", "none"]}]}},
        "starts-non-string": {"state": "ENABLED", "variants": {"true": "true", "false": "false", "fallback": "fallback"},
            "defaultVariant": "fallback", "targeting": {"starts_with": [{"var": "num"}, "abc"]}},
    }));
    let v = |key: &str, ctx: Value| value(&flags, key, ctx);
    assert_eq!(v("v-prefix", json!({"version": "1.0.0"})), json!("match"));
    assert_eq!(
        v("v-prefix", json!({"version": "1.0.1"})),
        json!("no-match")
    );
    assert_eq!(v("partial", json!({"version": "1.9.3"})), json!("match"));
    assert_eq!(v("partial", json!({"version": "2.0.0"})), json!("no-match"));
    assert_eq!(
        v("build", json!({"version": "1.0.0+other"})),
        json!("match")
    );
    assert_eq!(v("numeric", json!({"version": 1.2})), json!("match"));
    assert_eq!(v("numeric", json!({"version": 1})), json!("no-match"));
    // Not a version: the rule yields nothing, so the default variant (reason DEFAULT).
    let r = eval(&flags, "invalid", json!({"version": "not-a-version"}));
    assert_eq!(
        (r.value, r.reason),
        (Some(json!("fallback")), Reason::Default)
    );
    // true/false results name the variants "true" and "false".
    assert_eq!(v("invalid", json!({"version": "1.0.0"})), json!("true"));
    assert_eq!(v("starts-ends", json!({"id": "abcdef"})), json!("prefix"));
    assert_eq!(v("starts-ends", json!({"id": "uvwxyz"})), json!("postfix"));
    assert_eq!(v("starts-ends", json!({"id": "lmnopq"})), json!("none"));
    assert_eq!(v("starts-non-string", json!({"num": 1})), json!("fallback"));
}

#[test]
fn targeting_reads_context_and_flagd_properties() {
    let flags = set(json!({
        "by-email": {"state": "ENABLED", "variants": {"staff": "gold", "others": "grey"},
            "defaultVariant": "others",
            "targeting": {"if": [{"in": ["@example.com", {"var": "email"}]}, "staff", null]}},
        "self-named": {"state": "ENABLED", "variants": {"self-named": 1, "other": 2},
            "defaultVariant": "other", "targeting": {"var": "$flagd.flagKey"}},
        "after": {"state": "ENABLED", "variants": {"late": true, "early": false},
            "defaultVariant": "early",
            "targeting": {"if": [{">": [{"var": "$flagd.timestamp"}, 1_600_000_000]}, "late", "early"]}},
        "numbers": {"state": "ENABLED", "variants": {"big": "big", "small": "small"},
            "defaultVariant": "small",
            "targeting": {"if": [{"and": [{">=": [{"var": "age"}, 18]}, {"<": [{"+": [{"var": "age"}, 1]}, 100]}]}, "big", "small"]}},
        "map": {"state": "ENABLED", "variants": {"yes": "yes", "no": "no"}, "defaultVariant": "no",
            "targeting": {"if": [{"some": [{"var": "roles"}, {"==": [{"var": ""}, "admin"]}]}, "yes", "no"]}},
    }));
    let r = eval(&flags, "by-email", json!({"email": "ann@example.com"}));
    assert_eq!(
        (r.value, r.variant, r.reason),
        (
            Some(json!("gold")),
            Some("staff".into()),
            Reason::TargetingMatch
        )
    );
    let r = eval(&flags, "by-email", json!({"email": "bob@else.org"}));
    assert_eq!((r.value, r.reason), (Some(json!("grey")), Reason::Default));
    assert_eq!(value(&flags, "self-named", json!({})), json!(1));
    assert_eq!(value(&flags, "after", json!({})), json!(true));
    assert_eq!(value(&flags, "numbers", json!({"age": "30"})), json!("big"));
    assert_eq!(value(&flags, "numbers", json!({"age": 12})), json!("small"));
    assert_eq!(
        value(&flags, "map", json!({"roles": ["dev", "admin"]})),
        json!("yes")
    );
    assert_eq!(value(&flags, "map", json!({"roles": ["dev"]})), json!("no"));
}

#[test]
fn static_disabled_default_and_errors() {
    let flags = set_with(json!({
        "flags": {
            "static": {"state": "ENABLED", "variants": {"a": "A", "b": "B"}, "defaultVariant": "b",
                "metadata": {"owner": "web"}},
            "off": {"state": "DISABLED", "variants": {"a": true}, "defaultVariant": "a"},
            "no-default": {"state": "ENABLED", "variants": {"a": 1.5, "b": 2}, "defaultVariant": null},
            "bad-choice": {"state": "ENABLED", "variants": {"a": "A"}, "defaultVariant": "a",
                "targeting": {"var": "pick"}},
        },
        "metadata": {"owner": "platform", "version": "3"},
    }));
    let r = eval(&flags, "static", json!({}));
    assert_eq!(
        (r.value.clone(), r.reason),
        (Some(json!("B")), Reason::Static)
    );
    // The flag's own metadata wins over the set's.
    assert_eq!(r.metadata.get("owner"), Some(&json!("web")));
    assert_eq!(r.metadata.get("version"), Some(&json!("3")));
    let r = eval(&flags, "off", json!({}));
    assert_eq!(
        (r.value, r.variant, r.reason),
        (None, None, Reason::Disabled)
    );
    let r = eval(&flags, "no-default", json!({}));
    assert_eq!(
        (r.value, r.variant, r.reason),
        (None, None, Reason::Default)
    );
    assert_eq!(
        evaluate_in(&flags, "bad-choice", &json!({"pick": "zzz"}), None, 0)
            .unwrap_err()
            .code(),
        "GENERAL"
    );
    assert_eq!(
        value(&flags, "bad-choice", json!({"pick": "a"})),
        json!("A")
    );
    assert!(matches!(
        evaluate_in(&flags, "nope", &json!({}), None, 0),
        Err(EvalError::NotFound(_))
    ));
    // Type checks: a string flag read as boolean is refused; any number reads as int or float.
    assert!(matches!(
        evaluate_in(&flags, "static", &json!({}), Some(FlagType::Boolean), 0),
        Err(EvalError::TypeMismatch { .. })
    ));
    assert!(evaluate_in(&flags, "no-default", &json!({}), Some(FlagType::Integer), 0).is_ok());
    assert!(evaluate_in(&flags, "static", &json!({}), Some(FlagType::String), 0).is_ok());
}

#[test]
fn evaluators_are_shared_through_ref() {
    let flags = set_with(json!({
        "flags": {"staff": {"state": "ENABLED", "variants": {"on": true, "off": false},
            "defaultVariant": "off", "targeting": {"if": [{"$ref": "is_staff"}, "on", null]}}},
        "$evaluators": {
            "is_staff": {"and": [{"$ref": "has_email"}, {"ends_with": [{"var": "email"}, "@example.com"]}]},
            "has_email": {"!!": [{"var": "email"}]},
        },
    }));
    assert_eq!(
        value(&flags, "staff", json!({"email": "a@example.com"})),
        json!(true)
    );
    assert_eq!(
        value(&flags, "staff", json!({"email": "a@else.com"})),
        json!(false)
    );
    assert_eq!(value(&flags, "staff", json!({})), json!(false));
}

#[test]
fn invalid_definitions_are_refused_with_every_problem() {
    let problems = definition::parse(
        &json!({
            "flags": {
                "no-state": {"variants": {"a": 1}},
                "mixed": {"state": "ENABLED", "variants": {"a": 1, "b": "x"}, "defaultVariant": "a"},
                "missing-default": {"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "zz"},
                "bad-op": {"state": "ENABLED", "variants": {"a": 1}, "targeting": {"nope": [1]}},
                "bad-ref": {"state": "ENABLED", "variants": {"a": 1}, "targeting": {"$ref": "ghost"}},
                "cycle": {"state": "ENABLED", "variants": {"a": 1}, "targeting": {"$ref": "loop"}},
                "bad-semver": {"state": "ENABLED", "variants": {"a": 1},
                    "targeting": {"sem_ver": [{"var": "v"}, "===", "1.0.0"]}},
                "extra": {"state": "ENABLED", "variants": {"a": 1}, "colour": "red"},
                "arrays": {"state": "ENABLED", "variants": {"a": [1]}},
            },
            "$evaluators": {"loop": {"$ref": "loop"}},
            "unknown": 1,
        })
        .to_string(),
    )
    .unwrap_err();
    let text = problems.join("\n");
    for needle in [
        "flags.no-state.state: required",
        "flags.mixed.variants.b: is a string but other variants are integer",
        "flags.missing-default.defaultVariant: \"zz\" is not one of its variants",
        "unknown operator \"nope\"",
        "$ref \"ghost\" names no entry",
        "nests more than",
        "is not a sem_ver operator",
        "flags.extra.colour: unknown key",
        "flags.arrays.variants.a",
        "unknown: unknown key",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    assert!(definition::parse("{\"flags\": {").is_err());
}

#[test]
fn the_shipped_defaults_parse_with_the_seeds_flags() {
    let set = definition::parse(DEFAULT_DEFINITIONS).unwrap();
    let active = Active {
        set: Arc::new(set),
        ..Active::default()
    };
    for (key, on) in [
        ("experimental.advanced_vision", false),
        ("experimental.hierarchical_rl", false),
        ("performance.simd_optimizations", true),
        ("performance.object_pooling", true),
        ("safety.policy_enforcement", true),
        ("safety.dry_run_mode", false),
        ("modules.vision", true),
        ("modules.voice", true),
        ("modules.learning", true),
    ] {
        assert_eq!(value(&active, key, json!({})), json!(on), "{key}");
    }
    assert_eq!(active.set.flags.len(), 9);
}

#[test]
fn overrides_take_precedence_in_the_documented_order() {
    let mut flags = rollout_flag([0, 100]);
    let key = "rollout";
    let with = |flags: &mut Active, ov: Override| {
        flags.overrides = Arc::new(BTreeMap::from([(key.to_owned(), ov)]));
    };
    let base = Override {
        state: None,
        default_variant: None,
        rollout: None,
        set_by: "admin".into(),
        set_at_unix_ms: 0,
    };
    // A 100 % rollout sends every targeting key to "on" (reason SPLIT) before targeting runs.
    with(
        &mut flags,
        Override {
            rollout: Some(Rollout {
                variant: "on".into(),
                percent: 100,
            }),
            ..base.clone()
        },
    );
    let r = eval(&flags, key, json!({"targetingKey": "anyone"}));
    assert_eq!((r.value, r.reason), (Some(json!(true)), Reason::Split));
    // Without a targeting key the rollout cannot bucket: targeting decides.
    assert_eq!(eval(&flags, key, json!({})).reason, Reason::Default);
    // State beats everything.
    with(
        &mut flags,
        Override {
            state: Some(State::Disabled),
            rollout: Some(Rollout {
                variant: "on".into(),
                percent: 100,
            }),
            ..base.clone()
        },
    );
    assert_eq!(
        eval(&flags, key, json!({"targetingKey": "x"})).reason,
        Reason::Disabled
    );
    // The default variant replaces the file's.
    let mut plain = set(
        json!({key: {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off"}}),
    );
    with(
        &mut plain,
        Override {
            default_variant: Some("on".into()),
            ..base.clone()
        },
    );
    assert_eq!(value(&plain, key, json!({})), json!(true));
    // A rollout percentage is sticky too: keys at 20 % stay at 40 %.
    let on_at = |percent| {
        let mut f = rollout_flag([0, 100]);
        with(
            &mut f,
            Override {
                rollout: Some(Rollout {
                    variant: "on".into(),
                    percent,
                }),
                ..base.clone()
            },
        );
        (0..2000)
            .map(|i| {
                eval(&f, key, json!({"targetingKey": format!("k{i}")})).reason == Reason::Split
            })
            .collect::<Vec<_>>()
    };
    let (low, high) = (on_at(20), on_at(40));
    assert!(low.iter().zip(&high).all(|(l, h)| !*l || *h));
    let share = high.iter().filter(|b| **b).count();
    assert!((700..=900).contains(&share), "{share} of 2000 at 40 %");
}

// ---- the live set: files, reloads, overrides in the store ----

struct Live {
    dir: tempfile::TempDir,
    store: Option<Store>,
}

impl Live {
    fn new() -> Live {
        Live {
            dir: tempfile::tempdir().unwrap(),
            store: None,
        }
    }

    fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("flags.json")
    }

    fn open(&mut self) -> Flags {
        let config = StoreConfig {
            flush: FlushPolicy::Always,
            flush_interval_ms: 100,
            cache_capacity_bytes: 8 << 20,
            min_free_bytes: 0,
        };
        let store = Store::open(&self.dir.path().join("state"), &config).unwrap();
        let tree = store.tree(OVERRIDES_TREE).unwrap();
        self.store = Some(store);
        Flags::open(&self.path(), tree).unwrap()
    }

    fn close(&mut self, flags: Flags) {
        drop(flags);
        self.store.take().unwrap().close().unwrap();
    }
}

fn colour(default: &str) -> String {
    json!({"flags": {"colour": {"state": "ENABLED",
        "variants": {"red": "red", "blue": "blue"}, "defaultVariant": default}}})
    .to_string()
}

fn colour_of(flags: &Flags) -> Value {
    flags
        .evaluate("colour", &json!({}), None)
        .unwrap()
        .value
        .unwrap()
}

#[tokio::test]
async fn a_missing_file_serves_the_defaults_until_it_appears() {
    let mut live = Live::new();
    let flags = live.open();
    assert!(flags.status().using_defaults);
    assert!(flags.evaluate("modules.vision", &json!({}), None).is_ok());
    let mut changes = flags.subscribe();
    std::fs::write(live.path(), colour("red")).unwrap();
    assert_eq!(flags.reload("sighup").await, ReloadResult::Applied(10));
    assert!(!flags.status().using_defaults);
    assert_eq!(colour_of(&flags), json!("red"));
    let change = changes.recv().await.unwrap();
    assert!(
        change
            .flags
            .contains(&("colour".to_owned(), ChangeKind::Write))
    );
    assert!(
        change
            .flags
            .contains(&("modules.vision".to_owned(), ChangeKind::Delete))
    );
    live.close(flags);
}

#[tokio::test]
async fn an_invalid_file_is_refused_and_the_old_flags_keep_serving() {
    let mut live = Live::new();
    std::fs::write(live.path(), colour("red")).unwrap();
    let flags = live.open();
    let mut changes = flags.subscribe();
    // Half a file, as an editor writing in pieces leaves it for a moment.
    let whole = colour("blue");
    std::fs::write(live.path(), &whole[..whole.len() / 2]).unwrap();
    assert!(matches!(
        flags.reload("watch").await,
        ReloadResult::Refused(_)
    ));
    assert_eq!(colour_of(&flags), json!("red"));
    let status = flags.status();
    assert_eq!(status.refused, 1);
    assert!(
        status.last_error.as_deref().unwrap().contains("not JSON"),
        "{status:?}"
    );
    // The watch seeing the same bad text again is not another refusal; SIGHUP asks again.
    assert_eq!(flags.reload("watch").await, ReloadResult::Unchanged);
    assert!(matches!(
        flags.reload("sighup").await,
        ReloadResult::Refused(_)
    ));
    assert_eq!(flags.status().refused, 2);
    // A valid definition with a semantic problem is refused too.
    std::fs::write(live.path(), colour("green")).unwrap();
    assert!(matches!(
        flags.reload("watch").await,
        ReloadResult::Refused(_)
    ));
    assert_eq!(colour_of(&flags), json!("red"));
    // The rest of the file arrives: applied, error cleared, one change.
    std::fs::write(live.path(), &whole).unwrap();
    assert_eq!(flags.reload("watch").await, ReloadResult::Applied(1));
    assert_eq!(colour_of(&flags), json!("blue"));
    assert_eq!(flags.status().last_error, None);
    let change = changes.try_recv().unwrap();
    assert_eq!(
        change.flags,
        vec![("colour".to_owned(), ChangeKind::Update)]
    );
    assert!(changes.try_recv().is_err(), "refusals sent no change");
    live.close(flags);
}

/// The reply forms of a flag's metadata (the Struct, the encoded field) are built at load: a reload
/// that changes the metadata (the flag's or the set's) serves the new one and tells subscribers; an
/// override, which leaves the definitions alone, keeps it and changes the value.
#[tokio::test]
async fn the_metadata_replies_carry_is_rebuilt_on_reload() {
    let file = |owner: &str, version: &str| {
        json!({"flags": {"colour": {"state": "ENABLED", "variants": {"red": "red", "blue": "blue"},
            "defaultVariant": "red", "metadata": {"owner": owner}}},
            "metadata": {"version": version, "owner": "platform"}})
        .to_string()
    };
    let wire = |flags: &Flags| {
        let r = flags.evaluate("colour", &json!({}), None).unwrap();
        assert_eq!(
            r.metadata.wire(),
            &brainstem_proto::json::json_to_struct(r.metadata.json()),
            "the Struct is the JSON's"
        );
        // The reply Flags.Evaluate writes carries the same metadata, encoded at load.
        let reply = wire::EvaluateReply {
            resolution: r.clone(),
            r#type: 2,
        };
        let mut bytes = Vec::new();
        reply.encode(&mut bytes);
        let decoded =
            <brainstem_proto::v1::EvaluateFlagReply as prost::Message>::decode(bytes.as_slice())
                .unwrap();
        assert_eq!(decoded.metadata.as_ref(), Some(r.metadata.wire()));
        assert_eq!(
            decoded
                .value
                .as_ref()
                .map(brainstem_proto::json::value_to_json),
            r.value
        );
        brainstem_proto::json::struct_to_json(r.metadata.wire())
    };
    let mut live = Live::new();
    std::fs::write(live.path(), file("web", "1")).unwrap();
    let flags = live.open();
    assert_eq!(
        Value::Object(wire(&flags)),
        json!({"owner": "web", "version": "1"})
    );
    std::fs::write(live.path(), file("search", "2")).unwrap();
    assert_eq!(flags.reload("watch").await, ReloadResult::Applied(1));
    assert_eq!(
        Value::Object(wire(&flags)),
        json!({"owner": "search", "version": "2"})
    );
    // Only the set's metadata changes: no flag's own definition differs, yet what it reports
    // does, so it counts as changed and subscribers (Watch, flagd's EventStream) are told.
    let mut changes = flags.subscribe();
    std::fs::write(live.path(), file("search", "3")).unwrap();
    assert_eq!(flags.reload("watch").await, ReloadResult::Applied(1));
    assert_eq!(
        Value::Object(wire(&flags)),
        json!({"owner": "search", "version": "3"})
    );
    let change = changes.try_recv().unwrap();
    assert_eq!(change.cause, "file");
    assert_eq!(
        change.flags,
        vec![("colour".to_owned(), ChangeKind::Update)]
    );
    // A set key every flag shadows with its own changes no flag's report, but the set's metadata
    // is served as well (flagd v1 ResolveAll): still a change, with no flag named.
    std::fs::write(
        live.path(),
        file("search", "3").replace("\"platform\"", "\"infra\""),
    )
    .unwrap();
    assert_eq!(flags.reload("watch").await, ReloadResult::Applied(0));
    assert_eq!(flags.active().set.metadata["owner"], json!("infra"));
    let change = changes.try_recv().unwrap();
    assert_eq!(change.flags, vec![]);
    assert!(changes.try_recv().is_err());
    // The same file again is no change at all.
    assert_eq!(flags.reload("sighup").await, ReloadResult::Unchanged);
    assert!(changes.try_recv().is_err());
    flags
        .set_override(
            "colour",
            OverrideRequest {
                default_variant: Some("blue".into()),
                ..OverrideRequest::default()
            },
            "admin",
        )
        .await
        .unwrap();
    assert_eq!(colour_of(&flags), json!("blue"));
    assert_eq!(
        Value::Object(wire(&flags)),
        json!({"owner": "search", "version": "3"})
    );
    live.close(flags);
}

#[tokio::test]
async fn a_symlink_swap_is_read_through() {
    let mut live = Live::new();
    // The ConfigMap layout: flags.json -> ..data/flags.json, ..data -> a versioned directory.
    let dir = live.dir.path().to_owned();
    let v1 = dir.join("..v1");
    let v2 = dir.join("..v2");
    std::fs::create_dir(&v1).unwrap();
    std::fs::create_dir(&v2).unwrap();
    std::fs::write(v1.join("flags.json"), colour("red")).unwrap();
    std::fs::write(v2.join("flags.json"), colour("blue")).unwrap();
    std::os::unix::fs::symlink("..v1", dir.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/flags.json", live.path()).unwrap();
    let flags = live.open();
    assert_eq!(colour_of(&flags), json!("red"));
    std::os::unix::fs::symlink("..v2", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    assert_eq!(flags.reload("watch").await, ReloadResult::Applied(1));
    assert_eq!(colour_of(&flags), json!("blue"));
    live.close(flags);
}

#[tokio::test]
async fn overrides_persist_across_restart_and_clear_returns_to_the_file() {
    let mut live = Live::new();
    std::fs::write(live.path(), colour("red")).unwrap();
    let flags = live.open();
    let mut changes = flags.subscribe();
    let set = flags
        .set_override(
            "colour",
            OverrideRequest {
                default_variant: Some("blue".into()),
                ..OverrideRequest::default()
            },
            "admin",
        )
        .await
        .unwrap();
    assert_eq!(set.set_by, "admin");
    assert_eq!(colour_of(&flags), json!("blue"));
    assert_eq!(changes.try_recv().unwrap().cause, "override");
    // Refusals name the field.
    let err = flags
        .set_override(
            "colour",
            OverrideRequest {
                rollout: Some(Rollout {
                    variant: "green".into(),
                    percent: 101,
                }),
                ..OverrideRequest::default()
            },
            "admin",
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("rollout.variant") && err.contains("rollout.percent"),
        "{err}"
    );
    assert!(matches!(
        flags
            .set_override("ghost", OverrideRequest::default(), "admin")
            .await,
        Err(ServiceError::NotFound(_))
    ));
    live.close(flags);

    // Restart: the override is read back and still wins over the file.
    let flags = live.open();
    assert_eq!(colour_of(&flags), json!("blue"));
    // A reload of the file keeps it too.
    std::fs::write(live.path(), colour("red").replace("\"red\",", "\"red\", ")).unwrap();
    flags.reload("sighup").await;
    assert_eq!(colour_of(&flags), json!("blue"));
    assert!(flags.clear_override("colour").await.unwrap());
    assert!(!flags.clear_override("colour").await.unwrap());
    assert_eq!(colour_of(&flags), json!("red"));
    live.close(flags);
    let flags = live.open();
    assert_eq!(colour_of(&flags), json!("red"));
    assert!(flags.active().overrides.is_empty());
    live.close(flags);
}

// ---- flags that drive the daemon ----

/// Stands in for the vision actor until it exists: runs until cancelled.
struct StandIn;

impl crate::supervisor::actor::Actor for StandIn {
    type Message = ();

    fn name(&self) -> &'static str {
        "vision"
    }

    async fn run(
        self: Arc<Self>,
        mut ctx: crate::supervisor::actor::Context<()>,
    ) -> crate::supervisor::actor::ActorResult {
        ctx.ready();
        while ctx.recv().await.is_some() {}
        Ok(())
    }
}

async fn until(done: impl Fn() -> bool, what: &str) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

async fn until_state(
    supervisor: &crate::supervisor::Supervisor,
    want: crate::supervisor::actor::ActorState,
) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let state = supervisor.get("vision").unwrap().state;
        if state == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "vision never {want:?}; last {state:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn module_flags_stop_and_start_a_stand_in_actor_and_switch_dry_run() {
    use crate::access::Access;
    use crate::access::audit::AuditLog;
    use crate::access::authz::{Authorizer, Grants};
    use crate::config::Config;
    use crate::runtime::tasks::Tasks;
    use crate::supervisor::SupervisorBuilder;
    use crate::supervisor::actor::ActorState;
    use crate::supervisor::config::{ActorConfig, SupervisorConfig};
    use modules::{DRY_RUN_FLAG, Driven, MODULES, ModuleAction, ModuleSwitch, apply_modules};

    let mut live = Live::new();
    let flags = Arc::new(live.open());
    let store = live.store.clone().unwrap();
    let tasks = Tasks::new();
    let config = Config::default();
    let (audit, writer) = AuditLog::open(live.dir.path(), &config.audit, &tasks).unwrap();
    let access = Arc::new(Access::new(
        Arc::new(Authorizer::new(Grants::from_config(&config))),
        audit,
        Access::prepare(&config).unwrap(),
    ));
    let mut builder = SupervisorBuilder::new(SupervisorConfig::default(), store);
    builder.add_worker(writer);
    builder
        .add(
            StandIn,
            ActorConfig {
                stop_deadline_ms: 500,
                ..ActorConfig::default()
            },
            vec![],
        )
        .unwrap();
    let (handle, receiver) = tokio::sync::watch::channel(None);
    builder.add_worker(ModuleSwitch::new(flags.clone(), receiver, MODULES));
    let token = tokio_util::sync::CancellationToken::new();
    let supervisor = builder.start(&tasks, token.clone(), None).await;
    handle.send_replace(Some(Driven {
        supervisor: supervisor.clone(),
        access: access.clone(),
    }));
    // modules.vision is on by default: the actor keeps running; the others do not exist yet.
    let report = apply_modules(&flags, &supervisor, MODULES).await;
    assert_eq!(
        report,
        vec![
            ("vision", ModuleAction::Unchanged),
            ("voice", ModuleAction::Absent),
            ("learning", ModuleAction::Absent),
        ]
    );
    let off = OverrideRequest {
        default_variant: Some("off".into()),
        ..OverrideRequest::default()
    };
    flags
        .set_override("modules.vision", off, "admin")
        .await
        .unwrap();
    until_state(&supervisor, ActorState::Stopped).await;
    assert!(flags.clear_override("modules.vision").await.unwrap());
    until_state(&supervisor, ActorState::Running).await;

    // safety.dry_run_mode: off by default; an override turns the access layer's mode on, and
    // clearing it turns it off again.
    assert!(!access.dry_run());
    let on = OverrideRequest {
        default_variant: Some("on".into()),
        ..OverrideRequest::default()
    };
    flags.set_override(DRY_RUN_FLAG, on, "admin").await.unwrap();
    until(|| access.dry_run(), "dry-run mode on").await;
    assert!(flags.clear_override(DRY_RUN_FLAG).await.unwrap());
    until(|| !access.dry_run(), "dry-run mode off").await;

    token.cancel();
    supervisor.wait_stopped().await.expect("stop report");
    tasks.close();
    tasks.wait().await;
    drop(handle);
    let flags = Arc::try_unwrap(flags).expect("the worker let go of the flags");
    live.close(flags);
}
