//! `brainstemctl policy …` and `brainstemctl guardrails …`.

use std::path::PathBuf;
use std::time::Duration;

use brainstem_client::v1::{
    CheckRequest, ClickRequest, FormField, FormSubmitRequest, GetPolicySetRequest, GuardrailReply,
    NavigationRequest, ValidateRequest,
};
use brainstem_client::{ConnectOptions, exit};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::{CliError, Output, print, rfc3339};

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Ask for a decision; exit 0 when allowed, 1 when denied (needs policy.check).
    Check(Question),
    /// A dry-run decision with every matched policy (needs policy.explain).
    Explain(Question),
    /// Validate policy files against the daemon's schema (or --schema) without applying them.
    Validate {
        /// .cedar files; validated together as one set.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[arg(long)]
        schema: Option<PathBuf>,
    },
    /// The policy set in force (needs policy.read).
    Show,
    /// Create an Ed25519 key pair for signing policy files: KEY (PKCS#8, 0600) and KEY.pub (hex,
    /// for [policy] signing_public_key_file). Local; no daemon needed.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a policy file: writes FILE.sig. Local; no daemon needed.
    Sign {
        #[arg(long)]
        key: PathBuf,
        file: PathBuf,
    },
}

#[derive(Args)]
pub struct Question {
    /// A dotted action, e.g. web.post.
    #[arg(long)]
    action: String,
    #[arg(long, default_value = "")]
    resource: String,
    /// On whose behalf (default: this certificate's principal; others need policy.check_as).
    #[arg(long, default_value = "")]
    principal: String,
    /// A JSON object, e.g. '{"hour": 10}'.
    #[arg(long)]
    context: Option<String>,
    /// Ties the decision's audit record to a call of yours (at most 256 bytes; default: the id
    /// the daemon gives this call). `brainstemctl audit tail --correlation-id ID` finds it.
    #[arg(long, default_value = "")]
    correlation_id: String,
}

#[derive(Subcommand)]
pub enum GuardrailsCommand {
    /// May the agent navigate to URL? Exit 0 allowed, 1 refused.
    Navigate { url: String },
    /// May the agent click on URL? Takes a token from its bucket when allowed.
    Click {
        url: String,
        #[arg(long, default_value = "")]
        target: String,
    },
    /// May the agent submit this form? Fields as name=value.
    Submit { url: String, fields: Vec<String> },
}

fn question(q: &Question) -> Result<CheckRequest, CliError> {
    let context = match &q.context {
        None => None,
        Some(text) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => Some(brainstem_proto::json::json_to_struct(&map)),
            Ok(other) => {
                return Err(CliError::Usage(format!(
                    "--context must be a JSON object such as '{{\"path_depth\": 2}}', not {}",
                    json_kind(&other)
                )));
            }
            Err(err) => {
                return Err(CliError::Usage(format!(
                    "--context is not valid JSON ({err}); keys need double quotes: \
                     '{{\"path_depth\": 2}}'"
                )));
            }
        },
    };
    Ok(CheckRequest {
        principal: q.principal.clone(),
        action: q.action.clone(),
        resource: q.resource.clone(),
        context,
        correlation_id: q.correlation_id.clone(),
    })
}

/// The reason the daemon gives a denied action that no schema entry or policy knows.
const UNKNOWN_ACTION: &str = "unknown-action";

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn read(path: &PathBuf) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(|err| CliError::Local(format!("{}: {err}", path.display())))
}

fn verdict(output: Output, what: &str, allowed: bool, reasons: &[String], extra: Value) -> u8 {
    let word = if allowed { "ALLOW" } else { "DENY" };
    let unknown = reasons.iter().any(|r| r == UNKNOWN_ACTION);
    let why = if unknown {
        "(unknown action: no schema entry or policy names it; a typo?)".to_owned()
    } else if reasons.is_empty() {
        "(no policy permits it)".to_owned()
    } else {
        reasons.join(", ")
    };
    let mut value = json!({"allowed": allowed, "reasons": reasons, "unknown_action": unknown});
    if let (Value::Object(v), Value::Object(e)) = (&mut value, extra) {
        v.extend(e);
    }
    print(output, format!("{word}  {what}  {why}"), value);
    if allowed { exit::OK } else { exit::NEGATIVE }
}

pub async fn policy(
    options: &ConnectOptions,
    output: Output,
    command: &PolicyCommand,
) -> Result<u8, CliError> {
    match command {
        PolicyCommand::Keygen { out } => {
            let (pkcs8, public) =
                brainstem_keys::signing::generate_signing_key().map_err(CliError::Local)?;
            brainstem_keys::files::write_private(out, &pkcs8)
                .map_err(|err| CliError::Local(err.to_string()))?;
            let public_path = PathBuf::from(format!("{}.pub", out.display()));
            std::fs::write(&public_path, format!("{public}\n"))
                .map_err(|err| CliError::Local(format!("{}: {err}", public_path.display())))?;
            print(
                output,
                format!(
                    "private key  {}\npublic key   {}",
                    out.display(),
                    public_path.display()
                ),
                json!({"key": out, "public_key": public_path, "public_hex": public}),
            );
            return Ok(exit::OK);
        }
        PolicyCommand::Sign { key, file } => {
            let key_bytes = brainstem_keys::files::read_private(key)
                .map_err(|err| CliError::Local(err.to_string()))?;
            let sig =
                brainstem_keys::signing::sign(&key_bytes, &read(file)?).map_err(CliError::Local)?;
            let sig_path = PathBuf::from(format!("{}.sig", file.display()));
            std::fs::write(&sig_path, format!("{sig}\n"))
                .map_err(|err| CliError::Local(format!("{}: {err}", sig_path.display())))?;
            print(
                output,
                format!("signature    {}", sig_path.display()),
                json!({"signature": sig_path}),
            );
            return Ok(exit::OK);
        }
        _ => {}
    }
    let mut client = options.connect().await?;
    match command {
        PolicyCommand::Check(q) => {
            let reply = client.policy.check(question(q)?).await?.into_inner();
            Ok(verdict(
                output,
                &q.action,
                reply.allowed,
                &reply.reasons,
                json!({"decision_id": reply.decision_id, "errors": reply.errors}),
            ))
        }
        PolicyCommand::Explain(q) => {
            let e = client.policy.explain(question(q)?).await?.into_inner();
            if output == Output::Human {
                println!(
                    "principal  {}  in [{}]",
                    e.principal_entity,
                    e.principal_parents.join(", ")
                );
                println!(
                    "action     {}  in [{}]",
                    e.action_entity,
                    e.action_parents.join(", ")
                );
                println!("resource   {}", e.resource_entity);
                println!("permits    {}", e.matched_permits.join(", "));
                println!("forbids    {}", e.matched_forbids.join(", "));
                for err in &e.errors {
                    println!("error      {err}");
                }
                println!("policy set {}", e.policy_set_digest);
            }
            Ok(verdict(
                output,
                &q.action,
                e.allowed,
                &e.reasons,
                json!({"matched_permits": e.matched_permits, "matched_forbids": e.matched_forbids,
                       "errors": e.errors, "policy_set_digest": e.policy_set_digest}),
            ))
        }
        PolicyCommand::Validate { files, schema } => {
            let mut policies = String::new();
            for file in files {
                let text = String::from_utf8(read(file)?)
                    .map_err(|_| CliError::Local(format!("{}: not UTF-8", file.display())))?;
                policies.push_str(&text);
                policies.push('\n');
            }
            let schema = match schema {
                Some(path) => String::from_utf8(read(path)?)
                    .map_err(|_| CliError::Local(format!("{}: not UTF-8", path.display())))?,
                None => String::new(),
            };
            let reply = client
                .policy
                .validate(ValidateRequest { policies, schema })
                .await?
                .into_inner();
            let human = if reply.valid {
                format!("valid: {} policies", reply.policy_count)
            } else {
                format!("invalid:\n  {}", reply.errors.join("\n  "))
            };
            print(
                output,
                human,
                json!({"valid": reply.valid, "errors": reply.errors, "policy_count": reply.policy_count}),
            );
            Ok(if reply.valid {
                exit::OK
            } else {
                exit::NEGATIVE
            })
        }
        PolicyCommand::Show => {
            let set = client
                .policy
                .get_policy_set(GetPolicySetRequest {})
                .await?
                .into_inner();
            let mut human = format!(
                "origin   {}\ndigest   {}\nloaded   {}\n",
                set.origin,
                set.digest,
                rfc3339(set.loaded_at)
            );
            if !set.last_reload_error.is_empty() {
                human.push_str(&format!("REFUSED  {}\n", set.last_reload_error));
            }
            for p in &set.policies {
                let signed = if p.signed { " (signed)" } else { "" };
                human.push_str(&format!(
                    "{:<6}  {}{signed}  [{}]\n",
                    p.effect, p.id, p.source
                ));
            }
            let policies: Vec<Value> = set
                .policies
                .iter()
                .map(|p| json!({"id": p.id, "effect": p.effect, "source": p.source, "signed": p.signed}))
                .collect();
            print(
                output,
                human.trim_end().to_owned(),
                json!({"origin": set.origin, "digest": set.digest, "policies": policies,
                       "last_reload_error": set.last_reload_error}),
            );
            Ok(exit::OK)
        }
        PolicyCommand::Keygen { .. } | PolicyCommand::Sign { .. } => Ok(exit::OK),
    }
}

pub async fn guardrails(
    options: &ConnectOptions,
    output: Output,
    command: &GuardrailsCommand,
) -> Result<u8, CliError> {
    let mut client = options.connect().await?;
    let (what, reply): (&str, GuardrailReply) = match command {
        GuardrailsCommand::Navigate { url } => (
            url,
            client
                .guardrails
                .check_navigation(NavigationRequest {
                    url: url.clone(),
                    correlation_id: String::new(),
                })
                .await?
                .into_inner(),
        ),
        GuardrailsCommand::Click { url, target } => (
            url,
            client
                .guardrails
                .check_click(ClickRequest {
                    url: url.clone(),
                    target: target.clone(),
                    correlation_id: String::new(),
                })
                .await?
                .into_inner(),
        ),
        GuardrailsCommand::Submit { url, fields } => {
            let mut parsed = Vec::new();
            for field in fields {
                let Some((name, value)) = field.split_once('=') else {
                    return Err(CliError::Local(format!("{field:?}: expected name=value")));
                };
                parsed.push(FormField {
                    name: name.to_owned(),
                    value: value.to_owned(),
                });
            }
            (
                url,
                client
                    .guardrails
                    .check_form_submit(FormSubmitRequest {
                        url: url.clone(),
                        fields: parsed,
                        correlation_id: String::new(),
                    })
                    .await?
                    .into_inner(),
            )
        }
    };
    let retry = reply
        .retry_after
        .and_then(|d| Duration::try_from(d).ok())
        .map(|d| d.as_millis() as u64);
    Ok(verdict(
        output,
        what,
        reply.allowed,
        &reply.reasons,
        json!({"decision_id": reply.decision_id, "retry_after_ms": retry}),
    ))
}
