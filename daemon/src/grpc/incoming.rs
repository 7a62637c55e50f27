//! Accepting connections: TCP accept → connection limit → TLS handshake (with a deadline, off the accept
//! loop) → principal extraction → a [`PeerStream`] handed to tonic. Every task here belongs to the
//! daemon's task tracker and stops with its cancellation token.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;

use crate::access::identity::{PeerInfo, principal_from_der};
use crate::grpc::tls::ReloadableTls;
use crate::runtime::events::{ConnectionClosed, ConnectionOutcome};
use crate::runtime::tasks::Tasks;

/// A verified mTLS connection and the identity it carries.
pub struct PeerStream {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    info: PeerInfo,
    _permit: OwnedSemaphorePermit,
}

impl Drop for PeerStream {
    fn drop(&mut self) {
        ConnectionClosed.emit();
    }
}

impl Connected for PeerStream {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

pub struct AcceptLimits {
    pub max_connections: usize,
    pub handshake_timeout: Duration,
}

/// Starts the accept loop on `listener`; verified connections come out of the returned channel.
pub fn spawn_accept_loop(
    listener: TcpListener,
    tls: Arc<ReloadableTls>,
    limits: AcceptLimits,
    tasks: &Tasks,
    token: CancellationToken,
) -> mpsc::Receiver<Result<PeerStream, io::Error>> {
    let (tx, rx) = mpsc::channel(256);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let handshakes = tasks.clone();
    tasks.spawn("grpc.accept", async move {
        loop {
            let (tcp, peer) = tokio::select! {
                _ = token.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(err) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                ConnectionOutcome::RejectedLimit.emit(Some(peer), None);
                drop(tcp);
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = tls.acceptor();
            let tx = tx.clone();
            let token = token.clone();
            handshakes.spawn("grpc.handshake", async move {
                let handshake = tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp));
                let stream = tokio::select! {
                    _ = token.cancelled() => return,
                    result = handshake => match result {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(err)) => {
                            ConnectionOutcome::HandshakeFailed.emit(Some(peer), Some(&err.to_string()));
                            return;
                        }
                        Err(_) => {
                            ConnectionOutcome::HandshakeTimeout.emit(Some(peer), None);
                            return;
                        }
                    },
                };
                let principal = match stream.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                    Some(cert) => principal_from_der(cert.as_ref()).map(Arc::new),
                    // The verifier requires a certificate; this is unreachable in practice.
                    None => Err(crate::access::identity::IdentityError::NoPrincipal),
                };
                ConnectionOutcome::Accepted.emit(Some(peer), None);
                let stream = PeerStream {
                    inner: stream,
                    info: PeerInfo {
                        remote_addr: Some(peer),
                        principal,
                    },
                    _permit: permit,
                };
                let _ = tx.send(Ok(stream)).await;
            });
        }
    });
    rx
}
