//! The kOS node: daemon, HTTP API (kConfigD) and the `kos` command line.
//!
//! - [`daemon`]: the composition root: start-up order, wiring, signals, graceful shutdown.
//! - [`runtime`]: the shared services (configuration, event recorder, tasks) the daemon hands
//!   to the API and the sync actor.
//! - [`api`]: the axum HTTP API (this is the only crate that uses axum).
//! - [`federation`], [`fedsync`]: KLP's settings and events; the federation sync actor.
//! - [`store`]: the database (SQLite, PostgreSQL) behind repository traits.
//! - [`vector`]: the vector store (embedded exact search, or a Qdrant server).
//! - [`identity`]: the node's ed25519 key.
//! - [`metrics`], [`telemetry`]: Prometheus metrics and `tracing` logs.
//! - [`cli`]: `kos` subcommands.

/// `print!` for the CLI: see [`cli::out`].
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::out(format_args!($($arg)*), false)
    };
}

/// `println!` for the CLI: a closed standard output (`kos federation status | head`) ends
/// the process quietly instead of panicking. See [`cli::out`].
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::out(format_args!($($arg)*), true)
    };
}

pub mod a2a;
pub mod api;
pub mod auth;
pub mod backoff;
pub mod bus;
pub mod cache;
pub mod cli;
pub mod daemon;
pub mod federation;
pub mod fedsync;
pub mod identity;
pub mod metrics;
pub mod node_client;
pub mod runfile;
pub mod runtime;
pub mod store;
pub mod telemetry;
pub mod testnet;
pub mod vector;
