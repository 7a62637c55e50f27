//! Access: everything that answers "may I?", held together so the services and the authorization
//! layer share one view and a reload swaps the reloadable parts whole.
//!
//! - grants ([`Authorizer`]) — which capabilities a principal holds (the layer checks them);
//! - the Cedar [`PolicyEngine`] — Policy.Check and the guardrails' policy half;
//! - [`Guardrails`] and the [`RateLimiter`] — swapped on reload (their buckets start full again);
//! - the [`AuditLog`] — where every decision goes;
//! - [`decide`] — the one audited path from a question to a decision (policy, guardrails, …);
//! - [`caller`] — the authenticated [`Caller`] and [`require_scope`], the handler's half of a
//!   resource-scoped capability.

pub mod api;
pub mod audit;
pub mod authz;
pub mod caller;
pub mod config;
pub mod decide;
pub mod events;
pub mod guardrails;
pub mod identity;
pub mod ratelimit;
#[cfg(test)]
pub mod testing;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::access::audit::{AuditKind, AuditLog, AuditRecord};
use crate::access::authz::Authorizer;
use crate::access::guardrails::Guardrails;
use crate::access::ratelimit::{RateLimiter, Ticker, system_ticker};
use crate::config::Config;
use crate::error::ServiceError;
use crate::policy::events::PolicyReloaded;
use crate::policy::{LoadedSet, PolicyEngine, PolicyError, PolicySource};
use crate::runtime::tasks::Tasks;
use crate::supervisor::worker::until_cancelled;
use crate::supervisor::{ActorResult, Worker, WorkerContext, WorkerPolicy};

pub use self::caller::{Caller, caller, require_scope};
pub use self::decide::{CHECK_AS, Decided, DecisionRequest, Reasons, RulesVerdict};

/// The reason a fail-closed decision gives when its audit record could not be written.
pub const AUDIT_UNAVAILABLE: &str = "audit-unavailable";

/// The reason an advisory denial carries in dry-run mode: allowed, but the policies would deny.
pub const WOULD_DENY: &str = "dry-run-would-deny";

pub struct Access {
    pub authorizer: Arc<Authorizer>,
    pub policy: Arc<PolicyEngine>,
    pub audit: Arc<AuditLog>,
    guardrails: ArcSwap<Guardrails>,
    rate_limits: ArcSwap<RateLimiter>,
    policy_source: ArcSwap<PolicySource>,
    max_batch: AtomicUsize,
    /// `safety.dry_run_mode`: denials the policies mark advisory are let through as would-deny.
    dry_run: std::sync::atomic::AtomicBool,
}

/// The fallible half of a reload: everything built and checked, ready to swap in.
pub struct Prepared {
    source: PolicySource,
    set: Option<LoadedSet>,
    guardrails: Guardrails,
    rate_limits: RateLimiter,
    max_batch: usize,
}

impl Access {
    /// Loads the policy set named by `config` (every problem reported) for a start or a reload.
    pub fn prepare(config: &Config) -> Result<Prepared, String> {
        Self::prepare_with_clock(config, system_ticker())
    }

    /// [`Access::prepare`] with the clock the rate limits and click buckets read (tests inject a
    /// [`crate::access::ratelimit::ManualTicker`]).
    pub fn prepare_with_clock(config: &Config, clock: Arc<dyn Ticker>) -> Result<Prepared, String> {
        let source =
            PolicySource::from_config(&config.policy).map_err(|err| format!("policy: {err}"))?;
        let set = source.load().map_err(|err| err.to_string())?;
        Ok(Prepared {
            source,
            set: Some(set),
            guardrails: Guardrails::with_clock(&config.guardrails, clock.clone()),
            rate_limits: RateLimiter::with_clock(&config.rate_limits, clock),
            max_batch: config.policy.max_batch as usize,
        })
    }

    pub fn new(authorizer: Arc<Authorizer>, audit: Arc<AuditLog>, mut prepared: Prepared) -> Self {
        let set = prepared
            .set
            .take()
            .unwrap_or_else(|| unreachable!("prepare always loads"));
        PolicyReloaded {
            applied: true,
            trigger: "start",
            detail: &set.digest,
            policies: set.policies.len(),
        }
        .emit();
        Access {
            authorizer,
            policy: Arc::new(PolicyEngine::new(set)),
            audit,
            guardrails: ArcSwap::from_pointee(prepared.guardrails),
            rate_limits: ArcSwap::from_pointee(prepared.rate_limits),
            policy_source: ArcSwap::from_pointee(prepared.source),
            max_batch: AtomicUsize::new(prepared.max_batch),
            dry_run: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Turns dry-run mode on or off (the `safety.dry_run_mode` flag drives it); logs a change.
    pub fn set_dry_run(&self, on: bool) {
        let was = self.dry_run.swap(on, std::sync::atomic::Ordering::Relaxed);
        if was != on {
            events::DryRunMode { on }.emit();
        }
    }

    /// Whether dry-run mode is on.
    pub fn dry_run(&self) -> bool {
        self.dry_run.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Swaps in a prepared reload. Cannot fail.
    pub fn apply(&self, mut prepared: Prepared) {
        if let Some(set) = prepared.set.take() {
            self.policy.replace(set);
            let current = self.policy.current();
            PolicyReloaded {
                applied: true,
                trigger: "sighup",
                detail: &current.digest,
                policies: current.policies.len(),
            }
            .emit();
        }
        self.guardrails.store(Arc::new(prepared.guardrails));
        self.rate_limits.store(Arc::new(prepared.rate_limits));
        self.policy_source.store(Arc::new(prepared.source));
        self.max_batch.store(prepared.max_batch, Ordering::Relaxed);
    }

    /// Reloads the policy set from its source (the file watch). A refused set is logged and counted;
    /// the old set keeps deciding.
    pub fn reload_policies(&self, trigger: &'static str) -> Result<(), PolicyError> {
        match self.policy.reload(&self.policy_source.load()) {
            Ok(set) => {
                PolicyReloaded {
                    applied: true,
                    trigger,
                    detail: &set.digest,
                    policies: set.policies.len(),
                }
                .emit();
                Ok(())
            }
            Err(err) => {
                PolicyReloaded {
                    applied: false,
                    trigger,
                    detail: &err.to_string(),
                    policies: 0,
                }
                .emit();
                Err(err)
            }
        }
    }

    pub fn guardrails(&self) -> Arc<Guardrails> {
        self.guardrails.load_full()
    }

    pub fn rate_limits(&self) -> arc_swap::Guard<Arc<RateLimiter>> {
        self.rate_limits.load()
    }

    pub fn max_batch(&self) -> usize {
        self.max_batch.load(Ordering::Relaxed)
    }

    /// The roles the grants give `principal`.
    pub fn roles_of(&self, principal: &str) -> Arc<[String]> {
        self.authorizer.roles_of(principal)
    }

    /// [`require_scope`] against the live grants; a refusal is audited (kind `access`, action the
    /// capability, reason `outside-scope`).
    pub fn require_scope(
        &self,
        caller: &Caller,
        capability: &str,
        resource: &str,
    ) -> Result<(), ServiceError> {
        let result = require_scope(&self.authorizer, caller, capability, resource);
        if result.is_err() {
            let _ = self.audit.record(AuditRecord {
                seq: 0,
                time_unix_ms: 0,
                decision_id: self.audit.decision_id(),
                kind: AuditKind::Access,
                caller: caller.principal.name.clone(),
                principal: caller.principal.name.clone(),
                action: capability.to_owned(),
                resource: resource.to_owned(),
                allowed: false,
                reasons: vec!["outside-scope".to_owned()],
                correlation_id: String::new(),
                count: 1,
            });
        }
        result
    }

    /// Audits a call the authorization layer refused (aggregated: one record per caller, method,
    /// reason and second, carrying the first such call's `correlation_id`).
    pub fn audit_refusal(&self, caller: &str, method: &str, reason: &str, correlation_id: &str) {
        self.audit.refuse(caller, method, reason, correlation_id);
    }

    /// The `policy-watch` worker: watches the policy directory and reloads on change; sweeps idle
    /// buckets. `watch_interval` zero: no watch, sweeps only.
    pub fn policy_watch(self: &Arc<Self>, watch_interval: Duration) -> PolicyWatch {
        PolicyWatch {
            access: self.clone(),
            watch_interval,
            fingerprint: std::sync::Mutex::new(self.policy_source.load().fingerprint()),
        }
    }

    /// The daemon's task set, for blocking work the services do (policy validation, audit queries).
    pub fn tasks(&self) -> &Tasks {
        self.audit.tasks()
    }
}

type Fingerprint = Option<Vec<(String, u64, std::time::SystemTime)>>;

/// See [`Access::policy_watch`]. The last fingerprint seen belongs to the worker, not to one
/// incarnation, so a change made while it was restarting is still noticed.
pub struct PolicyWatch {
    access: Arc<Access>,
    watch_interval: Duration,
    fingerprint: std::sync::Mutex<Fingerprint>,
}

impl Worker for PolicyWatch {
    fn name(&self) -> &'static str {
        "policy-watch"
    }

    /// Optional: without it the last policy set keeps serving (SIGHUP still reloads).
    fn policy(&self) -> WorkerPolicy {
        WorkerPolicy::OPTIONAL
    }

    async fn run(self: Arc<Self>, ctx: WorkerContext) -> ActorResult {
        let access = &self.access;
        let period = if self.watch_interval.is_zero() {
            Duration::from_secs(60)
        } else {
            self.watch_interval
        };
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_sweep = Instant::now();
        ctx.ready();
        while ctx.idle(until_cancelled(&ctx, tick.tick())).await.is_some() {
            if !self.watch_interval.is_zero() {
                let now = access.policy_source.load().fingerprint();
                let changed = {
                    let mut seen = self.fingerprint.lock().unwrap_or_else(|e| e.into_inner());
                    let changed = *seen != now;
                    *seen = now;
                    changed
                };
                if changed {
                    let _ = access.reload_policies("file_change");
                }
            }
            if last_sweep.elapsed() >= Duration::from_secs(60) {
                last_sweep = Instant::now();
                let limits = access.rate_limits.load();
                limits.sweep(limits.now());
                let guardrails = access.guardrails.load();
                guardrails.sweep(guardrails.now());
            }
            ctx.progress();
        }
        Ok(())
    }
}
