//! Accepting connections: TCP accept → connection limits → first byte (short deadline) → TLS handshake
//! (with a deadline, off the accept loop) → principal extraction → a [`PeerStream`] handed to tonic.
//! Every task here belongs to the daemon's task tracker and stops with its cancellation token.
//!
//! Two separate bounds: `max_connections` counts established connections only; connections still in
//! their handshake count against `max_pending_handshakes` (and per source address), and a full pending
//! table evicts its oldest connection that has not sent a byte (see [`Pending`]). So idle TCP
//! connections cost nothing past the first-byte deadline and never lock out a client that speaks.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;

use crate::access::identity::{PeerInfo, principal_from_der};
use crate::grpc::config::ServerConfig;
use crate::grpc::tls::ReloadableTls;
use crate::runtime::events::{ConnectionClosed, ConnectionOutcome};
use crate::runtime::tasks::Tasks;

/// A verified mTLS connection and the identity it carries.
pub type PeerStream = Peer<tokio_rustls::server::TlsStream<TcpStream>>;

/// A connection, the identity it carries and the slot it holds: what tonic serves, whatever the
/// transport (mTLS here, the flag-evaluation unix socket in `flags::socket`).
pub struct Peer<S> {
    inner: S,
    info: PeerInfo,
    _permit: OwnedSemaphorePermit,
    /// Counted in the established-connection metrics (the TLS port's connections are).
    counted: bool,
}

impl<S> Peer<S> {
    /// A connection not counted in the TLS port's connection metrics.
    pub fn uncounted(inner: S, info: PeerInfo, permit: OwnedSemaphorePermit) -> Self {
        Peer {
            inner,
            info,
            _permit: permit,
            counted: false,
        }
    }
}

impl<S> Drop for Peer<S> {
    fn drop(&mut self) {
        if self.counted {
            ConnectionClosed.emit();
        }
    }
}

impl<S> Connected for Peer<S> {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Peer<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Peer<S> {
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

/// The accept loop's bounds, from `[server]`.
#[derive(Debug, Clone, Copy)]
pub struct AcceptLimits {
    /// Established (handshaken) connections.
    pub max_connections: usize,
    /// Connections accepted whose TLS handshake has not finished, in all.
    pub max_pending: usize,
    /// The same, per source IP address.
    pub max_pending_per_address: usize,
    /// A connection that has sent nothing by then is closed (a TLS client sends its ClientHello at once).
    pub first_byte_timeout: Duration,
    /// From accept to a finished handshake.
    pub handshake_timeout: Duration,
}

impl From<&ServerConfig> for AcceptLimits {
    fn from(config: &ServerConfig) -> Self {
        AcceptLimits {
            max_connections: config.max_connections as usize,
            max_pending: config.max_pending_handshakes as usize,
            max_pending_per_address: config.max_pending_handshakes_per_address as usize,
            first_byte_timeout: Duration::from_secs(config.first_byte_timeout_seconds),
            handshake_timeout: Duration::from_secs(config.handshake_timeout_seconds),
        }
    }
}

/// Connections between accept and a finished handshake. A full table (in all, or for one address)
/// makes room by evicting its oldest connection that has not sent a byte yet: idle connections can
/// then never lock out a client that speaks at once. Only when every pending connection is talking is
/// a new one refused.
#[derive(Default)]
struct Pending {
    next_id: u64,
    /// Every pending connection: id → source address.
    live: HashMap<u64, IpAddr>,
    per_address: HashMap<IpAddr, usize>,
    /// The pending connections that have sent nothing yet, oldest first; cancelling the token closes one.
    silent: BTreeMap<u64, (IpAddr, CancellationToken)>,
}

/// Why a connection found no pending slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Pending,
    PendingPerAddress,
}

impl Pending {
    /// Admits a connection from `addr`, evicting silent ones as needed. Returns its id and the token
    /// that closes it if it is evicted in turn.
    fn admit(
        &mut self,
        addr: IpAddr,
        limits: &AcceptLimits,
        parent: &CancellationToken,
    ) -> Result<(u64, CancellationToken), Refusal> {
        if self.per_address.get(&addr).copied().unwrap_or(0) >= limits.max_pending_per_address {
            let oldest = self
                .silent
                .iter()
                .find(|(_, (a, _))| *a == addr)
                .map(|(id, _)| *id);
            match oldest {
                Some(id) => self.evict(id),
                None => return Err(Refusal::PendingPerAddress),
            }
        }
        if self.live.len() >= limits.max_pending {
            match self.silent.keys().next().copied() {
                Some(id) => self.evict(id),
                None => return Err(Refusal::Pending),
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        let close = parent.child_token();
        self.live.insert(id, addr);
        *self.per_address.entry(addr).or_default() += 1;
        self.silent.insert(id, (addr, close.clone()));
        Ok((id, close))
    }

    fn evict(&mut self, id: u64) {
        if let Some((_, close)) = self.silent.get(&id) {
            close.cancel();
            ConnectionOutcome::EvictedSilent.emit(None, None);
        }
        self.release(id);
    }

    /// The connection sent its first byte: it can no longer be evicted.
    fn spoke(&mut self, id: u64) {
        self.silent.remove(&id);
    }

    /// The connection left the table (handshake done or failed, closed, evicted). Idempotent.
    fn release(&mut self, id: u64) {
        self.silent.remove(&id);
        if let Some(addr) = self.live.remove(&id) {
            if let Some(count) = self.per_address.get_mut(&addr) {
                *count -= 1;
                if *count == 0 {
                    self.per_address.remove(&addr);
                }
            }
        }
    }
}

/// A connection's place in [`Pending`], released when the handshake task ends however it ends.
struct PendingSlot {
    table: Arc<Mutex<Pending>>,
    id: u64,
}

impl PendingSlot {
    fn spoke(&self) {
        lock(&self.table).spoke(self.id);
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        lock(&self.table).release(self.id);
    }
}

/// The table is only touched by short, non-panicking sections; a poisoned lock still holds a
/// consistent table.
fn lock(table: &Mutex<Pending>) -> std::sync::MutexGuard<'_, Pending> {
    table.lock().unwrap_or_else(|e| e.into_inner())
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
    let pending = Arc::new(Mutex::new(Pending::default()));
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
            // Established connections are full: refuse before any TLS work. The slot itself is taken
            // after the handshake, so a connection that never finishes one never holds it.
            if slots.available_permits() == 0 {
                ConnectionOutcome::RejectedLimit.emit(Some(peer), None);
                drop(tcp);
                continue;
            }
            let admitted = lock(&pending).admit(peer.ip(), &limits, &token);
            let (id, close) = match admitted {
                Ok(admitted) => admitted,
                Err(refusal) => {
                    let outcome = match refusal {
                        Refusal::Pending => ConnectionOutcome::RejectedPending,
                        Refusal::PendingPerAddress => ConnectionOutcome::RejectedPendingAddress,
                    };
                    outcome.emit(Some(peer), None);
                    drop(tcp);
                    continue;
                }
            };
            let slot = PendingSlot {
                table: pending.clone(),
                id,
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = tls.acceptor();
            let tx = tx.clone();
            let slots = slots.clone();
            handshakes.spawn("grpc.handshake", async move {
                let accepted_at = tokio::time::Instant::now();
                // Cancelled at shutdown or when evicted (counted where it is evicted).
                let stream = tokio::select! {
                    _ = close.cancelled() => return,
                    stream = handshake(tcp, acceptor, &slot, accepted_at, &limits) => match stream {
                        Ok(stream) => stream,
                        Err((outcome, detail)) => {
                            outcome.emit(Some(peer), detail.as_deref());
                            return;
                        }
                    },
                };
                drop(slot);
                let Ok(permit) = slots.try_acquire_owned() else {
                    // Others finished their handshakes first.
                    ConnectionOutcome::RejectedLimit.emit(Some(peer), None);
                    return;
                };
                let principal = match stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                {
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
                    counted: true,
                };
                let _ = tx.send(Ok(stream)).await;
            });
        }
    });
    rx
}

/// First byte (within `first_byte_timeout`), then the TLS handshake (within `handshake_timeout` of the
/// accept).
async fn handshake(
    tcp: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    slot: &PendingSlot,
    accepted_at: tokio::time::Instant,
    limits: &AcceptLimits,
) -> Result<tokio_rustls::server::TlsStream<TcpStream>, (ConnectionOutcome, Option<String>)> {
    let mut first = [0u8; 1];
    match tokio::time::timeout(limits.first_byte_timeout, tcp.peek(&mut first)).await {
        Ok(Ok(n)) if n > 0 => slot.spoke(),
        Ok(Ok(_)) => {
            let detail = "closed before sending anything".to_owned();
            return Err((ConnectionOutcome::HandshakeFailed, Some(detail)));
        }
        Ok(Err(err)) => return Err((ConnectionOutcome::HandshakeFailed, Some(err.to_string()))),
        Err(_) => return Err((ConnectionOutcome::FirstByteTimeout, None)),
    }
    let deadline = accepted_at + limits.handshake_timeout;
    match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(err)) => Err((ConnectionOutcome::HandshakeFailed, Some(err.to_string()))),
        Err(_) => Err((ConnectionOutcome::HandshakeTimeout, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_pending: usize, per_address: usize) -> AcceptLimits {
        AcceptLimits {
            max_connections: 10,
            max_pending,
            max_pending_per_address: per_address,
            first_byte_timeout: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(10),
        }
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn a_full_table_evicts_the_oldest_silent_connection() {
        let parent = CancellationToken::new();
        let limits = limits(3, 3);
        let mut table = Pending::default();
        let (first, first_close) = table.admit(A, &limits, &parent).unwrap();
        let (second, second_close) = table.admit(B, &limits, &parent).unwrap();
        table.admit(A, &limits, &parent).unwrap();
        // The first one speaks; the next arrival evicts the oldest silent one, the second.
        table.spoke(first);
        table.admit(B, &limits, &parent).unwrap();
        assert!(!first_close.is_cancelled());
        assert!(second_close.is_cancelled());
        assert!(!table.live.contains_key(&second));
        assert_eq!(table.live.len(), 3);
        // Released twice (evicted, then its task ends): counted once.
        table.release(second);
        assert_eq!(table.live.len(), 3);
        assert_eq!(table.per_address[&B], 1);
    }

    #[test]
    fn only_talking_connections_refuse_a_new_one() {
        let parent = CancellationToken::new();
        let limits = limits(2, 2);
        let mut table = Pending::default();
        for _ in 0..2 {
            let (id, _) = table.admit(A, &limits, &parent).unwrap();
            table.spoke(id);
        }
        assert_eq!(
            table.admit(A, &limits, &parent).unwrap_err(),
            Refusal::PendingPerAddress
        );
        assert_eq!(
            table.admit(B, &limits, &parent).unwrap_err(),
            Refusal::Pending
        );
        table.release(0);
        assert!(table.admit(B, &limits, &parent).is_ok());
        assert_eq!(table.per_address.get(&A), Some(&1));
    }

    #[test]
    fn the_per_address_bound_evicts_from_that_address_only() {
        let parent = CancellationToken::new();
        let limits = limits(10, 2);
        let mut table = Pending::default();
        let (_, other) = table.admit(B, &limits, &parent).unwrap();
        let (_, oldest) = table.admit(A, &limits, &parent).unwrap();
        table.admit(A, &limits, &parent).unwrap();
        table.admit(A, &limits, &parent).unwrap();
        assert!(oldest.is_cancelled());
        assert!(!other.is_cancelled());
        assert_eq!(table.per_address[&A], 2);
        // Shutdown closes every pending connection.
        parent.cancel();
        assert!(other.is_cancelled());
    }
}
