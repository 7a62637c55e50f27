//! `sem_ver` as flagd evaluates it: Go's `golang.org/x/mod/semver` rules. A version may carry a `v`
//! (or `V`) prefix, may be shortened to `1` or `1.2` (meaning `1.0.0`, `1.2.0`) when it has no
//! pre-release or build part, and compares by precedence (build metadata ignored). `^` matches the
//! major version, `~` the major and minor.

use std::cmp::Ordering;

/// A parsed version: numeric parts and pre-release identifiers (build metadata dropped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    major: u64,
    minor: u64,
    patch: u64,
    pre: Vec<String>,
}

impl Version {
    /// Parses `text`; `None` when it is not a valid semantic version.
    pub fn parse(text: &str) -> Option<Version> {
        let text = text
            .strip_prefix('v')
            .or_else(|| text.strip_prefix('V'))
            .unwrap_or(text);
        let (core, build) = match text.split_once('+') {
            Some((core, build)) => (core, Some(build)),
            None => (text, None),
        };
        let (core, pre) = match core.split_once('-') {
            Some((core, pre)) => (core, Some(pre)),
            None => (core, None),
        };
        if let Some(build) = build
            && !build
                .split('.')
                .all(|id| !id.is_empty() && id.bytes().all(is_ident_byte))
        {
            return None;
        }
        let parts: Vec<&str> = core.split('.').collect();
        if parts.is_empty() || parts.len() > 3 {
            return None;
        }
        // Shorthand (`1`, `1.2`) only without pre-release or build, as Go's semver.
        if parts.len() < 3 && (pre.is_some() || build.is_some()) {
            return None;
        }
        let mut numbers = [0u64; 3];
        for (i, part) in parts.iter().enumerate() {
            numbers[i] = numeric(part)?;
        }
        let pre = match pre {
            None => Vec::new(),
            Some(pre) => {
                let ids: Vec<String> = pre.split('.').map(str::to_owned).collect();
                for id in &ids {
                    if id.is_empty() || !id.bytes().all(is_ident_byte) {
                        return None;
                    }
                    if id.bytes().all(|b| b.is_ascii_digit()) && id.len() > 1 && id.starts_with('0')
                    {
                        return None;
                    }
                }
                ids
            }
        };
        Some(Version {
            major: numbers[0],
            minor: numbers[1],
            patch: numbers[2],
            pre,
        })
    }
}

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-'
}

fn numeric(part: &str) -> Option<u64> {
    if part.is_empty()
        || !part.bytes().all(|b| b.is_ascii_digit())
        || (part.len() > 1 && part.starts_with('0'))
    {
        return None;
    }
    part.parse().ok()
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.major, self.minor, self.patch)
            .cmp(&(other.major, other.minor, other.patch))
            .then_with(|| compare_pre(&self.pre, &other.pre))
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Pre-release precedence: none ranks above any; numeric identifiers compare as numbers and rank
/// below alphanumeric ones; a shorter list ranks below a longer one with the same prefix.
fn compare_pre(a: &[String], b: &[String]) -> Ordering {
    match (a.is_empty(), b.is_empty()) {
        (true, true) => return Ordering::Equal,
        (true, false) => return Ordering::Greater,
        (false, true) => return Ordering::Less,
        (false, false) => {}
    }
    for (x, y) in a.iter().zip(b) {
        let xn = x.bytes().all(|c| c.is_ascii_digit());
        let yn = y.bytes().all(|c| c.is_ascii_digit());
        let order = match (xn, yn) {
            (true, true) => x.len().cmp(&y.len()).then_with(|| x.cmp(y)),
            (true, false) => Ordering::Less,
            (false, true) => Ordering::Greater,
            (false, false) => x.cmp(y),
        };
        if order != Ordering::Equal {
            return order;
        }
    }
    a.len().cmp(&b.len())
}

/// The comparison operators `sem_ver` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SemVerOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    /// Same major version.
    Caret,
    /// Same major and minor version.
    Tilde,
}

impl SemVerOp {
    pub fn parse(text: &str) -> Option<SemVerOp> {
        Some(match text {
            "=" => SemVerOp::Eq,
            "!=" => SemVerOp::Ne,
            "<" => SemVerOp::Lt,
            "<=" => SemVerOp::Le,
            ">" => SemVerOp::Gt,
            ">=" => SemVerOp::Ge,
            "^" => SemVerOp::Caret,
            "~" => SemVerOp::Tilde,
            _ => return None,
        })
    }

    /// Whether `actual` stands in this relation to `target`.
    pub fn holds(self, actual: &Version, target: &Version) -> bool {
        let order = actual.cmp(target);
        match self {
            SemVerOp::Eq => order == Ordering::Equal,
            SemVerOp::Ne => order != Ordering::Equal,
            SemVerOp::Lt => order == Ordering::Less,
            SemVerOp::Le => order != Ordering::Greater,
            SemVerOp::Gt => order == Ordering::Greater,
            SemVerOp::Ge => order != Ordering::Less,
            SemVerOp::Caret => actual.major == target.major,
            SemVerOp::Tilde => actual.major == target.major && actual.minor == target.minor,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(actual: &str, op: &str, target: &str) -> bool {
        SemVerOp::parse(op).unwrap().holds(
            &Version::parse(actual).unwrap(),
            &Version::parse(target).unwrap(),
        )
    }

    #[test]
    fn compares_as_go_semver_does() {
        assert!(check("1.0.0", "=", "v1.0.0"));
        assert!(check("1", "=", "1.0.0"));
        assert!(check("1.1.5", ">", "1.1"));
        assert!(check("1.0.0+build", "=", "1.0.0+other"));
        assert!(check("1.0.0-alpha", "<", "1.0.0"));
        assert!(check("1.0.0-alpha.1", "<", "1.0.0-alpha.beta"));
        assert!(check("1.0.0-2", "<", "1.0.0-10"));
        assert!(check("1.0.0-rc.1", "<", "1.0.0-rc.1.1"));
        assert!(check("1.9.0", "^", "1.2.3"));
        assert!(!check("2.0.0", "^", "1.2.3"));
        assert!(check("1.2.9", "~", "1.2.0"));
        assert!(!check("1.3.0", "~", "1.2.3"));
        assert!(check("2.0.0", "!=", "2.0.1"));
        assert!(check("2.0.0", "<=", "2.0.0") && check("2.0.0", ">=", "2.0.0"));
    }

    #[test]
    fn refuses_what_go_semver_refuses() {
        for bad in [
            "",
            "v",
            "1.2.3.4",
            "01.2.3",
            "1.02.3",
            "1.2-beta",
            "1.2.3-",
            "1.2.3-01",
            "x.y.z",
            "1.2.3+",
            "1.2.3-a..b",
        ] {
            assert!(Version::parse(bad).is_none(), "{bad:?} parsed");
        }
        assert!(SemVerOp::parse("===").is_none());
    }
}
