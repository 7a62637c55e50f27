//! `google.protobuf.Struct` ↔ JSON, for the API fields that carry free-form context (Policy `context`,
//! audit records). The daemon and brainstemctl both convert, so it lives with the generated types.

use serde_json::{Map, Value};

/// A protobuf Struct as JSON. Whole numbers become integers (Cedar has no floats); others stay
/// floats so validation can name them.
pub fn struct_to_json(s: &prost_types::Struct) -> Map<String, Value> {
    s.fields
        .iter()
        .map(|(k, v)| (k.clone(), value_to_json(v)))
        .collect()
}

/// A protobuf Value as JSON (whole numbers as integers, as [`struct_to_json`]).
pub fn value_to_json(value: &prost_types::Value) -> Value {
    use prost_types::value::Kind;
    match &value.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::NumberValue(n)) => {
            if n.fract() == 0.0 && n.abs() < 9.007_199_254_740_992e15 {
                Value::from(*n as i64)
            } else {
                serde_json::Number::from_f64(*n).map_or(Value::Null, Value::Number)
            }
        }
        Some(Kind::StructValue(s)) => Value::Object(struct_to_json(s)),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(value_to_json).collect()),
    }
}

/// A JSON object as a protobuf Struct (every number becomes a double, as Struct requires).
pub fn json_to_struct(map: &Map<String, Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: map
            .iter()
            .map(|(k, v)| (k.clone(), json_to_value(v)))
            .collect(),
    }
}

/// A JSON value as a protobuf Value.
pub fn json_to_value(value: &Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match value {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.iter().map(json_to_value).collect(),
        }),
        Value::Object(map) => Kind::StructValue(json_to_struct(map)),
    };
    prost_types::Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trips_through_struct() {
        let json = serde_json::json!({
            "n": 3, "f": 1.5, "s": "x", "b": true, "null": null,
            "list": [1, "two", [false]], "nested": {"k": -7}
        });
        let Value::Object(map) = json.clone() else {
            unreachable!()
        };
        let back = struct_to_json(&json_to_struct(&map));
        assert_eq!(Value::Object(back), json);
    }

    #[test]
    fn whole_doubles_read_back_as_integers() {
        use prost_types::value::Kind;
        let s = prost_types::Struct {
            fields: [(
                "n".to_owned(),
                prost_types::Value {
                    kind: Some(Kind::NumberValue(42.0)),
                },
            )]
            .into(),
        };
        assert_eq!(struct_to_json(&s)["n"], serde_json::json!(42));
    }
}
