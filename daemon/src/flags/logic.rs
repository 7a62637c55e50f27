//! JsonLogic as flagd evaluates targeting rules: the standard operators plus flagd's `fractional`,
//! `starts_with`, `ends_with` and `sem_ver`, with `$flagd.flagKey` and `$flagd.timestamp` readable
//! through `var`.
//!
//! A rule is compiled once when the definitions load ([`Rule::compile`]: unknown operators and
//! malformed arguments are refused then, with the path of the offending node), and evaluated many
//! times against a context ([`Rule::evaluate`]). Evaluation never fails: like flagd, a custom
//! operator given arguments it cannot use yields `null`, which the caller reads as "no match" (the
//! flag's default variant).

use serde_json::{Map, Number, Value};

use super::murmur::murmur3_x86_32;
use super::semver::{SemVerOp, Version};

/// A compiled targeting rule.
#[derive(Debug, Clone)]
pub struct Rule(Expr);

/// What a rule reads besides the caller's context.
#[derive(Debug, Clone, Copy)]
pub struct Env<'a> {
    /// The flag being evaluated (`$flagd.flagKey`; part of `fractional`'s default bucketing key).
    pub flag_key: &'a str,
    /// Unix seconds at evaluation (`$flagd.timestamp`).
    pub timestamp: i64,
}

#[derive(Debug, Clone)]
enum Expr {
    Lit(Value),
    Array(Vec<Expr>),
    /// `var` with a constant path (the common case: split once at compile time).
    Var {
        path: Vec<String>,
        default: Option<Box<Expr>>,
    },
    /// `var` whose path is computed.
    VarDyn {
        path: Box<Expr>,
        default: Option<Box<Expr>>,
    },
    Op(Op, Vec<Expr>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Missing,
    MissingSome,
    If,
    Eq,
    StrictEq,
    Ne,
    StrictNe,
    Not,
    NotNot,
    Or,
    And,
    Gt,
    Ge,
    Lt,
    Le,
    Max,
    Min,
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    In,
    Cat,
    Substr,
    Merge,
    Map,
    Filter,
    Reduce,
    All,
    None,
    Some,
    Log,
    Fractional,
    StartsWith,
    EndsWith,
    SemVer,
}

impl Op {
    fn from_name(name: &str) -> Option<Op> {
        Some(match name {
            "missing" => Op::Missing,
            "missing_some" => Op::MissingSome,
            "if" | "?:" => Op::If,
            "==" => Op::Eq,
            "===" => Op::StrictEq,
            "!=" => Op::Ne,
            "!==" => Op::StrictNe,
            "!" => Op::Not,
            "!!" => Op::NotNot,
            "or" => Op::Or,
            "and" => Op::And,
            ">" => Op::Gt,
            ">=" => Op::Ge,
            "<" => Op::Lt,
            "<=" => Op::Le,
            "max" => Op::Max,
            "min" => Op::Min,
            "+" => Op::Add,
            "-" => Op::Sub,
            "*" => Op::Mul,
            "/" => Op::Div,
            "%" => Op::Mod,
            "in" => Op::In,
            "cat" => Op::Cat,
            "substr" => Op::Substr,
            "merge" => Op::Merge,
            "map" => Op::Map,
            "filter" => Op::Filter,
            "reduce" => Op::Reduce,
            "all" => Op::All,
            "none" => Op::None,
            "some" => Op::Some,
            "log" => Op::Log,
            "fractional" => Op::Fractional,
            "starts_with" => Op::StartsWith,
            "ends_with" => Op::EndsWith,
            "sem_ver" => Op::SemVer,
            _ => return None,
        })
    }

    /// The fewest and most arguments the operator takes (checked at compile time).
    fn arity(self) -> (usize, usize) {
        match self {
            Op::Not | Op::NotNot | Op::Log => (1, 1),
            Op::Eq | Op::StrictEq | Op::Ne | Op::StrictNe | Op::In | Op::StartsWith => (2, 2),
            Op::EndsWith | Op::Gt | Op::Ge | Op::Mod | Op::Div => (2, 2),
            Op::Lt | Op::Le => (2, 3),
            Op::MissingSome => (2, 2),
            Op::Map | Op::Filter | Op::All | Op::None | Op::Some => (2, 2),
            Op::Reduce => (2, 3),
            Op::Substr => (2, 3),
            Op::SemVer => (3, 3),
            Op::Fractional => (1, usize::MAX),
            Op::Sub => (1, 2),
            _ => (0, usize::MAX),
        }
    }
}

impl Rule {
    /// Compiles a rule; the error names the node (`targeting.if[1].fractional`) and what is wrong.
    pub fn compile(rule: &Value) -> Result<Rule, String> {
        compile(rule, "targeting").map(Rule)
    }

    /// Evaluates the rule against `data` (the caller's context, usually an object).
    pub fn evaluate(&self, data: &Value, env: &Env<'_>) -> Value {
        eval(&self.0, data, env)
    }
}

fn compile(node: &Value, path: &str) -> Result<Expr, String> {
    match node {
        Value::Array(items) => Ok(Expr::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| compile(item, &format!("{path}[{i}]")))
                .collect::<Result<_, _>>()?,
        )),
        Value::Object(map) if map.len() == 1 => {
            let (name, args) = map.iter().next().expect("one entry");
            let here = format!("{path}.{name}");
            // A single argument may be written without the array: {"var": "a"}, {"!": x}.
            let args: Vec<&Value> = match args {
                Value::Array(items) => items.iter().collect(),
                other => vec![other],
            };
            if name == "var" {
                return compile_var(&args, &here);
            }
            let Some(op) = Op::from_name(name) else {
                return Err(format!("{here}: unknown operator {name:?}"));
            };
            let (min, max) = op.arity();
            if args.len() < min || args.len() > max {
                let want = if min == max {
                    format!("{min}")
                } else if max == usize::MAX {
                    format!("at least {min}")
                } else {
                    format!("{min} to {max}")
                };
                return Err(format!(
                    "{here}: takes {want} arguments; got {}",
                    args.len()
                ));
            }
            if op == Op::SemVer
                && let Value::String(text) = args[1]
                && SemVerOp::parse(text).is_none()
            {
                return Err(format!(
                    "{here}[1]: {text:?} is not a sem_ver operator (= != < <= > >= ^ ~)"
                ));
            }
            let compiled = args
                .iter()
                .enumerate()
                .map(|(i, arg)| compile(arg, &format!("{here}[{i}]")))
                .collect::<Result<_, _>>()?;
            Ok(Expr::Op(op, compiled))
        }
        // An empty object or one with several keys is data, as in json-logic-js.
        other => Ok(Expr::Lit(other.clone())),
    }
}

fn compile_var(args: &[&Value], here: &str) -> Result<Expr, String> {
    if args.len() > 2 {
        return Err(format!(
            "{here}: takes a path and an optional default; got {} arguments",
            args.len()
        ));
    }
    let default = match args.get(1) {
        Some(d) => Some(Box::new(compile(d, &format!("{here}[1]"))?)),
        None => None,
    };
    match args.first() {
        None | Some(Value::Null) => Ok(Expr::Var {
            path: Vec::new(),
            default,
        }),
        Some(Value::String(p)) => Ok(Expr::Var {
            path: split_path(p),
            default,
        }),
        Some(Value::Number(n)) => Ok(Expr::Var {
            path: vec![n.to_string()],
            default,
        }),
        Some(other) => Ok(Expr::VarDyn {
            path: Box::new(compile(other, &format!("{here}[0]"))?),
            default,
        }),
    }
}

fn split_path(path: &str) -> Vec<String> {
    if path.is_empty() {
        Vec::new()
    } else {
        path.split('.').map(str::to_owned).collect()
    }
}

fn lookup(data: &Value, path: &[String], env: &Env<'_>) -> Option<Value> {
    if path.first().is_some_and(|p| p == "$flagd") {
        let flagd = serde_json::json!({"flagKey": env.flag_key, "timestamp": env.timestamp});
        return walk(&flagd, &path[1..]).cloned();
    }
    walk(data, path).cloned()
}

fn walk<'v>(mut data: &'v Value, path: &[String]) -> Option<&'v Value> {
    for segment in path {
        data = match data {
            Value::Object(map) => map.get(segment)?,
            Value::Array(items) => items.get(segment.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(data)
}

fn eval(expr: &Expr, data: &Value, env: &Env<'_>) -> Value {
    match expr {
        Expr::Lit(value) => value.clone(),
        Expr::Array(items) => Value::Array(items.iter().map(|e| eval(e, data, env)).collect()),
        Expr::Var { path, default } => match lookup(data, path, env) {
            Some(Value::Null) | None => {
                default.as_ref().map_or(Value::Null, |d| eval(d, data, env))
            }
            Some(found) => found,
        },
        Expr::VarDyn { path, default } => {
            let path = match eval(path, data, env) {
                Value::Null => Vec::new(),
                Value::String(p) => split_path(&p),
                Value::Number(n) => vec![n.to_string()],
                _ => return Value::Null,
            };
            match lookup(data, &path, env) {
                Some(Value::Null) | None => {
                    default.as_ref().map_or(Value::Null, |d| eval(d, data, env))
                }
                Some(found) => found,
            }
        }
        Expr::Op(op, args) => apply(*op, args, data, env),
    }
}

fn apply(op: Op, args: &[Expr], data: &Value, env: &Env<'_>) -> Value {
    // Operators that decide which arguments to evaluate.
    match op {
        Op::If => {
            let mut i = 0;
            while i + 1 < args.len() {
                if truthy(&eval(&args[i], data, env)) {
                    return eval(&args[i + 1], data, env);
                }
                i += 2;
            }
            return if i < args.len() {
                eval(&args[i], data, env)
            } else {
                Value::Null
            };
        }
        Op::Or => {
            let mut last = Value::Bool(false);
            for arg in args {
                last = eval(arg, data, env);
                if truthy(&last) {
                    return last;
                }
            }
            return last;
        }
        Op::And => {
            let mut last = Value::Bool(true);
            for arg in args {
                last = eval(arg, data, env);
                if !truthy(&last) {
                    return last;
                }
            }
            return last;
        }
        Op::Map | Op::Filter | Op::All | Op::None | Op::Some | Op::Reduce => {
            return iterate(op, args, data, env);
        }
        _ => {}
    }
    let values: Vec<Value> = args.iter().map(|a| eval(a, data, env)).collect();
    let v = values.as_slice();
    match op {
        Op::Eq => Value::Bool(loose_eq(&v[0], &v[1])),
        Op::Ne => Value::Bool(!loose_eq(&v[0], &v[1])),
        Op::StrictEq => Value::Bool(strict_eq(&v[0], &v[1])),
        Op::StrictNe => Value::Bool(!strict_eq(&v[0], &v[1])),
        Op::Not => Value::Bool(!truthy(&v[0])),
        Op::NotNot => Value::Bool(truthy(&v[0])),
        Op::Gt => Value::Bool(less(&v[1], &v[0], false)),
        Op::Ge => Value::Bool(less(&v[1], &v[0], true)),
        Op::Lt | Op::Le => {
            let or_equal = op == Op::Le;
            let ok = less(&v[0], &v[1], or_equal) && (v.len() < 3 || less(&v[1], &v[2], or_equal));
            Value::Bool(ok)
        }
        Op::Max | Op::Min => {
            let numbers: Vec<f64> = v.iter().map(to_number).collect();
            if numbers.is_empty() || numbers.iter().any(|n| n.is_nan()) {
                return Value::Null;
            }
            let pick = if op == Op::Max { f64::max } else { f64::min };
            number(numbers.into_iter().reduce(pick).unwrap_or(f64::NAN))
        }
        Op::Add => number(v.iter().map(to_number).sum()),
        Op::Mul => number(v.iter().map(to_number).product()),
        Op::Sub => match v {
            [a] => number(-to_number(a)),
            [a, b] => number(to_number(a) - to_number(b)),
            _ => Value::Null,
        },
        Op::Div => number(to_number(&v[0]) / to_number(&v[1])),
        Op::Mod => number(to_number(&v[0]) % to_number(&v[1])),
        Op::In => Value::Bool(match &v[1] {
            Value::String(haystack) => haystack.contains(to_text(&v[0]).as_str()),
            Value::Array(items) => items.iter().any(|item| strict_eq(item, &v[0])),
            _ => false,
        }),
        Op::Cat => Value::String(v.iter().map(to_text).collect()),
        Op::Substr => substr(v),
        Op::Merge => {
            let mut out = Vec::new();
            for value in values {
                match value {
                    Value::Array(items) => out.extend(items),
                    other => out.push(other),
                }
            }
            Value::Array(out)
        }
        Op::Missing => {
            let keys: Vec<Value> = match v {
                [Value::Array(keys)] => keys.clone(),
                _ => values.clone(),
            };
            Value::Array(missing(&keys, data, env))
        }
        Op::MissingSome => {
            let need = to_number(&v[0]);
            let Value::Array(keys) = &v[1] else {
                return Value::Array(Vec::new());
            };
            let absent = missing(keys, data, env);
            if (keys.len() - absent.len()) as f64 >= need {
                Value::Array(Vec::new())
            } else {
                Value::Array(absent)
            }
        }
        Op::Log => v[0].clone(),
        Op::Fractional => fractional(values, data, env),
        Op::StartsWith | Op::EndsWith => match (&v[0], &v[1]) {
            (Value::String(s), Value::String(affix)) => Value::Bool(if op == Op::StartsWith {
                s.starts_with(affix.as_str())
            } else {
                s.ends_with(affix.as_str())
            }),
            _ => Value::Null,
        },
        Op::SemVer => sem_ver(v),
        Op::If
        | Op::Or
        | Op::And
        | Op::Map
        | Op::Filter
        | Op::All
        | Op::None
        | Op::Some
        | Op::Reduce => unreachable!("handled above"),
    }
}

fn iterate(op: Op, args: &[Expr], data: &Value, env: &Env<'_>) -> Value {
    let items = match eval(&args[0], data, env) {
        Value::Array(items) => items,
        _ => Vec::new(),
    };
    let logic = &args[1];
    match op {
        Op::Map => Value::Array(items.iter().map(|item| eval(logic, item, env)).collect()),
        Op::Filter => Value::Array(
            items
                .into_iter()
                .filter(|item| truthy(&eval(logic, item, env)))
                .collect(),
        ),
        Op::All => Value::Bool(
            !items.is_empty() && items.iter().all(|item| truthy(&eval(logic, item, env))),
        ),
        Op::None => Value::Bool(!items.iter().any(|item| truthy(&eval(logic, item, env)))),
        Op::Some => Value::Bool(items.iter().any(|item| truthy(&eval(logic, item, env)))),
        Op::Reduce => {
            let mut accumulator = args.get(2).map_or(Value::Null, |a| eval(a, data, env));
            for item in items {
                let scope = serde_json::json!({"current": item, "accumulator": accumulator});
                accumulator = eval(logic, &scope, env);
            }
            accumulator
        }
        _ => Value::Null,
    }
}

fn missing(keys: &[Value], data: &Value, env: &Env<'_>) -> Vec<Value> {
    keys.iter()
        .filter(|key| {
            let path = match key {
                Value::String(p) => split_path(p),
                Value::Number(n) => vec![n.to_string()],
                _ => return true,
            };
            matches!(lookup(data, &path, env), None | Some(Value::Null))
                || matches!(lookup(data, &path, env), Some(Value::String(s)) if s.is_empty())
        })
        .cloned()
        .collect()
}

fn substr(v: &[Value]) -> Value {
    let text: Vec<char> = to_text(&v[0]).chars().collect();
    let len = text.len() as i64;
    let start = to_number(&v[1]);
    if start.is_nan() {
        return Value::String(String::new());
    }
    let mut from = start as i64;
    if from < 0 {
        from = (len + from).max(0);
    }
    let from = from.min(len);
    let to = match v.get(2) {
        None => len,
        Some(count) => {
            let count = to_number(count);
            if count.is_nan() {
                return Value::String(String::new());
            }
            let count = count as i64;
            if count < 0 {
                (len + count).max(from)
            } else {
                (from + count).min(len)
            }
        }
    };
    Value::String(text[from as usize..to.max(from) as usize].iter().collect())
}

/// flagd's `fractional`: the bucketing key is the first argument when it is a string, otherwise
/// `flagKey + targetingKey` (no separator); `bucket = (murmur3(key) * total) >> 32`; the first
/// variant whose cumulative weight exceeds the bucket wins. `null` when it cannot bucket.
fn fractional(mut values: Vec<Value>, data: &Value, env: &Env<'_>) -> Value {
    let key = match values.first() {
        Some(Value::String(_)) => {
            let Value::String(key) = values.remove(0) else {
                unreachable!()
            };
            key
        }
        first => {
            if matches!(first, Some(Value::Null)) {
                values.remove(0);
            }
            match data.get("targetingKey") {
                Some(Value::String(tk)) if !tk.is_empty() => format!("{}{tk}", env.flag_key),
                _ => return Value::Null,
            }
        }
    };
    let mut buckets: Vec<(Value, u64)> = Vec::with_capacity(values.len());
    let mut total: u64 = 0;
    for distribution in values {
        let Value::Array(mut parts) = distribution else {
            return Value::Null;
        };
        if parts.is_empty() {
            return Value::Null;
        }
        let weight = match parts.get(1) {
            None | Some(Value::Null) => 1,
            Some(Value::Number(n)) => {
                let Some(w) = n.as_f64() else {
                    return Value::Null;
                };
                if w.fract() != 0.0 || w > f64::from(i32::MAX) {
                    return Value::Null;
                }
                w.max(0.0) as u64
            }
            Some(_) => return Value::Null,
        };
        let variant = parts.swap_remove(0);
        if matches!(variant, Value::Array(_) | Value::Object(_)) {
            return Value::Null;
        }
        total += weight;
        buckets.push((variant, weight));
    }
    if total == 0 || total > i32::MAX as u64 {
        return Value::Null;
    }
    let bucket = bucket_of(&key, total);
    let mut end = 0;
    for (variant, weight) in buckets {
        end += weight;
        if bucket < end {
            return variant;
        }
    }
    Value::Null
}

/// The bucket in `0..total` that `key` falls into (flagd v0.15+ high-precision bucketing).
pub fn bucket_of(key: &str, total: u64) -> u64 {
    (u64::from(murmur3_x86_32(key.as_bytes(), 0)) * total) >> 32
}

fn sem_ver(v: &[Value]) -> Value {
    let (Some(actual), Value::String(op), Some(target)) =
        (version_of(&v[0]), &v[1], version_of(&v[2]))
    else {
        return Value::Null;
    };
    match SemVerOp::parse(op) {
        Some(op) => Value::Bool(op.holds(&actual, &target)),
        None => Value::Null,
    }
}

fn version_of(value: &Value) -> Option<Version> {
    match value {
        Value::String(s) => Version::parse(s),
        Value::Number(_) => Version::parse(&to_text(value)),
        _ => None,
    }
}

/// JsonLogic truthiness: `false`, `null`, `0`, `""` and `[]` are false.
pub fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0 && !f.is_nan()),
        Value::String(s) => !s.is_empty(),
        Value::Array(items) => !items.is_empty(),
        Value::Object(_) => true,
    }
}

fn strict_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(_), _) | (Value::Object(_), _) => false,
        _ => a == b,
    }
}

/// JavaScript's `==` on JSON values, as json-logic-js (and flagd's evaluator) compare.
fn loose_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Null, Value::Null) => true,
        (Value::Null, _) | (_, Value::Null) => false,
        (Value::Number(_), Value::Number(_)) => strict_eq(a, b),
        (Value::String(x), Value::String(y)) => x == y,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::Array(_) | Value::Object(_), Value::Array(_) | Value::Object(_)) => false,
        (Value::Array(_) | Value::Object(_), _) => loose_eq(&Value::String(to_text(a)), b),
        (_, Value::Array(_) | Value::Object(_)) => loose_eq(a, &Value::String(to_text(b))),
        _ => to_number(a) == to_number(b),
    }
}

/// `a < b` (or `<=`): strings compare as strings, everything else as numbers.
fn less(a: &Value, b: &Value, or_equal: bool) -> bool {
    if let (Value::String(x), Value::String(y)) = (a, b) {
        return if or_equal { x <= y } else { x < y };
    }
    let (x, y) = (to_number(a), to_number(b));
    if or_equal { x <= y } else { x < y }
}

fn to_number(value: &Value) -> f64 {
    match value {
        Value::Null => 0.0,
        Value::Bool(b) => f64::from(u8::from(*b)),
        Value::Number(n) => n.as_f64().unwrap_or(f64::NAN),
        Value::String(s) => {
            let s = s.trim();
            if s.is_empty() {
                0.0
            } else {
                s.parse().unwrap_or(f64::NAN)
            }
        }
        Value::Array(items) => match items.as_slice() {
            [] => 0.0,
            [one] => to_number(one),
            _ => f64::NAN,
        },
        Value::Object(_) => f64::NAN,
    }
}

/// A value as text, as JavaScript's `String()` would write it (null as the empty string, as
/// `cat` joins).
pub fn to_text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => i.to_string(),
            (None, Some(f)) if f.fract() == 0.0 && f.abs() < 1e21 => format!("{f:.0}"),
            (None, Some(f)) => f.to_string(),
            (None, None) => n.to_string(),
        },
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(to_text).collect::<Vec<_>>().join(","),
        Value::Object(_) => "[object Object]".to_owned(),
    }
}

/// A number result: whole numbers as integers (so `1` names variant "1"), NaN and infinities as null.
fn number(f: f64) -> Value {
    if !f.is_finite() {
        return Value::Null;
    }
    if f.fract() == 0.0 && f.abs() < 9.007_199_254_740_992e15 {
        return Value::Number(Number::from(f as i64));
    }
    Number::from_f64(f).map_or(Value::Null, Value::Number)
}

/// Whether a JSON object is a JsonLogic operation rather than data (`{"op": args}`).
pub fn is_operation(map: &Map<String, Value>) -> bool {
    map.len() == 1
}
