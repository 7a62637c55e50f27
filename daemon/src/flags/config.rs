//! `[flags]`: where the flagd definitions come from and how changes are noticed (docs/FLAGS.md).

use std::path::PathBuf;

use crate::config::{Config, Section, Table, Walker};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FlagsConfig {
    /// Serve the Flags and flagd evaluation services.
    pub enabled: bool,
    /// The flagd definitions file; relative paths are under the state directory. When it does not
    /// exist the shipped defaults (`config/flags.json`) serve until it appears.
    pub file: PathBuf,
    /// Reload when the file changes (inotify on its directory); SIGHUP always reloads.
    pub watch: bool,
    /// Quiet time after the last change event before the file is read (editors write in pieces).
    pub settle_ms: u64,
    /// An EventStream with nothing to say sends `keep_alive` this often (flagd: 20 s).
    pub keep_alive_seconds: u64,
    /// A unix socket serving the flagd evaluation services alone (flagd's `--socket-path`), callers
    /// named by their uid (`unix:uid:<uid>`); empty: none. Relative paths are under the state dir.
    pub socket_path: String,
    /// The socket file's permission bits.
    pub socket_mode: u64,
    /// Most connections the socket holds at once; further ones wait to be accepted.
    pub socket_max_connections: u64,
}

impl Default for FlagsConfig {
    fn default() -> Self {
        FlagsConfig {
            enabled: true,
            file: PathBuf::from("flags.json"),
            watch: true,
            settle_ms: 200,
            keep_alive_seconds: 20,
            socket_path: String::new(),
            socket_mode: 0o660,
            socket_max_connections: 256,
        }
    }
}

impl FlagsConfig {
    /// The definitions file, relative paths resolved under `state_dir`.
    pub fn path(&self, config: &Config) -> PathBuf {
        if self.file.is_absolute() {
            self.file.clone()
        } else {
            config.state_dir.join(&self.file)
        }
    }

    /// The unix socket's path, relative paths resolved under `state_dir`; `None` when off.
    pub fn socket(&self, config: &Config) -> Option<PathBuf> {
        let path = std::path::Path::new(&self.socket_path);
        if self.socket_path.is_empty() {
            None
        } else if path.is_absolute() {
            Some(path.to_path_buf())
        } else {
            Some(config.state_dir.join(path))
        }
    }
}

impl Section for FlagsConfig {
    const KEY: &'static str = "flags";

    fn parse(&mut self, walker: &mut Walker, root: &Table<'_>) {
        let Some(t) = walker.table(root, Self::KEY) else {
            return;
        };
        walker.boolean(&t, "enabled", &mut self.enabled);
        walker.path(&t, "file", &mut self.file);
        walker.boolean(&t, "watch", &mut self.watch);
        walker.integer(&t, "settle_ms", 0..=10_000, &mut self.settle_ms);
        walker.integer(
            &t,
            "keep_alive_seconds",
            1..=3600,
            &mut self.keep_alive_seconds,
        );
        walker.string(&t, "socket_path", &mut self.socket_path);
        walker.integer(&t, "socket_mode", 0..=0o777, &mut self.socket_mode);
        walker.integer(
            &t,
            "socket_max_connections",
            1..=65_536,
            &mut self.socket_max_connections,
        );
        walker.finish(t);
    }

    fn default_text(&self) -> String {
        format!(
            r#"[flags]
# Feature flags in flagd's format (docs/FLAGS.md): brainstem.v1.Flags and the flagd evaluation
# protocol (flagd.evaluation.v1/v2) on the main port.
enabled = {}
# The definitions file; a relative path is under state_dir. While it does not exist the shipped
# defaults serve. An invalid file is refused whole and the previous flags keep serving.
file = "{}"
# Reload when the file changes (also on symlink swaps); SIGHUP always reloads it.
watch = {}
# Wait this long after the last change before reading (editors write in several steps).
settle_ms = {}
# EventStream sends keep_alive after this many seconds of silence.
keep_alive_seconds = {}
# A unix socket serving flagd.evaluation.v1/v2 alone, for providers without a client certificate
# (flagd's --socket-path). Callers are named by their uid, unix:uid:<uid>, and need flags.evaluate
# in [[grants]] like anyone else. Empty: no socket. A relative path is under state_dir.
socket_path = "{}"
# The socket file's permission bits (who may connect at all; the grant decides what they get).
socket_mode = 0o{:o}
# Most connections the socket holds at once.
socket_max_connections = {}
"#,
            self.enabled,
            self.file.display(),
            self.watch,
            self.settle_ms,
            self.keep_alive_seconds,
            self.socket_path,
            self.socket_mode,
            self.socket_max_connections
        )
    }
}
