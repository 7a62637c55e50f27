//! Value generators for rotation: `alphanumeric:N`, `hex:N`, `bytes:N` (N characters or bytes,
//! 1..=[`MAX_GENERATED`]), drawn from the system's random source without modulo bias.

use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::error::{FieldViolation, truncate_for_reply};

/// Largest N a generator may ask for.
pub const MAX_GENERATED: usize = 4096;

const ALPHANUMERIC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const HEX: &[u8] = b"0123456789abcdef";

/// A parsed generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generator {
    Alphanumeric(usize),
    Hex(usize),
    Bytes(usize),
}

impl Generator {
    /// Parses `kind:N`; the error names `field`.
    pub fn parse(text: &str, field: &str) -> Result<Generator, FieldViolation> {
        let bad = |why: &str| {
            FieldViolation::new(
                field,
                format!(
                    "{:?}: {why}; expected alphanumeric:N, hex:N or bytes:N with N in 1..={MAX_GENERATED}",
                    truncate_for_reply(text)
                ),
            )
        };
        let (kind, n) = text.split_once(':').ok_or_else(|| bad("no length"))?;
        let n: usize = n.parse().map_err(|_| bad("the length is not a number"))?;
        if n == 0 || n > MAX_GENERATED {
            return Err(bad("length out of range"));
        }
        match kind {
            "alphanumeric" => Ok(Generator::Alphanumeric(n)),
            "hex" => Ok(Generator::Hex(n)),
            "bytes" => Ok(Generator::Bytes(n)),
            _ => Err(bad("unknown kind")),
        }
    }

    /// A fresh value.
    pub fn generate(
        self,
        rng: &SystemRandom,
    ) -> Result<Zeroizing<Vec<u8>>, ring::error::Unspecified> {
        match self {
            Generator::Bytes(n) => {
                let mut out = Zeroizing::new(vec![0u8; n]);
                rng.fill(&mut out)?;
                Ok(out)
            }
            Generator::Alphanumeric(n) => pick(rng, ALPHANUMERIC, n),
            Generator::Hex(n) => pick(rng, HEX, n),
        }
    }
}

impl std::fmt::Display for Generator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Generator::Alphanumeric(n) => write!(f, "alphanumeric:{n}"),
            Generator::Hex(n) => write!(f, "hex:{n}"),
            Generator::Bytes(n) => write!(f, "bytes:{n}"),
        }
    }
}

/// `n` characters of `alphabet`, by rejection sampling (no bias towards its first letters).
fn pick(
    rng: &SystemRandom,
    alphabet: &[u8],
    n: usize,
) -> Result<Zeroizing<Vec<u8>>, ring::error::Unspecified> {
    let limit = 256 - (256 % alphabet.len());
    let mut out = Zeroizing::new(Vec::with_capacity(n));
    let mut pool = Zeroizing::new([0u8; 64]);
    while out.len() < n {
        rng.fill(&mut pool[..])?;
        for &b in pool.iter() {
            if (b as usize) < limit && out.len() < n {
                out.push(alphabet[b as usize % alphabet.len()]);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generators_parse_and_make_what_they_say() {
        let rng = SystemRandom::new();
        let g = Generator::parse("alphanumeric:32", "generator").unwrap();
        assert_eq!(g.to_string(), "alphanumeric:32");
        let v = g.generate(&rng).unwrap();
        assert_eq!(v.len(), 32);
        assert!(v.iter().all(|b| b.is_ascii_alphanumeric()));
        let h = Generator::parse("hex:40", "generator")
            .unwrap()
            .generate(&rng)
            .unwrap();
        assert_eq!(h.len(), 40);
        assert!(h.iter().all(|b| b.is_ascii_hexdigit()));
        let b = Generator::parse("bytes:16", "generator").unwrap();
        assert_eq!(b.generate(&rng).unwrap().len(), 16);
        assert_ne!(b.generate(&rng).unwrap(), b.generate(&rng).unwrap());
    }

    #[test]
    fn every_alphanumeric_character_turns_up() {
        let rng = SystemRandom::new();
        let v = Generator::Alphanumeric(4096).generate(&rng).unwrap();
        let distinct: std::collections::BTreeSet<u8> = v.iter().copied().collect();
        assert_eq!(distinct.len(), 62);
    }

    #[test]
    fn bad_generators_are_refused_with_the_field() {
        for text in [
            "",
            "hex",
            "hex:",
            "hex:0",
            "hex:4097",
            "hex:-1",
            "base32:8",
            "alphanumeric:x",
        ] {
            let err = Generator::parse(text, "generator").unwrap_err();
            assert_eq!(err.field, "generator");
            assert!(
                err.description.contains("expected alphanumeric:N"),
                "{text}"
            );
        }
    }
}
