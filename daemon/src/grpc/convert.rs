//! Conversions between protobuf well-known types and the daemon's plain values, one of each, for
//! every service.

use crate::error::FieldViolation;

/// Unix milliseconds (negative: before 1970) as a `Timestamp`.
pub fn timestamp_from_ms(unix_ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: unix_ms.div_euclid(1000),
        nanos: (unix_ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// Unsigned Unix milliseconds (store records, audit times) as a `Timestamp`.
pub fn timestamp_from_unix_ms(unix_ms: u64) -> prost_types::Timestamp {
    timestamp_from_ms(i64::try_from(unix_ms).unwrap_or(i64::MAX))
}

/// Unix seconds (token lifetimes) as a `Timestamp`.
pub fn timestamp_from_secs(unix_seconds: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: i64::try_from(unix_seconds).unwrap_or(i64::MAX),
        nanos: 0,
    }
}

/// The wall clock now.
pub fn timestamp_now() -> prost_types::Timestamp {
    timestamp_from_unix_ms(crate::store::unix_ms_now())
}

/// A request's `Timestamp` as Unix milliseconds (sub-millisecond nanos dropped); a violation naming
/// `field` when its nanos are outside `0..1e9` or it does not fit.
pub fn timestamp_to_ms(field: &str, ts: &prost_types::Timestamp) -> Result<i64, FieldViolation> {
    if !(0..1_000_000_000).contains(&ts.nanos) {
        return Err(FieldViolation::new(
            field,
            format!("nanos {} is outside 0..1e9", ts.nanos),
        ));
    }
    ts.seconds
        .checked_mul(1000)
        .and_then(|ms| ms.checked_add(i64::from(ts.nanos / 1_000_000)))
        .ok_or_else(|| FieldViolation::new(field, "is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_convert_both_ways() {
        let ts = prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 123_456_789,
        };
        assert_eq!(timestamp_to_ms("t", &ts), Ok(1_700_000_000_123));
        assert_eq!(
            timestamp_from_ms(1_700_000_000_123),
            prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 123_000_000
            }
        );
        assert_eq!(
            timestamp_from_ms(-1),
            prost_types::Timestamp {
                seconds: -1,
                nanos: 999_000_000
            }
        );
        assert_eq!(
            timestamp_from_unix_ms(1_500),
            prost_types::Timestamp {
                seconds: 1,
                nanos: 500_000_000
            }
        );
        assert_eq!(timestamp_from_secs(u64::MAX).seconds, i64::MAX);
        let bad = prost_types::Timestamp {
            seconds: 1,
            nanos: -1,
        };
        assert_eq!(timestamp_to_ms("since", &bad).unwrap_err().field, "since");
        let huge = prost_types::Timestamp {
            seconds: i64::MAX,
            nanos: 0,
        };
        assert!(timestamp_to_ms("t", &huge).is_err());
    }
}
