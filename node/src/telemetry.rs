//! Logging: `tracing` to stderr as text or JSON, with a filter that config reloads change.

use std::io::IsTerminal;
use std::sync::Arc;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// Changes the active log filter.
pub type LogReloader = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber. `KOS_LOG` (a filter directive) beats `level`; once set
/// from the environment, config reloads leave the filter alone.
pub fn init(format: LogFormat, level: &str) -> LogReloader {
    let from_env = std::env::var("KOS_LOG").ok();
    let directive = from_env.clone().unwrap_or_else(|| level.to_string());
    let filter = EnvFilter::try_new(&directive).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::<EnvFilter, Registry>::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    if result.is_err() {
        // A subscriber is already installed (tests run several nodes in one process).
        return Arc::new(|_| Ok(()));
    }
    Arc::new(move |level: &str| {
        if from_env.is_some() {
            return Ok(());
        }
        let f = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        handle.reload(f).map_err(|e| e.to_string())
    })
}
