//! Guardrails for web automation: the built-in rules an agent's browser actions pass before the
//! policy engine is asked (the gRPC service asks both; see `grpc::guardrails`).
//!
//! - `guardrail-domain-safelist`: navigation, clicks and form submissions only on safelisted
//!   domains (`docs.rs`, or `*.example.org` for it and its subdomains).
//! - `guardrail-click-rate`: clicks per principal and domain through a token bucket
//!   (`clicks_per_minute`, seed 10), refused with the wait until the next click.
//! - `guardrail-dangerous-field`: a form whose field names or values contain a dangerous word
//!   (`post`, `buy`, `delete`, …; whole words, so `postal_code` is fine) is refused.
//! - `guardrail-csrf-missing`: a form must carry a CSRF token field with a value.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::access::config::GuardrailsConfig;
use crate::access::ratelimit::{Buckets, Rate, Ticker, system_ticker};
use crate::error::FieldViolation;

pub const MAX_URL_LEN: usize = 2048;
pub const MAX_FIELDS: usize = 256;
pub const MAX_FIELD_NAME_LEN: usize = 256;
pub const MAX_FIELD_VALUE_LEN: usize = 8192;

pub const RULE_SAFELIST: &str = "guardrail-domain-safelist";
pub const RULE_CLICK_RATE: &str = "guardrail-click-rate";
pub const RULE_DANGEROUS: &str = "guardrail-dangerous-field";
pub const RULE_CSRF: &str = "guardrail-csrf-missing";

/// What the rules say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// Rules that refused (empty when allowed).
    pub reasons: Vec<String>,
    pub retry_after: Option<Duration>,
    /// The URL's host, lowercased.
    pub domain: String,
}

pub struct Guardrails {
    config: GuardrailsConfig,
    click_rate: Rate,
    clicks: Buckets<(String, String)>,
    clock: Arc<dyn Ticker>,
}

impl Guardrails {
    pub fn from_config(config: &GuardrailsConfig) -> Self {
        Self::with_clock(config, system_ticker())
    }

    /// [`Guardrails::from_config`] whose click buckets read time from `clock`.
    pub fn with_clock(config: &GuardrailsConfig, clock: Arc<dyn Ticker>) -> Self {
        Guardrails {
            config: config.clone(),
            click_rate: Rate::per_minute(config.clicks_per_minute, config.clicks_per_minute),
            clicks: Buckets::default(),
            clock,
        }
    }

    /// Now, by the click buckets' clock.
    pub fn now(&self) -> Instant {
        self.clock.now()
    }

    /// Is `host` on the safelist?
    pub fn safelisted(&self, host: &str) -> bool {
        self.config
            .allowed_domains
            .iter()
            .any(|pattern| match pattern.strip_prefix("*.") {
                Some(base) => {
                    host == base
                        || host
                            .strip_suffix(base)
                            .is_some_and(|sub| sub.ends_with('.'))
                }
                None => host == pattern,
            })
    }

    pub fn navigation(&self, url: &str) -> Result<Verdict, FieldViolation> {
        let domain = host_of("url", url)?;
        Ok(self.on_safelist(domain))
    }

    /// Takes a token from the (principal, domain) bucket when the domain is safelisted.
    pub fn click(
        &self,
        principal: &str,
        url: &str,
        now: Instant,
    ) -> Result<Verdict, FieldViolation> {
        let domain = host_of("url", url)?;
        let mut verdict = self.on_safelist(domain);
        if verdict.allowed {
            if let Err(wait) = self.clicks.take(
                (principal.to_owned(), verdict.domain.clone()),
                self.click_rate,
                now,
            ) {
                verdict.allowed = false;
                verdict.reasons.push(RULE_CLICK_RATE.to_owned());
                verdict.retry_after = Some(wait);
            }
        }
        Ok(verdict)
    }

    pub fn form(
        &self,
        url: &str,
        fields: &[(String, String)],
    ) -> Result<Verdict, Vec<FieldViolation>> {
        let mut violations = Vec::new();
        let domain = host_of("url", url).map_err(|v| violations.push(v));
        if fields.len() > MAX_FIELDS {
            violations.push(FieldViolation::new(
                "fields",
                format!("at most {MAX_FIELDS} fields"),
            ));
        }
        for (i, (name, value)) in fields.iter().enumerate() {
            if name.is_empty() || name.len() > MAX_FIELD_NAME_LEN {
                violations.push(FieldViolation::new(
                    format!("fields[{i}].name"),
                    format!("1 to {MAX_FIELD_NAME_LEN} bytes"),
                ));
            }
            if value.len() > MAX_FIELD_VALUE_LEN {
                violations.push(FieldViolation::new(
                    format!("fields[{i}].value"),
                    format!("at most {MAX_FIELD_VALUE_LEN} bytes"),
                ));
            }
        }
        let Ok(domain) = domain else {
            return Err(violations);
        };
        if !violations.is_empty() {
            return Err(violations);
        }
        let mut verdict = self.on_safelist(domain);
        let dangerous = fields.iter().any(|(name, value)| {
            words(name).chain(words(value)).any(|w| {
                self.config
                    .dangerous_fields
                    .iter()
                    .any(|d| d.eq_ignore_ascii_case(w))
            })
        });
        if dangerous {
            verdict.reasons.push(RULE_DANGEROUS.to_owned());
        }
        let has_csrf = fields.iter().any(|(name, value)| {
            !value.trim().is_empty()
                && self
                    .config
                    .csrf_fields
                    .iter()
                    .any(|c| c.eq_ignore_ascii_case(name))
        });
        if !has_csrf {
            verdict.reasons.push(RULE_CSRF.to_owned());
        }
        verdict.allowed = verdict.reasons.is_empty();
        Ok(verdict)
    }

    pub fn sweep(&self, now: Instant) {
        self.clicks.sweep(|_| Some(self.click_rate), now);
    }

    fn on_safelist(&self, domain: String) -> Verdict {
        let allowed = self.safelisted(&domain);
        Verdict {
            allowed,
            reasons: if allowed {
                Vec::new()
            } else {
                vec![RULE_SAFELIST.to_owned()]
            },
            retry_after: None,
            domain,
        }
    }
}

/// Words of a field name or value: runs of ASCII letters (so `submit_order` is `submit`, `order`).
fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !c.is_ascii_alphabetic())
        .filter(|w| !w.is_empty())
}

/// The lowercased host of an absolute http(s) URL.
pub fn host_of(field: &str, url: &str) -> Result<String, FieldViolation> {
    let bad = |why: &str| FieldViolation::new(field, why.to_owned());
    if url.is_empty() {
        return Err(bad("must not be empty"));
    }
    if url.len() > MAX_URL_LEN {
        return Err(bad("at most 2048 bytes"));
    }
    let uri: http::Uri = url.parse().map_err(|_| bad("not a valid absolute URL"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(bad("only http and https URLs")),
    }
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| bad("the URL has no host"))?;
    Ok(host.trim_end_matches('.').to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rails(domains: &[&str]) -> Guardrails {
        Guardrails::from_config(&GuardrailsConfig {
            allowed_domains: domains.iter().map(|d| (*d).to_owned()).collect(),
            ..GuardrailsConfig::default()
        })
    }

    fn fields(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn navigation_only_to_safelisted_domains() {
        let g = rails(&["docs.rs", "*.example.org"]);
        let ok = |url: &str| g.navigation(url).unwrap().allowed;
        assert!(ok("https://docs.rs/tokio"));
        assert!(ok("https://DOCS.rs./x"));
        assert!(ok("http://example.org/"));
        assert!(ok("https://a.b.example.org/path?q=1"));
        assert!(!ok("https://evil-example.org/"));
        assert!(!ok("https://docs.rs.evil.com/"));
        assert!(!ok("https://sub.docs.rs/"));
        let refused = g.navigation("https://evil.com").unwrap();
        assert_eq!(refused.reasons, [RULE_SAFELIST]);
        assert_eq!(refused.domain, "evil.com");
        for bad in [
            "",
            "docs.rs",
            "ftp://docs.rs/",
            "/relative",
            "https://",
            "not a url",
        ] {
            assert_eq!(g.navigation(bad).unwrap_err().field, "url", "{bad:?}");
        }
        assert!(
            rails(&[])
                .navigation("https://docs.rs")
                .map(|v| !v.allowed)
                .unwrap()
        );
    }

    #[test]
    fn clicks_are_rate_limited_per_principal_and_domain() {
        let g = rails(&["docs.rs", "example.org"]);
        let t0 = Instant::now();
        for _ in 0..10 {
            assert!(g.click("p", "https://docs.rs/a", t0).unwrap().allowed);
        }
        let refused = g.click("p", "https://docs.rs/b", t0).unwrap();
        assert!(!refused.allowed);
        assert_eq!(refused.reasons, [RULE_CLICK_RATE]);
        let wait = refused.retry_after.unwrap();
        assert!(
            wait > Duration::from_millis(5900) && wait <= Duration::from_secs(6),
            "{wait:?}"
        );
        assert!(
            g.click("q", "https://docs.rs/a", t0).unwrap().allowed,
            "other principal"
        );
        assert!(
            g.click("p", "https://example.org/", t0).unwrap().allowed,
            "other domain"
        );
        assert!(
            g.click("p", "https://docs.rs/", t0 + Duration::from_secs(6))
                .unwrap()
                .allowed
        );
        // A click off the safelist is refused without spending a token.
        let off = g.click("p", "https://evil.com/", t0).unwrap();
        assert_eq!((off.allowed, off.retry_after), (false, None));
    }

    #[test]
    fn forms_need_csrf_and_no_dangerous_fields() {
        let g = rails(&["shop.example"]);
        let url = "https://shop.example/form";
        let verdict = |f: &[(&str, &str)]| g.form(url, &fields(f)).unwrap();
        let ok = verdict(&[
            ("q", "rust"),
            ("postal_code", "1000"),
            ("csrf_token", "abc"),
        ]);
        assert!(ok.allowed, "{ok:?}");
        let buy = verdict(&[("action", "Buy now"), ("csrf_token", "abc")]);
        assert_eq!(buy.reasons, [RULE_DANGEROUS]);
        let delete = verdict(&[("delete_account", "1"), ("_csrf", "abc")]);
        assert_eq!(delete.reasons, [RULE_DANGEROUS]);
        let no_csrf = verdict(&[("q", "rust")]);
        assert_eq!(no_csrf.reasons, [RULE_CSRF]);
        let empty_csrf = verdict(&[("q", "rust"), ("csrf_token", "  ")]);
        assert_eq!(empty_csrf.reasons, [RULE_CSRF]);
        let both = g
            .form("https://elsewhere.example/", &fields(&[("checkout", "1")]))
            .unwrap();
        assert_eq!(both.reasons, [RULE_SAFELIST, RULE_DANGEROUS, RULE_CSRF]);

        let many = vec![("a".to_owned(), "b".to_owned()); MAX_FIELDS + 1];
        let err = g.form(url, &many).unwrap_err();
        assert_eq!(err[0].field, "fields");
        let err = g
            .form(
                "nope",
                &fields(&[("", "x"), ("n", &"v".repeat(MAX_FIELD_VALUE_LEN + 1))]),
            )
            .unwrap_err();
        let names: Vec<_> = err.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(names, ["url", "fields[0].name", "fields[1].value"]);
    }
}
