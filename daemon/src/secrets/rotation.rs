//! The `secrets-rotation` worker: sleeps until the earliest scheduled rotation (or a schedule
//! change), then rotates every secret that is due. Due times are wall-clock, kept in each secret's
//! metadata, so a period that elapsed while the daemon was stopped rotates right after the start.
//! The sleep is capped so a wall-clock jump is noticed within [`MAX_SLEEP`].

use std::sync::Arc;
use std::time::Duration;

use super::Secrets;
use crate::supervisor::worker::until_cancelled;
use crate::supervisor::{ActorResult, Worker, WorkerContext, WorkerPolicy};

/// Longest sleep between looks at the schedule.
const MAX_SLEEP: Duration = Duration::from_secs(30);

pub struct SecretsRotation {
    secrets: Arc<Secrets>,
}

impl SecretsRotation {
    pub fn new(secrets: Arc<Secrets>) -> Self {
        SecretsRotation { secrets }
    }
}

impl Worker for SecretsRotation {
    fn name(&self) -> &'static str {
        "secrets-rotation"
    }

    /// Optional: without it rotations are late; reads and writes go on.
    fn policy(&self) -> WorkerPolicy {
        WorkerPolicy::OPTIONAL
    }

    async fn run(self: Arc<Self>, ctx: WorkerContext) -> ActorResult {
        ctx.ready();
        loop {
            let wait = match self.secrets.next_rotation_ms() {
                Some(at) => Duration::from_millis(at.saturating_sub(self.secrets.now_ms())),
                None => MAX_SLEEP,
            }
            .min(MAX_SLEEP);
            if !wait.is_zero() {
                let sleep = async {
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = self.secrets.schedule_changed() => {}
                    }
                };
                if ctx.idle(until_cancelled(&ctx, sleep)).await.is_none() {
                    return Ok(());
                }
            }
            let rotated = self.secrets.rotate_due().await;
            if rotated > 0 {
                ctx.set_status(format!("rotated {rotated} secrets"));
            }
            ctx.progress();
            if ctx.is_cancelled() {
                return Ok(());
            }
        }
    }
}
