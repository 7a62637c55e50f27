//! Logging: tracing-subscriber, human or JSON lines on stderr (journald adds timestamps and units), the
//! filter from `RUST_LOG` or else `log.level`, and a handle that changes the level on reload.

use std::sync::Arc;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

use crate::runtime::config::LogFormat;

/// Changes the log filter of the running process.
pub trait LogControl: Send + Sync {
    fn set_level(&self, directive: &str) -> Result<(), String>;
}

struct FilterHandle {
    handle: reload::Handle<EnvFilter, Registry>,
    /// When `RUST_LOG` is set it wins over the config file, on start and on reload.
    env_override: bool,
}

impl LogControl for FilterHandle {
    fn set_level(&self, directive: &str) -> Result<(), String> {
        if self.env_override {
            return Ok(());
        }
        let filter = EnvFilter::try_new(directive).map_err(|err| err.to_string())?;
        self.handle.reload(filter).map_err(|err| err.to_string())
    }
}

/// Installs the global subscriber. Call once, from `main`.
pub fn init(format: LogFormat, level: &str) -> Arc<dyn LogControl> {
    let env_override = std::env::var_os("RUST_LOG").is_some();
    let filter = if env_override {
        EnvFilter::from_default_env()
    } else {
        EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"))
    };
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Human => registry.with(fmt.with_target(true)).init(),
        LogFormat::Json => registry
            .with(fmt.json().flatten_event(true).with_current_span(true))
            .init(),
    }
    Arc::new(FilterHandle {
        handle,
        env_override,
    })
}
