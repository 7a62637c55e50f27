//! `brainstemctl secrets …`: store, read, list, version and rotate secrets, follow their changes and
//! rotate the master key (brainstem.v1.Secrets; docs/SECRETS.md).
//!
//! A value never comes from the command line unless the operator insists (`--value-from-argv`): argv
//! lands in shell history and is readable by every local user in `/proc/<pid>/cmdline`. Values are
//! read from standard input or a file, and written to standard output or a 0600 file; nothing else
//! this module prints contains one.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use brainstem_client::v1::{
    GetSecretRequest, ListSecretsRequest, PutSecretRequest, RotateMasterKeyRequest,
    RotateSecretRequest, SecretMetadata, SecretMetadataRequest, SecretVersionsRequest,
    UpdateSecretMetadataRequest, WatchSecretsRequest,
};
use brainstem_client::{ConnectOptions, exit, with_idempotency_key};
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use tonic::Request;

use super::{CliError, Output, print, rfc3339};

#[derive(Subcommand)]
pub enum SecretsCommand {
    /// Store a new version; the value is read from standard input (all bytes) unless --file,
    /// --generate or --value-from-argv says otherwise. Prints the new version (needs secrets.write).
    Put(PutArgs),
    /// Write a version's raw bytes to standard output (nothing added) or to a 0600 file (needs
    /// secrets.read).
    Get {
        /// The secret's path, e.g. /agents/web/db (segments of A-Za-z0-9 . _ -).
        path: String,
        /// This version instead of the current one.
        #[arg(long)]
        version: Option<u64>,
        /// Write the value to this file, created (or replaced) with mode 0600, instead of stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Print {"path", "version", "created_at"} as JSON; never the value (use --out for it).
        #[arg(long)]
        json: bool,
    },
    /// The paths below PREFIX you may read, one per line; follows every page (needs secrets.read).
    List {
        /// Only paths below this one, e.g. /agents/web (default: all).
        prefix: Option<String>,
        /// Paths per request (the daemon's default is 100, its maximum 1000).
        #[arg(long)]
        page_size: Option<u32>,
    },
    /// Soft-delete versions (default: the current one); `undelete` brings them back (needs
    /// secrets.write).
    Delete(VersionsArgs),
    /// Bring soft-deleted versions back (needs secrets.write).
    Undelete(VersionsArgs),
    /// Wipe versions for good: their ciphertext and data key are gone (needs secrets.admin).
    Destroy(VersionsArgs),
    /// Every version's times and state, the settings and custom metadata (never a value); with
    /// --set or --custom, change them first (needs secrets.read; secrets.admin to change).
    Metadata {
        /// The secret's path, e.g. /agents/web/db (segments of A-Za-z0-9 . _ -).
        path: String,
        /// Change a setting: max_versions=N, cas_required=true|false, delete_version_after=DURATION
        /// (0: never), rotation_period=DURATION (0: off), generator=KIND:N (hex:32, bytes:32,
        /// alphanumeric:32). Repeat for more.
        #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_setting)]
        set: Vec<Setting>,
        /// Add or change a custom metadata entry; repeat for more.
        #[arg(long = "custom", value_name = "KEY=VALUE", value_parser = parse_custom)]
        custom: Vec<(String, String)>,
        /// Replace all custom metadata with the --custom entries (none: remove it all).
        #[arg(long)]
        replace_custom: bool,
        /// Print the metadata as one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Store a new generated version now; the secret needs a generator (needs secrets.write).
    Rotate {
        /// The secret's path, e.g. /agents/web/db (segments of A-Za-z0-9 . _ -).
        path: String,
    },
    /// Print every change below PREFIX as it happens (`<time> <kind> <path> v<version>`), never a
    /// value, until interrupted or the daemon ends the stream (needs secrets.read).
    Watch {
        /// Only changes below this path (default: all you may read).
        prefix: Option<String>,
        /// One JSON document per line.
        #[arg(long)]
        json: bool,
    },
    /// Re-wrap every data key and the token signing keys under a new master key. The daemon reads
    /// the key file on its own host; only its absolute path is sent (needs secrets.admin).
    RotateMasterKey {
        /// A 32-byte file on the daemon's host that only its owner may read.
        #[arg(long, value_name = "FILE")]
        new_key_file: PathBuf,
    },
}

#[derive(Args)]
pub struct PutArgs {
    /// The secret's path, e.g. /agents/web/db (segments of A-Za-z0-9 . _ -).
    pub path: String,
    /// Read the value from this file instead of standard input.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["value_from_argv", "generate"])]
    pub file: Option<PathBuf>,
    /// Take the value from the command line. Discouraged: it stays in your shell's history and
    /// any local user can read it in /proc/<pid>/cmdline while the command runs.
    #[arg(long, value_name = "VALUE", conflicts_with = "generate")]
    pub value_from_argv: Option<String>,
    /// Store a value made by --generator instead of reading one.
    #[arg(long, requires = "generator")]
    pub generate: bool,
    /// Remove one trailing newline ("\n") from the value read (as `echo` or an editor adds).
    #[arg(long, conflicts_with = "generate")]
    pub strip_newline: bool,
    /// Check-and-set: 0 = only if the secret does not exist yet, N = only if its current version
    /// is N.
    #[arg(long, value_name = "N")]
    pub cas: Option<u64>,
    /// Let the daemon rotate the secret this often with its generator: seconds, or 90s, 15m, 1h,
    /// 30d, 2w, 1h30m.
    #[arg(long, value_name = "DURATION", value_parser = parse_period)]
    pub rotate_every: Option<u64>,
    /// How generated values are made: alphanumeric:N, hex:N or bytes:N (N = 1..4096).
    #[arg(long, value_name = "KIND:N", value_parser = parse_generator)]
    pub generator: Option<String>,
}

#[derive(Args)]
pub struct VersionsArgs {
    /// The secret's path, e.g. /agents/web/db (segments of A-Za-z0-9 . _ -).
    pub path: String,
    /// These versions (default: the current one), e.g. --versions 1,2,3.
    #[arg(long, value_delimiter = ',', value_name = "N,N,…")]
    pub versions: Vec<u64>,
}

/// Where `put` takes its value from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueSource {
    Stdin,
    File(PathBuf),
    Argv(String),
    /// Nothing is read: the daemon generates the value.
    Generate,
}

impl PutArgs {
    pub fn source(&self) -> ValueSource {
        if self.generate {
            ValueSource::Generate
        } else if let Some(file) = &self.file {
            ValueSource::File(file.clone())
        } else if let Some(value) = &self.value_from_argv {
            ValueSource::Argv(value.clone())
        } else {
            ValueSource::Stdin
        }
    }
}

/// The value `put` stores: all bytes of the source, less one trailing `\n` with `strip_newline`.
/// An empty value is refused (an empty value with a generator would make the daemon generate one).
pub fn read_value(
    source: &ValueSource,
    strip_newline: bool,
    stdin: &mut dyn Read,
) -> Result<Vec<u8>, CliError> {
    let mut value = match source {
        ValueSource::Generate => return Ok(Vec::new()),
        ValueSource::Argv(text) => text.as_bytes().to_vec(),
        ValueSource::File(path) => std::fs::read(path)
            .map_err(|err| CliError::Local(format!("{}: {err}", path.display())))?,
        ValueSource::Stdin => {
            let mut bytes = Vec::new();
            stdin.read_to_end(&mut bytes).map_err(|err| {
                CliError::Local(format!("reading the value from standard input: {err}"))
            })?;
            bytes
        }
    };
    if strip_newline && value.last() == Some(&b'\n') {
        value.pop();
    }
    if value.is_empty() {
        let from = match source {
            ValueSource::File(path) => path.display().to_string(),
            ValueSource::Argv(_) => "--value-from-argv".to_owned(),
            _ => "standard input".to_owned(),
        };
        return Err(CliError::Usage(format!(
            "the value from {from} is empty; refusing to store it (pass --generate with \
             --generator to store a generated value)"
        )));
    }
    Ok(value)
}

/// A duration: whole seconds (`3600`), or numbers with units s, m, h, d, w (`90s`, `1h30m`, `30d`).
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let bad =
        || format!("{text:?} is not a duration: give seconds or e.g. 90s, 15m, 1h30m, 30d, 2w");
    if text.is_empty() {
        return Err(bad());
    }
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(seconds);
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit: u64 = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            _ => return Err(bad()),
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        digits.clear();
        total = n
            .checked_mul(unit)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(|| format!("{text:?} is too long a duration"))?;
    }
    if !digits.is_empty() {
        // `1h30`: a number without its unit after one with a unit.
        return Err(bad());
    }
    Ok(total)
}

/// `--rotate-every`: a duration that is not zero (0 would mean "keep the current setting").
fn parse_period(text: &str) -> Result<u64, String> {
    match parse_duration(text)? {
        0 => Err("0 would keep the current setting; turn rotation off with \
                  `secrets metadata PATH --set rotation_period=0`"
            .to_owned()),
        seconds => Ok(seconds),
    }
}

/// `alphanumeric:N`, `hex:N` or `bytes:N` with N in 1..=4096.
pub fn parse_generator(text: &str) -> Result<String, String> {
    let bad = || {
        format!("{text:?} is not a generator: alphanumeric:N, hex:N or bytes:N with N = 1..4096")
    };
    let (kind, n) = text.split_once(':').ok_or_else(bad)?;
    if !matches!(kind, "alphanumeric" | "hex" | "bytes") {
        return Err(bad());
    }
    match n.parse::<u32>() {
        Ok(1..=4096) => Ok(text.to_owned()),
        _ => Err(bad()),
    }
}

/// One `--set KEY=VALUE` of `secrets metadata`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Setting {
    MaxVersions(u32),
    CasRequired(bool),
    DeleteVersionAfter(u64),
    RotationPeriod(u64),
    Generator(String),
}

const SETTINGS: &str =
    "max_versions, cas_required, delete_version_after, rotation_period, generator";

pub fn parse_setting(text: &str) -> Result<Setting, String> {
    let Some((key, value)) = text.split_once('=') else {
        return Err(format!(
            "{text:?} is not KEY=VALUE (keys: {SETTINGS}), e.g. max_versions=5"
        ));
    };
    match key.trim() {
        "max_versions" => value
            .parse::<u32>()
            .map(Setting::MaxVersions)
            .map_err(|_| format!("max_versions={value:?}: a whole number is needed, e.g. 10")),
        "cas_required" => match value {
            "true" => Ok(Setting::CasRequired(true)),
            "false" => Ok(Setting::CasRequired(false)),
            _ => Err(format!("cas_required={value:?}: true or false")),
        },
        "delete_version_after" => parse_duration(value)
            .map(Setting::DeleteVersionAfter)
            .map_err(|err| format!("delete_version_after: {err} (0: never)")),
        "rotation_period" => parse_duration(value)
            .map(Setting::RotationPeriod)
            .map_err(|err| format!("rotation_period: {err} (0: off)")),
        "generator" => parse_generator(value).map(Setting::Generator),
        other => Err(format!(
            "unknown setting {other:?}; the settings are {SETTINGS}"
        )),
    }
}

pub fn parse_custom(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("{text:?} is not KEY=VALUE with a non-empty KEY")),
    }
}

/// The UpdateMetadata request for the --set and --custom flags; a setting given twice is refused.
pub fn update_request(
    path: &str,
    settings: &[Setting],
    custom: &[(String, String)],
    replace_custom: bool,
) -> Result<UpdateSecretMetadataRequest, CliError> {
    let mut request = UpdateSecretMetadataRequest {
        path: path.to_owned(),
        replace_custom_metadata: replace_custom,
        ..Default::default()
    };
    let twice = |name: &str| CliError::Usage(format!("--set {name} is given more than once"));
    for setting in settings {
        match setting {
            Setting::MaxVersions(n) => {
                if request.max_versions.replace(*n).is_some() {
                    return Err(twice("max_versions"));
                }
            }
            Setting::CasRequired(b) => {
                if request.cas_required.replace(*b).is_some() {
                    return Err(twice("cas_required"));
                }
            }
            Setting::DeleteVersionAfter(s) => {
                if request.delete_version_after_seconds.replace(*s).is_some() {
                    return Err(twice("delete_version_after"));
                }
            }
            Setting::RotationPeriod(s) => {
                if request.rotation_period_seconds.replace(*s).is_some() {
                    return Err(twice("rotation_period"));
                }
            }
            Setting::Generator(g) => {
                if request.generator.replace(g.clone()).is_some() {
                    return Err(twice("generator"));
                }
            }
        }
    }
    for (key, value) in custom {
        if request
            .custom_metadata
            .insert(key.clone(), value.clone())
            .is_some()
        {
            return Err(CliError::Usage(format!(
                "--custom {key} is given more than once"
            )));
        }
    }
    Ok(request)
}

/// Seconds as the largest units that divide them: `30d`, `1h30m`, `90s`; 0 is `0s`.
pub fn format_duration(mut seconds: u64) -> String {
    if seconds == 0 {
        return "0s".to_owned();
    }
    let mut text = String::new();
    for (unit, size) in [
        ("w", 7 * 86_400),
        ("d", 86_400),
        ("h", 3600),
        ("m", 60),
        ("s", 1),
    ] {
        if seconds >= size {
            text.push_str(&format!("{}{unit}", seconds / size));
            seconds %= size;
        }
    }
    text
}

/// `--new-key-file` as the absolute path the daemon opens. A relative path is resolved here, against
/// this command's directory; an absolute one that does not exist here is sent as given (the daemon
/// may run on another host and says itself when the file is missing).
pub fn key_file_path(path: &Path) -> Result<String, CliError> {
    let resolved = match std::fs::canonicalize(path) {
        Ok(resolved) => resolved,
        Err(_) if path.is_absolute() => path.to_owned(),
        Err(err) => {
            return Err(CliError::Local(format!(
                "{}: {err} (the daemon reads the key file itself; give its absolute path on the \
                 daemon's host)",
                path.display()
            )));
        }
    };
    resolved
        .into_os_string()
        .into_string()
        .map_err(|path| CliError::Local(format!("{}: not valid UTF-8", Path::new(&path).display())))
}

fn versions_text(versions: &[u64]) -> String {
    versions
        .iter()
        .map(|v| format!("v{v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn metadata_json(m: &SecretMetadata) -> Value {
    let versions: Vec<Value> = m
        .versions
        .iter()
        .map(|v| {
            json!({"version": v.version, "state": version_state(v.deleted, v.destroyed),
                   "created_at": rfc3339(v.created_at), "deleted_at": v.deleted_at.map(|t| rfc3339(Some(t))),
                   "destroyed_at": v.destroyed_at.map(|t| rfc3339(Some(t))), "origin": v.origin})
        })
        .collect();
    json!({
        "path": m.path, "current_version": m.current_version, "oldest_version": m.oldest_version,
        "max_versions": m.max_versions, "cas_required": m.cas_required,
        "delete_version_after_seconds": m.delete_version_after_seconds,
        "rotation_period_seconds": m.rotation_period_seconds, "generator": m.generator,
        "next_rotation_at": m.next_rotation_at.map(|t| rfc3339(Some(t))),
        "custom_metadata": m.custom_metadata, "created_at": rfc3339(m.created_at),
        "updated_at": rfc3339(m.updated_at), "versions": versions,
    })
}

fn version_state(deleted: bool, destroyed: bool) -> &'static str {
    if destroyed {
        "destroyed"
    } else if deleted {
        "deleted"
    } else {
        "live"
    }
}

pub fn metadata_text(m: &SecretMetadata) -> String {
    let rotation = if m.rotation_period_seconds == 0 {
        "off".to_owned()
    } else {
        format!(
            "every {} with {}, next {}",
            format_duration(m.rotation_period_seconds),
            if m.generator.is_empty() {
                "(no generator)"
            } else {
                &m.generator
            },
            rfc3339(m.next_rotation_at)
        )
    };
    let mut custom: Vec<String> = m
        .custom_metadata
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    custom.sort();
    let mut lines = vec![
        format!("path              {}", m.path),
        format!(
            "current version   {} (oldest kept {})",
            m.current_version, m.oldest_version
        ),
        format!("max versions      {}", m.max_versions),
        format!("cas required      {}", m.cas_required),
        format!(
            "delete after      {}",
            if m.delete_version_after_seconds == 0 {
                "never".to_owned()
            } else {
                format_duration(m.delete_version_after_seconds)
            }
        ),
        format!("rotation          {rotation}"),
        format!(
            "generator         {}",
            if m.generator.is_empty() {
                "-"
            } else {
                &m.generator
            }
        ),
        format!("created           {}", rfc3339(m.created_at)),
        format!("updated           {}", rfc3339(m.updated_at)),
        format!(
            "custom metadata   {}",
            if custom.is_empty() {
                "(none)".to_owned()
            } else {
                custom.join(", ")
            }
        ),
        format!(
            "{:<8} {:<10} {:<7} {:<20} {:<20} {:<20}",
            "VERSION", "STATE", "ORIGIN", "CREATED", "DELETED", "DESTROYED"
        ),
    ];
    for v in &m.versions {
        lines.push(format!(
            "{:<8} {:<10} {:<7} {:<20} {:<20} {:<20}",
            v.version,
            version_state(v.deleted, v.destroyed),
            if v.origin.is_empty() { "-" } else { &v.origin },
            rfc3339(v.created_at),
            rfc3339(v.deleted_at),
            rfc3339(v.destroyed_at)
        ));
    }
    lines.join("\n")
}

fn output_of(output: Output, json: bool) -> Output {
    if json { Output::Json } else { output }
}

pub async fn secrets(
    options: &ConnectOptions,
    output: Output,
    command: &SecretsCommand,
) -> Result<u8, CliError> {
    // Read the value before connecting: a bad source fails without touching the daemon.
    let put_value = match command {
        SecretsCommand::Put(args) => {
            let source = args.source();
            if source == ValueSource::Stdin && std::io::stdin().is_terminal() {
                eprintln!("reading the value from standard input; end it with Ctrl-D");
            }
            Some(read_value(
                &source,
                args.strip_newline,
                &mut std::io::stdin().lock(),
            )?)
        }
        _ => None,
    };
    let update = match command {
        SecretsCommand::Metadata {
            path,
            set,
            custom,
            replace_custom,
            ..
        } if !set.is_empty() || !custom.is_empty() || *replace_custom => {
            Some(update_request(path, set, custom, *replace_custom)?)
        }
        _ => None,
    };
    let new_key_file = match command {
        SecretsCommand::RotateMasterKey { new_key_file } => Some(key_file_path(new_key_file)?),
        _ => None,
    };
    let mut client = options.connect().await?;
    match command {
        SecretsCommand::Put(args) => {
            // Put changes state: the key makes a retried call apply once.
            let reply = client
                .secrets
                .put(with_idempotency_key(Request::new(PutSecretRequest {
                    path: args.path.clone(),
                    value: put_value.unwrap_or_default(),
                    cas: args.cas,
                    rotation_period_seconds: args.rotate_every.unwrap_or(0),
                    generator: args.generator.clone().unwrap_or_default(),
                })))
                .await?
                .into_inner();
            let created = rfc3339(reply.created_at);
            print(
                output,
                format!("{}: version {} created {created}", args.path, reply.version),
                json!({"path": args.path, "version": reply.version, "created_at": created}),
            );
            Ok(exit::OK)
        }
        SecretsCommand::Get {
            path,
            version,
            out,
            json,
        } => {
            let reply = client
                .secrets
                .get(GetSecretRequest {
                    path: path.clone(),
                    version: *version,
                })
                .await?
                .into_inner();
            let created = rfc3339(reply.created_at);
            let about = json!({"path": path, "version": reply.version, "created_at": created});
            let output = output_of(output, *json);
            match out {
                Some(file) => {
                    brainstem_keys::files::write_private(file, &reply.value)
                        .map_err(|err| CliError::Local(err.to_string()))?;
                    print(
                        output,
                        format!(
                            "{path}: version {} written to {} (mode 0600)",
                            reply.version,
                            file.display()
                        ),
                        about,
                    );
                }
                // JSON never carries the value: it would end up in logs and pipelines.
                None if output == Output::Json => println!("{about}"),
                None => {
                    let mut stdout = std::io::stdout().lock();
                    stdout
                        .write_all(&reply.value)
                        .and_then(|()| stdout.flush())
                        .map_err(|err| CliError::Local(format!("writing the value: {err}")))?;
                }
            }
            Ok(exit::OK)
        }
        SecretsCommand::List { prefix, page_size } => {
            let mut paths = Vec::new();
            let mut page_token = String::new();
            loop {
                let reply = client
                    .secrets
                    .list(ListSecretsRequest {
                        prefix: prefix.clone().unwrap_or_default(),
                        page_size: page_size.unwrap_or(0),
                        page_token: page_token.clone(),
                    })
                    .await?
                    .into_inner();
                if output == Output::Human {
                    // Print as pages arrive: a long listing shows progress.
                    for path in &reply.paths {
                        println!("{path}");
                    }
                } else {
                    paths.extend(reply.paths);
                }
                if reply.next_page_token.is_empty() {
                    break;
                }
                if reply.next_page_token == page_token {
                    return Err(CliError::Local(format!(
                        "the daemon sent the page token {page_token:?} twice; stopping"
                    )));
                }
                page_token = reply.next_page_token;
            }
            if output == Output::Json {
                println!("{}", json!({"paths": paths}));
            }
            Ok(exit::OK)
        }
        SecretsCommand::Delete(args)
        | SecretsCommand::Undelete(args)
        | SecretsCommand::Destroy(args) => {
            let request = SecretVersionsRequest {
                path: args.path.clone(),
                versions: args.versions.clone(),
            };
            let (verb, reply) = match command {
                SecretsCommand::Delete(_) => ("deleted", client.secrets.delete(request).await?),
                SecretsCommand::Undelete(_) => {
                    ("undeleted", client.secrets.undelete(request).await?)
                }
                _ => ("destroyed", client.secrets.destroy(request).await?),
            };
            let versions = reply.into_inner().versions;
            let human = if versions.is_empty() {
                format!("{}: no version changed", args.path)
            } else {
                format!("{}: {verb} {}", args.path, versions_text(&versions))
            };
            print(
                output,
                human,
                json!({"path": args.path, "action": verb, "versions": versions}),
            );
            Ok(exit::OK)
        }
        SecretsCommand::Metadata { path, json, .. } => {
            let metadata = match update {
                Some(request) => client.secrets.update_metadata(request).await?,
                None => {
                    client
                        .secrets
                        .metadata(SecretMetadataRequest { path: path.clone() })
                        .await?
                }
            }
            .into_inner();
            print(
                output_of(output, *json),
                metadata_text(&metadata),
                metadata_json(&metadata),
            );
            Ok(exit::OK)
        }
        SecretsCommand::Rotate { path } => {
            let reply = client
                .secrets
                .rotate_now(with_idempotency_key(Request::new(RotateSecretRequest {
                    path: path.clone(),
                })))
                .await?
                .into_inner();
            print(
                output,
                format!("{path}: rotated to version {}", reply.version),
                json!({"path": path, "version": reply.version}),
            );
            Ok(exit::OK)
        }
        SecretsCommand::Watch { prefix, json } => {
            let output = output_of(output, *json);
            // A stream has no overall deadline: the per-call timeout would end it.
            let mut request = Request::new(WatchSecretsRequest {
                prefix: prefix.clone().unwrap_or_default(),
            });
            request.set_timeout(Duration::from_secs(365 * 24 * 3600));
            let mut stream = client.secrets.watch(request).await?.into_inner();
            while let Some(event) = stream.message().await? {
                let at = rfc3339(event.at);
                print(
                    output,
                    format!("{at} {} {} v{}", event.kind, event.path, event.version),
                    json!({"at": at, "kind": event.kind, "path": event.path,
                           "version": event.version}),
                );
            }
            Ok(exit::OK)
        }
        SecretsCommand::RotateMasterKey { .. } => {
            let new_key_file = new_key_file.unwrap_or_default();
            let reply = client
                .secrets
                .rotate_master_key(RotateMasterKeyRequest {
                    new_key_file: new_key_file.clone(),
                })
                .await?
                .into_inner();
            print(
                output,
                format!(
                    "master key rotated to {}: {} data key(s) and {} token signing key(s) \
                     re-wrapped (key file {new_key_file})",
                    reply.key_id, reply.rewrapped, reply.signing_keys
                ),
                json!({"key_id": reply.key_id, "rewrapped": reply.rewrapped,
                       "signing_keys": reply.signing_keys, "new_key_file": new_key_file}),
            );
            Ok(exit::OK)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cli, Command};
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<SecretsCommand, clap::Error> {
        let cli = Cli::try_parse_from(["brainstemctl", "secrets"].iter().chain(args))?;
        match cli.command {
            Command::Secrets(command) => Ok(command),
            _ => unreachable!("parsed a secrets command"),
        }
    }

    fn put(args: &[&str]) -> PutArgs {
        match parse(args) {
            Ok(SecretsCommand::Put(put)) => put,
            Ok(_) => panic!("not put"),
            Err(err) => panic!("{args:?}: {err}"),
        }
    }

    #[test]
    fn put_reads_stdin_unless_told_otherwise() {
        assert_eq!(put(&["put", "/agents/web/db"]).source(), ValueSource::Stdin);
        assert_eq!(
            put(&["put", "/a", "--file", "v.txt"]).source(),
            ValueSource::File("v.txt".into())
        );
        assert_eq!(
            put(&["put", "/a", "--value-from-argv", "hunter2"]).source(),
            ValueSource::Argv("hunter2".into())
        );
        let generated = put(&["put", "/a", "--generate", "--generator", "alphanumeric:32"]);
        assert_eq!(generated.source(), ValueSource::Generate);
        assert_eq!(generated.generator.as_deref(), Some("alphanumeric:32"));
        // A bare second positional is not a value: values never come from argv by accident.
        assert!(parse(&["put", "/a", "hunter2"]).is_err());
    }

    #[test]
    fn put_refuses_conflicting_sources_and_generate_without_a_generator() {
        for args in [
            &["put", "/a", "--file", "f", "--value-from-argv", "v"][..],
            &[
                "put",
                "/a",
                "--file",
                "f",
                "--generate",
                "--generator",
                "hex:8",
            ],
            &[
                "put",
                "/a",
                "--value-from-argv",
                "v",
                "--generate",
                "--generator",
                "hex:8",
            ],
            &["put", "/a", "--generate"],
            &[
                "put",
                "/a",
                "--generate",
                "--generator",
                "hex:8",
                "--strip-newline",
            ],
            &["put", "/a", "--generator", "base64:8"],
            &["put", "/a", "--generator", "hex:0"],
            &["put", "/a", "--generator", "hex:4097"],
            &["put", "/a", "--rotate-every", "0"],
            &["put", "/a", "--rotate-every", "soon"],
            &["put", "/a", "--cas", "-1"],
        ] {
            let err = parse(args)
                .err()
                .unwrap_or_else(|| panic!("{args:?} parsed"));
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn put_options_reach_the_request_fields() {
        let args = put(&[
            "put",
            "/a",
            "--cas",
            "0",
            "--rotate-every",
            "1h30m",
            "--generator",
            "bytes:32",
            "--strip-newline",
        ]);
        assert_eq!(args.cas, Some(0));
        assert_eq!(args.rotate_every, Some(5400));
        assert!(args.strip_newline);
        assert_eq!(
            put(&["put", "/a", "--rotate-every", "86400"]).rotate_every,
            Some(86_400)
        );
    }

    #[test]
    fn values_keep_every_byte_and_strip_one_newline_only_when_asked() {
        let read = |source: &ValueSource, strip: bool, input: &[u8]| {
            read_value(source, strip, &mut &input[..])
        };
        let bytes = b"s3cr\x00t\r\n\n".to_vec();
        assert_eq!(read(&ValueSource::Stdin, false, &bytes).unwrap(), bytes);
        assert_eq!(
            read(&ValueSource::Stdin, true, &bytes).unwrap(),
            b"s3cr\x00t\r\n".to_vec()
        );
        assert_eq!(
            read(&ValueSource::Stdin, true, b"x").unwrap(),
            b"x".to_vec()
        );
        assert_eq!(
            read(&ValueSource::Argv("v\n".into()), false, b"ignored").unwrap(),
            b"v\n".to_vec()
        );
        assert!(
            read(&ValueSource::Generate, false, b"ignored")
                .unwrap()
                .is_empty()
        );

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("value");
        std::fs::write(&file, b"from a file\n").unwrap();
        assert_eq!(
            read(&ValueSource::File(file.clone()), true, b"ignored").unwrap(),
            b"from a file".to_vec()
        );
        let missing = read(&ValueSource::File(dir.path().join("nope")), false, b"")
            .unwrap_err()
            .to_string();
        assert!(missing.contains("nope"), "{missing}");
    }

    #[test]
    fn an_empty_value_is_refused_rather_than_generated() {
        for (input, strip) in [(&b""[..], false), (b"\n", true)] {
            let err = read_value(&ValueSource::Stdin, strip, &mut &input[..]).unwrap_err();
            assert_eq!(err.exit_code(), exit::USAGE);
            assert!(err.to_string().contains("is empty"), "{err}");
        }
    }

    #[test]
    fn durations_parse_as_seconds_or_units() {
        for (text, seconds) in [
            ("0", 0),
            ("3600", 3600),
            ("90s", 90),
            ("15m", 900),
            ("1h", 3600),
            ("1h30m", 5400),
            ("30d", 2_592_000),
            ("2w", 1_209_600),
        ] {
            assert_eq!(parse_duration(text), Ok(seconds), "{text}");
        }
        for bad in [
            "",
            "h",
            "1x",
            "-1",
            "1.5h",
            "1h30",
            " 1h",
            "99999999999999999999s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        for seconds in [0, 59, 90, 3600, 5400, 2_592_000, 1_209_600 + 1] {
            assert_eq!(parse_duration(&format_duration(seconds)), Ok(seconds));
        }
        assert_eq!(format_duration(5400), "1h30m");
        assert_eq!(format_duration(2_592_000), "4w2d");
    }

    #[test]
    fn settings_parse_into_an_update_request() {
        let command = parse(&[
            "metadata",
            "/agents/web/db",
            "--set",
            "max_versions=5",
            "--set",
            "cas_required=true",
            "--set",
            "delete_version_after=30d",
            "--set",
            "rotation_period=1h",
            "--set",
            "generator=hex:32",
            "--custom",
            "owner=web=team",
        ])
        .unwrap();
        let SecretsCommand::Metadata {
            path,
            set,
            custom,
            replace_custom,
            ..
        } = command
        else {
            panic!("not metadata");
        };
        let request = update_request(&path, &set, &custom, replace_custom).unwrap();
        assert_eq!(request.path, "/agents/web/db");
        assert_eq!(request.max_versions, Some(5));
        assert_eq!(request.cas_required, Some(true));
        assert_eq!(request.delete_version_after_seconds, Some(2_592_000));
        assert_eq!(request.rotation_period_seconds, Some(3600));
        assert_eq!(request.generator.as_deref(), Some("hex:32"));
        assert_eq!(request.custom_metadata["owner"], "web=team");
        assert!(!request.replace_custom_metadata);

        let off = update_request(
            "/a",
            &[parse_setting("rotation_period=0").unwrap()],
            &[],
            false,
        )
        .unwrap();
        assert_eq!(off.rotation_period_seconds, Some(0));
        assert_eq!(off.max_versions, None);
    }

    #[test]
    fn bad_settings_say_what_is_wrong() {
        for (text, says) in [
            ("max_versions", "is not KEY=VALUE"),
            ("ttl=5", "unknown setting \"ttl\""),
            ("max_versions=five", "a whole number"),
            ("max_versions=-1", "a whole number"),
            ("cas_required=yes", "true or false"),
            ("delete_version_after=forever", "delete_version_after"),
            ("rotation_period=1y", "rotation_period"),
            ("generator=hex", "not a generator"),
        ] {
            let err = parse_setting(text).unwrap_err();
            assert!(err.contains(says), "{text}: {err}");
        }
        let err = parse(&["metadata", "/a", "--set", "ttl=5"]).err().unwrap();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("unknown setting"), "{err}");
        assert!(parse(&["metadata", "/a", "--custom", "=v"]).is_err());

        let twice = [
            parse_setting("max_versions=1").unwrap(),
            parse_setting("max_versions=2").unwrap(),
        ];
        let err = update_request("/a", &twice, &[], false).unwrap_err();
        assert_eq!(err.exit_code(), exit::USAGE);
        assert!(err.to_string().contains("more than once"), "{err}");
    }

    #[test]
    fn versions_lists_are_comma_separated() {
        let Ok(SecretsCommand::Destroy(args)) = parse(&["destroy", "/a", "--versions", "1,2,3"])
        else {
            panic!("not destroy");
        };
        assert_eq!(args.versions, vec![1, 2, 3]);
        let Ok(SecretsCommand::Delete(args)) = parse(&["delete", "/a"]) else {
            panic!("not delete");
        };
        assert!(args.versions.is_empty());
        assert!(parse(&["undelete", "/a", "--versions", "1,x"]).is_err());
    }

    #[test]
    fn the_master_key_file_is_sent_as_an_absolute_path() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("master.key");
        std::fs::write(&key, [0u8; 32]).unwrap();
        let sent = key_file_path(&dir.path().join("sub/../master.key"));
        // `sub` does not exist, so canonicalizing fails; the path is absolute and is sent as given.
        assert!(sent.unwrap().starts_with('/'));
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let sent = key_file_path(&dir.path().join("sub/../master.key")).unwrap();
        assert_eq!(Path::new(&sent), key.canonicalize().unwrap());
        let err = key_file_path(Path::new("surely-not-here.key")).unwrap_err();
        assert!(err.to_string().contains("absolute path"), "{err}");
    }

    #[test]
    fn out_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("value");
        std::fs::write(&out, b"old").unwrap();
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o644)).unwrap();
        brainstem_keys::files::write_private(&out, b"new").unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"new");
        let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn metadata_output_shows_settings_versions_and_custom_metadata() {
        let m = SecretMetadata {
            path: "/agents/web/db".into(),
            current_version: 2,
            oldest_version: 1,
            max_versions: 10,
            rotation_period_seconds: 3600,
            generator: "hex:32".into(),
            custom_metadata: [("owner".to_owned(), "web".to_owned())].into(),
            versions: vec![
                brainstem_client::v1::SecretVersionInfo {
                    version: 1,
                    deleted: true,
                    origin: "put".into(),
                    ..Default::default()
                },
                brainstem_client::v1::SecretVersionInfo {
                    version: 2,
                    origin: "rotate".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let text = metadata_text(&m);
        assert!(
            text.contains("rotation          every 1h with hex:32"),
            "{text}"
        );
        assert!(text.contains("owner=web"), "{text}");
        assert!(text.contains("deleted"), "{text}");
        let value = metadata_json(&m);
        assert_eq!(value["versions"][0]["state"], "deleted");
        assert_eq!(value["versions"][1]["origin"], "rotate");
        assert_eq!(value["custom_metadata"]["owner"], "web");
    }
}
