//! Flags that drive the daemon: `modules.<name>` starts and stops the supervised actor `<name>`,
//! and `safety.dry_run_mode` turns the access layer's dry-run mode on and off.
//!
//! The `flags-modules` worker applies the module flags once the supervisor is up and again after
//! every change that names one. A flag that evaluates to `false` stops its actor (an operator stop:
//! it stays stopped); `true` starts it if it is stopped. A failed actor is left to the supervisor's
//! rules (an operator `start` clears it), and an actor that does not exist (one disabled in its
//! section, e.g. `[vision] enabled = false`, or `learning` in a build without it) is skipped. A disabled
//! flag, or one without a value, leaves the actor alone. e2e
//! `perception::the_modules_vision_flag_stops_and_starts_the_actor` drives the vision actor with it.

use std::sync::Arc;

use serde_json::Value;
use tokio::sync::{broadcast, watch};

use super::Flags;
use crate::access::Access;
use crate::supervisor::actor::{ActorResult, ActorState};
use crate::supervisor::worker::{Worker, WorkerContext, until_cancelled};
use crate::supervisor::{Supervisor, SupervisorError};

/// Each module flag and the actor it switches.
pub const MODULES: &[(&str, &str)] = &[
    ("modules.vision", "vision"),
    ("modules.voice", "voice"),
    ("modules.learning", "learning"),
];

/// The flag that makes advisory policy denials pass as would-deny (`Access::set_dry_run`).
pub const DRY_RUN_FLAG: &str = "safety.dry_run_mode";

/// What the `flags-modules` worker drives, once the daemon's shared parts exist.
#[derive(Clone)]
pub struct Driven {
    pub supervisor: Supervisor,
    pub access: Arc<Access>,
}

/// Sets dry-run mode from [`DRY_RUN_FLAG`]; a flag without a boolean value means off, so a broken
/// or disabled flag never leaves denials advisory.
pub fn apply_dry_run(flags: &Flags, access: &Access) -> bool {
    let on = flags
        .evaluate(DRY_RUN_FLAG, &Value::Object(Default::default()), None)
        .ok()
        .and_then(|resolution| resolution.value.as_ref().and_then(Value::as_bool))
        .unwrap_or(false);
    access.set_dry_run(on);
    on
}

/// What applying one module flag did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModuleAction {
    Started,
    Stopped,
    /// Already as the flag says, or the flag has no value.
    Unchanged,
    /// No actor of that name is registered.
    Absent,
    /// The supervisor refused (stopping, …).
    Refused(String),
}

/// Brings each module's actor in line with its flag; what happened to each.
pub async fn apply_modules(
    flags: &Flags,
    supervisor: &Supervisor,
    modules: &[(&str, &'static str)],
) -> Vec<(&'static str, ModuleAction)> {
    let mut done = Vec::with_capacity(modules.len());
    for (flag, actor) in modules {
        let want = match flags.evaluate(flag, &Value::Object(Default::default()), None) {
            Ok(resolution) => resolution.value.as_ref().and_then(Value::as_bool),
            Err(_) => None,
        };
        let action = match (want, supervisor.get(actor)) {
            (_, Err(_)) => ModuleAction::Absent,
            (None, Ok(_)) => ModuleAction::Unchanged,
            (Some(true), Ok(info)) if info.state == ActorState::Stopped => {
                outcome(supervisor.start_actor(actor).await, ModuleAction::Started)
            }
            (Some(false), Ok(info))
                if matches!(
                    info.state,
                    ActorState::Starting | ActorState::Running | ActorState::Restarting
                ) =>
            {
                outcome(supervisor.stop_actor(actor).await, ModuleAction::Stopped)
            }
            (Some(_), Ok(_)) => ModuleAction::Unchanged,
        };
        if !matches!(action, ModuleAction::Unchanged | ModuleAction::Absent) {
            tracing::info!(flag, actor, ?action, "module flag applied");
        }
        done.push((*actor, action));
    }
    done
}

fn outcome<T>(result: Result<T, SupervisorError>, ok: ModuleAction) -> ModuleAction {
    match result {
        Ok(_) => ok,
        Err(err) => ModuleAction::Refused(err.to_string()),
    }
}

/// The `flags-modules` worker (see the module docs). The supervisor and access handles arrive
/// through `handle` once the daemon's shared parts exist.
pub struct ModuleSwitch {
    flags: Arc<Flags>,
    handle: watch::Receiver<Option<Driven>>,
    modules: &'static [(&'static str, &'static str)],
}

impl ModuleSwitch {
    pub fn new(
        flags: Arc<Flags>,
        handle: watch::Receiver<Option<Driven>>,
        modules: &'static [(&'static str, &'static str)],
    ) -> Self {
        ModuleSwitch {
            flags,
            handle,
            modules,
        }
    }
}

impl Worker for ModuleSwitch {
    fn name(&self) -> &'static str {
        "flags-modules"
    }

    async fn run(self: Arc<Self>, ctx: WorkerContext) -> ActorResult {
        // Subscribed before the first pass, so no change after it is missed.
        let mut changes = self.flags.subscribe();
        let mut handle = self.handle.clone();
        ctx.ready();
        let waited = ctx
            .idle(until_cancelled(&ctx, async {
                handle
                    .wait_for(Option::is_some)
                    .await
                    .ok()
                    .and_then(|seen| seen.clone())
            }))
            .await;
        let Driven { supervisor, access } = match waited {
            None => return Ok(()),
            Some(Some(driven)) => driven,
            // The sender is gone without a handle (the service was never built): nothing to drive.
            Some(None) => {
                ctx.set_status("no supervisor handle");
                ctx.idle(ctx.cancelled()).await;
                return Ok(());
            }
        };
        loop {
            apply_dry_run(&self.flags, &access);
            apply_modules(&self.flags, &supervisor, self.modules).await;
            ctx.progress();
            // Wait for a change that names a module flag (or a lost change: apply anyway).
            loop {
                match ctx.idle(until_cancelled(&ctx, changes.recv())).await {
                    None | Some(Err(broadcast::error::RecvError::Closed)) => return Ok(()),
                    Some(Err(broadcast::error::RecvError::Lagged(_))) => break,
                    Some(Ok(change)) => {
                        let names_a_module = change.flags.iter().any(|(key, _)| {
                            key == DRY_RUN_FLAG || self.modules.iter().any(|(flag, _)| flag == key)
                        });
                        if names_a_module {
                            break;
                        }
                    }
                }
            }
        }
    }
}
