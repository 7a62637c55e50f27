//! Logging: tracing-subscriber, human or JSON lines on stderr (journald adds timestamps and units), the
//! filter from `RUST_LOG` (when set and not empty) or else `log.level`, and a handle that changes the
//! filter at runtime (reload, Admin.SetLogLevel). Every
//! formatted event passes through [`redact::global`] before it is written ([`redacting_writer`]), and
//! so does a panic's message (the panic hook).

use std::io::Write;
use std::sync::Arc;

use tracing_subscriber::fmt::MakeWriter;

use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

use crate::runtime::config::LogFormat;
use crate::runtime::redact::{self, Redactor};

/// Changes the log filter of the running process.
pub trait LogControl: Send + Sync {
    /// Applies `[log] level` of a (re)loaded configuration; ignored while `RUST_LOG` overrides it
    /// (the directive is still remembered as [`LogControl::configured`]).
    fn set_level(&self, directive: &str) -> Result<(), String>;
    /// Replaces the filter whatever `RUST_LOG` said (the operator asked, through the Admin API);
    /// returns the filter it replaced. An invalid directive changes nothing.
    fn set_filter(&self, directive: &str) -> Result<String, String>;
    /// The filter in force.
    fn filter(&self) -> String;
    /// The configuration's `[log] level` last applied or remembered.
    fn configured(&self) -> String;
    /// Whether `RUST_LOG` was set at start.
    fn env_override(&self) -> bool;
}

/// The longest filter directive accepted at runtime.
pub const MAX_FILTER_BYTES: usize = 1024;

/// Checks a filter directive: `Err(why)` when EnvFilter refuses it or it is too long.
pub fn check_filter(directive: &str) -> Result<EnvFilter, String> {
    if directive.len() > MAX_FILTER_BYTES {
        return Err(format!("at most {MAX_FILTER_BYTES} bytes"));
    }
    if directive.trim().is_empty() {
        return Err("empty; give a level such as \"info\" or directives such as \"warn,brainstemd::access=debug\"".to_owned());
    }
    EnvFilter::builder()
        .with_regex(false)
        .parse(directive)
        .map_err(|err| format!("not a valid filter: {err}"))
}

/// The reloadable filter and what it was built from.
pub struct FilterHandle<S = Registry> {
    handle: reload::Handle<EnvFilter, S>,
    /// When `RUST_LOG` is set it wins over the config file, on start and on reload.
    env_override: bool,
    /// (filter in force, configured level).
    state: std::sync::Mutex<(String, String)>,
}

impl<S> FilterHandle<S> {
    pub fn new(
        handle: reload::Handle<EnvFilter, S>,
        env_override: bool,
        filter: String,
        configured: String,
    ) -> Self {
        FilterHandle {
            handle,
            env_override,
            state: std::sync::Mutex::new((filter, configured)),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, (String, String)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<S: tracing::Subscriber + 'static> LogControl for FilterHandle<S> {
    fn set_level(&self, directive: &str) -> Result<(), String> {
        self.state().1 = directive.to_owned();
        if self.env_override {
            return Ok(());
        }
        self.set_filter(directive).map(drop)
    }

    fn set_filter(&self, directive: &str) -> Result<String, String> {
        let filter = check_filter(directive)?;
        // Held across the swap so two changes cannot interleave their bookkeeping.
        let mut state = self.state();
        self.handle.reload(filter).map_err(|err| err.to_string())?;
        Ok(std::mem::replace(&mut state.0, directive.to_owned()))
    }

    fn filter(&self) -> String {
        self.state().0.clone()
    }

    fn configured(&self) -> String {
        self.state().1.clone()
    }

    fn env_override(&self) -> bool {
        self.env_override
    }
}

/// Installs the global subscriber and the panic hook. Call once, from `main`. With a `tracer`
/// (`[traces]` on) the log filter moves onto the log layer and an OpenTelemetry layer is added with a
/// filter of its own: this crate's spans down to `debug`, no events (log lines stay in the logs, where
/// they are redacted). Without one the subscriber is exactly the logging one.
pub fn init(
    format: LogFormat,
    level: &str,
    tracer: Option<crate::runtime::traces::Tracer>,
) -> Arc<dyn LogControl> {
    install_panic_hook();
    // An empty RUST_LOG counts as unset: the configuration's level applies.
    let env_override = std::env::var_os("RUST_LOG").is_some_and(|v| !v.is_empty());
    let (filter, text) = if env_override {
        let text = std::env::var("RUST_LOG").unwrap_or_default();
        (EnvFilter::from_default_env(), text)
    } else {
        match EnvFilter::try_new(level) {
            Ok(filter) => (filter, level.to_owned()),
            Err(_) => (EnvFilter::new("info"), "info".to_owned()),
        }
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // One per branch: the layer's type names the subscriber below it.
    macro_rules! fmt {
        () => {
            tracing_subscriber::fmt::layer()
                .with_writer(redacting_writer(redact::global(), std::io::stderr))
                .with_ansi(ansi)
        };
    }
    let control = |handle| -> Arc<dyn LogControl> {
        Arc::new(FilterHandle::new(
            handle,
            env_override,
            text.clone(),
            level.to_owned(),
        ))
    };
    let Some(tracer) = tracer else {
        let (filter, handle) = reload::Layer::new(filter);
        let registry = tracing_subscriber::registry().with(filter);
        match format {
            LogFormat::Human => registry.with(fmt!().with_target(true)).init(),
            LogFormat::Json => registry
                .with(fmt!().json().flatten_event(true).with_current_span(true))
                .init(),
        }
        return control(handle);
    };
    let traces = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_filter(tracing_subscriber::filter::filter_fn(exported));
    let registry = tracing_subscriber::registry().with(traces);
    let (filter, handle) = reload::Layer::new(filter);
    match format {
        LogFormat::Human => registry
            .with(fmt!().with_target(true).with_filter(filter))
            .init(),
        LogFormat::Json => registry
            .with(
                fmt!()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_filter(filter),
            )
            .init(),
    }
    Arc::new(FilterHandle::new(
        handle,
        env_override,
        text,
        level.to_owned(),
    ))
}

/// What the OpenTelemetry layer records: this crate's spans at `debug` or above, never events.
fn exported(meta: &tracing::Metadata<'_>) -> bool {
    meta.is_span()
        && *meta.level() <= tracing::Level::DEBUG
        && meta
            .target()
            .split("::")
            .next()
            .is_some_and(|root| root == "brainstemd")
}

/// A [`MakeWriter`] that hands each formatted event to `redactor` and writes what is left to
/// `inner` in one `write_all`. Used for stderr by [`init`]; tests wrap a buffer.
pub fn redacting_writer<M>(redactor: &'static Redactor, inner: M) -> RedactingMakeWriter<M> {
    RedactingMakeWriter { redactor, inner }
}

/// See [`redacting_writer`].
pub struct RedactingMakeWriter<M> {
    redactor: &'static Redactor,
    inner: M,
}

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for RedactingMakeWriter<M> {
    type Writer = RedactingWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        RedactingWriter::new(self.redactor, self.inner.make_writer())
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        RedactingWriter::new(self.redactor, self.inner.make_writer_for(meta))
    }
}

/// One event's writer. The fmt layer formats an event into its own buffer and writes it with one
/// `write_all`, which arrives here as one `write` of a whole line: that is redacted and written at once
/// without copying. Anything written in pieces is collected and redacted whole when the writer is
/// dropped (the end of the event), so a value is never split between two redaction calls.
pub struct RedactingWriter<W: Write> {
    redactor: &'static Redactor,
    inner: W,
    pending: Vec<u8>,
}

impl<W: Write> RedactingWriter<W> {
    fn new(redactor: &'static Redactor, inner: W) -> Self {
        RedactingWriter {
            redactor,
            inner,
            pending: Vec::new(),
        }
    }

    fn write_redacted(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let text = String::from_utf8_lossy(bytes);
        let redacted = self.redactor.redact(&text);
        self.inner.write_all(redacted.as_bytes())
    }
}

impl<W: Write> Write for RedactingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.pending.is_empty() && buf.ends_with(b"\n") {
            self.write_redacted(buf)?;
        } else {
            self.pending.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        // Pending text waits for the end of the event; a flush must not split it.
        self.inner.flush()
    }
}

impl<W: Write> Drop for RedactingWriter<W> {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            let pending = std::mem::take(&mut self.pending);
            let _ = self.write_redacted(&pending);
            let _ = self.inner.flush();
        }
    }
}

/// Panics are written to stderr by the panic hook, not the subscriber, and their messages may quote
/// a value: the same redaction applies. Replaces the default hook with one that prints the same text
/// (thread, location, message, and a backtrace when `RUST_BACKTRACE` asks for one).
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let location = info
            .location()
            .map(|l| l.to_string())
            .unwrap_or_else(|| "<unknown>".to_owned());
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("Box<dyn Any>");
        let backtrace = std::backtrace::Backtrace::capture();
        let text = panic_text(thread.name(), &location, message, &backtrace);
        let mut stderr = std::io::stderr().lock();
        let _ = stderr
            .write_all(redact_panic(redact::global(), &text, thread.name(), &location).as_bytes());
    }));
}

/// What the default hook prints.
fn panic_text(
    thread: Option<&str>,
    location: &str,
    message: &str,
    backtrace: &std::backtrace::Backtrace,
) -> String {
    let thread = thread.unwrap_or("<unnamed>");
    match backtrace.status() {
        std::backtrace::BacktraceStatus::Captured => {
            format!(
                "thread '{thread}' panicked at {location}:\n{message}\nstack backtrace:\n{backtrace}\n"
            )
        }
        _ => format!(
            "thread '{thread}' panicked at {location}:\n{message}\nnote: run with `RUST_BACKTRACE=1` \
             environment variable to display a backtrace\n"
        ),
    }
}

/// The panic text redacted, or only where it happened if the redactor cannot be read (the panic
/// struck while its lock was held).
fn redact_panic(redactor: &Redactor, text: &str, thread: Option<&str>, location: &str) -> String {
    match redactor.redact_without_blocking(text) {
        Some(redacted) => redacted.into_owned(),
        None => format!(
            "thread '{}' panicked at {location}: message withheld (the log redactor was busy)\n",
            thread.unwrap_or("<unnamed>")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_changes_at_runtime_and_remembers_what_it_replaced() {
        use tracing_subscriber::layer::SubscriberExt;
        let (filter, handle) = reload::Layer::new(EnvFilter::new("info"));
        let subscriber = tracing_subscriber::registry().with(filter);
        let control = FilterHandle::new(handle, false, "info".into(), "info".into());
        tracing::subscriber::with_default(subscriber, || {
            assert!(!tracing::enabled!(tracing::Level::DEBUG));
            assert_eq!(control.set_filter("debug").unwrap(), "info");
            tracing::callsite::rebuild_interest_cache();
            assert!(tracing::enabled!(tracing::Level::DEBUG));
            assert_eq!(control.filter(), "debug");
            // A bad directive changes nothing.
            for bad in ["foo=bogus", "", &"a".repeat(MAX_FILTER_BYTES + 1)] {
                assert!(control.set_filter(bad).is_err(), "{bad:?}");
            }
            assert_eq!(control.filter(), "debug");
            // The configuration's level applies (and is remembered) on reload.
            control.set_level("warn").unwrap();
            assert_eq!(
                (control.filter(), control.configured()),
                ("warn".into(), "warn".into())
            );
        });
    }

    #[test]
    fn under_rust_log_a_reload_keeps_the_filter_but_the_operator_may_change_it() {
        let (_filter, handle) = reload::Layer::<EnvFilter, Registry>::new(EnvFilter::new("info"));
        let control = FilterHandle::new(handle, true, "trace".into(), "info".into());
        control.set_level("warn").unwrap();
        assert_eq!(
            (control.filter(), control.configured()),
            ("trace".into(), "warn".into())
        );
    }

    #[test]
    fn panic_messages_are_redacted() {
        let redactor = Redactor::new();
        redactor.remember(b"value-in-a-panic-message");
        let backtrace = std::backtrace::Backtrace::disabled();
        let text = panic_text(
            Some("worker"),
            "src/x.rs:1:2",
            "unexpected value-in-a-panic-message (password=hunter2)",
            &backtrace,
        );
        let out = redact_panic(&redactor, &text, Some("worker"), "src/x.rs:1:2");
        assert!(
            out.starts_with("thread 'worker' panicked at src/x.rs:1:2:\n"),
            "{out}"
        );
        assert!(
            out.contains("unexpected [redacted] (password=[redacted])"),
            "{out}"
        );
    }

    #[test]
    fn a_panic_while_the_redactor_is_locked_withholds_the_message() {
        let redactor = Redactor::new();
        redactor.remember(b"value-in-a-panic-message");
        let text = "thread 'x' panicked at a.rs:1:1:\nvalue-in-a-panic-message\n";
        let held = redactor.hold_write_lock_for_test();
        let out = redact_panic(&redactor, text, Some("x"), "a.rs:1:1");
        drop(held);
        assert_eq!(
            out,
            "thread 'x' panicked at a.rs:1:1: message withheld (the log redactor was busy)\n"
        );
    }
}
