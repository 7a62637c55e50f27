//! `brainstemctl audit …`: tail (and follow) and export over `Audit.Query`; verify reads the
//! segment files themselves.
//!
//! `verify` is deliberately an independent reader of the on-disk format documented in
//! docs/AUDIT.md (it shares no code with the daemon, which it must not link): it walks every
//! segment, recomputes each frame's SHA-256 chain hash, and reports the first broken link, gap in
//! sequence numbers, or truncated tail. Exit 0 intact, 1 damaged.

use std::path::{Path, PathBuf};
use std::time::Duration;

use brainstem_client::v1::AuditQueryRequest;
use brainstem_client::{ConnectOptions, exit};
use clap::Subcommand;
use serde_json::json;

use super::{CliError, Output, print, rfc3339};

#[derive(Subcommand)]
pub enum AuditCommand {
    /// The newest records, oldest first; --follow keeps printing new ones (needs audit.read).
    Tail {
        #[arg(long, short = 'n', default_value_t = 20)]
        lines: u32,
        #[arg(long, short)]
        follow: bool,
        #[command(flatten)]
        filter: Filter,
    },
    /// Every record since a time, one JSON object per line, for a SIEM (needs audit.read).
    Export {
        /// RFC 3339 time (2026-01-31T00:00:00Z) or an age: 90s, 15m, 24h, 7d.
        #[arg(long)]
        since: String,
        /// RFC 3339 time or an age; default: now (everything up to the end of the log).
        #[arg(long)]
        until: Option<String>,
        #[command(flatten)]
        filter: Filter,
    },
    /// Check the log's hash chain on disk: exit 0 intact, 1 damaged (first broken link, gap,
    /// truncated tail). Reads the files; run it on the daemon's host.
    Verify {
        /// The audit directory. Default: <state-dir>/audit.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
pub struct Filter {
    #[arg(long, default_value = "")]
    principal: String,
    /// An action or family (web matches web.post).
    #[arg(long, default_value = "")]
    action: String,
    /// policy, guardrail, access, token, admin, secret or registry.
    #[arg(long, default_value = "")]
    kind: String,
    #[arg(long)]
    denied: bool,
    /// Only one call's records: the x-request-id it sent or was given (its replies echo it).
    #[arg(long, default_value = "")]
    correlation_id: String,
}

impl Filter {
    fn request(&self) -> AuditQueryRequest {
        AuditQueryRequest {
            principal: self.principal.clone(),
            action: self.action.clone(),
            kind: self.kind.clone(),
            only_denied: self.denied,
            correlation_id: self.correlation_id.clone(),
            ..Default::default()
        }
    }
}

pub async fn audit(
    options: &ConnectOptions,
    state_dir: &Path,
    output: Output,
    command: &AuditCommand,
) -> Result<u8, CliError> {
    match command {
        AuditCommand::Tail {
            lines,
            follow,
            filter,
        } => tail(options, output, *lines, *follow, filter.request()).await,
        AuditCommand::Export {
            since,
            until,
            filter,
        } => {
            let now = time::OffsetDateTime::now_utc();
            let since =
                parse_time(since, now).map_err(|e| CliError::Local(format!("--since: {e}")))?;
            let until = until
                .as_deref()
                .map(|u| parse_time(u, now))
                .transpose()
                .map_err(|e| CliError::Local(format!("--until: {e}")))?;
            export(options, since, until, filter.request()).await
        }
        AuditCommand::Verify { dir } => {
            let dir = dir.clone().unwrap_or_else(|| state_dir.join("audit"));
            let report =
                verify(&dir).map_err(|e| CliError::Local(format!("{}: {e}", dir.display())))?;
            print(output, report.human(&dir), report.json());
            Ok(if report.problems.is_empty() {
                exit::OK
            } else {
                exit::NEGATIVE
            })
        }
    }
}

async fn tail(
    options: &ConnectOptions,
    output: Output,
    lines: u32,
    follow: bool,
    filter: AuditQueryRequest,
) -> Result<u8, CliError> {
    let mut client = options.connect().await?;
    // The last N, newest first, then printed oldest first.
    let newest = client
        .audit
        .query(AuditQueryRequest {
            newest_first: true,
            limit: lines.clamp(1, 1000),
            ..filter.clone()
        })
        .await?
        .into_inner();
    let mut after = newest.records.first().map_or(0, |r| r.seq);
    for record in newest.records.iter().rev() {
        print_record(output, record);
    }
    if after == 0 {
        after = newest.next_after.saturating_sub(1);
    }
    if !follow {
        return Ok(exit::OK);
    }
    loop {
        let page = client
            .audit
            .query(AuditQueryRequest {
                after,
                limit: 1000,
                ..filter.clone()
            })
            .await?
            .into_inner();
        for record in &page.records {
            print_record(output, record);
        }
        if page.next_after > after {
            after = page.next_after;
        } else {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

async fn export(
    options: &ConnectOptions,
    since: time::OffsetDateTime,
    until: Option<time::OffsetDateTime>,
    filter: AuditQueryRequest,
) -> Result<u8, CliError> {
    let mut client = options.connect().await?;
    let timestamp = |t: time::OffsetDateTime| prost_types::Timestamp {
        seconds: t.unix_timestamp(),
        nanos: t.nanosecond() as i32,
    };
    let mut after = 0;
    loop {
        let page = client
            .audit
            .query(AuditQueryRequest {
                after,
                limit: 1000,
                since: Some(timestamp(since)),
                until: until.map(timestamp),
                ..filter.clone()
            })
            .await?
            .into_inner();
        for record in &page.records {
            println!("{}", record_json(record));
        }
        // The cursor moves over every record scanned, matching or not; no move: the end.
        if page.next_after <= after {
            return Ok(exit::OK);
        }
        after = page.next_after;
    }
}

/// `2026-01-31T00:00:00Z`, or an age before `now`: `90s`, `15m`, `24h`, `7d`.
fn parse_time(text: &str, now: time::OffsetDateTime) -> Result<time::OffsetDateTime, String> {
    if let Ok(t) = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
    {
        return Ok(t);
    }
    let unit = text.chars().last().unwrap_or(' ');
    let seconds = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => 0,
    };
    let n = text[..text.len() - unit.len_utf8().min(text.len())]
        .parse::<i64>()
        .ok()
        .filter(|n| *n >= 0 && seconds > 0);
    match n {
        Some(n) => Ok(now - time::Duration::seconds(n.saturating_mul(seconds))),
        None => Err(format!(
            "{text:?} is neither an RFC 3339 time nor an age like 90s, 15m, 24h, 7d"
        )),
    }
}

fn record_json(r: &brainstem_client::v1::AuditRecord) -> serde_json::Value {
    json!({"seq": r.seq, "time": rfc3339(r.time), "decision_id": r.decision_id, "kind": r.kind,
           "caller": r.caller, "principal": r.principal, "action": r.action,
           "resource": r.resource, "allowed": r.allowed, "reasons": r.reasons,
           "correlation_id": r.correlation_id})
}

fn print_record(output: Output, r: &brainstem_client::v1::AuditRecord) {
    let word = if r.allowed { "ALLOW" } else { "DENY " };
    let on_behalf = if r.principal != r.caller && !r.principal.is_empty() {
        format!(" for {}", r.principal)
    } else {
        String::new()
    };
    print(
        output,
        format!(
            "{:>8} {} {word} {:<9} {}{on_behalf} {} {} [{}] {}",
            r.seq,
            rfc3339(r.time),
            r.kind,
            r.caller,
            r.action,
            r.resource,
            r.reasons.join(", "),
            r.decision_id
        ),
        record_json(r),
    );
}

// ---- verify ----------------------------------------------------------------------------------

/// Segment headers: the compact payload form and the first one. Payloads are hashed, never
/// decoded here, so both verify alike.
const MAGICS: [&[u8; 8]; 2] = [b"BSAUDIT2", b"BSAUDIT1"];
const HEADER_LEN: usize = 48;
const FRAME_HEAD: usize = 44;
const MAX_PAYLOAD: usize = 1 << 24;
/// Problems listed; the count says how many more.
const MAX_PROBLEMS: usize = 20;

#[derive(Debug, Default)]
pub struct Report {
    segments: usize,
    records: u64,
    first_seq: Option<u64>,
    last_seq: Option<u64>,
    head: Option<[u8; 32]>,
    /// (segment file, what), in log order.
    problems: Vec<(String, String)>,
    more_problems: usize,
}

impl Report {
    fn problem(&mut self, segment: &str, what: String) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push((segment.to_owned(), what));
        } else {
            self.more_problems += 1;
        }
    }

    fn human(&self, dir: &Path) -> String {
        let span = match (self.first_seq, self.last_seq) {
            (Some(a), Some(b)) => format!("records {a}..={b}"),
            _ => "no records".to_owned(),
        };
        let mut out = format!(
            "{}: {} segments, {} records ({span})",
            dir.display(),
            self.segments,
            self.records
        );
        if let Some(head) = &self.head {
            out.push_str(&format!("\nhead hash {}", hex(head)));
        }
        if self.problems.is_empty() {
            out.push_str(
                "\nintact: every link of the hash chain holds, no gaps, no truncated tail",
            );
        } else {
            out.push_str("\nDAMAGED:");
            for (segment, what) in &self.problems {
                out.push_str(&format!("\n  {segment}: {what}"));
            }
            if self.more_problems > 0 {
                out.push_str(&format!("\n  … and {} more", self.more_problems));
            }
        }
        out
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "intact": self.problems.is_empty(),
            "segments": self.segments,
            "records": self.records,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "head_hash": self.head.as_ref().map(hex),
            "problems": self.problems.iter().map(|(s, w)| json!({"segment": s, "problem": w})).collect::<Vec<_>>(),
            "more_problems": self.more_problems,
        })
    }
}

fn hex(bytes: &[u8; 32]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn chain(prev: &[u8; 32], seq: u64, payload: &[u8]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(prev);
    ctx.update(&seq.to_le_bytes());
    ctx.update(payload);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Walks every segment in `dir`; see the module documentation.
pub fn verify(dir: &Path) -> std::io::Result<Report> {
    let mut names: Vec<(u64, String)> = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(first) = name
            .strip_suffix(".seg")
            .filter(|d| d.len() == 20 && d.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|d| d.parse().ok())
        {
            names.push((first, name));
        }
    }
    names.sort();
    let mut report = Report {
        segments: names.len(),
        ..Report::default()
    };
    // What the next segment must begin with: its first sequence number and the previous hash.
    let mut expect: Option<(u64, [u8; 32])> = None;
    let count = names.len();
    for (i, (first, name)) in names.iter().enumerate() {
        let bytes = std::fs::read(dir.join(name))?;
        if bytes.len() < HEADER_LEN || !MAGICS.iter().any(|m| &bytes[..8] == *m) {
            report.problem(name, "not an audit segment (bad header)".to_owned());
            expect = None;
            continue;
        }
        let header_first = u64_at(&bytes, 8);
        let mut prev = [0u8; 32];
        prev.copy_from_slice(&bytes[16..48]);
        if header_first != *first {
            report.problem(
                name,
                format!("the header says it begins at {header_first}, its name says {first}"),
            );
        }
        match expect {
            Some((next, _)) if next != *first => report.problem(
                name,
                format!(
                    "gap: records {next}..{} are missing (a segment deleted?)",
                    first.saturating_sub(1)
                ),
            ),
            Some((_, hash)) if hash != prev => report.problem(
                name,
                "broken link: the segment does not chain to the previous one".to_owned(),
            ),
            _ => {}
        }
        let mut pos = HEADER_LEN;
        let mut seq = *first;
        while pos < bytes.len() {
            let rest = &bytes[pos..];
            let len = if rest.len() >= FRAME_HEAD {
                u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize
            } else {
                usize::MAX
            };
            if len > MAX_PAYLOAD || rest.len() < FRAME_HEAD + len {
                let what = if i + 1 == count {
                    format!(
                        "truncated tail: {} bytes after record {} do not form a whole record",
                        rest.len(),
                        seq.saturating_sub(1)
                    )
                } else {
                    format!(
                        "truncated: {} bytes after record {} do not form a whole record",
                        rest.len(),
                        seq.saturating_sub(1)
                    )
                };
                report.problem(name, what);
                break;
            }
            let frame_seq = u64_at(rest, 4);
            let mut stored = [0u8; 32];
            stored.copy_from_slice(&rest[12..44]);
            let payload = &rest[FRAME_HEAD..FRAME_HEAD + len];
            if frame_seq != seq {
                if frame_seq > seq {
                    report.problem(
                        name,
                        format!("gap: records {seq}..{} are missing", frame_seq - 1),
                    );
                } else {
                    report.problem(
                        name,
                        format!("record {frame_seq} appears where {seq} was expected"),
                    );
                }
            }
            if chain(&prev, frame_seq, payload) != stored {
                report.problem(
                    name,
                    format!(
                        "broken link at record {frame_seq}: its hash does not match its contents and the record before it (altered, or one before it was removed)"
                    ),
                );
            }
            report.records += 1;
            report.first_seq.get_or_insert(frame_seq);
            report.last_seq = Some(frame_seq);
            // Continue from what is stored, so one altered record is reported once or twice, not
            // for the rest of the log.
            prev = stored;
            seq = frame_seq + 1;
            pos += FRAME_HEAD + len;
        }
        report.head = Some(prev);
        expect = Some((seq, prev));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A segment file: `magic`, its first sequence number, `prev`, then one frame per payload.
    /// Returns the bytes and the last hash.
    fn segment(
        magic: &[u8; 8],
        first: u64,
        prev: [u8; 32],
        payloads: &[&[u8]],
    ) -> (Vec<u8>, [u8; 32]) {
        let mut bytes = magic.to_vec();
        bytes.extend_from_slice(&first.to_le_bytes());
        bytes.extend_from_slice(&prev);
        let mut prev = prev;
        for (i, payload) in payloads.iter().enumerate() {
            let seq = first + i as u64;
            prev = chain(&prev, seq, payload);
            bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            bytes.extend_from_slice(&seq.to_le_bytes());
            bytes.extend_from_slice(&prev);
            bytes.extend_from_slice(payload);
        }
        (bytes, prev)
    }

    /// A log begun by an earlier build (`BSAUDIT1`) and continued in the compact form (`BSAUDIT2`)
    /// verifies as one chain; a header of neither form is reported.
    #[test]
    fn both_segment_forms_verify_as_one_chain() {
        let dir = tempfile::tempdir().unwrap();
        let (old, head) = segment(b"BSAUDIT1", 1, [0; 32], &[b"first", b"second"]);
        let (new, head) = segment(b"BSAUDIT2", 3, head, &[b"third"]);
        std::fs::write(dir.path().join("00000000000000000001.seg"), &old).unwrap();
        std::fs::write(dir.path().join("00000000000000000003.seg"), &new).unwrap();
        let report = verify(dir.path()).unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!((report.records, report.head), (3, Some(head)));

        let mut altered = new.clone();
        *altered.last_mut().unwrap() ^= 1;
        std::fs::write(dir.path().join("00000000000000000003.seg"), &altered).unwrap();
        let report = verify(dir.path()).unwrap();
        assert!(
            report.problems[0].1.contains("broken link at record 3"),
            "{:?}",
            report.problems
        );

        let mut unknown = new;
        unknown[7] = b'9';
        std::fs::write(dir.path().join("00000000000000000003.seg"), &unknown).unwrap();
        let report = verify(dir.path()).unwrap();
        assert!(
            report.problems[0].1.contains("not an audit segment"),
            "{:?}",
            report.problems
        );
    }

    #[test]
    fn ages_and_times_parse() {
        let now = time::OffsetDateTime::from_unix_timestamp(1_000_000).unwrap();
        assert_eq!(
            parse_time("90s", now).unwrap().unix_timestamp(),
            1_000_000 - 90
        );
        assert_eq!(
            parse_time("2d", now).unwrap().unix_timestamp(),
            1_000_000 - 172_800
        );
        assert_eq!(
            parse_time("1970-01-02T00:00:00Z", now)
                .unwrap()
                .unix_timestamp(),
            86_400
        );
        for bad in ["", "h", "-1h", "12", "yesterday", "3w"] {
            assert!(parse_time(bad, now).is_err(), "{bad:?}");
        }
    }
}
