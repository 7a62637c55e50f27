//! `brainstemctl registry …`: register model versions, move aliases and read their history, lineage,
//! deployments, quality metrics and drift, artifact checks, and signed model cards
//! (brainstem.v1.Registry; docs/REGISTRY.md).
//!
//! `verify-card` runs offline: it reads the card and the public key from files and checks the
//! signature with the same code the daemon signs with (`brainstem_keys::card`); exit 0 valid,
//! 1 invalid.

use std::collections::HashMap;
use std::path::PathBuf;

use brainstem_client::v1::{
    AddModelParentRequest, AliasHistoryRequest, DetectDriftRequest, ExportModelCardRequest,
    GetCardPublicKeyRequest, GetLatestRequest, GetModelRequest, ListModelsRequest,
    ListVersionsRequest, ModelLineageRequest, ModelParent, ModelVersion, RecordDeploymentRequest,
    RecordQualityMetricRequest, RegisterRequest, SetAliasRequest, UpdateVersionRequest,
    VerifyArtifactsRequest,
};
use brainstem_client::{ConnectOptions, exit, with_idempotency_key};
use clap::Subcommand;
use serde_json::{Value, json};
use tonic::Request;

use super::{CliError, Output, print, rfc3339};

#[derive(Subcommand)]
pub enum RegistryCommand {
    /// Register a version; the daemon hashes the files (under its artifact roots) itself. Prints
    /// the version and the weights' SHA-256 (needs registry.write).
    Register {
        /// Model name, e.g. vision/detector.
        name: String,
        /// Absolute path of the weights file on the daemon's host.
        #[arg(long)]
        weights: String,
        /// Semantic version; omitted: the highest version's patch plus one.
        #[arg(long)]
        version: Option<String>,
        #[arg(long, default_value = "")]
        algorithm: String,
        /// Refuse unless the weights hash to this (hex SHA-256).
        #[arg(long)]
        weights_sha256: Option<String>,
        /// Absolute path of the dataset file.
        #[arg(long)]
        dataset: Option<String>,
        #[arg(long)]
        dataset_sha256: Option<String>,
        /// A metric registered with the version (the drift baseline): NAME=VALUE; repeat for more.
        #[arg(long = "metric", value_name = "NAME=VALUE", value_parser = parse_metric)]
        metrics: Vec<(String, f64)>,
        /// KEY=VALUE; repeat for more.
        #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_pair)]
        tags: Vec<(String, String)>,
        #[arg(long, default_value = "")]
        description: String,
        /// A parent: NAME@VERSION:RELATIONSHIP (fine-tuned-from, distilled-from, retrained-from).
        #[arg(long = "parent", value_name = "NAME@VERSION:RELATIONSHIP", value_parser = parse_parent)]
        parents: Vec<ModelParent>,
    },
    /// One version as JSON (needs registry.read).
    Get { name: String, version: String },
    /// The highest version that is not archived (needs registry.read).
    Latest { name: String },
    /// The model names you may read, one per line; follows every page.
    List,
    /// A model's versions, highest first.
    Versions { name: String },
    /// Point ALIAS at VERSION, or remove it with --remove (needs registry.write).
    Alias {
        name: String,
        alias: String,
        version: Option<String>,
        #[arg(long, conflicts_with = "version")]
        remove: bool,
    },
    /// Every version ALIAS named, from when to when and who moved it; --at TIME (RFC 3339 or Unix
    /// seconds) answers which version it named then.
    AliasHistory {
        name: String,
        alias: String,
        #[arg(long)]
        at: Option<String>,
    },
    /// Ancestors and descendants of a version.
    Lineage {
        name: String,
        version: String,
        #[arg(long, default_value_t = 0)]
        max_depth: u32,
    },
    /// Add a parent to a version's lineage (a cycle is refused) (needs registry.write).
    AddParent {
        name: String,
        version: String,
        /// NAME@VERSION:RELATIONSHIP.
        #[arg(value_parser = parse_parent)]
        parent: ModelParent,
    },
    /// Record that a version was deployed (needs registry.write).
    Deploy {
        name: String,
        version: String,
        #[arg(long)]
        environment: String,
        #[arg(long, default_value = "")]
        endpoint: String,
    },
    /// Append a quality-metric sample (needs registry.write).
    Metric {
        name: String,
        version: String,
        metric: String,
        value: f64,
    },
    /// Compare the metric's recent mean with its baseline; exit 1 when it drifted.
    Drift {
        name: String,
        version: String,
        metric: String,
        #[arg(long, default_value_t = 5.0)]
        threshold_percent: f64,
        #[arg(long, default_value_t = 7 * 86_400)]
        window_seconds: u64,
    },
    /// Re-hash a version's files; exit 1 unless every file is ok.
    Verify { name: String, version: String },
    /// Tags, description (needs registry.write) or status (registered|archived; registry.admin).
    Update {
        name: String,
        version: String,
        #[arg(long)]
        description: Option<String>,
        #[arg(long)]
        status: Option<String>,
        /// Replace the tags with these KEY=VALUE pairs.
        #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_pair)]
        tags: Vec<(String, String)>,
        #[arg(long)]
        replace_tags: bool,
    },
    /// Export a version's signed model card (canonical JSON) to stdout or --out FILE.
    Card {
        name: String,
        version: String,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Write the daemon's card-signing public key (hex) to FILE.
    PublicKey {
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Verify a card offline against a public key file: exit 0 valid, 1 invalid.
    VerifyCard {
        #[arg(long, value_name = "FILE")]
        public_key: PathBuf,
        card: PathBuf,
    },
}

fn parse_pair(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| "expected KEY=VALUE".to_owned())
}

fn parse_metric(text: &str) -> Result<(String, f64), String> {
    let (name, value) = parse_pair(text)?;
    let value: f64 = value
        .parse()
        .map_err(|_| "VALUE is not a number".to_owned())?;
    Ok((name, value))
}

fn parse_parent(text: &str) -> Result<ModelParent, String> {
    let (node, relationship) = text
        .rsplit_once(':')
        .ok_or("expected NAME@VERSION:RELATIONSHIP")?;
    let (name, version) = node
        .split_once('@')
        .ok_or("expected NAME@VERSION:RELATIONSHIP")?;
    Ok(ModelParent {
        name: name.to_owned(),
        version: version.to_owned(),
        relationship: relationship.to_owned(),
    })
}

fn parse_time(text: &str) -> Result<prost_types::Timestamp, CliError> {
    if let Ok(seconds) = text.parse::<i64>() {
        return Ok(prost_types::Timestamp { seconds, nanos: 0 });
    }
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|_| {
            CliError::Usage(format!("--at {text:?}: expected RFC 3339 or Unix seconds"))
        })?;
    Ok(prost_types::Timestamp {
        seconds: t.unix_timestamp(),
        nanos: i32::try_from(t.nanosecond()).unwrap_or(0),
    })
}

fn version_json(v: &ModelVersion) -> Value {
    json!({
        "name": v.name,
        "version": v.version,
        "algorithm": v.algorithm,
        "status": v.status,
        "aliases": v.aliases,
        "weights": {"path": v.weights_path, "sha256": v.weights_sha256, "size": v.weights_size},
        "dataset": {"path": v.dataset_path, "sha256": v.dataset_sha256, "size": v.dataset_size},
        "metrics": v.metrics,
        "tags": v.tags,
        "description": v.description,
        "created_by": v.created_by,
        "created_at": rfc3339(v.created_at),
        "parents": v.parents.iter().map(|p| json!({"name": p.name, "version": p.version, "relationship": p.relationship})).collect::<Vec<_>>(),
        "deployments": v.deployments.iter().map(|d| json!({"environment": d.environment, "endpoint": d.endpoint, "deployed_at": rfc3339(d.deployed_at), "deployed_by": d.deployed_by})).collect::<Vec<_>>(),
    })
}

fn read_local(path: &PathBuf) -> Result<String, CliError> {
    std::fs::read_to_string(path)
        .map_err(|err| CliError::Local(format!("{}: {err}", path.display())))
}

/// Runs one registry command; the exit code.
pub async fn registry(
    options: &ConnectOptions,
    output: Output,
    command: &RegistryCommand,
) -> Result<u8, CliError> {
    // Offline first: verifying a card needs no daemon.
    if let RegistryCommand::VerifyCard { public_key, card } = command {
        let key =
            brainstem_keys::card::parse_public_key(&read_local(public_key)?).ok_or_else(|| {
                CliError::Local(format!(
                    "{}: not a hex Ed25519 public key",
                    public_key.display()
                ))
            })?;
        let text = read_local(card)?;
        return Ok(match brainstem_keys::card::verify_card(&text, &key) {
            Ok(card) => {
                print(
                    output,
                    format!(
                        "valid: {}@{} signed by {}",
                        card["name"].as_str().unwrap_or("?"),
                        card["version"].as_str().unwrap_or("?"),
                        brainstem_keys::signing::hex_encode(&key)
                    ),
                    json!({"valid": true, "name": card["name"], "version": card["version"]}),
                );
                exit::OK
            }
            Err(err) => {
                print(
                    output,
                    format!("invalid: {err}"),
                    json!({"valid": false, "reason": err.to_string()}),
                );
                exit::NEGATIVE
            }
        });
    }
    let mut client = options.connect().await?;
    let r = &mut client.registry;
    match command {
        RegistryCommand::Register {
            name,
            weights,
            version,
            algorithm,
            weights_sha256,
            dataset,
            dataset_sha256,
            metrics,
            tags,
            description,
            parents,
        } => {
            let reply = r
                .register(with_idempotency_key(Request::new(RegisterRequest {
                    name: name.clone(),
                    version: version.clone().unwrap_or_default(),
                    algorithm: algorithm.clone(),
                    weights_path: weights.clone(),
                    weights_sha256: weights_sha256.clone(),
                    metrics: metrics.iter().cloned().collect(),
                    tags: tags.iter().cloned().collect(),
                    description: description.clone(),
                    dataset_path: dataset.clone().unwrap_or_default(),
                    dataset_sha256: dataset_sha256.clone(),
                    training_config: None,
                    parents: parents.clone(),
                    card: None,
                })))
                .await?
                .into_inner();
            print(
                output,
                format!(
                    "{name}@{} weights sha256 {} ({} bytes)",
                    reply.version, reply.weights_sha256, reply.weights_size
                ),
                json!({"name": name, "version": reply.version, "weights_sha256": reply.weights_sha256, "weights_size": reply.weights_size, "dataset_sha256": reply.dataset_sha256}),
            );
        }
        RegistryCommand::Get { name, version } => {
            let v = r
                .get(GetModelRequest {
                    name: name.clone(),
                    version: version.clone(),
                })
                .await?
                .into_inner();
            let value = version_json(&v);
            print(output, format!("{value:#}"), value);
        }
        RegistryCommand::Latest { name } => {
            let v = r
                .get_latest(GetLatestRequest { name: name.clone() })
                .await?
                .into_inner();
            let value = version_json(&v);
            print(output, format!("{value:#}"), value);
        }
        RegistryCommand::List => {
            let mut token = String::new();
            let mut all = Vec::new();
            loop {
                let reply = r
                    .list_models(ListModelsRequest {
                        page_size: 0,
                        page_token: token.clone(),
                    })
                    .await?
                    .into_inner();
                all.extend(reply.names);
                if reply.next_page_token.is_empty() {
                    break;
                }
                token = reply.next_page_token;
            }
            print(output, all.join("\n"), json!(all));
        }
        RegistryCommand::Versions { name } => {
            let mut token = String::new();
            let mut all = Vec::new();
            loop {
                let reply = r
                    .list_versions(ListVersionsRequest {
                        name: name.clone(),
                        page_size: 0,
                        page_token: token.clone(),
                    })
                    .await?
                    .into_inner();
                all.extend(reply.versions);
                if reply.next_page_token.is_empty() {
                    break;
                }
                token = reply.next_page_token;
            }
            let human: Vec<String> = all
                .iter()
                .map(|v| format!("{} {} {}", v.version, v.status, v.aliases.join(",")))
                .collect();
            print(
                output,
                human.join("\n"),
                json!(all.iter().map(version_json).collect::<Vec<_>>()),
            );
        }
        RegistryCommand::Alias {
            name,
            alias,
            version,
            remove,
        } => {
            if version.is_none() && !remove {
                return Err(CliError::Usage(
                    "give a VERSION, or --remove to remove the alias".into(),
                ));
            }
            let reply = r
                .set_alias(with_idempotency_key(Request::new(SetAliasRequest {
                    name: name.clone(),
                    alias: alias.clone(),
                    version: version.clone().unwrap_or_default(),
                })))
                .await?
                .into_inner();
            let now = version.as_deref().unwrap_or("(none)");
            print(
                output,
                format!(
                    "{name} {alias}: {} -> {now}",
                    if reply.previous_version.is_empty() {
                        "(none)"
                    } else {
                        &reply.previous_version
                    }
                ),
                json!({"name": name, "alias": alias, "previous_version": reply.previous_version, "version": version}),
            );
        }
        RegistryCommand::AliasHistory { name, alias, at } => {
            let at = at.as_deref().map(parse_time).transpose()?;
            let reply = r
                .alias_history(AliasHistoryRequest {
                    name: name.clone(),
                    alias: alias.clone(),
                    at,
                })
                .await?
                .into_inner();
            let human: Vec<String> = reply
                .entries
                .iter()
                .map(|e| {
                    format!(
                        "{} from {} to {} by {}",
                        e.version,
                        rfc3339(e.since),
                        e.until
                            .map_or_else(|| "now".to_owned(), |t| rfc3339(Some(t))),
                        e.principal
                    )
                })
                .collect();
            let entries: Vec<Value> = reply
                .entries
                .iter()
                .map(|e| json!({"version": e.version, "since": rfc3339(e.since), "until": e.until.map(|t| rfc3339(Some(t))), "principal": e.principal, "ended_by": e.ended_by}))
                .collect();
            print(output, human.join("\n"), json!({"entries": entries}));
        }
        RegistryCommand::Lineage {
            name,
            version,
            max_depth,
        } => {
            let reply = r
                .lineage(ModelLineageRequest {
                    name: name.clone(),
                    version: version.clone(),
                    max_depth: *max_depth,
                })
                .await?
                .into_inner();
            print_lineage(output, &reply);
        }
        RegistryCommand::AddParent {
            name,
            version,
            parent,
        } => {
            let reply = r
                .add_parent(with_idempotency_key(Request::new(AddModelParentRequest {
                    name: name.clone(),
                    version: version.clone(),
                    parent: Some(parent.clone()),
                })))
                .await?
                .into_inner();
            print_lineage(output, &reply);
        }
        RegistryCommand::Deploy {
            name,
            version,
            environment,
            endpoint,
        } => {
            let v = r
                .record_deployment(with_idempotency_key(Request::new(
                    RecordDeploymentRequest {
                        name: name.clone(),
                        version: version.clone(),
                        environment: environment.clone(),
                        endpoint: endpoint.clone(),
                    },
                )))
                .await?
                .into_inner();
            print(
                output,
                format!("{name}@{version} deployed to {environment}"),
                version_json(&v),
            );
        }
        RegistryCommand::Metric {
            name,
            version,
            metric,
            value,
        } => {
            let reply = r
                .record_quality_metric(with_idempotency_key(Request::new(
                    RecordQualityMetricRequest {
                        name: name.clone(),
                        version: version.clone(),
                        metric: metric.clone(),
                        value: *value,
                        at: None,
                    },
                )))
                .await?
                .into_inner();
            print(
                output,
                format!("{name}@{version} {metric}: {} samples", reply.samples),
                json!({"samples": reply.samples}),
            );
        }
        RegistryCommand::Drift {
            name,
            version,
            metric,
            threshold_percent,
            window_seconds,
        } => {
            let d = r
                .detect_drift(DetectDriftRequest {
                    name: name.clone(),
                    version: version.clone(),
                    metric: metric.clone(),
                    threshold_percent: *threshold_percent,
                    window_seconds: *window_seconds,
                })
                .await?
                .into_inner();
            print(
                output,
                format!(
                    "{}: baseline {} ({}, {} samples), recent {} ({} samples), change {:.2}%",
                    if d.drifted { "drifted" } else { "steady" },
                    d.baseline,
                    d.baseline_source,
                    d.baseline_samples,
                    d.recent,
                    d.recent_samples,
                    d.relative_change_percent
                ),
                json!({"drifted": d.drifted, "baseline": d.baseline, "recent": d.recent, "relative_change_percent": d.relative_change_percent, "baseline_samples": d.baseline_samples, "recent_samples": d.recent_samples, "baseline_source": d.baseline_source}),
            );
            return Ok(if d.drifted { exit::NEGATIVE } else { exit::OK });
        }
        RegistryCommand::Verify { name, version } => {
            let reply = r
                .verify_artifacts(VerifyArtifactsRequest {
                    name: name.clone(),
                    version: version.clone(),
                })
                .await?
                .into_inner();
            let human: Vec<String> = reply
                .files
                .iter()
                .map(|f| format!("{} {} {}", f.role, f.result, f.path))
                .collect();
            let files: Vec<Value> = reply
                .files
                .iter()
                .map(|f| json!({"role": f.role, "path": f.path, "result": f.result, "expected_sha256": f.expected_sha256, "actual_sha256": f.actual_sha256}))
                .collect();
            print(
                output,
                human.join("\n"),
                json!({"ok": reply.ok, "files": files}),
            );
            return Ok(if reply.ok { exit::OK } else { exit::NEGATIVE });
        }
        RegistryCommand::Update {
            name,
            version,
            description,
            status,
            tags,
            replace_tags,
        } => {
            let v = r
                .update_version(with_idempotency_key(Request::new(UpdateVersionRequest {
                    name: name.clone(),
                    version: version.clone(),
                    tags: tags.iter().cloned().collect::<HashMap<_, _>>(),
                    replace_tags: *replace_tags,
                    description: description.clone(),
                    status: status.clone(),
                    card: None,
                })))
                .await?
                .into_inner();
            let value = version_json(&v);
            print(output, format!("{value:#}"), value);
        }
        RegistryCommand::Card { name, version, out } => {
            let card = r
                .export_model_card(ExportModelCardRequest {
                    name: name.clone(),
                    version: version.clone(),
                })
                .await?
                .into_inner()
                .card;
            match out {
                // Exactly the card's bytes: any byte added would fail verification.
                Some(file) => std::fs::write(file, card.as_bytes())
                    .map_err(|err| CliError::Local(format!("{}: {err}", file.display())))?,
                // No newline added: the card is exactly what was signed.
                None => print!("{card}"),
            }
        }
        RegistryCommand::PublicKey { out } => {
            let key = r
                .get_card_public_key(GetCardPublicKeyRequest {})
                .await?
                .into_inner()
                .public_key;
            std::fs::write(out, format!("{key}\n"))
                .map_err(|err| CliError::Local(format!("{}: {err}", out.display())))?;
            print(
                output,
                format!("{key} written to {}", out.display()),
                json!({"public_key": key, "file": out}),
            );
        }
        RegistryCommand::VerifyCard { .. } => {
            return Err(CliError::Usage("verify-card runs offline".into()));
        }
    }
    Ok(exit::OK)
}

fn print_lineage(output: Output, reply: &brainstem_client::v1::ModelLineageReply) {
    let nodes = |list: &[brainstem_client::v1::ModelLineageNode]| -> Vec<Value> {
        list.iter()
            .map(|n| json!({"name": n.name, "version": n.version, "relationship": n.relationship, "depth": n.depth}))
            .collect()
    };
    let human: Vec<String> = reply
        .ancestors
        .iter()
        .map(|n| {
            format!(
                "ancestor   {}@{} {} (depth {})",
                n.name, n.version, n.relationship, n.depth
            )
        })
        .chain(reply.descendants.iter().map(|n| {
            format!(
                "descendant {}@{} {} (depth {})",
                n.name, n.version, n.relationship, n.depth
            )
        }))
        .collect();
    print(
        output,
        human.join("\n"),
        json!({"ancestors": nodes(&reply.ancestors), "descendants": nodes(&reply.descendants)}),
    );
}
