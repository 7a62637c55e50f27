//! `Secrets.Get` through the hand-written codec ([`crate::grpc::wire`]): the request read by the
//! generated type, the reply written in three slices straight from the opened value, which is
//! wiped once written. Through the generated types the value was a plain `Vec`, freed unwiped.
//! Writing the reply costs 660 instructions less than prost's byte-at-a-time varints
//! (docs/PERFORMANCE.md).

use brainstem_proto::v1::GetSecretRequest;
use bytes::{BufMut, Bytes};
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint};
use zeroize::Zeroizing;

use crate::grpc::wire::{DecodeError, WireReply, WireRequest};

impl WireRequest for GetSecretRequest {
    fn decode(buf: Bytes) -> Result<Self, DecodeError> {
        <GetSecretRequest as Message>::decode(buf).map_err(DecodeError::from)
    }
}

/// `GetSecretReply` as written: `value` (field 1), `version` (2), `created_at` (3, a
/// `google.protobuf.Timestamp`: `seconds` 1, `nanos` 2); byte for byte what prost writes.
pub struct GetReply {
    pub value: Zeroizing<Vec<u8>>,
    pub version: u64,
    pub created_at: prost_types::Timestamp,
}

/// A varint is at most 10 bytes; the fields after the value are at most 35.
const TAIL_MAX: usize = 2 * (1 + 10) + 1 + 1 + 1 + 10;

/// What `write` puts into a stack buffer of `N` bytes (sized for the most it can write), and how
/// many bytes that is: the reply's small fields go to tonic's buffer in one slice, not one call
/// per varint byte.
fn staged<const N: usize>(write: impl FnOnce(&mut &mut [u8])) -> ([u8; N], usize) {
    let mut bytes = [0u8; N];
    let mut rest: &mut [u8] = &mut bytes;
    write(&mut rest);
    let left = rest.len();
    (bytes, N - left)
}

fn varint_len(v: u64) -> usize {
    prost::encoding::encoded_len_varint(v)
}

impl GetReply {
    /// `seconds` and `nanos` as prost writes them: only when non-zero, negative ones as 10 bytes.
    fn timestamp_len(&self) -> usize {
        let ts = &self.created_at;
        let seconds = if ts.seconds != 0 {
            1 + varint_len(ts.seconds as u64)
        } else {
            0
        };
        let nanos = if ts.nanos != 0 {
            1 + varint_len(i64::from(ts.nanos) as u64)
        } else {
            0
        };
        seconds + nanos
    }
}

impl WireReply for GetReply {
    fn encoded_len(&self) -> usize {
        let value = if self.value.is_empty() {
            0
        } else {
            1 + varint_len(self.value.len() as u64) + self.value.len()
        };
        let version = if self.version != 0 {
            1 + varint_len(self.version)
        } else {
            0
        };
        let ts = self.timestamp_len();
        value + version + 1 + varint_len(ts as u64) + ts
    }

    fn encode(&self, buf: &mut impl BufMut) {
        if !self.value.is_empty() {
            let (head, len) = staged::<11>(|w| {
                encode_key(1, WireType::LengthDelimited, w);
                encode_varint(self.value.len() as u64, w);
            });
            buf.put_slice(&head[..len]);
            buf.put_slice(&self.value);
        }
        let (tail, len) = staged::<TAIL_MAX>(|w| {
            if self.version != 0 {
                encode_key(2, WireType::Varint, w);
                encode_varint(self.version, w);
            }
            encode_key(3, WireType::LengthDelimited, w);
            encode_varint(self.timestamp_len() as u64, w);
            if self.created_at.seconds != 0 {
                encode_key(1, WireType::Varint, w);
                encode_varint(self.created_at.seconds as u64, w);
            }
            if self.created_at.nanos != 0 {
                encode_key(2, WireType::Varint, w);
                encode_varint(i64::from(self.created_at.nanos) as u64, w);
            }
        });
        buf.put_slice(&tail[..len]);
    }
}

#[cfg(test)]
mod tests {
    use brainstem_proto::v1::GetSecretReply;

    use super::*;
    use crate::grpc::convert::timestamp_from_unix_ms;

    fn written(reply: &GetReply) -> Vec<u8> {
        let mut out = Vec::new();
        reply.encode(&mut out);
        assert_eq!(out.len(), reply.encoded_len());
        out
    }

    #[test]
    fn the_reply_is_byte_for_byte_what_prost_writes() {
        let lengths = [0usize, 1, 32, 127, 128, 300, 16_383, 16_384, 70_000];
        let versions = [0u64, 1, 127, 128, 300, 1 << 35, u64::MAX];
        let times = [
            prost_types::Timestamp::default(),
            timestamp_from_unix_ms(999),
            timestamp_from_unix_ms(1_000),
            timestamp_from_unix_ms(1_800_000_000_123),
            timestamp_from_unix_ms(u64::MAX),
            prost_types::Timestamp {
                seconds: -1,
                nanos: -5,
            },
            prost_types::Timestamp {
                seconds: i64::MIN,
                nanos: i32::MAX,
            },
        ];
        for len in lengths {
            let value: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            for version in versions {
                for created_at in times {
                    let expected = GetSecretReply {
                        value: value.clone(),
                        version,
                        created_at: Some(created_at),
                    }
                    .encode_to_vec();
                    let reply = GetReply {
                        value: Zeroizing::new(value.clone()),
                        version,
                        created_at,
                    };
                    assert_eq!(
                        written(&reply),
                        expected,
                        "{len} bytes, version {version}, {created_at:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_request_reads_as_the_generated_type_reads_it() {
        for request in [
            GetSecretRequest::default(),
            GetSecretRequest {
                path: "/agents/web/db".into(),
                version: Some(3),
            },
            GetSecretRequest {
                path: "ünïcødé".into(),
                version: Some(0),
            },
        ] {
            let bytes = Bytes::from(request.encode_to_vec());
            assert_eq!(
                <GetSecretRequest as WireRequest>::decode(bytes).unwrap(),
                request
            );
        }
        // Not UTF-8 in the path, and a truncated field: refused with prost's own reasons.
        let bad = <GetSecretRequest as WireRequest>::decode(Bytes::from_static(&[0x0a, 1, 0xff]));
        assert!(bad.unwrap_err().to_string().contains("UTF-8"));
        let short = <GetSecretRequest as WireRequest>::decode(Bytes::from_static(&[0x0a, 5, b'a']));
        assert!(short.unwrap_err().to_string().contains("buffer underflow"));
    }
}
