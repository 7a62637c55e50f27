//! Input checks. Every problem is reported (not just the first), each naming its request field the way
//! the API spells it (`episode.embedding`, `episodes[3].text`, `k`).

use super::{
    Filter, MAX_FUTURE_MS, MAX_KIND_BYTES, MAX_METADATA_ENTRIES, MAX_METADATA_KEY_BYTES,
    MAX_METADATA_VALUE_BYTES, MAX_SOURCE_BYTES, NewEpisode, Settings, truncate,
};
use crate::error::FieldViolation;

fn push(out: &mut Vec<FieldViolation>, field: String, description: impl Into<String>) {
    out.push(FieldViolation::new(field, description));
}

pub fn new_episode(
    prefix: &str,
    episode: &NewEpisode,
    settings: &Settings,
    now_ms: i64,
    out: &mut Vec<FieldViolation>,
) {
    let field = |name: &str| format!("{prefix}.{name}");
    if !episode.id.is_empty() {
        push(
            out,
            field("id"),
            "ids are assigned by the buffer; leave it empty",
        );
    }
    if episode.text.trim().is_empty() {
        push(out, field("text"), "must not be empty");
    } else if episode.text.len() > settings.max_text_bytes {
        push(
            out,
            field("text"),
            format!(
                "{} bytes is more than the maximum of {}",
                episode.text.len(),
                settings.max_text_bytes
            ),
        );
    }
    if episode.source.trim().is_empty() {
        push(out, field("source"), "must not be empty");
    } else if episode.source.len() > MAX_SOURCE_BYTES {
        push(
            out,
            field("source"),
            format!("more than {MAX_SOURCE_BYTES} bytes"),
        );
    }
    if episode.kind.len() > MAX_KIND_BYTES {
        push(
            out,
            field("kind"),
            format!("more than {MAX_KIND_BYTES} bytes"),
        );
    }
    embedding(&field("embedding"), &episode.embedding, settings.dim, out);
    if let Some(importance) = episode.importance {
        if !importance.is_finite() || !(0.0..=1.0).contains(&importance) {
            push(
                out,
                field("importance"),
                format!("{importance} is not in [0, 1]"),
            );
        }
    }
    if let Some(ts) = episode.timestamp_ms {
        if ts < 0 {
            push(out, field("timestamp"), "must not be before 1970");
        } else if ts > now_ms.saturating_add(MAX_FUTURE_MS) {
            push(
                out,
                field("timestamp"),
                "is more than an hour in the future",
            );
        }
    }
    if episode.metadata.len() > MAX_METADATA_ENTRIES {
        push(
            out,
            field("metadata"),
            format!(
                "{} entries is more than the maximum of {MAX_METADATA_ENTRIES}",
                episode.metadata.len()
            ),
        );
    }
    for (key, value) in &episode.metadata {
        if key.is_empty() || key.len() > MAX_METADATA_KEY_BYTES {
            push(
                out,
                field("metadata"),
                format!(
                    "key {:?} must be 1 to {MAX_METADATA_KEY_BYTES} bytes",
                    truncate(key)
                ),
            );
        }
        if value.len() > MAX_METADATA_VALUE_BYTES {
            push(
                out,
                format!("{prefix}.metadata[{}]", truncate(key)),
                format!("value is more than {MAX_METADATA_VALUE_BYTES} bytes"),
            );
        }
    }
}

pub fn embedding(field: &str, values: &[f32], dim: usize, out: &mut Vec<FieldViolation>) {
    if values.len() != dim {
        push(
            out,
            field.to_owned(),
            format!(
                "has {} values; embeddings here have {dim} dimensions",
                values.len()
            ),
        );
        return;
    }
    if let Some((i, bad)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        push(
            out,
            field.to_owned(),
            format!("value [{i}] is {bad}; every value must be finite"),
        );
        return;
    }
    if values.iter().all(|v| *v == 0.0) {
        push(
            out,
            field.to_owned(),
            "is all zeros; cosine similarity needs a direction",
        );
    }
}

pub fn k(field: &str, k: u32, max: usize, out: &mut Vec<FieldViolation>) {
    if k == 0 || k as usize > max {
        push(
            out,
            field.to_owned(),
            format!("{k} is out of range 1..={max}"),
        );
    }
}

pub fn filter(prefix: &str, filter: &Filter, out: &mut Vec<FieldViolation>) {
    if let (Some(since), Some(until)) = (filter.since_ms, filter.until_ms) {
        if since >= until {
            push(out, format!("{prefix}.until"), "must be after filter.since");
        }
    }
    if filter
        .source
        .as_ref()
        .is_some_and(|s| s.len() > MAX_SOURCE_BYTES)
    {
        push(
            out,
            format!("{prefix}.source"),
            format!("more than {MAX_SOURCE_BYTES} bytes"),
        );
    }
    if filter
        .kind
        .as_ref()
        .is_some_and(|s| s.len() > MAX_KIND_BYTES)
    {
        push(
            out,
            format!("{prefix}.kind"),
            format!("more than {MAX_KIND_BYTES} bytes"),
        );
    }
}
