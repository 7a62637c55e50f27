//! `Flags.Evaluate` and flagd's typed `Resolve*` on the wire without the generated types: the request's context is kept as the
//! bytes it came in (checked, not decoded) and read only when a targeting rule asks for it; the
//! reply is written straight from the [`Resolution`] — the value from its JSON, the metadata as
//! bytes encoded once per loaded set ([`Metadata::encoded`]). Both are byte-for-byte what prost
//! writes and reads for `brainstem.v1.EvaluateFlagRequest` / `EvaluateFlagReply` (tests compare
//! them); the generated types still serve every other method and the clients. The codec and the
//! route are [`crate::grpc::wire`]'s.
//!
//! Why: decoding the context Struct into maps and encoding the Value and metadata Struct (prost
//! sizes each nested level before writing it) cost more than the evaluation itself
//! (docs/PERFORMANCE.md, "Flags").

use bytes::{Buf, BufMut, Bytes};
use prost::encoding::{
    DecodeContext, WireType, decode_key, decode_varint, encode_key, encode_varint,
    encoded_len_varint, skip_field,
};
use serde_json::{Map, Value};

use super::{EvalContext, Resolution};
use crate::grpc::wire::{
    DecodeError, WireReply, WireRequest, encode_str, field_len, length_delimited,
};

/// How deep a context may nest (Values inside Structs and lists), as prost's recursion limit.
const MAX_DEPTH: u32 = 100;

/// `brainstem.v1.EvaluateFlagRequest`, its context left encoded.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct EvaluateRequest {
    pub key: String,
    /// The context Struct's encoding (several occurrences concatenated, which is how protobuf
    /// merges them); `None` when the field is absent.
    pub context: Option<Bytes>,
    pub r#type: i32,
}

impl EvaluateRequest {
    /// Reads a request; a malformed context is refused here, as decoding it whole would.
    pub fn decode(buf: Bytes) -> Result<Self, DecodeError> {
        Self::decode_fields(buf, true)
    }

    /// `type_field`: field 3 is `type` (Evaluate); flagd's requests have no field 3.
    fn decode_fields(mut buf: Bytes, type_field: bool) -> Result<Self, DecodeError> {
        let mut request = EvaluateRequest::default();
        while buf.has_remaining() {
            let (tag, wire_type) = decode_key(&mut buf)?;
            match (tag, wire_type) {
                (1, WireType::LengthDelimited) => {
                    let bytes = length_delimited(&mut buf)?;
                    request.key = std::str::from_utf8(&bytes)
                        .map_err(|_| DecodeError::new("key: data is not UTF-8"))?
                        .to_owned();
                }
                (2, WireType::LengthDelimited) => {
                    let bytes = length_delimited(&mut buf)?;
                    check(&bytes, Kind::Struct, 0)?;
                    request.context = Some(match request.context.take() {
                        None => bytes,
                        Some(before) => [before, bytes].concat().into(),
                    });
                }
                (3, WireType::Varint) if type_field => {
                    request.r#type = decode_varint(&mut buf)? as i32;
                }
                (1 | 2, _) => return Err(DecodeError::new("invalid wire type")),
                (3, _) if type_field => return Err(DecodeError::new("invalid wire type")),
                _ => skip_field(wire_type, tag, &mut buf, DecodeContext::default())?,
            }
        }
        Ok(request)
    }
}

fn sub_slice<'a>(buf: &mut &'a [u8]) -> Result<&'a [u8], DecodeError> {
    let len = decode_varint(buf)?;
    if len > buf.len() as u64 {
        return Err(DecodeError::new("buffer underflow"));
    }
    let (head, tail) = buf.split_at(len as usize);
    *buf = tail;
    Ok(head)
}

/// The messages of `google/protobuf/struct.proto` and a Struct's map entry.
#[derive(Clone, Copy)]
enum Kind {
    Struct,
    Entry,
    Value,
    List,
}

/// Checks that `buf` is a well-formed encoding of `kind` (wire types, lengths, UTF-8 strings,
/// nesting depth) without building it.
fn check(mut buf: &[u8], kind: Kind, depth: u32) -> Result<(), DecodeError> {
    if depth > MAX_DEPTH {
        return Err(DecodeError::new("recursion limit reached"));
    }
    use WireType::{LengthDelimited as Len, SixtyFourBit, Varint};
    while !buf.is_empty() {
        let (tag, wire_type) = decode_key(&mut buf)?;
        let nested = match (kind, tag, wire_type) {
            (Kind::Struct, 1, Len) => Some(Kind::Entry),
            (Kind::Entry, 2, Len) | (Kind::List, 1, Len) => Some(Kind::Value),
            (Kind::Value, 5, Len) => Some(Kind::Struct),
            (Kind::Value, 6, Len) => Some(Kind::List),
            (Kind::Entry, 1, Len) | (Kind::Value, 3, Len) => {
                std::str::from_utf8(sub_slice(&mut buf)?)
                    .map_err(|_| DecodeError::new("invalid string value: data is not UTF-8"))?;
                None
            }
            (Kind::Value, 1 | 4, Varint) => {
                decode_varint(&mut buf)?;
                None
            }
            (Kind::Value, 2, SixtyFourBit) => {
                if buf.len() < 8 {
                    return Err(DecodeError::new("buffer underflow"));
                }
                buf = &buf[8..];
                None
            }
            (Kind::Struct | Kind::List, 1, _)
            | (Kind::Entry, 1 | 2, _)
            | (Kind::Value, 1..=6, _) => return Err(DecodeError::new("invalid wire type")),
            _ => {
                skip_field(wire_type, tag, &mut buf, DecodeContext::default())?;
                None
            }
        };
        if let Some(nested) = nested {
            check(sub_slice(&mut buf)?, nested, depth + 1)?;
        }
    }
    Ok(())
}

/// A request's context as it came: `targetingKey` is read from the bytes; the whole context is
/// decoded and converted to JSON only when a targeting rule reads it.
pub struct RawContext<'a> {
    wire: Option<&'a [u8]>,
    json: std::cell::OnceCell<Value>,
}

impl<'a> RawContext<'a> {
    /// `wire`: a Struct's encoding that [`EvaluateRequest::decode`] checked.
    pub fn new(wire: Option<&'a [u8]>) -> Self {
        RawContext {
            wire,
            json: std::cell::OnceCell::new(),
        }
    }

    /// Whether the context was decoded (a targeting rule read it).
    #[cfg(test)]
    pub fn decoded(&self) -> bool {
        self.json.get().is_some()
    }
}

/// The string a Value holds, if its kind is `string_value` (the last kind written wins).
fn string_of(mut value: &[u8]) -> Option<&str> {
    let mut found = None;
    while !value.is_empty() {
        let (tag, wire_type) = decode_key(&mut value).ok()?;
        if tag == 3 && wire_type == WireType::LengthDelimited {
            found = std::str::from_utf8(sub_slice(&mut value).ok()?).ok();
        } else {
            if (1..=6).contains(&tag) {
                found = None;
            }
            skip_field(wire_type, tag, &mut value, DecodeContext::default()).ok()?;
        }
    }
    found
}

impl EvalContext for RawContext<'_> {
    fn targeting_key(&self) -> Option<&str> {
        // A map's last entry for a key wins, as when decoding it into a map.
        let mut buf = self.wire?;
        let mut found = None;
        while !buf.is_empty() {
            let (tag, wire_type) = decode_key(&mut buf).ok()?;
            if tag != 1 || wire_type != WireType::LengthDelimited {
                skip_field(wire_type, tag, &mut buf, DecodeContext::default()).ok()?;
                continue;
            }
            let mut entry = sub_slice(&mut buf).ok()?;
            let (mut key, mut value) = ("", None);
            while !entry.is_empty() {
                let (tag, wire_type) = decode_key(&mut entry).ok()?;
                match tag {
                    1 => key = std::str::from_utf8(sub_slice(&mut entry).ok()?).ok()?,
                    2 => value = Some(sub_slice(&mut entry).ok()?),
                    _ => skip_field(wire_type, tag, &mut entry, DecodeContext::default()).ok()?,
                }
            }
            if key == "targetingKey" {
                found = value.and_then(string_of);
            }
        }
        found
    }

    fn json(&self) -> &Value {
        self.json.get_or_init(|| {
            use prost::Message;
            let map = self
                .wire
                .and_then(|wire| prost_types::Struct::decode(wire).ok())
                .map(|s| brainstem_proto::json::struct_to_json(&s))
                .unwrap_or_default();
            Value::Object(map)
        })
    }
}

/// `brainstem.v1.EvaluateFlagReply`, written from a resolution.
#[derive(Debug, Clone)]
pub struct EvaluateReply {
    pub resolution: Resolution,
    /// `brainstem.v1.FlagType` of the flag.
    pub r#type: i32,
}

impl EvaluateReply {
    pub fn encoded_len(&self) -> usize {
        let r = &self.resolution;
        r.value.as_ref().map_or(0, |v| field_len(value_len(v)))
            + r.variant
                .as_deref()
                .filter(|v| !v.is_empty())
                .map_or(0, |v| field_len(v.len()))
            + field_len(r.reason.as_str().len())
            + r.metadata.encoded().len()
            + if self.r#type == 0 {
                0
            } else {
                1 + encoded_len_varint(self.r#type as i64 as u64)
            }
    }

    pub fn encode(&self, buf: &mut impl BufMut) {
        let r = &self.resolution;
        if let Some(value) = &r.value {
            encode_key(1, WireType::LengthDelimited, buf);
            encode_varint(value_len(value) as u64, buf);
            encode_value(value, buf);
        }
        if let Some(variant) = r.variant.as_deref().filter(|v| !v.is_empty()) {
            encode_str(2, variant, buf);
        }
        encode_str(3, r.reason.as_str(), buf);
        buf.put_slice(r.metadata.encoded());
        if self.r#type != 0 {
            encode_key(5, WireType::Varint, buf);
            encode_varint(self.r#type as i64 as u64, buf);
        }
    }
}

/// The length of a `google.protobuf.Value` holding `value` (as `json_to_value` builds it).
fn value_len(value: &Value) -> usize {
    match value {
        Value::Null | Value::Bool(_) => 2,
        Value::Number(_) => 9,
        Value::String(s) => field_len(s.len()),
        Value::Array(items) => field_len(list_len(items)),
        Value::Object(map) => field_len(struct_len(map)),
    }
}

fn list_len(items: &[Value]) -> usize {
    items.iter().map(|v| field_len(value_len(v))).sum()
}

fn entry_len(key: &str, value: &Value) -> usize {
    // prost leaves a map entry's default key out (the value is never the default Value).
    (if key.is_empty() {
        0
    } else {
        field_len(key.len())
    }) + field_len(value_len(value))
}

fn struct_len(map: &Map<String, Value>) -> usize {
    map.iter().map(|(k, v)| field_len(entry_len(k, v))).sum()
}

fn encode_value(value: &Value, buf: &mut impl BufMut) {
    match value {
        Value::Null => {
            encode_key(1, WireType::Varint, buf);
            buf.put_u8(0);
        }
        Value::Bool(b) => {
            encode_key(4, WireType::Varint, buf);
            buf.put_u8(u8::from(*b));
        }
        Value::Number(n) => {
            encode_key(2, WireType::SixtyFourBit, buf);
            buf.put_f64_le(n.as_f64().unwrap_or(0.0));
        }
        Value::String(s) => encode_str(3, s, buf),
        Value::Array(items) => {
            encode_key(6, WireType::LengthDelimited, buf);
            encode_varint(list_len(items) as u64, buf);
            for item in items {
                encode_key(1, WireType::LengthDelimited, buf);
                encode_varint(value_len(item) as u64, buf);
                encode_value(item, buf);
            }
        }
        Value::Object(map) => {
            encode_key(5, WireType::LengthDelimited, buf);
            encode_varint(struct_len(map) as u64, buf);
            encode_struct(map, buf);
        }
    }
}

fn encode_struct(map: &Map<String, Value>, buf: &mut impl BufMut) {
    // A Struct's fields are a BTreeMap in prost: written in key order, whatever order the JSON
    // object keeps.
    let mut entries: Vec<(&String, &Value)> = map.iter().collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    for (key, value) in entries {
        encode_key(1, WireType::LengthDelimited, buf);
        encode_varint(entry_len(key, value) as u64, buf);
        if !key.is_empty() {
            encode_str(1, key, buf);
        }
        encode_key(2, WireType::LengthDelimited, buf);
        encode_varint(value_len(value) as u64, buf);
        encode_value(value, buf);
    }
}

/// `metadata` as field `tag` of a reply (a Struct, present even when empty), as prost writes it.
pub fn encode_metadata_field(tag: u32, metadata: &Map<String, Value>) -> Bytes {
    let mut buf = Vec::with_capacity(field_len(struct_len(metadata)));
    encode_key(tag, WireType::LengthDelimited, &mut buf);
    encode_varint(struct_len(metadata) as u64, &mut buf);
    encode_struct(metadata, &mut buf);
    buf.into()
}

/// `flagd.evaluation.v{1,2}.Resolve{Boolean,String,Int,Float,Object}Request`: `flag_key` (field 1,
/// read into [`EvaluateRequest::key`]) and `context` (field 2), the context left encoded.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ResolveRequest(pub EvaluateRequest);

/// Which flagd protocol version a reply is for: v2 writes value and variant whenever they are set
/// (`optional`), v1 leaves zero values out (plain proto3 fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagdVersion {
    V1,
    V2,
}

/// A flagd `Resolve*Response` (fields value 1, reason 2, variant 3, metadata 4), written from a
/// resolution of a flag of type `flag_type` (the type the method asked for).
#[derive(Debug, Clone)]
pub struct ResolveReply {
    pub resolution: Resolution,
    pub flag_type: super::FlagType,
    pub version: FlagdVersion,
}

/// The typed value a flagd reply carries, converted as the generated adapters convert it.
enum Typed<'a> {
    Bool(bool),
    String(&'a str),
    Double(f64),
    Int(i64),
    Object(&'a Map<String, Value>),
}

impl ResolveReply {
    fn typed(&self) -> Option<Typed<'_>> {
        use super::FlagType as T;
        let value = self.resolution.value.as_ref();
        match self.flag_type {
            T::Boolean => value.and_then(Value::as_bool).map(Typed::Bool),
            T::String => value.and_then(Value::as_str).map(Typed::String),
            T::Float => value.and_then(Value::as_f64).map(Typed::Double),
            // As flagd: the number read as a float, then truncated.
            T::Integer => value.and_then(Value::as_f64).map(|f| Typed::Int(f as i64)),
            T::Object => match value {
                Some(Value::Object(map)) => Some(Typed::Object(map)),
                _ => None,
            },
        }
    }

    /// Whether the value is written: v2 writes every set value, v1 (no "unset" for scalars: an
    /// unset value is the zero value) only non-zero ones, as proto3 does.
    fn written(&self, typed: &Typed<'_>) -> bool {
        self.version == FlagdVersion::V2
            || match typed {
                Typed::Bool(b) => *b,
                Typed::String(s) => !s.is_empty(),
                Typed::Double(f) => *f != 0.0,
                Typed::Int(i) => *i != 0,
                Typed::Object(_) => true,
            }
    }

    fn variant(&self) -> Option<&str> {
        let variant = self.resolution.variant.as_deref();
        match self.version {
            FlagdVersion::V2 => variant,
            FlagdVersion::V1 => variant.filter(|v| !v.is_empty()),
        }
    }
}

impl WireReply for ResolveReply {
    fn encoded_len(&self) -> usize {
        let value = match self.typed() {
            Some(typed) if self.written(&typed) => match typed {
                Typed::Bool(_) => 2,
                Typed::String(s) => field_len(s.len()),
                Typed::Double(_) => 9,
                Typed::Int(i) => 1 + encoded_len_varint(i as u64),
                Typed::Object(map) => field_len(struct_len(map)),
            },
            _ => 0,
        };
        value
            + field_len(self.resolution.reason.as_str().len())
            + self.variant().map_or(0, |v| field_len(v.len()))
            + self.resolution.metadata.encoded().len()
    }

    fn encode(&self, buf: &mut impl BufMut) {
        if let Some(typed) = self.typed()
            && self.written(&typed)
        {
            match typed {
                Typed::Bool(b) => {
                    encode_key(1, WireType::Varint, buf);
                    buf.put_u8(u8::from(b));
                }
                Typed::String(s) => encode_str(1, s, buf),
                Typed::Double(f) => {
                    encode_key(1, WireType::SixtyFourBit, buf);
                    buf.put_f64_le(f);
                }
                Typed::Int(i) => {
                    encode_key(1, WireType::Varint, buf);
                    encode_varint(i as u64, buf);
                }
                Typed::Object(map) => {
                    encode_key(1, WireType::LengthDelimited, buf);
                    encode_varint(struct_len(map) as u64, buf);
                    encode_struct(map, buf);
                }
            }
        }
        encode_str(2, self.resolution.reason.as_str(), buf);
        if let Some(variant) = self.variant() {
            encode_str(3, variant, buf);
        }
        buf.put_slice(self.resolution.metadata.encoded());
    }
}

impl WireRequest for EvaluateRequest {
    fn decode(buf: Bytes) -> Result<Self, DecodeError> {
        EvaluateRequest::decode(buf)
    }
}

impl WireRequest for ResolveRequest {
    fn decode(buf: Bytes) -> Result<Self, DecodeError> {
        EvaluateRequest::decode_fields(buf, false).map(ResolveRequest)
    }
}

impl WireReply for EvaluateReply {
    fn encoded_len(&self) -> usize {
        EvaluateReply::encoded_len(self)
    }

    fn encode(&self, buf: &mut impl BufMut) {
        EvaluateReply::encode(self, buf)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use brainstem_proto::json::{json_to_struct, json_to_value, struct_to_json};
    use brainstem_proto::v1::{EvaluateFlagReply, EvaluateFlagRequest};
    use prost::Message;
    use serde_json::json;

    use super::*;
    use crate::flags::{FlagType, Metadata, Reason};

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    fn values() -> Vec<Value> {
        vec![
            json!(true),
            json!(false),
            json!(null),
            json!(""),
            json!("on"),
            json!("ünïcødé ✓".repeat(20)),
            json!(0),
            json!(-7),
            json!(1.5),
            json!(1e300),
            json!([]),
            json!({}),
            json!([1, "two", [false, null], {"k": []}]),
            json!({"": "empty key", "a": {"b": {"c": [1, 2, {"d": "deep"}]}}, "long": "x".repeat(300)}),
        ]
    }

    /// The reply written from a resolution is byte for byte the generated type's encoding of the
    /// reply the generated path builds (value, variant, reason, metadata, type).
    #[test]
    fn the_reply_is_encoded_as_prost_encodes_it() {
        let metadatas = [
            json!({}),
            json!({"owner": "web", "version": 12, "flagSetId": "brainstem"}),
            json!({"": true, "nested": {"x": [1, 2]}, "big": "y".repeat(200)}),
        ];
        let reasons = [
            Reason::Static,
            Reason::TargetingMatch,
            Reason::Default,
            Reason::Disabled,
            Reason::Split,
        ];
        let mut cases = 0;
        for metadata in metadatas {
            let metadata = Arc::new(Metadata::new(object(metadata)));
            for value in values().into_iter().map(Some).chain([None]) {
                for variant in [None, Some(String::new()), Some("on".to_owned())] {
                    for (reason, flag_type) in reasons.iter().zip([1, 2, 3, 4, 0]) {
                        let resolution = Resolution {
                            value: value.clone(),
                            variant: variant.clone(),
                            reason: *reason,
                            metadata: metadata.clone(),
                            flag_type: FlagType::Object,
                        };
                        let want = EvaluateFlagReply {
                            value: value.as_ref().map(json_to_value),
                            variant: variant.clone().unwrap_or_default(),
                            reason: reason.as_str().to_owned(),
                            metadata: Some(metadata.wire().clone()),
                            r#type: flag_type,
                        }
                        .encode_to_vec();
                        let reply = EvaluateReply {
                            resolution,
                            r#type: flag_type,
                        };
                        let mut got = Vec::new();
                        reply.encode(&mut got);
                        assert_eq!(got, want, "{value:?} {variant:?} {reason:?}");
                        assert_eq!(reply.encoded_len(), want.len());
                        cases += 1;
                    }
                }
            }
        }
        assert_eq!(cases, 3 * 15 * 3 * 5);
    }

    fn contexts() -> Vec<Option<Value>> {
        let mut out = vec![None, Some(json!({}))];
        out.extend(values().into_iter().map(|v| {
            Some(json!({"targetingKey": "user-1", "v": v, "user": {"email": "a@x.org"}}))
        }));
        out.extend([
            Some(json!({"targetingKey": 7})),
            Some(json!({"targetingKey": ""})),
            Some(json!({"targetingKey": {"nested": "no"}})),
            Some(json!({"other": "x"})),
        ]);
        out
    }

    fn request(key: &str, context: Option<&Value>, r#type: i32) -> EvaluateFlagRequest {
        EvaluateFlagRequest {
            key: key.to_owned(),
            context: context.map(|c| json_to_struct(&object(c.clone()))),
            r#type,
        }
    }

    /// What prost reads from a request, this reads too: the key, the type, and a context whose
    /// decoding and targeting key are the generated type's.
    #[test]
    fn requests_read_as_prost_reads_them() {
        for context in contexts() {
            let sent = request("flag.key", context.as_ref(), 2);
            let got = EvaluateRequest::decode(sent.encode_to_vec().into()).unwrap();
            assert_eq!(got.key, "flag.key");
            assert_eq!(got.r#type, 2);
            let decoded = got
                .context
                .as_deref()
                .map(|c| prost_types::Struct::decode(c).unwrap());
            assert_eq!(decoded, sent.context, "{context:?}");
            let raw = RawContext::new(got.context.as_deref());
            let want = context.clone().unwrap_or(json!({}));
            assert_eq!(raw.targeting_key(), want.targeting_key(), "{context:?}");
            assert!(!raw.decoded(), "reading the targeting key decodes nothing");
            assert_eq!(raw.json(), &want);
            assert_eq!(
                Value::Object(struct_to_json(&decoded.unwrap_or_default())),
                want
            );
        }
    }

    /// Two occurrences of the context merge (a map's later entries win), unknown fields are
    /// skipped, and defaults left out read as defaults — as prost does.
    #[test]
    fn merged_contexts_unknown_fields_and_defaults() {
        let first = request("a", Some(&json!({"targetingKey": "one", "x": 1})), 0);
        let second = request("b", Some(&json!({"targetingKey": "two", "y": 2})), 3);
        let mut bytes = first.encode_to_vec();
        bytes.extend(second.encode_to_vec());
        // Field 9 (varint) and field 10 (bytes), unknown to both.
        bytes.extend([9 << 3, 1, (10 << 3) | 2, 2, b'h', b'i']);
        let want = EvaluateFlagRequest::decode(bytes.as_slice()).unwrap();
        let got = EvaluateRequest::decode(bytes.into()).unwrap();
        assert_eq!((got.key.as_str(), got.r#type), ("b", 3));
        assert_eq!(want.key, "b");
        let raw = RawContext::new(got.context.as_deref());
        assert_eq!(raw.targeting_key(), Some("two"));
        assert_eq!(
            raw.json(),
            &Value::Object(struct_to_json(&want.context.unwrap()))
        );
        assert_eq!(raw.json()["x"], json!(1));
        assert_eq!(
            EvaluateRequest::decode(Bytes::new()).unwrap(),
            EvaluateRequest::default()
        );
        // Field 3 is Evaluate's `type`; flagd's requests have none, so it is skipped there.
        let third = vec![0x0a, 1, b'k', (3 << 3) | 2, 1, b'x'];
        assert!(EvaluateFlagRequest::decode(third.as_slice()).is_err());
        assert!(EvaluateRequest::decode(third.clone().into()).is_err());
        let flagd =
            brainstem_proto::flagd::evaluation::v2::ResolveBooleanRequest::decode(third.as_slice())
                .unwrap();
        let ours = <ResolveRequest as WireRequest>::decode(third.into()).unwrap();
        assert_eq!(
            (ours.0.key.as_str(), ours.0.context),
            (flagd.flag_key.as_str(), None)
        );
    }

    /// Whatever prost refuses in a request, this refuses too, context included.
    #[test]
    fn malformed_requests_are_refused_as_prost_refuses_them() {
        let good =
            request("k", Some(&json!({"s": "text", "n": [1, {"m": true}]})), 1).encode_to_vec();
        let mut bad: Vec<Vec<u8>> = (1..good.len()).map(|n| good[..n].to_vec()).collect();
        // Invalid UTF-8 in the key, and in a string deep in the context.
        bad.push(vec![0x0a, 1, 0xff]);
        let mut inner = good.clone();
        let at = inner.windows(4).position(|w| w == b"text").unwrap();
        inner[at] = 0xff;
        bad.push(inner);
        // A known field with the wrong wire type: the key as a varint, the context as a varint.
        bad.push(vec![0x08, 1]);
        bad.push(vec![0x10, 1]);
        // A Value's number as a varint instead of a double.
        bad.push(
            request("k", Some(&json!({"n": 1})), 0)
                .encode_to_vec()
                .iter()
                .map(|&b| if b == 0x11 { 0x10 } else { b })
                .collect(),
        );
        // Nesting deeper than the recursion limit.
        let mut deep = json!("bottom");
        for _ in 0..120 {
            deep = json!([deep]);
        }
        bad.push(request("k", Some(&json!({ "deep": deep })), 0).encode_to_vec());
        for bytes in bad {
            let prost = EvaluateFlagRequest::decode(bytes.as_slice());
            let ours = EvaluateRequest::decode(bytes.clone().into());
            // A prefix that happens to end on a field boundary is a valid (shorter) message.
            assert_eq!(
                prost.is_err(),
                ours.is_err(),
                "{bytes:?}: {prost:?} / {ours:?}"
            );
        }
        // The refusals above did include errors.
        assert!(EvaluateRequest::decode(vec![0x0a, 1, 0xff].into()).is_err());
    }
}
