//! The A2A v1.0 agent runtime core of the kOS node: the protocol model, the error set, the task
//! lifecycle as a sans-I/O state machine, skill selection, the [`agent::Agent`] trait with the
//! built-in `echo` agent, and agent cards (building, JCS canonical form, JWS signatures).
//!
//! Nothing here does I/O, reads a clock or needs an async runtime: time comes in as
//! [`types::Timestamp`] values, agents run as boxed futures that any executor drives, and
//! updates flow through a `futures` channel. The HTTP+JSON and JSON-RPC bindings, storage, the
//! event bus and the KLP transport live in `kos-node` on top of this crate.

#[macro_use]
mod macros;

pub mod agent;
pub mod card;
pub mod echo;
pub mod error;
pub mod jsonrpc;
pub mod lifecycle;
pub mod limits;
pub mod requests;
pub mod signing;
pub mod skill;
pub mod types;

pub use error::A2aError;
