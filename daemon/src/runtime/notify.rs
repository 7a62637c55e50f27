//! The systemd notify protocol (`sd_notify(3)`) over `$NOTIFY_SOCKET`, written out rather than pulled in:
//! it is one datagram per message on a Unix socket (filesystem path or abstract `@name`).
//!
//! Without `$NOTIFY_SOCKET` (not started by systemd, or `Type=simple`) every call is a no-op, so the
//! daemon code sends unconditionally.
//!
//! Sends never block: the socket is non-blocking, and a message the manager's queue has no room for
//! (EAGAIN; a Unix datagram queue holds `net.unix.max_dgram_qlen` messages, 10 by default) is dropped
//! and counted ([`NotifyDropped`]). A manager that does not drain its socket therefore costs status
//! updates, never the daemon's ability to reload or stop.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::runtime::events::NotifyDropped;

#[derive(Debug, Clone)]
enum Target {
    Path(PathBuf),
    Abstract(Vec<u8>),
}

/// Sends notify messages to the service manager, if there is one.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    target: Option<Target>,
    /// Set while messages are being dropped, so the log says so once per episode, not per message.
    dropping: Arc<AtomicBool>,
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET`. Unset or empty: a notifier that sends nothing.
    pub fn from_env() -> Self {
        let Some(value) = std::env::var_os("NOTIFY_SOCKET") else {
            return Notifier::default();
        };
        let bytes = value.into_encoded_bytes();
        let target = match bytes.split_first() {
            None => None,
            Some((b'@', name)) => Some(Target::Abstract(name.to_vec())),
            Some(_) => Some(Target::Path(PathBuf::from(
                String::from_utf8_lossy(&bytes).into_owned(),
            ))),
        };
        Notifier {
            target,
            ..Notifier::default()
        }
    }

    /// A notifier that sends nothing.
    pub fn disabled() -> Self {
        Notifier::default()
    }

    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends one message, e.g. `"READY=1\nSTATUS=serving"`, without blocking. Errors are logged,
    /// never fatal: the daemon keeps serving if the manager went away. A full queue drops the message.
    pub fn notify(&self, message: &str) {
        match self.send(message) {
            Ok(()) => {
                if self.dropping.swap(false, Ordering::Relaxed) {
                    tracing::info!("sd_notify: the service manager takes messages again");
                }
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                let first = !self.dropping.swap(true, Ordering::Relaxed);
                NotifyDropped { message, first }.emit();
            }
            Err(err) => tracing::warn!(error = %err, message, "sd_notify failed"),
        }
    }

    fn send(&self, message: &str) -> io::Result<()> {
        let Some(target) = &self.target else {
            return Ok(());
        };
        let socket = UnixDatagram::unbound()?;
        socket.set_nonblocking(true)?;
        match target {
            Target::Path(path) => socket.send_to(message.as_bytes(), path)?,
            Target::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                socket.send_to_addr(message.as_bytes(), &addr)?
            }
        };
        Ok(())
    }

    pub fn ready(&self, status: &str) {
        self.notify(&format!(
            "READY=1\nSTATUS={status}\nMAINPID={}",
            std::process::id()
        ));
    }

    pub fn status(&self, status: &str) {
        self.notify(&format!("STATUS={status}"));
    }

    pub fn stopping(&self) {
        self.notify("STOPPING=1\nSTATUS=stopping: draining in-flight calls");
    }

    /// `RELOADING=1` with the `MONOTONIC_USEC` that `Type=notify-reload` requires.
    pub fn reloading(&self) {
        self.notify(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading",
            monotonic_usec()
        ));
    }

    pub fn watchdog(&self) {
        self.notify("WATCHDOG=1");
    }

    /// Asks for more time before systemd gives up on a start or stop.
    pub fn extend_timeout(&self, by: Duration) {
        self.notify(&format!("EXTEND_TIMEOUT_USEC={}", by.as_micros()));
    }
}

/// `CLOCK_MONOTONIC` in microseconds, the clock systemd compares `MONOTONIC_USEC` against.
pub fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; CLOCK_MONOTONIC is always available on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1_000
}

/// The watchdog interval systemd asked for (`$WATCHDOG_USEC`, only if `$WATCHDOG_PID` is unset or ours).
/// Pings go out at half of it.
pub fn watchdog_interval() -> Option<Duration> {
    if let Some(pid) = std::env::var_os("WATCHDOG_PID") {
        if pid.to_str().and_then(|p| p.parse::<u32>().ok()) != Some(std::process::id()) {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_datagrams_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let receiver = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier {
            target: Some(Target::Path(path)),
            ..Notifier::default()
        };
        notifier.reloading();
        let mut buf = [0u8; 256];
        let n = receiver.recv(&mut buf).unwrap();
        let text = std::str::from_utf8(&buf[..n]).unwrap();
        assert!(text.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{text}");
        let usec: u64 = text.lines().nth(1).unwrap()["MONOTONIC_USEC=".len()..]
            .parse()
            .unwrap();
        assert!(usec > 0);
    }

    #[test]
    fn sends_datagrams_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("brainstem-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let receiver = UnixDatagram::bind_addr(&addr).unwrap();
        let notifier = Notifier {
            target: Some(Target::Abstract(name.into_bytes())),
            ..Notifier::default()
        };
        notifier.watchdog();
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");
    }

    /// Issue 9: a manager that never reads its socket must not block the sender.
    #[test]
    fn a_full_socket_drops_messages_instead_of_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let receiver = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier {
            target: Some(Target::Path(path)),
            ..Notifier::default()
        };
        // Far more than any queue holds; a blocking send would hang this test on the first full one.
        for _ in 0..10_000 {
            notifier.watchdog();
            if notifier.dropping.load(Ordering::Relaxed) {
                break;
            }
        }
        assert!(notifier.dropping.load(Ordering::Relaxed), "never dropped");
        notifier.status("still not blocking");
        // Drained, it sends again.
        receiver.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 64];
        while receiver.recv(&mut buf).is_ok() {}
        notifier.watchdog();
        assert!(!notifier.dropping.load(Ordering::Relaxed));
        assert_eq!(receiver.recv(&mut buf).unwrap(), b"WATCHDOG=1".len());
    }

    #[test]
    fn disabled_notifier_sends_nothing_and_does_not_fail() {
        Notifier::disabled().ready("x");
        assert!(!Notifier::disabled().is_enabled());
    }
}
