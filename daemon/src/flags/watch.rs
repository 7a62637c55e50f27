//! The `flags-watch` worker: reloads the definitions when their file changes and on SIGHUP.
//!
//! It watches the file's *directory* (inotify through `notify`), not the file: editors save by
//! writing a new file and renaming it over the old one, and Kubernetes ConfigMaps swap a `..data`
//! symlink, so the watched inode would be replaced under a file watch. Any event in the directory
//! starts a quiet period (`settle_ms`, restarted by every further event) after which the file is read
//! once; a read equal to what is serving changes nothing. A directory that cannot be watched (it
//! does not exist yet) is polled every second instead, and SIGHUP reloads in every case.
//!
//! `notify` reads inotify on a thread of its own; the watcher (and so that thread) belongs to the
//! worker's incarnation and ends with it. Its callback only wakes this loop; all work happens here.

use std::sync::Arc;
use std::time::Duration;

use notify::Watcher;
use tokio::sync::mpsc;

use super::{Flags, ReloadResult};
use crate::supervisor::actor::{ActorError, ActorResult};
use crate::supervisor::worker::{Worker, WorkerContext, until_cancelled};

/// How often the file is read when its directory cannot be watched.
const POLL_PERIOD: Duration = Duration::from_secs(1);

/// See the module docs.
pub struct FlagsWatch {
    flags: Arc<Flags>,
    watch: bool,
    settle: Duration,
}

impl FlagsWatch {
    pub fn new(flags: Arc<Flags>, watch: bool, settle: Duration) -> Self {
        FlagsWatch {
            flags,
            watch,
            settle,
        }
    }

    /// A watcher on the file's directory that sends a unit per event, or `None` when the directory
    /// cannot be watched.
    fn watcher(&self, tx: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
        let dir = self.flags.path().parent()?.to_owned();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok() {
                    // Full: a wake-up is already pending, which is all a burst needs.
                    let _ = tx.try_send(());
                }
            })
            .ok()?;
        match watcher.watch(&dir, notify::RecursiveMode::NonRecursive) {
            Ok(()) => Some(watcher),
            Err(err) => {
                tracing::warn!(dir = %dir.display(), error = %err, "cannot watch the flags directory; polling it");
                None
            }
        }
    }
}

enum Wake {
    Stop,
    Signal,
    Event,
    Poll,
}

impl Worker for FlagsWatch {
    fn name(&self) -> &'static str {
        "flags-watch"
    }

    async fn run(self: Arc<Self>, ctx: WorkerContext) -> ActorResult {
        let (tx, mut events) = mpsc::channel::<()>(1);
        let watcher = if self.watch { self.watcher(tx) } else { None };
        let polling = self.watch && watcher.is_none();
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|err| ActorError::new(format!("cannot listen for SIGHUP: {err}")))?;
        let mut poll = tokio::time::interval(POLL_PERIOD);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ctx.set_status(if watcher.is_some() {
            "watching"
        } else if polling {
            "polling"
        } else {
            "SIGHUP only"
        });
        ctx.ready();
        loop {
            let wake = ctx
                .idle(until_cancelled(&ctx, async {
                    tokio::select! {
                        _ = hangup.recv() => Wake::Signal,
                        Some(()) = events.recv() => Wake::Event,
                        _ = poll.tick(), if polling => Wake::Poll,
                    }
                }))
                .await
                .unwrap_or(Wake::Stop);
            let trigger = match wake {
                Wake::Stop => return Ok(()),
                Wake::Signal => "sighup",
                Wake::Poll => "poll",
                Wake::Event => {
                    // Settle: wait until no event came for `settle`.
                    loop {
                        let more = ctx
                            .idle(until_cancelled(
                                &ctx,
                                tokio::time::timeout(self.settle, events.recv()),
                            ))
                            .await;
                        match more {
                            None => return Ok(()),
                            Some(Ok(Some(()))) => continue,
                            Some(_) => break,
                        }
                    }
                    "watch"
                }
            };
            let result = self.flags.reload(trigger).await;
            if !matches!(result, ReloadResult::Unchanged) || trigger == "sighup" {
                ctx.set_status(match &result {
                    ReloadResult::Refused(_) => "last reload refused",
                    _ => "watching",
                });
            }
            ctx.progress();
        }
    }
}
