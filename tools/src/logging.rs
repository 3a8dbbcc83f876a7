//! How the daemon logs: `--log-format text|json`, `--log-file PATH`, and
//! levels from `RINGFENCE_LOG` (an `EnvFilter`, e.g. `debug` or
//! `info,ringfence_engine=debug`).

use clap::{Args, ValueEnum};
use std::path::PathBuf;

/// The log line format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, target, fields).
    Json,
}

/// Logging options.
#[derive(Args, Debug, Default)]
pub(crate) struct LogArgs {
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Append the log to this file instead of standard error (reopen it
    /// with a restart; `logrotate` with `copytruncate` works meanwhile).
    #[arg(long, value_name = "PATH")]
    log_file: Option<PathBuf>,
}

impl LogArgs {
    /// Installs the global subscriber. An unreadable `RINGFENCE_LOG` or an
    /// unwritable log file is an error naming it.
    pub(crate) fn init(&self) -> Result<(), String> {
        let filter = match std::env::var("RINGFENCE_LOG") {
            Err(_) => tracing_subscriber::EnvFilter::new("info"),
            Ok(v) => tracing_subscriber::EnvFilter::try_new(&v).map_err(|e| {
                format!(
                    "RINGFENCE_LOG={v:?} is not a log filter ({e}); use a level such as `info` or `debug`"
                )
            })?,
        };
        let builder = tracing_subscriber::fmt().with_env_filter(filter);
        match &self.log_file {
            Some(path) => {
                let file = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| {
                    format!("cannot open the log file {} (`--log-file`): {e}", path.display())
                })?;
                let w = std::sync::Mutex::new(file);
                match self.log_format {
                    LogFormat::Text => builder.with_ansi(false).with_writer(w).init(),
                    LogFormat::Json => builder.json().with_writer(w).init(),
                }
            }
            None => {
                let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
                match self.log_format {
                    LogFormat::Text => builder.with_ansi(ansi).with_writer(std::io::stderr).init(),
                    LogFormat::Json => builder.json().with_writer(std::io::stderr).init(),
                }
            }
        }
        Ok(())
    }
}
