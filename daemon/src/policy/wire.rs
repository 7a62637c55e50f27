//! `Policy.Check` through the hand-written codec ([`crate::grpc::wire`]): the request's strings
//! are read where they lie in the request's bytes and lent to the decision (no string of the
//! request is copied or allocated on the way to the cached answer and the audit record), and the
//! reply is written straight from the decision, its id included (`DecisionId`, held inline).
//! Through the generated types every Check allocated the request's strings, the principal copied
//! from the caller, and the decision id (docs/PERFORMANCE.md).

use std::ops::Range;

use bytes::{Buf, BufMut, Bytes};
use prost::encoding::{
    DecodeContext, WireType, check_wire_type, decode_key, encode_key, skip_field,
};

use crate::access::Decided;
use crate::grpc::wire::{
    DecodeError, WireReply, WireRequest, encode_bytes, encode_str, field_len,
    length_delimited_slice,
};
use crate::policy::api::CheckParts;

/// A `CheckRequest` as read: the message's bytes, where its strings lie in them, and its context
/// (a `google.protobuf.Struct`, read by prost when present). The strings are checked to be UTF-8
/// once, when they are lent ([`CheckQuestion::parts`]), not also while the message is read.
#[derive(Debug, Clone, Default)]
pub struct CheckQuestion {
    bytes: Bytes,
    principal: Range<usize>,
    action: Range<usize>,
    resource: Range<usize>,
    correlation_id: Range<usize>,
    context: Option<prost_types::Struct>,
}

/// The string at `range` of `bytes`, refused as prost refuses a string that is not UTF-8.
fn text_at<'b>(bytes: &'b [u8], range: &Range<usize>) -> Result<&'b str, DecodeError> {
    std::str::from_utf8(&bytes[range.clone()])
        .map_err(|_| DecodeError::new("invalid string value: data is not UTF-8 encoded"))
}

impl CheckQuestion {
    fn text(&self, range: &Range<usize>) -> Result<&str, DecodeError> {
        text_at(&self.bytes, range)
    }

    /// The request's fields, borrowed; a string that is not UTF-8 is refused as prost refuses it.
    pub fn parts(&self) -> Result<CheckParts<'_>, DecodeError> {
        Ok(CheckParts {
            principal: self.text(&self.principal)?,
            action: self.text(&self.action)?,
            resource: self.text(&self.resource)?,
            context: self.context.as_ref(),
            correlation_id: self.text(&self.correlation_id)?,
        })
    }

    fn strings(&self) -> [&Range<usize>; 4] {
        [
            &self.principal,
            &self.action,
            &self.resource,
            &self.correlation_id,
        ]
    }

    /// Reads the fields of `bytes` into `self`, each string's place only.
    fn read(&mut self, bytes: &Bytes) -> Result<(), DecodeError> {
        let mut rest: &[u8] = bytes;
        while rest.has_remaining() {
            let (tag, wire_type) = decode_key(&mut rest)?;
            let range = match tag {
                1 => &mut self.principal,
                2 => &mut self.action,
                3 => &mut self.resource,
                5 => &mut self.correlation_id,
                4 => {
                    let context = self.context.get_or_insert_default();
                    prost::encoding::message::merge(
                        wire_type,
                        context,
                        &mut rest,
                        DecodeContext::default(),
                    )?;
                    continue;
                }
                _ => {
                    skip_field(wire_type, tag, &mut rest, DecodeContext::default())?;
                    continue;
                }
            };
            check_wire_type(WireType::LengthDelimited, wire_type)?;
            let field = length_delimited_slice(&mut rest)?;
            // A string given again replaces the first, which prost has checked all the same.
            if range.end > range.start {
                text_at(bytes, range)?;
            }
            let end = bytes.len() - rest.len();
            *range = end - field.len()..end;
        }
        Ok(())
    }
}

impl WireRequest for CheckQuestion {
    /// As prost reads `CheckRequest`: fields in any order, the last of a repeated string wins,
    /// repeated contexts merge, unknown fields are skipped, and the errors are prost's own (for a
    /// message that also breaks off after a string that is not UTF-8, the string's, as prost
    /// meets it first; otherwise [`CheckQuestion::parts`] finds it).
    fn decode(bytes: Bytes) -> Result<Self, DecodeError> {
        let mut question = CheckQuestion::default();
        if let Err(err) = question.read(&bytes) {
            // A string read before the break that is not UTF-8 is what prost reports.
            for range in question.strings() {
                text_at(&bytes, range)?;
            }
            return Err(err);
        }
        question.bytes = bytes;
        Ok(question)
    }
}

/// `CheckReply` as written from a decision: `allowed` (1), `reasons` (2), `decision_id` (3),
/// `errors` (4), `advisory` (5); byte for byte what prost writes. Its length is counted once, when
/// it is made (the codec reserves it, then the reply is staged by it).
pub struct CheckAnswer {
    decided: Decided,
    len: usize,
}

impl CheckAnswer {
    pub fn new(decided: Decided) -> CheckAnswer {
        let d = &decided;
        let id = d.decision_id.as_bytes();
        let strings = |list: &[String]| list.iter().map(|s| field_len(s.len())).sum::<usize>();
        let len = 2 * usize::from(d.allowed)
            + strings(&d.reasons)
            + if id.is_empty() {
                0
            } else {
                field_len(id.len())
            }
            + strings(&d.errors)
            + 2 * usize::from(d.advisory);
        CheckAnswer { decided, len }
    }
}

impl WireReply for CheckAnswer {
    fn encoded_len(&self) -> usize {
        self.len
    }

    /// A reply of up to [`STAGED`] bytes (the usual one: a reason or two and the id) is written
    /// on the stack and handed to tonic's buffer in one slice, not one call per key and length.
    fn encode(&self, buf: &mut impl BufMut) {
        if self.len <= STAGED {
            let mut staged = [0u8; STAGED];
            self.write(&mut &mut staged[..]);
            buf.put_slice(&staged[..self.len]);
        } else {
            self.write(buf);
        }
    }
}

const STAGED: usize = 256;

impl CheckAnswer {
    fn write(&self, buf: &mut impl BufMut) {
        let d = &self.decided;
        if d.allowed {
            encode_key(1, WireType::Varint, buf);
            buf.put_u8(1);
        }
        for reason in d.reasons.iter() {
            encode_str(2, reason, buf);
        }
        let id = d.decision_id.as_bytes();
        if !id.is_empty() {
            encode_bytes(3, id, buf);
        }
        for error in &d.errors {
            encode_str(4, error, buf);
        }
        if d.advisory {
            encode_key(5, WireType::Varint, buf);
            buf.put_u8(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use brainstem_proto::v1::{CheckReply, CheckRequest};
    use prost::Message;

    use super::*;
    use crate::access::Reasons;
    use crate::access::audit::DecisionId;

    fn owned(parts: CheckParts<'_>) -> CheckRequest {
        CheckRequest {
            principal: parts.principal.to_owned(),
            action: parts.action.to_owned(),
            resource: parts.resource.to_owned(),
            context: parts.context.cloned(),
            correlation_id: parts.correlation_id.to_owned(),
        }
    }

    fn read(bytes: Vec<u8>) -> Result<CheckRequest, String> {
        CheckQuestion::decode(Bytes::from(bytes))
            .and_then(|q| q.parts().map(owned))
            .map_err(|e| e.to_string())
    }

    fn context() -> prost_types::Struct {
        brainstem_proto::json::json_to_struct(
            serde_json::json!({"n": 3, "tags": ["a", "b"], "inner": {"ok": true}})
                .as_object()
                .unwrap(),
        )
    }

    #[test]
    fn the_request_reads_as_the_generated_type_reads_it() {
        let long = "r".repeat(300);
        for request in [
            CheckRequest::default(),
            CheckRequest {
                principal: "spiffe://h/agent".into(),
                action: "web.read".into(),
                resource: long.clone(),
                context: Some(context()),
                correlation_id: "c-1".into(),
            },
            CheckRequest {
                action: "fs.write".into(),
                resource: "/tmp/ünïcødé".into(),
                context: Some(prost_types::Struct::default()),
                ..CheckRequest::default()
            },
        ] {
            assert_eq!(read(request.encode_to_vec()).unwrap(), request);
        }

        // Fields out of order, a string given twice (the last wins), the context given in two
        // pieces (merged), an unknown field of each wire type: as prost reads them.
        let mut bytes = CheckRequest {
            correlation_id: "first".into(),
            resource: "res".into(),
            ..CheckRequest::default()
        }
        .encode_to_vec();
        bytes.extend([0x2a, 6, b's', b'e', b'c', b'o', b'n', b'd']);
        bytes.extend([0x30, 0x96, 0x01]); // field 6, varint
        bytes.extend([0x3d, 1, 2, 3, 4]); // field 7, fixed32
        bytes.extend([0x41, 1, 2, 3, 4, 5, 6, 7, 8]); // field 8, fixed64
        bytes.extend([0x4a, 2, b'x', b'y']); // field 9, bytes
        let first = CheckRequest {
            context: Some(brainstem_proto::json::json_to_struct(
                serde_json::json!({"a": 1}).as_object().unwrap(),
            )),
            ..CheckRequest::default()
        };
        let second = CheckRequest {
            principal: "p".into(),
            context: Some(brainstem_proto::json::json_to_struct(
                serde_json::json!({"b": "two"}).as_object().unwrap(),
            )),
            ..CheckRequest::default()
        };
        bytes.extend(first.encode_to_vec());
        bytes.extend(second.encode_to_vec());
        let expected = CheckRequest::decode(&bytes[..]).unwrap();
        assert_eq!(expected.correlation_id, "second");
        assert_eq!(expected.context.as_ref().unwrap().fields.len(), 2);
        assert_eq!(read(bytes).unwrap(), expected);
    }

    /// What prost refuses is refused, with prost's reasons.
    #[test]
    fn a_request_prost_refuses_is_refused_alike() {
        let cases: [&[u8]; 9] = [
            &[0x0a, 2, 0xff, 0xfe],          // principal not UTF-8
            &[0x0a, 1, 0xff, 0x0a, 1, b'a'], // given twice, the first not UTF-8
            &[0x12, 1, 0xff, 0x1a, 5, b'a'], // not UTF-8, then a field cut short
            &[0x12, 1, b'a', 0x1a, 5, b'a'], // a field cut short after a good string
            &[0x12, 5, b'a'],                // action shorter than its length
            &[0x08, 1],                      // principal as a varint
            &[0x22, 3, 0x0a, 9, 0],          // context truncated inside
            &[0x0a],                         // a key and nothing else
            &[0x2a, 0xff, 0xff, 0xff, 0xff], // a length that never ends
        ];
        for bytes in cases {
            let ours = read(bytes.to_vec()).unwrap_err();
            let prost = CheckRequest::decode(bytes).unwrap_err().to_string();
            let reason = |s: &str| s.rsplit(": ").next().unwrap_or_default().to_owned();
            assert_eq!(reason(&ours), reason(&prost), "{bytes:?}: {ours} / {prost}");
        }
    }

    fn decided(allowed: bool, reasons: &[&str], errors: &[&str], advisory: bool) -> Decided {
        Decided {
            allowed,
            reasons: Reasons::Owned(reasons.iter().map(|s| s.to_string()).collect()),
            errors: errors.iter().map(|s| s.to_string()).collect(),
            decision_id: DecisionId::for_tests("0123abcd00000000002a"),
            advisory,
        }
    }

    #[test]
    fn the_reply_is_byte_for_byte_what_prost_writes() {
        let long = "e".repeat(200);
        for d in [
            decided(false, &[], &[], false),
            decided(true, &["allow-reads"], &[], false),
            decided(true, &["dry-run-would-deny", "no-posts"], &[], true),
            decided(false, &["a", "", "c"], &["broken", &long], false),
            decided(true, &[&long, &long], &[], true),
        ] {
            let expected = CheckReply {
                allowed: d.allowed,
                reasons: d.reasons.to_vec(),
                decision_id: d.decision_id.to_string(),
                errors: d.errors.clone(),
                advisory: d.advisory,
            }
            .encode_to_vec();
            let answer = CheckAnswer::new(d);
            let mut written = Vec::new();
            answer.encode(&mut written);
            assert_eq!(written, expected);
            assert_eq!(answer.encoded_len(), expected.len());
        }
    }
}
