//! `brainstemd`: parse arguments → load configuration → init telemetry → run until a signal says stop.
//! Everything else lives in the library, which the tests drive directly.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use brainstemd::config::{self, ConfigSource, EXIT_CONFIG, Overrides};
use brainstemd::grpc::tls;
use brainstemd::runtime::config::LogFormat;
use brainstemd::runtime::notify::Notifier;
use brainstemd::runtime::telemetry;
use brainstemd::{Daemon, ReloadOutcome, RunEnv};
use clap::{Parser, Subcommand, ValueEnum};
use futures::StreamExt;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use tokio_util::sync::CancellationToken;

/// mimalloc rather than glibc's malloc: allocation and free were about 15 % of the daemon's CPU on
/// the Ping path and more on a put (sled copies a leaf node per key it updates), much of it glibc's
/// arena consolidation when memory allocated on one thread is freed on another (docs/PERFORMANCE.md,
/// "The global allocator"). Only the binary sets it; the library and its tests keep the system's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "brainstemd", version, about = "brainstem host daemon")]
struct Cli {
    /// Configuration file (TOML). Without it the built-in defaults apply.
    #[arg(long, global = true, env = "BRAINSTEM_CONFIG")]
    config: Option<PathBuf>,
    /// Dev mode: own CA and certificates under <state-dir>/pki, created on first start.
    #[arg(long, global = true)]
    dev: bool,
    /// State directory (sled database; dev PKI). Dev mode default: ./.brainstem-dev
    #[arg(long, global = true, env = "BRAINSTEM_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// gRPC listen address, e.g. 127.0.0.1:50051 (port 0 picks a free port).
    #[arg(long, global = true)]
    listen: Option<std::net::SocketAddr>,
    /// Metrics listen address (loopback only), e.g. 127.0.0.1:9091.
    #[arg(long, global = true)]
    metrics_listen: Option<std::net::SocketAddr>,
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormatArg>,
    /// Log filter directive, e.g. "info" or "debug,h2=info". RUST_LOG wins when set.
    #[arg(long, global = true)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (the default).
    Run,
    /// Validate the configuration (and its TLS files) and exit: 0 if valid, 64 if not.
    CheckConfig,
    /// Print the default configuration file.
    PrintDefaultConfig,
    /// Open a state directory that fails its integrity check (rolled back, damaged, emptied or
    /// missing database) and accept what is lost: a database sled cannot open is moved aside, the
    /// recovery is recorded (the next start logs and audits it; tokens issued before it stop
    /// verifying) and a new integrity record is written. The daemon must not be running.
    Recover {
        /// Required: confirms that whatever the check cannot vouch for is given up.
        #[arg(long)]
        accept_loss: bool,
    },
    /// Restore a backup (`brainstemctl backup --out FILE`) into an empty or absent --state-dir
    /// (it may hold only master.key). Offline: no daemon may run on that directory. The master
    /// key is read as the daemon reads it ([keys] master_key_file, by default the systemd
    /// credential master.key; <state-dir>/master.key in dev mode) unless --master-key-file names
    /// it. A damaged, truncated, wrong-key or newer-schema file is refused and the directory left
    /// untouched (docs/BACKUP.md).
    Restore {
        /// The backup file.
        #[arg(long)]
        from: PathBuf,
        /// The master key the backup was taken under. In dev mode it is also copied to
        /// <state-dir>/master.key, where a dev-mode daemon reads it.
        #[arg(long)]
        master_key_file: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormatArg {
    Human,
    Json,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() {
                ExitCode::from(EXIT_CONFIG as u8)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let state_dir = match (&cli.state_dir, cli.dev) {
        (Some(dir), _) => Some(dir.clone()),
        (None, true) => Some(PathBuf::from(".brainstem-dev")),
        (None, false) => None,
    };
    let source = ConfigSource {
        file: cli.config.clone(),
        overrides: Overrides {
            dev_mode: cli.dev,
            state_dir,
            listen: cli.listen,
            metrics_listen: cli.metrics_listen,
            log_format: cli.log_format.map(|f| match f {
                LogFormatArg::Human => LogFormat::Human,
                LogFormatArg::Json => LogFormat::Json,
            }),
            log_level: cli.log_level.clone(),
        },
    };

    match cli.command.unwrap_or(Command::Run) {
        Command::PrintDefaultConfig => {
            print!("{}", config::default_config_toml());
            ExitCode::SUCCESS
        }
        Command::CheckConfig => check_config(&source),
        Command::Recover { accept_loss } => recover(&source, accept_loss),
        Command::Restore {
            from,
            master_key_file,
        } => restore(&source, cli.state_dir.is_some(), &from, master_key_file),
        Command::Run => run(source),
    }
}

fn check_config(source: &ConfigSource) -> ExitCode {
    let config = match source.load() {
        Ok(config) => config,
        Err(err) => {
            report_config_error(source, &err.to_string());
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    if !config.dev_mode {
        tls::install_crypto_provider();
        let checked = config
            .tls_paths()
            .map_err(|err| err.to_string())
            .and_then(|paths| tls::server_config(&paths).map_err(|err| err.to_string()));
        if let Err(err) = checked {
            eprintln!("invalid TLS material: {err}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    }
    let policies = match brainstemd::policy::PolicySource::from_config(&config.policy)
        .map_err(|err| format!("policy: {err}"))
        .and_then(|source| source.load().map_err(|err| err.to_string()))
    {
        Ok(set) => set.policies.len(),
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    println!(
        "configuration OK: grpc={} metrics={} state_dir={} dev_mode={} grants={} policies={policies}",
        config.server.listen,
        if config.metrics.enabled {
            config.metrics.listen.to_string()
        } else {
            "off".into()
        },
        config.state_dir.display(),
        config.dev_mode,
        config.effective_grants().len(),
    );
    ExitCode::SUCCESS
}

fn recover(source: &ConfigSource, accept_loss: bool) -> ExitCode {
    let config = match source.load() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    let dir = config.state_dir.display().to_string();
    if !accept_loss {
        eprintln!(
            "brainstemd recover gives up whatever the integrity check of {dir} cannot vouch for; run it again with --accept-loss to confirm (or restore {dir} from a backup instead)"
        );
        return ExitCode::from(EXIT_CONFIG as u8);
    }
    match brainstemd::store::Store::recover(&config.state_dir, &config.store) {
        Ok(report) if report.problems.is_empty() => {
            println!("the state in {dir} passes its integrity check: nothing to recover");
            ExitCode::SUCCESS
        }
        Ok(report) => {
            println!("recovered the state in {dir}, accepting the loss of:");
            for problem in &report.problems {
                println!("  - {problem}");
            }
            println!(
                "the next start logs and audits this recovery; capability tokens issued before it no longer verify"
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("cannot recover {dir}: {err}");
            ExitCode::FAILURE
        }
    }
}

fn restore(
    source: &ConfigSource,
    state_dir_given: bool,
    from: &std::path::Path,
    master_key_file: Option<PathBuf>,
) -> ExitCode {
    if !state_dir_given {
        eprintln!("brainstemd restore needs --state-dir DIR (an empty or absent directory)");
        return ExitCode::from(EXIT_CONFIG as u8);
    }
    let config = match source.load() {
        Ok(config) => config,
        Err(err) => {
            report_config_error(source, &err.to_string());
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    let key_path = match &master_key_file {
        Some(path) => path.clone(),
        None => match config.master_key_path() {
            Ok(path) => path,
            Err(err) => {
                eprintln!("{err}");
                return ExitCode::from(EXIT_CONFIG as u8);
            }
        },
    };
    let key = match brainstemd::crypto::MasterKey::load(&key_path) {
        Ok(key) => key,
        Err(err) => {
            eprintln!("cannot read the master key {}: {err}", key_path.display());
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    let file = match std::fs::read(from) {
        Ok(file) => file,
        Err(err) => {
            eprintln!("cannot read the backup {}: {err}", from.display());
            return ExitCode::FAILURE;
        }
    };
    let copy_key = (config.dev_mode && master_key_file.is_some()).then_some(key_path.as_path());
    let dir = config.state_dir.display().to_string();
    match brainstemd::backup::restore(&file, &key, copy_key, &config.state_dir, &config.store) {
        Ok(restored) => {
            println!(
                "restored {} into {dir}: {} entries in {} trees and {} audit segment files, taken at unix ms {} under master key {}, in {:.2} s",
                from.display(),
                restored.entries,
                restored.header.trees.len(),
                restored.audit_files,
                restored.header.created_unix_ms,
                restored.header.master_key_id,
                restored.duration.as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!(
                "cannot restore {} into {dir}: {err}; {dir} was left as it was",
                from.display()
            );
            ExitCode::FAILURE
        }
    }
}

fn run(source: ConfigSource) -> ExitCode {
    let config = match source.load() {
        Ok(config) => config,
        Err(err) => {
            report_config_error(&source, &err.to_string());
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("brainstemd")
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    // The OTLP exporter's channel lives on the runtime; built before logging so the tracing layer
    // can be installed with it.
    let (tracer, traces) = if config.traces.enabled() {
        let _runtime = runtime.enter();
        match brainstemd::runtime::traces::start(&config.traces) {
            Ok((tracer, traces)) => (Some(tracer), Some(traces)),
            Err(err) => {
                eprintln!("traces.otlp_endpoint: {err}");
                return ExitCode::from(EXIT_CONFIG as u8);
            }
        }
    } else {
        (None, None)
    };
    let log = telemetry::init(config.log.format, &config.log.level, tracer);
    if config.traces.enabled() {
        tracing::info!(
            endpoint = %config.traces.otlp_endpoint,
            sample_ratio = config.traces.sample_ratio,
            "exporting traces over OTLP"
        );
    }
    tls::install_crypto_provider();
    let trace_flush_limit = Duration::from_secs(config.server.stop_timeout_seconds.max(1));

    runtime.block_on(async move {
        // Registered before anything starts, so an early SIGTERM is queued rather than fatal.
        let signals = match signal_hook_tokio::Signals::new([SIGTERM, SIGINT, SIGHUP]) {
            Ok(signals) => signals,
            Err(err) => {
                tracing::error!(error = %err, "cannot install signal handlers");
                return ExitCode::FAILURE;
            }
        };
        let signals_handle = signals.handle();
        let shutdown = CancellationToken::new();
        let env = RunEnv {
            source,
            notifier: Notifier::from_env(),
            log: Some(log),
        };
        let daemon = match Daemon::start(config, env, shutdown.clone()).await {
            Ok(daemon) => daemon,
            Err(err) => {
                tracing::error!(error = %err, "brainstemd failed to start");
                return ExitCode::from(err.exit_code() as u8);
            }
        };
        let signal_task = tokio::spawn(handle_signals(signals, shutdown, daemon.reloader()));
        let code = daemon.wait().await;
        signals_handle.close();
        let _ = signal_task.await;
        if let Some(traces) = traces {
            // Blocking (the SDK's batch thread exports on this runtime): off the worker threads.
            let _ = tokio::task::spawn_blocking(move || traces.shutdown(trace_flush_limit)).await;
        }
        ExitCode::from(u8::try_from(code).unwrap_or(1))
    })
}

/// Prints a configuration error, and the way out a newcomer most likely wants.
fn report_config_error(source: &ConfigSource, text: &str) {
    eprintln!("{text}");
    if let Some(hint) = config_hint(source.overrides.dev_mode, text) {
        eprintln!("{hint}");
    }
}

/// Outside systemd the production configuration's `credential:` paths cannot resolve; someone trying
/// brainstemd on a workstation wants dev mode.
fn config_hint(dev_mode: bool, error: &str) -> Option<&'static str> {
    (!dev_mode && error.contains("$CREDENTIALS_DIRECTORY")).then_some(
        "hint: outside systemd there are no credentials to read; to try brainstemd locally run \
         `brainstemd --dev` (its own CA and certificates under ./.brainstem-dev), or give --config \
         a file whose TLS and key paths are plain files",
    )
}

async fn handle_signals(
    mut signals: signal_hook_tokio::Signals,
    shutdown: CancellationToken,
    reloader: brainstemd::daemon::Reloader,
) {
    while let Some(signal) = signals.next().await {
        match signal {
            SIGHUP => match reloader.reload().await {
                ReloadOutcome::Applied => {}
                ReloadOutcome::Refused(reason) => {
                    tracing::warn!(reason, "SIGHUP: reload refused");
                }
            },
            SIGTERM | SIGINT if shutdown.is_cancelled() => {
                tracing::warn!(signal, "second stop signal: exiting without waiting");
                std::process::exit(1);
            }
            SIGTERM | SIGINT => {
                tracing::info!(signal, "stop requested");
                shutdown.cancel();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::config_hint;

    #[test]
    fn missing_credentials_outside_dev_mode_point_at_dev_mode() {
        let err = "tls.key_file: \"credential:server.key\" needs $CREDENTIALS_DIRECTORY (systemd's LoadCredential=)";
        assert!(config_hint(false, err).is_some_and(|h| h.contains("brainstemd --dev")));
        assert_eq!(config_hint(true, err), None);
        assert_eq!(config_hint(false, "server.listen: invalid address"), None);
    }
}
