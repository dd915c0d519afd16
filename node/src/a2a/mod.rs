//! The A2A v1.0 runtime of the node: hosts the agents of `kos-agents`, keeps their tasks in
//! the node's database, moves task updates over the event bus, and delivers push
//! notifications. The HTTP+JSON and JSON-RPC bindings that call into it are in `api::a2a`.
//!
//! - [`store`]: tasks, their events and the idempotency of sends in the database.
//! - [`host`]: runs the agents' turns, answers the operations, follows tasks over the bus.
//! - [`push`]: push notification configs and their at-least-once delivery (SSRF-guarded).
//!
//! Which agents run: `agents.<id>` entries of the configuration with `enabled: true` whose
//! id names an agent built into this node (today: `echo`, a test agent).

pub mod host;
pub mod push;
pub mod remote;
pub mod store;

use std::sync::Arc;

use anyhow::Context as _;
use kos_config::model::Config;
use tracing::{info, warn};

use crate::bus::EventBus;
use crate::runtime::Tasks;
use crate::store::Db;
use host::{AgentHost, HostSettings, HostedAgent};

/// Ids of the agents built into this node.
pub const BUILT_IN: &[&str] = &["echo"];

/// Ids of the agents a configuration serves (enabled and built in), in order.
pub fn served_ids(cfg: &Config) -> Vec<String> {
    cfg.agents
        .iter()
        .filter(|(id, a)| a.enabled && BUILT_IN.contains(&id.as_str()))
        .map(|(id, _)| id.clone())
        .collect()
}

/// Builds a built-in agent from its `agents.<id>` settings.
fn instantiate(
    id: &str,
    cfg: &kos_config::model::AgentConfig,
) -> anyhow::Result<Option<Arc<dyn kos_agents::agent::Agent>>> {
    Ok(match id {
        "echo" => {
            // `settings.long_wait`: how long the TCK's long-running scenario works (4s).
            let long_wait = match cfg.settings.get("long_wait") {
                None => std::time::Duration::from_secs(4),
                Some(v) => v
                    .as_str()
                    .and_then(|s| humantime::parse_duration(s).ok())
                    .with_context(|| {
                        format!(
                            "agents.echo.settings.long_wait: `{v}` is not a duration such as 4s"
                        )
                    })?,
            };
            let sleep: kos_agents::echo::Sleep = Arc::new(|d| {
                Box::pin(tokio::time::sleep(d)) as futures::future::BoxFuture<'static, ()>
            });
            Some(Arc::new(
                kos_agents::echo::EchoAgent::new().with_sleep(sleep, long_wait),
            ))
        }
        _ => None,
    })
}

/// The agent host for a configuration, with its services started (push delivery, sweeper);
/// `None` when no agent is enabled.
pub fn build(
    cfg: &Config,
    db: &Db,
    bus: Arc<dyn EventBus>,
    node_id: &str,
    tasks: &Tasks,
    metrics: Arc<crate::metrics::Metrics>,
) -> anyhow::Result<Option<AgentHost>> {
    let mut agents = Vec::new();
    for (id, a) in &cfg.agents {
        if !a.enabled {
            continue;
        }
        match instantiate(id, a)? {
            Some(agent) => agents.push(HostedAgent {
                agent,
                max_concurrent: a.max_concurrent_tasks,
                timeout: a.task_timeout.get(),
            }),
            None => warn!(
                agent = id,
                built_in = ?BUILT_IN,
                "agents.{id} is enabled, but no agent of that id is built into this node; it is not served"
            ),
        }
    }
    if agents.is_empty() {
        return Ok(None);
    }
    let push = if cfg.a2a.push.enabled {
        let push = push::Push::new(db.clone(), &cfg.a2a.push)
            .context("building the push notification client")?;
        let token = tasks.token().clone();
        let worker = push.clone();
        tasks.spawn_service("a2a-push", async move { worker.run(token).await });
        Some(push)
    } else {
        None
    };
    let host = AgentHost::new(
        agents,
        host::HostParts {
            store: store::TaskStore::new(db.clone()),
            push,
            bus,
            node_id: node_id.to_owned(),
            tasks: tasks.clone(),
            settings: HostSettings::from_config(cfg),
            metrics,
        },
    );
    info!(agents = ?host.descriptors().map(|d| d.id.as_str()).collect::<Vec<_>>(), "A2A agents served under /a2a/<agent>");
    host.start();
    Ok(Some(host))
}
