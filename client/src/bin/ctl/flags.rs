//! `brainstemctl flags …`: evaluate, list, override and follow feature flags (docs/FLAGS.md).

use std::time::Duration;

use brainstem_client::v1::{
    ClearFlagOverrideRequest, EvaluateFlagRequest, FlagInfo, FlagRollout, FlagType,
    ListFlagsRequest, SetFlagOverrideRequest, WatchFlagsRequest,
};
use brainstem_client::{ConnectOptions, exit};
use brainstem_proto::json::{json_to_struct, struct_to_json, value_to_json};
use clap::{Subcommand, ValueEnum};
use serde_json::{Value, json};

use super::{CliError, Output, print, rfc3339};

#[derive(Subcommand)]
pub enum FlagsCommand {
    /// Evaluate one flag (needs flags.evaluate).
    Eval {
        #[arg(value_name = "KEY")]
        flag: String,
        /// Evaluation context, a JSON object, e.g. '{"targetingKey": "user-7", "email": "a@b.c"}'.
        #[arg(long)]
        context: Option<String>,
        /// Refuse (INVALID_ARGUMENT) unless the flag holds this type.
        #[arg(long, value_enum)]
        r#type: Option<Kind>,
    },
    /// Every flag: state, type, default variant, override (needs flags.evaluate).
    List,
    /// Override a flag at runtime, persisted until cleared (needs flags.override).
    Set {
        #[arg(value_name = "KEY")]
        flag: String,
        /// ENABLED or DISABLED.
        #[arg(long)]
        state: Option<String>,
        /// Serve this variant where the file's default variant would be served.
        #[arg(long)]
        default_variant: Option<String>,
        /// Roll VARIANT out to PERCENT % of targeting keys (sticky): VARIANT:PERCENT.
        #[arg(long)]
        rollout: Option<String>,
    },
    /// Remove a flag's override: it follows the file again (needs flags.override).
    Clear {
        #[arg(value_name = "KEY")]
        flag: String,
    },
    /// Print every change of the served flags until interrupted (needs flags.watch).
    Watch,
    /// The definitions file: path, last load, refusals and the last error; exit 1 while the file
    /// on disk is refused (needs flags.evaluate).
    Status,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Kind {
    Boolean,
    String,
    Integer,
    Float,
    Object,
}

fn type_name(t: i32) -> &'static str {
    match FlagType::try_from(t) {
        Ok(FlagType::Boolean) => "boolean",
        Ok(FlagType::String) => "string",
        Ok(FlagType::Integer) => "integer",
        Ok(FlagType::Float) => "float",
        Ok(FlagType::Object) => "object",
        _ => "?",
    }
}

fn info_json(f: &FlagInfo) -> Value {
    json!({
        "key": f.key,
        "state": f.state,
        "effective_state": f.effective_state,
        "type": type_name(f.r#type),
        "variants": f.variants.as_ref().map(|v| Value::Object(struct_to_json(v))),
        "default_variant": f.default_variant,
        "targeting": f.targeting.as_ref().map(value_to_json),
        "override": f.r#override.as_ref().map(|o| json!({
            "state": o.state,
            "default_variant": o.default_variant,
            "rollout": o.rollout.as_ref().map(|r| json!({"variant": r.variant, "percent": r.percent})),
            "set_by": o.set_by,
            "set_at": rfc3339(o.set_at),
        })),
    })
}

pub async fn flags(
    options: &ConnectOptions,
    output: Output,
    command: &FlagsCommand,
) -> Result<u8, CliError> {
    let mut client = options.connect().await?;
    match command {
        FlagsCommand::Eval {
            flag: key,
            context,
            r#type,
        } => {
            let context = match context {
                None => None,
                Some(text) => match serde_json::from_str::<Value>(text) {
                    Ok(Value::Object(map)) => Some(json_to_struct(&map)),
                    _ => {
                        return Err(CliError::Local(
                            "--context must be a JSON object".to_owned(),
                        ));
                    }
                },
            };
            let wanted = r#type.map_or(FlagType::Unspecified, |k| match k {
                Kind::Boolean => FlagType::Boolean,
                Kind::String => FlagType::String,
                Kind::Integer => FlagType::Integer,
                Kind::Float => FlagType::Float,
                Kind::Object => FlagType::Object,
            });
            let reply = client
                .flags
                .evaluate(EvaluateFlagRequest {
                    key: key.clone(),
                    context,
                    r#type: wanted as i32,
                })
                .await?
                .into_inner();
            let value = reply.value.as_ref().map_or(Value::Null, value_to_json);
            let human = if reply.variant.is_empty() {
                format!("{key} = (caller's default)  reason {}", reply.reason)
            } else {
                format!(
                    "{key} = {value}  variant {}  reason {}",
                    reply.variant, reply.reason
                )
            };
            print(
                output,
                human,
                json!({"key": key, "value": value, "variant": reply.variant,
                       "reason": reply.reason, "type": type_name(reply.r#type)}),
            );
            Ok(exit::OK)
        }
        FlagsCommand::List => {
            let reply = client.flags.list(ListFlagsRequest {}).await?.into_inner();
            let mut human = format!(
                "{:<40} {:<9} {:<8} {:<12} override",
                "KEY", "STATE", "TYPE", "DEFAULT"
            );
            for f in &reply.flags {
                let ov = match &f.r#override {
                    None => "-".to_owned(),
                    Some(o) => {
                        let mut parts = Vec::new();
                        if !o.state.is_empty() {
                            parts.push(format!("state={}", o.state));
                        }
                        if !o.default_variant.is_empty() {
                            parts.push(format!("default={}", o.default_variant));
                        }
                        if let Some(r) = &o.rollout {
                            parts.push(format!("rollout={}:{}%", r.variant, r.percent));
                        }
                        format!("{} (by {})", parts.join(" "), o.set_by)
                    }
                };
                let default = if f.default_variant.is_empty() {
                    "(none)"
                } else {
                    &f.default_variant
                };
                let targeting = if f.targeting.is_some() { "*" } else { "" };
                human.push_str(&format!(
                    "\n{:<40} {:<9} {:<8} {:<12} {ov}",
                    format!("{}{targeting}", f.key),
                    f.effective_state,
                    type_name(f.r#type),
                    default
                ));
            }
            human.push_str("\n(* has targeting)");
            let flags: Vec<Value> = reply.flags.iter().map(info_json).collect();
            print(output, human, json!({"flags": flags}));
            Ok(exit::OK)
        }
        FlagsCommand::Set {
            flag: key,
            state,
            default_variant,
            rollout,
        } => {
            let rollout = match rollout {
                None => None,
                Some(text) => {
                    let parsed = text
                        .rsplit_once(':')
                        .and_then(|(v, p)| Some((v, p.trim_end_matches('%').parse::<u32>().ok()?)));
                    let Some((variant, percent)) = parsed else {
                        return Err(CliError::Local(
                            "--rollout is VARIANT:PERCENT, e.g. on:20".to_owned(),
                        ));
                    };
                    Some(FlagRollout {
                        variant: variant.to_owned(),
                        percent,
                    })
                }
            };
            let reply = client
                .flags
                .set_override(SetFlagOverrideRequest {
                    key: key.clone(),
                    state: state.clone().unwrap_or_default().to_uppercase(),
                    default_variant: default_variant.clone().unwrap_or_default(),
                    rollout,
                })
                .await?
                .into_inner();
            let o = reply.r#override.unwrap_or_default();
            print(
                output,
                format!(
                    "{key}: override set by {} at {}",
                    o.set_by,
                    rfc3339(o.set_at)
                ),
                json!({"key": key, "set_by": o.set_by, "set_at": rfc3339(o.set_at)}),
            );
            Ok(exit::OK)
        }
        FlagsCommand::Clear { flag: key } => {
            let reply = client
                .flags
                .clear_override(ClearFlagOverrideRequest { key: key.clone() })
                .await?
                .into_inner();
            let human = if reply.cleared {
                format!("{key}: override cleared; the file's definition serves")
            } else {
                format!("{key}: had no override")
            };
            print(output, human, json!({"key": key, "cleared": reply.cleared}));
            Ok(if reply.cleared {
                exit::OK
            } else {
                exit::NEGATIVE
            })
        }
        FlagsCommand::Watch => {
            let mut request = tonic::Request::new(WatchFlagsRequest {});
            request.set_timeout(Duration::from_secs(365 * 24 * 3600));
            let mut stream = client.flags.watch(request).await?.into_inner();
            while let Some(change) = stream.message().await? {
                let human = if change.resync {
                    "fell behind: changes were lost; run `brainstemctl flags list`".to_owned()
                } else {
                    let flags: Vec<String> = change
                        .flags
                        .iter()
                        .map(|c| format!("{} {}", c.kind, c.key))
                        .collect();
                    format!(
                        "revision {} ({}): {}",
                        change.revision,
                        change.cause,
                        flags.join(", ")
                    )
                };
                let flags: Vec<Value> = change
                    .flags
                    .iter()
                    .map(|c| json!({"key": c.key, "kind": c.kind}))
                    .collect();
                print(
                    output,
                    human,
                    json!({"revision": change.revision, "cause": change.cause,
                           "flags": flags, "resync": change.resync}),
                );
            }
            Ok(exit::OK)
        }
        FlagsCommand::Status => {
            let reply = client.flags.list(ListFlagsRequest {}).await?.into_inner();
            let s = reply.source.unwrap_or_default();
            let mut human = format!(
                "file       {}{}\nloaded     {} (revision {}, {} loads, {} flags)\nrefused    {}",
                s.path,
                if s.using_defaults {
                    " (absent: serving the shipped defaults)"
                } else {
                    ""
                },
                rfc3339(s.loaded_at),
                s.revision,
                s.loads,
                reply.flags.len(),
                s.refused
            );
            if !s.last_error.is_empty() {
                human.push_str(&format!(
                    "\nlast error {} at {}\n           the previous flags keep serving",
                    s.last_error,
                    rfc3339(s.last_error_at)
                ));
            }
            print(
                output,
                human,
                json!({"path": s.path, "using_defaults": s.using_defaults,
                       "loaded_at": rfc3339(s.loaded_at), "revision": s.revision, "loads": s.loads,
                       "refused": s.refused, "last_error": s.last_error,
                       "last_error_at": rfc3339(s.last_error_at), "flags": reply.flags.len()}),
            );
            Ok(if s.last_error.is_empty() {
                exit::OK
            } else {
                exit::NEGATIVE
            })
        }
    }
}
