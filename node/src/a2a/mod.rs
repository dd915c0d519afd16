//! The A2A v1.0 runtime of the node: hosts the agents of `kos-agents`, keeps their tasks in
//! the node's database, moves task updates over the event bus, and delivers push
//! notifications. The HTTP+JSON and JSON-RPC bindings that call into it are in `api::a2a`.
