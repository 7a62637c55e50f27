//! flagd's flag definition format, parsed and validated whole.
//!
//! ```json
//! {
//!   "$schema": "https://flagd.dev/schema/v0/flags.json",
//!   "flags": {
//!     "new-welcome-banner": {
//!       "state": "ENABLED",
//!       "variants": { "on": true, "off": false },
//!       "defaultVariant": "off",
//!       "targeting": { "if": [ { "$ref": "is_staff" }, "on" ] },
//!       "metadata": { "owner": "web" }
//!     }
//!   },
//!   "$evaluators": { "is_staff": { "ends_with": [ { "var": "email" }, "@example.com" ] } },
//!   "metadata": { "version": "7" }
//! }
//! ```
//!
//! Every problem is reported at once, each with its path (`flags.banner.defaultVariant: …`); a file
//! with any problem is refused whole.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::logic::{Rule, is_operation};

/// Longest flag key accepted.
pub const MAX_KEY_BYTES: usize = 256;
/// How deep `$ref`s may nest (an evaluator referring to another).
const MAX_REF_DEPTH: usize = 8;

/// ENABLED or DISABLED.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum State {
    Enabled,
    Disabled,
}

impl State {
    pub fn parse(text: &str) -> Option<State> {
        match text {
            "ENABLED" => Some(State::Enabled),
            "DISABLED" => Some(State::Disabled),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Enabled => "ENABLED",
            State::Disabled => "DISABLED",
        }
    }
}

/// The type every variant of a flag shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagType {
    Boolean,
    String,
    /// Any number; `Integer` when every variant is a whole number.
    Float,
    Integer,
    Object,
}

impl FlagType {
    pub fn as_str(self) -> &'static str {
        match self {
            FlagType::Boolean => "boolean",
            FlagType::String => "string",
            FlagType::Float => "float",
            FlagType::Integer => "integer",
            FlagType::Object => "object",
        }
    }

    fn of(value: &Value) -> Option<FlagType> {
        Some(match value {
            Value::Bool(_) => FlagType::Boolean,
            Value::String(_) => FlagType::String,
            Value::Number(n) if n.is_i64() || n.is_u64() => FlagType::Integer,
            Value::Number(_) => FlagType::Float,
            Value::Object(_) => FlagType::Object,
            Value::Null | Value::Array(_) => return None,
        })
    }
}

/// One flag as the file defines it.
#[derive(Debug, Clone)]
pub struct Flag {
    pub key: String,
    pub state: State,
    pub variants: BTreeMap<String, Value>,
    /// `None`: the caller's default value is used (reason DEFAULT, no variant).
    pub default_variant: Option<String>,
    pub targeting: Option<Rule>,
    /// The targeting as written, `$ref`s resolved (for List).
    pub targeting_json: Option<Value>,
    pub metadata: Map<String, Value>,
    /// What an evaluation reports: the set's metadata with the flag's over it (merged at load).
    pub resolved_metadata: Arc<Metadata>,
    pub flag_type: FlagType,
}

/// A flag's metadata as evaluations report it, in the forms the daemon serves it: JSON, the
/// protobuf Struct the flagd replies carry, and that Struct already encoded as field 4 of a reply
/// (`metadata` in `EvaluateFlagReply` and in every flagd `Resolve*Response`). All are built once per
/// loaded set (a reload builds new ones, so nothing outlives the definitions it came from); a reply
/// copies the bytes or clones the Struct instead of converting the JSON on every call.
#[derive(Debug, Clone, PartialEq)]
pub struct Metadata {
    json: Map<String, Value>,
    wire: prost_types::Struct,
    encoded: bytes::Bytes,
}

impl Default for Metadata {
    fn default() -> Self {
        Metadata::new(Map::new())
    }
}

impl Metadata {
    pub fn new(json: Map<String, Value>) -> Self {
        let wire = brainstem_proto::json::json_to_struct(&json);
        let encoded = super::wire::encode_metadata_field(4, &json);
        Metadata {
            json,
            wire,
            encoded,
        }
    }

    /// The metadata encoded as field 4 (`metadata`) of an evaluation reply.
    pub fn encoded(&self) -> &[u8] {
        &self.encoded
    }

    /// The metadata as JSON.
    pub fn json(&self) -> &Map<String, Value> {
        &self.json
    }

    /// The metadata as a protobuf Struct, built from [`Metadata::json`] at load.
    pub fn wire(&self) -> &prost_types::Struct {
        &self.wire
    }
}

impl std::ops::Deref for Metadata {
    type Target = Map<String, Value>;

    fn deref(&self) -> &Map<String, Value> {
        &self.json
    }
}

/// A whole definitions file.
#[derive(Debug, Clone, Default)]
pub struct FlagSet {
    pub flags: BTreeMap<String, Arc<Flag>>,
    /// The file's top-level `metadata` (flag-set metadata).
    pub metadata: Map<String, Value>,
}

/// Parses and validates a definitions file; every problem with its path.
pub fn parse(text: &str) -> Result<FlagSet, Vec<String>> {
    let root: Value = serde_json::from_str(text).map_err(|err| vec![format!("not JSON: {err}")])?;
    let Value::Object(root) = root else {
        return Err(vec!["the file must hold a JSON object".to_owned()]);
    };
    let mut problems = Vec::new();
    for key in root.keys() {
        if !matches!(
            key.as_str(),
            "$schema" | "flags" | "$evaluators" | "metadata"
        ) {
            problems.push(format!(
                "{key}: unknown key (expected flags, $evaluators, metadata, $schema)"
            ));
        }
    }
    let evaluators = match root.get("$evaluators") {
        None => Map::new(),
        Some(Value::Object(map)) => map.clone(),
        Some(_) => {
            problems.push("$evaluators: must be an object of named rules".to_owned());
            Map::new()
        }
    };
    let metadata = metadata_of(root.get("metadata"), "metadata", &mut problems);
    let mut flags = BTreeMap::new();
    match root.get("flags") {
        Some(Value::Object(defs)) => {
            for (key, def) in defs {
                if let Some(mut flag) = parse_flag(key, def, &evaluators, &mut problems) {
                    let mut merged = metadata.clone();
                    merged.extend(flag.metadata.iter().map(|(k, v)| (k.clone(), v.clone())));
                    flag.resolved_metadata = Arc::new(Metadata::new(merged));
                    flags.insert(key.clone(), Arc::new(flag));
                }
            }
        }
        Some(_) => problems.push("flags: must be an object of flag definitions".to_owned()),
        None => problems.push("flags: missing".to_owned()),
    }
    if problems.is_empty() {
        Ok(FlagSet { flags, metadata })
    } else {
        Err(problems)
    }
}

fn metadata_of(
    value: Option<&Value>,
    path: &str,
    problems: &mut Vec<String>,
) -> Map<String, Value> {
    match value {
        None => Map::new(),
        Some(Value::Object(map)) => {
            for (k, v) in map {
                if !matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_)) {
                    problems.push(format!(
                        "{path}.{k}: metadata values are strings, numbers or booleans"
                    ));
                }
            }
            map.clone()
        }
        Some(_) => {
            problems.push(format!("{path}: must be an object"));
            Map::new()
        }
    }
}

fn parse_flag(
    key: &str,
    def: &Value,
    evaluators: &Map<String, Value>,
    problems: &mut Vec<String>,
) -> Option<Flag> {
    let path = format!("flags.{key}");
    let before = problems.len();
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        problems.push(format!("{path}: a flag key is 1 to {MAX_KEY_BYTES} bytes"));
    }
    let Value::Object(def) = def else {
        problems.push(format!("{path}: must be an object"));
        return None;
    };
    for k in def.keys() {
        if !matches!(
            k.as_str(),
            "state" | "variants" | "defaultVariant" | "targeting" | "metadata"
        ) {
            problems.push(format!(
                "{path}.{k}: unknown key (expected state, variants, defaultVariant, targeting, metadata)"
            ));
        }
    }
    let state = match def.get("state") {
        Some(Value::String(s)) => State::parse(s).unwrap_or_else(|| {
            problems.push(format!("{path}.state: {s:?} is not ENABLED or DISABLED"));
            State::Disabled
        }),
        _ => {
            problems.push(format!("{path}.state: required, ENABLED or DISABLED"));
            State::Disabled
        }
    };
    let mut variants = BTreeMap::new();
    let mut flag_type: Option<FlagType> = None;
    match def.get("variants") {
        Some(Value::Object(map)) if !map.is_empty() => {
            for (name, value) in map {
                let Some(t) = FlagType::of(value) else {
                    problems.push(format!(
                        "{path}.variants.{name}: a variant is a boolean, string, number or object"
                    ));
                    continue;
                };
                flag_type = Some(match (flag_type, t) {
                    (None, t) => t,
                    (Some(a), b) if a == b => a,
                    (
                        Some(FlagType::Integer | FlagType::Float),
                        FlagType::Integer | FlagType::Float,
                    ) => FlagType::Float,
                    (Some(a), b) => {
                        problems.push(format!(
                            "{path}.variants.{name}: is a {} but other variants are {}; all variants of a flag share one type",
                            b.as_str(),
                            a.as_str()
                        ));
                        a
                    }
                });
                variants.insert(name.clone(), value.clone());
            }
        }
        _ => problems.push(format!(
            "{path}.variants: required, an object of at least one named value"
        )),
    }
    let default_variant = match def.get("defaultVariant") {
        None | Some(Value::Null) => None,
        Some(Value::String(name)) => {
            if !variants.is_empty() && !variants.contains_key(name) {
                problems.push(format!(
                    "{path}.defaultVariant: {name:?} is not one of its variants"
                ));
            }
            Some(name.clone())
        }
        Some(_) => {
            problems.push(format!("{path}.defaultVariant: a variant name or null"));
            None
        }
    };
    let (targeting, targeting_json) = match def.get("targeting") {
        None => (None, None),
        Some(Value::Object(map)) if map.is_empty() => (None, None),
        Some(Value::Object(_)) => {
            let resolved = resolve_refs(
                &def["targeting"],
                evaluators,
                0,
                &format!("{path}.targeting"),
            );
            match resolved.and_then(|json| {
                Rule::compile(&json)
                    .map(|rule| (rule, json))
                    .map_err(|err| format!("{path}.{err}"))
            }) {
                Ok((rule, json)) => (Some(rule), Some(json)),
                Err(err) => {
                    problems.push(err);
                    (None, None)
                }
            }
        }
        Some(_) => {
            problems.push(format!("{path}.targeting: must be a JsonLogic object"));
            (None, None)
        }
    };
    let metadata = metadata_of(def.get("metadata"), &format!("{path}.metadata"), problems);
    if problems.len() > before {
        return None;
    }
    Some(Flag {
        key: key.to_owned(),
        state,
        variants,
        default_variant,
        targeting,
        targeting_json,
        metadata,
        resolved_metadata: Arc::default(),
        flag_type: flag_type.expect("variants checked non-empty"),
    })
}

/// Replaces every `{"$ref": "name"}` with the named evaluator, recursively (bounded depth).
fn resolve_refs(
    node: &Value,
    evaluators: &Map<String, Value>,
    depth: usize,
    path: &str,
) -> Result<Value, String> {
    match node {
        Value::Object(map) if is_operation(map) && map.contains_key("$ref") => {
            let Value::String(name) = &map["$ref"] else {
                return Err(format!("{path}: $ref takes an evaluator name"));
            };
            let Some(rule) = evaluators.get(name) else {
                return Err(format!(
                    "{path}: $ref {name:?} names no entry of $evaluators"
                ));
            };
            if depth >= MAX_REF_DEPTH {
                return Err(format!(
                    "{path}: $ref {name:?} nests more than {MAX_REF_DEPTH} deep (a cycle?)"
                ));
            }
            resolve_refs(rule, evaluators, depth + 1, &format!("$evaluators.{name}"))
        }
        Value::Object(map) => {
            let mut out = Map::new();
            for (k, v) in map {
                out.insert(
                    k.clone(),
                    resolve_refs(v, evaluators, depth, &format!("{path}.{k}"))?,
                );
            }
            Ok(Value::Object(out))
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| resolve_refs(v, evaluators, depth, &format!("{path}[{i}]")))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        other => Ok(other.clone()),
    }
}
