//! The flag-evaluation unix socket (`[flags] socket_path`; flagd's `--socket-path`): the
//! `flags-socket` worker serves the flagd evaluation services, and nothing else, to local processes
//! that have no client certificate.
//!
//! A caller is named by the uid the kernel reports for the connecting process (`SO_PEERCRED`), as
//! `unix:uid:<uid>`: it cannot be forged by the caller, and no certificate can name it (the `unix:`
//! scheme is reserved, `access::identity`). Every call then goes through the same authorization layer
//! as on the TLS port (method table, grants, rate limits, audit of refusals), so the uid needs
//! `flags.evaluate` in `[[grants]]` like any other principal. The socket file's mode decides who may
//! connect at all. docs/FLAGS.md gives the reasoning.
//!
//! The socket is bound at start (a bad path stops the start with its reason); each incarnation of
//! the worker serves a clone of it. A stale socket file left by a crash is replaced; any other file
//! at the path is refused.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixStream;
use tokio::sync::{Semaphore, watch};
use tonic::service::Routes;
use tonic::transport::Server;

use crate::access::Access;
use crate::access::identity::{PeerInfo, unix_principal};
use crate::grpc::incoming::Peer;
use crate::grpc::layer::AuthLayer;
use crate::supervisor::actor::{ActorError, ActorResult};
use crate::supervisor::worker::{Worker, WorkerContext, WorkerPolicy, until_cancelled};
use crate::tokens::TokenService;

/// What the socket serves, handed over once the daemon's shared parts exist.
#[derive(Clone)]
pub struct Serving {
    /// The flagd evaluation services alone.
    pub routes: Routes,
    pub access: Arc<Access>,
    pub tokens: Arc<TokenService>,
    pub request_timeout: Duration,
}

/// Binds `path` with `mode`, replacing a stale socket; refuses any other kind of file there.
pub fn bind(path: &Path, mode: u32) -> io::Result<std::os::unix::net::UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket; remove it or choose another socket_path",
                    path.display()
                ),
            ));
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(err),
    }
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// The `flags-socket` worker (see the module docs).
pub struct FlagsSocket {
    path: PathBuf,
    listener: std::os::unix::net::UnixListener,
    max_connections: usize,
    serving: watch::Receiver<Option<Serving>>,
}

impl FlagsSocket {
    pub fn new(
        path: PathBuf,
        listener: std::os::unix::net::UnixListener,
        max_connections: usize,
        serving: watch::Receiver<Option<Serving>>,
    ) -> Self {
        FlagsSocket {
            path,
            listener,
            max_connections,
            serving,
        }
    }
}

impl Drop for FlagsSocket {
    fn drop(&mut self) {
        // The daemon is done with it; the next start would replace it anyway.
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Worker for FlagsSocket {
    fn name(&self) -> &'static str {
        "flags-socket"
    }

    fn policy(&self) -> WorkerPolicy {
        WorkerPolicy::OPTIONAL.stop_deadline(Duration::from_secs(5))
    }

    async fn run(self: Arc<Self>, ctx: WorkerContext) -> ActorResult {
        let listener = self
            .listener
            .try_clone()
            .and_then(tokio::net::UnixListener::from_std)
            .map_err(|err| ActorError::new(format!("{}: {err}", self.path.display())))?;
        ctx.ready();
        let mut serving = self.serving.clone();
        let waited = ctx
            .idle(until_cancelled(&ctx, async {
                serving
                    .wait_for(Option::is_some)
                    .await
                    .ok()
                    .and_then(|seen| seen.clone())
            }))
            .await;
        let Some(Some(serving)) = waited else {
            ctx.idle(ctx.cancelled()).await;
            return Ok(());
        };
        ctx.set_status(format!("serving on {}", self.path.display()));
        let permits = Arc::new(Semaphore::new(self.max_connections));
        let incoming =
            futures::stream::unfold((listener, permits), |(listener, permits)| async move {
                let accepted = accept(&listener, &permits).await;
                Some((accepted, (listener, permits)))
            });
        let router = Server::builder()
            .layer(AuthLayer::new(
                serving.access,
                serving.tokens,
                serving.request_timeout,
                None,
            ))
            .add_routes(serving.routes);
        let served = ctx
            .idle(router.serve_with_incoming_shutdown(incoming, ctx.cancelled()))
            .await;
        served.map_err(|err| ActorError::new(format!("{}: {err}", self.path.display())))
    }
}

/// The next connection, once a connection slot is free, named by its peer's uid.
async fn accept(
    listener: &tokio::net::UnixListener,
    permits: &Arc<Semaphore>,
) -> io::Result<Peer<UnixStream>> {
    let permit = permits
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| io::Error::other("connection slots closed"))?;
    let (stream, _) = match listener.accept().await {
        Ok(accepted) => accepted,
        Err(err) => {
            // Out of descriptors and the like: the server skips the error and asks again, so
            // pause rather than spin.
            tokio::time::sleep(Duration::from_millis(100)).await;
            return Err(err);
        }
    };
    let uid = stream.peer_cred()?.uid();
    Ok(Peer::uncounted(
        stream,
        PeerInfo {
            remote_addr: None,
            principal: Ok(Arc::new(unix_principal(uid))),
        },
        permit,
    ))
}
