//! The agent host: runs the hosted agents' turns and answers the A2A operations for the
//! bindings (`api::a2a`), whatever binding or transport the call came by.
//!
//! A turn is a tracked job ([`Tasks::spawn`]): it waits for a slot of its agent
//! (`agents.<id>.max_concurrent_tasks`; the task stays SUBMITTED meanwhile), holds a lease on
//! the task in the database (renewed while it runs), and drives the agent with
//! [`drive_turn`]. After every change the task and its new events are saved in one
//! transaction, then published on the event bus (kind [`BUS_KIND`]) and queued for push
//! notification. A turn ends at a terminal or interrupted state, at `agents.<id>.task_timeout`
//! (the task FAILS), or at shutdown (the lease is released and the task stays WORKING). A
//! task made final elsewhere (a cancel that reached another replica, where the turn is not
//! running) stops its turn as soon as its event arrives on the bus, or at the next lease
//! renewal if the bus lost it; the turn's own later saves would conflict anyway.
//!
//! Readers ([`AgentHost::follow`]) subscribe to the bus first, then read the task's events
//! from the database after the `seq` they know, then take events from the bus; a gap, an
//! event too large to travel inline, or a lagging subscription sends them back to the
//! database. So every replica that shares the database and the bus sees every update.
//!
//! A SUBMITTED or WORKING task whose lease ran out (its replica stopped or died) is claimed by
//! the sweeper and resumed or failed as its agent's [`RestartPolicy`] says. The sweeper also
//! deletes terminal tasks after `a2a.retention`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use futures::{Stream, StreamExt};
use kos_agents::A2aError;
use kos_agents::agent::{Agent, AgentDescriptor, CancelToken, Turn, drive_turn};
use kos_agents::lifecycle::{AgentUpdate, Receipt, Recovery, TaskRecord};
use kos_agents::limits::Limits;
use kos_agents::requests::{ListTasksRequest, ListTasksResponse, SendMessageRequest};
use kos_agents::skill::{self, Selection, SkillCall};
use kos_agents::types::{
    Message, Part, Role, SendMessageResponse, StreamResponse, Task, TaskState, Timestamp,
};
use serde_json::json;
use tokio::sync::Semaphore;
use tracing::{Instrument, debug, info, info_span, warn};

use super::push::Push;
use super::store::{Created, RecordRow, SaveError, StoredTask, TaskStore};
use crate::bus::{BusError, BusEvent, EventBus, Subscription};
use crate::runtime::Tasks;
use crate::store::now_ms;

/// Kind of the bus events that carry task updates.
pub const BUS_KIND: &str = "a2a.task";
/// How long a turn's lease on its task lasts without renewal.
pub const LEASE: Duration = Duration::from_secs(30);
const RENEW_EVERY: Duration = Duration::from_secs(10);
/// How often the sweeper looks for orphaned tasks and expired ones.
const SWEEP_EVERY: Duration = Duration::from_secs(15);
/// Events larger than this travel on the bus as a notice; readers load them from the database.
const INLINE_EVENT_MAX: usize = 64 * 1024;
/// Events read from the database at once by a follower.
const READ_BATCH: u32 = 256;
/// How long a cancel waits for the running turn to stop.
const CANCEL_WAIT: Duration = Duration::from_secs(10);

/// Who calls: the owner key of the tasks they create, and whether they see everyone's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// `<source>:<sub>` (`local:alice`, `oidc:…`, `klp:<peer id>`, `anonymous` on an open API).
    pub owner: String,
    /// Admins see and cancel every task.
    pub admin: bool,
}

impl Caller {
    fn sees(&self, owner: &str) -> bool {
        self.admin || self.owner == owner
    }
}

/// An agent with its node settings.
#[derive(Clone)]
pub struct HostedAgent {
    pub agent: Arc<dyn Agent>,
    /// Turns of this agent running at once (`agents.<id>.max_concurrent_tasks`).
    pub max_concurrent: u32,
    /// Time limit of one turn (`agents.<id>.task_timeout`).
    pub timeout: Duration,
}

impl std::fmt::Debug for HostedAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostedAgent")
            .field("id", &self.agent.descriptor().id)
            .field("max_concurrent", &self.max_concurrent)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The host's settings (`a2a`).
#[derive(Debug, Clone)]
pub struct HostSettings {
    pub limits: Limits,
    pub max_tasks_per_principal: u32,
    pub retention: Duration,
    /// How long a blocking `SendMessage` waits for the turn to end before it answers with
    /// the task as it is (just under `api.request_timeout`, which would otherwise cut it).
    pub blocking_wait: Duration,
}

impl HostSettings {
    pub fn from_config(cfg: &kos_config::model::Config) -> Self {
        let a = &cfg.a2a;
        let limits = Limits {
            max_part_bytes: a.max_part_bytes as usize,
            max_parts: a.max_parts as usize,
            max_history: a.max_history as usize,
            max_artifact_bytes: a.max_artifact_bytes as usize,
            ..Limits::default()
        };
        Self {
            limits,
            max_tasks_per_principal: a.max_tasks_per_principal,
            retention: a.retention.get(),
            blocking_wait: cfg
                .api
                .request_timeout
                .get()
                .saturating_sub(Duration::from_secs(1))
                .max(Duration::from_millis(500)),
        }
    }
}

/// A page of a task's events for a remote reader ([`AgentHost::events_since`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EventPage {
    /// The last event number covered by this page (the next `after`).
    pub seq: i64,
    pub events: Vec<RemoteEvent>,
}

/// One event of an [`EventPage`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RemoteEvent {
    pub seq: i64,
    /// The `StreamResponse`; absent when it is larger than the page's budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<serde_json::Value>,
}

/// A task's events with their `seq`.
pub type SeqStream = Pin<Box<dyn Stream<Item = Result<(i64, StreamResponse), A2aError>> + Send>>;

/// A stream of task events for SSE.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<StreamResponse, A2aError>> + Send>>;

struct Hosted {
    agent: Arc<dyn Agent>,
    slots: Arc<Semaphore>,
    timeout: Duration,
}

struct Inner {
    agents: BTreeMap<String, Hosted>,
    store: TaskStore,
    push: Option<Push>,
    bus: Arc<dyn EventBus>,
    node_id: String,
    tasks: Tasks,
    settings: HostSettings,
    metrics: Arc<crate::metrics::Metrics>,
    /// Turns running in this process: task id -> their cancel token.
    running: Mutex<HashMap<String, CancelToken>>,
    /// Turns running per owner.
    per_owner: Mutex<HashMap<String, u32>>,
    /// Woken whenever a turn ended here (its slots are free again).
    turn_ended: tokio::sync::Notify,
}

/// The agent host. Cheap to clone.
#[derive(Clone)]
pub struct AgentHost {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AgentHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentHost")
            .field("agents", &self.inner.agents.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn now() -> Timestamp {
    Timestamp::from_system_time(SystemTime::now())
}

fn lease_until() -> i64 {
    now_ms() + i64::try_from(LEASE.as_millis()).unwrap_or(30_000)
}

/// A random id in UUID v4 form.
pub fn new_id() -> String {
    let mut b = [0u8; 16];
    if getrandom::fill(&mut b).is_err() {
        // No OS randomness: time and a counter still give unique ids in this process.
        static N: AtomicI64 = AtomicI64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        b[..8].copy_from_slice(&now_ms().to_be_bytes());
        b[8..].copy_from_slice(&n.to_be_bytes());
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn internal(e: impl std::fmt::Display) -> A2aError {
    warn!(error = %e, "a2a: internal error");
    A2aError::Internal
}

/// The event ends a `SendStreamingMessage` stream (the turn is over).
pub(crate) fn ends_turn(e: &StreamResponse) -> bool {
    match e {
        StreamResponse::Message(_) => true,
        StreamResponse::StatusUpdate(s) => s.status.state.ends_turn(),
        StreamResponse::Task(t) => t.status.state.ends_turn(),
        StreamResponse::ArtifactUpdate(_) => false,
    }
}

/// The event ends a `SubscribeToTask` stream (the task is final).
pub(crate) fn is_final(e: &StreamResponse) -> bool {
    match e {
        StreamResponse::Message(_) => true,
        StreamResponse::StatusUpdate(s) => s.status.state.is_terminal(),
        StreamResponse::Task(t) => t.status.state.is_terminal(),
        StreamResponse::ArtifactUpdate(_) => false,
    }
}

/// Takes items up to and including the first one `last` accepts (or the first error), and
/// ends right after it without waiting for another item.
pub(crate) fn until_inclusive(
    s: impl Stream<Item = Result<StreamResponse, A2aError>> + Send + 'static,
    last: fn(&StreamResponse) -> bool,
) -> impl Stream<Item = Result<StreamResponse, A2aError>> + Send + 'static {
    futures::stream::unfold((Box::pin(s), false), move |(mut s, done)| async move {
        if done {
            return None;
        }
        let item = s.next().await?;
        let done = match &item {
            Ok(e) => last(e),
            Err(_) => true,
        };
        Some((item, (s, done)))
    })
}

/// A held place in the per-owner count of running turns.
struct OwnerSlot {
    inner: Arc<Inner>,
    owner: String,
}

impl Drop for OwnerSlot {
    fn drop(&mut self) {
        let mut m = self
            .inner
            .per_owner
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = m.get_mut(&self.owner) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.owner);
            }
        }
    }
}

/// What a turn needs to start.
struct TurnStart {
    agent_id: String,
    owner: String,
    seq: i64,
    record: TaskRecord,
    message: Message,
    call: SkillCall,
    accepted_output_modes: Vec<String>,
    streaming: bool,
    slot: OwnerSlot,
}

/// How a send began.
enum Begun {
    /// A turn started (or the task went INPUT_REQUIRED at once); events after `seq` are new.
    Started { task: Task, seq: i64 },
    /// The message was accepted before: nothing new runs.
    Duplicate(StoredTask),
}

/// The node's services a host runs on.
#[derive(Debug)]
pub struct HostParts {
    pub store: TaskStore,
    pub push: Option<Push>,
    pub bus: Arc<dyn EventBus>,
    /// The node id (the bus events' `node_id`).
    pub node_id: String,
    pub tasks: Tasks,
    pub settings: HostSettings,
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl AgentHost {
    pub fn new(agents: Vec<HostedAgent>, parts: HostParts) -> Self {
        let HostParts {
            store,
            push,
            bus,
            node_id,
            tasks,
            settings,
            metrics,
        } = parts;
        let agents = agents
            .into_iter()
            .map(|h| {
                let id = h.agent.descriptor().id.clone();
                let hosted = Hosted {
                    slots: Arc::new(Semaphore::new(h.max_concurrent.max(1) as usize)),
                    agent: h.agent,
                    timeout: h.timeout,
                };
                (id, hosted)
            })
            .collect();
        Self {
            inner: Arc::new(Inner {
                agents,
                store,
                push,
                bus,
                node_id,
                tasks,
                settings,
                metrics,
                running: Mutex::new(HashMap::new()),
                per_owner: Mutex::new(HashMap::new()),
                turn_ended: tokio::sync::Notify::new(),
            }),
        }
    }

    /// The hosted agents' descriptors, by id.
    pub fn descriptors(&self) -> impl Iterator<Item = &AgentDescriptor> {
        self.inner.agents.values().map(|h| h.agent.descriptor())
    }

    /// One hosted agent's descriptor.
    pub fn descriptor(&self, agent_id: &str) -> Option<&AgentDescriptor> {
        self.inner
            .agents
            .get(agent_id)
            .map(|h| h.agent.descriptor())
    }

    /// Push notifications are served.
    pub fn push(&self) -> Option<&Push> {
        self.inner.push.as_ref()
    }

    /// The size limits of messages and artifacts.
    pub fn limits(&self) -> &Limits {
        &self.inner.settings.limits
    }

    /// Starts the sweeper (orphaned tasks, retention) as a service of the node.
    pub fn start(&self) {
        let host = self.clone();
        let token = self.inner.tasks.token().clone();
        self.inner.tasks.spawn_service("a2a-sweeper", async move {
            loop {
                host.sweep().await;
                tokio::select! {
                    () = token.cancelled() => return,
                    () = tokio::time::sleep(SWEEP_EVERY) => {}
                }
            }
        });
    }

    async fn sweep(&self) {
        match self.inner.store.claim_orphans(lease_until(), 64).await {
            Ok(orphans) => {
                for t in orphans {
                    self.recover(t).await;
                }
            }
            Err(e) => warn!(error = %e, "a2a: cannot look for orphaned tasks"),
        }
        let retention =
            i64::try_from(self.inner.settings.retention.as_millis()).unwrap_or(i64::MAX);
        match self
            .inner
            .store
            .purge(now_ms().saturating_sub(retention))
            .await
        {
            Ok(0) => {}
            Ok(n) => info!(tasks = n, "a2a: deleted tasks past their retention"),
            Err(e) => warn!(error = %e, "a2a: cannot delete expired tasks"),
        }
    }

    /// Resumes or fails a task whose turn stopped with its replica.
    async fn recover(&self, t: StoredTask) {
        let task_id = t.record.task().id.clone();
        let limits = self.inner.settings.limits.clone();
        let mut record = t.record;
        let policy = match self.inner.agents.get(&t.agent) {
            Some(h) => h.agent.descriptor().on_restart.clone(),
            None => kos_agents::lifecycle::RestartPolicy::Fail(format!(
                "agent {} is no longer hosted by this node",
                t.agent
            )),
        };
        match record.recover(&policy, now(), &limits) {
            Recovery::Idle => {
                let _ = self.inner.store.set_lease(&task_id, 0).await;
            }
            Recovery::Failed(events) => {
                info!(
                    task_id,
                    agent = t.agent,
                    "a2a: task failed after a restart, as its agent declares"
                );
                if let Err(e) = self
                    .persist(&t.agent, &t.owner, t.seq, &record, events)
                    .await
                {
                    warn!(task_id, error = %e, "a2a: cannot fail a recovered task");
                }
                let _ = self.inner.store.set_lease(&task_id, 0).await;
            }
            Recovery::Resume(message) => {
                let Some(h) = self.inner.agents.get(&t.agent) else {
                    return;
                };
                let d = h.agent.descriptor();
                let call = match skill::select(
                    &d.skills,
                    d.default_skill.as_deref(),
                    record.skill(),
                    &message,
                ) {
                    Ok(Selection::Run(call)) => call,
                    _ => {
                        let events = record.fail(
                            "the task's input cannot be read after a restart",
                            now(),
                            &limits,
                        );
                        let _ = self
                            .persist(&t.agent, &t.owner, t.seq, &record, events)
                            .await;
                        let _ = self.inner.store.set_lease(&task_id, 0).await;
                        return;
                    }
                };
                info!(
                    task_id,
                    agent = t.agent,
                    "a2a: resuming a task after a restart"
                );
                let slot = self.force_slot(&t.owner);
                self.start_turn(TurnStart {
                    agent_id: t.agent.clone(),
                    owner: t.owner.clone(),
                    seq: t.seq,
                    record,
                    message,
                    call,
                    accepted_output_modes: Vec::new(),
                    streaming: false,
                    slot,
                });
            }
        }
    }

    /// A place in the owner's count of running turns; past `a2a.max_tasks_per_principal`,
    /// `TooManyTasks`.
    fn take_slot(&self, owner: &str) -> Result<OwnerSlot, A2aError> {
        let limit = self.inner.settings.max_tasks_per_principal.max(1);
        let mut m = self.owners();
        let running = m.get(owner).copied().unwrap_or(0);
        if running >= limit {
            return Err(A2aError::TooManyTasks { running, limit });
        }
        Ok(self.count_in(&mut m, owner))
    }

    /// A place in the count whatever the limit (a recovered task resumes anyway).
    fn force_slot(&self, owner: &str) -> OwnerSlot {
        let mut m = self.owners();
        self.count_in(&mut m, owner)
    }

    fn owners(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.inner
            .per_owner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn count_in(&self, m: &mut HashMap<String, u32>, owner: &str) -> OwnerSlot {
        *m.entry(owner.to_owned()).or_insert(0) += 1;
        OwnerSlot {
            inner: self.inner.clone(),
            owner: owner.to_owned(),
        }
    }

    fn hosted(&self, agent_id: &str) -> Result<&Hosted, A2aError> {
        // The bindings route only to hosted agents; this is a guard.
        self.inner
            .agents
            .get(agent_id)
            .ok_or_else(|| A2aError::UnsupportedOperation(format!("no agent {agent_id}")))
    }

    /// A task the caller may see, of this agent; anything else is "not found" (no oracle).
    async fn visible(
        &self,
        agent_id: &str,
        task_id: &str,
        caller: &Caller,
    ) -> Result<StoredTask, A2aError> {
        let not_found = || A2aError::TaskNotFound {
            task_id: task_id.to_owned(),
        };
        if task_id.is_empty() || task_id.len() > self.inner.settings.limits.max_id_bytes {
            return Err(not_found());
        }
        match self.inner.store.get(task_id).await.map_err(internal)? {
            Some(t) if t.agent == agent_id && caller.sees(&t.owner) => Ok(t),
            _ => Err(not_found()),
        }
    }

    /// Saves a change and publishes its events; returns the new seq.
    async fn persist(
        &self,
        agent_id: &str,
        owner: &str,
        seq: i64,
        record: &TaskRecord,
        events: Vec<StreamResponse>,
    ) -> Result<i64, SaveError> {
        let row = RecordRow::of(record)?;
        persist_row(&self.inner, agent_id, owner, seq, &row, events, None).await
    }

    /// Starts a send: a new task, or the next turn of an interrupted one.
    async fn begin(
        &self,
        agent_id: &str,
        caller: &Caller,
        req: SendMessageRequest,
        streaming: bool,
    ) -> Result<Begun, A2aError> {
        req.validate()?;
        let limits = &self.inner.settings.limits;
        limits.check_message("message", &req.message)?;
        if req.message.role != Role::User {
            return Err(A2aError::invalid_field(
                "message.role",
                "a client message must have role ROLE_USER",
            ));
        }
        let hosted = self.hosted(agent_id)?;
        let d = hosted.agent.descriptor();
        let accepted = req
            .configuration
            .as_ref()
            .map(|c| c.accepted_output_modes.clone())
            .unwrap_or_default();
        if let Some(cfg) = req
            .configuration
            .as_ref()
            .and_then(|c| c.task_push_notification_config.as_ref())
        {
            let Some(push) = &self.inner.push else {
                return Err(A2aError::PushNotificationNotSupported);
            };
            push.validate_config(cfg, "configuration.taskPushNotificationConfig")
                .await?;
        }
        let message = req.message;
        let message_id = message.message_id.clone();
        // A continuation names its task.
        if let Some(task_id) = message.task_id.clone() {
            let t = self.visible(agent_id, &task_id, caller).await?;
            let mut record = t.record;
            let selection = skill::select(
                &d.skills,
                d.default_skill.as_deref(),
                record.skill(),
                &message,
            )?;
            if let Selection::Run(call) = &selection {
                skill::check_input_modes(d.input_modes_of(&call.skill), &message)?;
            }
            let events = match record
                .receive(message.clone(), now(), limits)
                .map_err(A2aError::from)?
            {
                Receipt::Duplicate => {
                    return Ok(Begun::Duplicate(StoredTask { record, ..t }));
                }
                Receipt::Resumed(events) => events,
            };
            return self
                .after_receive(
                    agent_id,
                    &t.owner,
                    t.seq,
                    record,
                    events,
                    selection,
                    message,
                    accepted,
                    streaming,
                    Some(&message_id),
                    caller,
                )
                .await;
        }
        if let Some(task_id) = self
            .inner
            .store
            .find_message(agent_id, &caller.owner, &message_id)
            .await
            .map_err(internal)?
        {
            return match self.inner.store.get(&task_id).await.map_err(internal)? {
                Some(t) => Ok(Begun::Duplicate(t)),
                None => Err(A2aError::TaskNotFound { task_id }),
            };
        }
        let selection = skill::select(&d.skills, d.default_skill.as_deref(), None, &message)?;
        if let Selection::Run(call) = &selection {
            skill::check_input_modes(d.input_modes_of(&call.skill), &message)?;
        }
        let slot = match &selection {
            Selection::Run(_) => Some(self.take_slot(&caller.owner)?),
            Selection::NeedsInput(_) => None,
        };
        let context_id = message.context_id.clone().unwrap_or_else(new_id);
        let task_id = new_id();
        let mut record =
            TaskRecord::create(task_id.clone(), context_id, message.clone(), now(), limits)
                .map_err(A2aError::from)?;
        let mut events = Vec::new();
        if let Selection::NeedsInput(text) = &selection {
            events = record
                .apply(
                    AgentUpdate::Status {
                        state: TaskState::InputRequired,
                        message: Some(agent_message(&record, text)),
                    },
                    now(),
                    limits,
                )
                .map_err(A2aError::from)?;
        } else if let Selection::Run(call) = &selection {
            record.set_skill(&call.skill);
        }
        let lease = if slot.is_some() { lease_until() } else { 0 };
        let created = self
            .inner
            .store
            .create(
                agent_id,
                &caller.owner,
                &message_id,
                &record,
                &events,
                lease,
            )
            .await
            .map_err(internal)?;
        let seq = match created {
            Created::Duplicate(id) => {
                return match self.inner.store.get(&id).await.map_err(internal)? {
                    Some(t) => Ok(Begun::Duplicate(t)),
                    None => Err(A2aError::TaskNotFound { task_id: id }),
                };
            }
            Created::New(seq) => seq,
        };
        info!(
            task_id,
            agent = agent_id,
            owner = caller.owner,
            "a2a: task created"
        );
        if let Some(cfg) = req
            .configuration
            .as_ref()
            .and_then(|c| c.task_push_notification_config.clone())
            && let Some(push) = &self.inner.push
        {
            push.create_config(&task_id, cfg)
                .await
                .map_err(super::push::PushError::into_a2a)?;
        }
        let task = record.task().clone();
        if !events.is_empty() {
            publish(&self.inner, agent_id, &task_id, 0, &events).await;
        }
        if let (Selection::Run(call), Some(slot)) = (selection, slot) {
            self.start_turn(TurnStart {
                agent_id: agent_id.to_owned(),
                owner: caller.owner.clone(),
                seq,
                record,
                message,
                call,
                accepted_output_modes: accepted,
                streaming,
                slot,
            });
        }
        Ok(Begun::Started { task, seq })
    }

    #[allow(clippy::too_many_arguments)]
    async fn after_receive(
        &self,
        agent_id: &str,
        owner: &str,
        seq: i64,
        mut record: TaskRecord,
        mut events: Vec<StreamResponse>,
        selection: Selection,
        message: Message,
        accepted: Vec<String>,
        streaming: bool,
        message_id: Option<&str>,
        caller: &Caller,
    ) -> Result<Begun, A2aError> {
        let limits = &self.inner.settings.limits;
        let slot = match &selection {
            Selection::Run(call) => {
                record.set_skill(&call.skill);
                Some(self.take_slot(&caller.owner)?)
            }
            Selection::NeedsInput(text) => {
                let m = agent_message(&record, text);
                events.extend(
                    record
                        .apply(
                            AgentUpdate::Status {
                                state: TaskState::InputRequired,
                                message: Some(m),
                            },
                            now(),
                            limits,
                        )
                        .map_err(A2aError::from)?,
                );
                None
            }
        };
        let row = RecordRow::of(&record).map_err(internal)?;
        let task_id = record.task().id.clone();
        let new_seq =
            match persist_row(&self.inner, agent_id, owner, seq, &row, events, message_id).await {
                Ok(s) => s,
                Err(SaveError::Conflict) => return Err(A2aError::Conflict { task_id }),
                Err(SaveError::Store(e)) => return Err(internal(e)),
            };
        let task = record.task().clone();
        if let (Selection::Run(call), Some(slot)) = (selection, slot) {
            let _ = self.inner.store.set_lease(&task_id, lease_until()).await;
            self.start_turn(TurnStart {
                agent_id: agent_id.to_owned(),
                owner: owner.to_owned(),
                seq: new_seq,
                record,
                message,
                call,
                accepted_output_modes: accepted,
                streaming,
                slot,
            });
        }
        // The stream of this turn starts with the task as the client's message left it.
        Ok(Begun::Started { task, seq: new_seq })
    }

    /// Runs a turn as a tracked job of the node.
    fn start_turn(&self, s: TurnStart) {
        let inner = self.inner.clone();
        let task_id = s.record.task().id.clone();
        let span = info_span!("a2a_turn", task_id = %task_id, agent = %s.agent_id);
        self.inner
            .tasks
            .spawn("a2a-turn", run_turn(inner, s).instrument(span));
    }

    /// `SendMessage`: blocks until the turn ends unless `returnImmediately`.
    pub async fn send_message(
        &self,
        agent_id: &str,
        caller: &Caller,
        req: SendMessageRequest,
    ) -> Result<SendMessageResponse, A2aError> {
        let history = req.history_length()?;
        let immediately = req.return_immediately();
        let begun = self.begin(agent_id, caller, req, false).await?;
        let (task_id, seq, task) = match begun {
            Begun::Duplicate(t) => return Ok(answer(&t.record, history)),
            Begun::Started { task, seq } => (task.id.clone(), seq, task),
        };
        if immediately || task.status.state.ends_turn() {
            return Ok(SendMessageResponse::Task(cut(task, history)));
        }
        let mut events = self.follow(&task_id, seq);
        let stop = self.inner.tasks.shutdown_token().clone();
        let deadline = tokio::time::sleep(self.inner.settings.blocking_wait);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                // Longer turns: the task as it is; the client polls, subscribes or streams.
                () = &mut deadline => break,
                e = events.next() => match e {
                    Some(Ok((_, e))) if ends_turn(&e) => break,
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e),
                    None => break,
                },
            }
        }
        let t = self.inner.store.get(&task_id).await.map_err(internal)?;
        match t {
            Some(t) => Ok(answer(&t.record, history)),
            None => Err(A2aError::TaskNotFound { task_id }),
        }
    }

    /// `SendStreamingMessage`: the task (or a direct message), then its updates until the turn
    /// ends.
    pub async fn send_streaming(
        &self,
        agent_id: &str,
        caller: &Caller,
        req: SendMessageRequest,
    ) -> Result<EventStream, A2aError> {
        let history = req.history_length()?;
        let begun = self.begin(agent_id, caller, req, true).await?;
        let (task, seq) = match begun {
            Begun::Duplicate(t) => {
                let first = match answer(&t.record, history) {
                    SendMessageResponse::Task(task) => StreamResponse::Task(task),
                    SendMessageResponse::Message(m) => StreamResponse::Message(m),
                };
                if ends_turn(&first) {
                    return Ok(Box::pin(futures::stream::iter([Ok(first)])));
                }
                let rest = self
                    .follow(&t.record.task().id, t.seq)
                    .map(|r| r.map(|(_, e)| e));
                let s = futures::stream::iter([Ok(first)]).chain(rest);
                return Ok(self.bounded(until_inclusive(s, ends_turn)));
            }
            Begun::Started { task, seq } => (task, seq),
        };
        let snapshot = StreamResponse::Task(cut(task, history));
        if ends_turn(&snapshot) {
            return Ok(Box::pin(futures::stream::iter([Ok(snapshot)])));
        }
        let task_id = match &snapshot {
            StreamResponse::Task(t) => t.id.clone(),
            _ => String::new(),
        };
        // The snapshot goes first unless the agent answers with a direct message (then the
        // stream is that message alone).
        let follow = self.follow(&task_id, seq).map(|r| r.map(|(_, e)| e));
        let s = follow
            .scan(Some(snapshot), |pending, item| {
                let out: Vec<Result<StreamResponse, A2aError>> = match (pending.take(), item) {
                    (Some(_), Ok(StreamResponse::Message(m))) => {
                        vec![Ok(StreamResponse::Message(m))]
                    }
                    (Some(snap), item) => vec![Ok(snap), item],
                    (None, item) => vec![item],
                };
                futures::future::ready(Some(futures::stream::iter(out)))
            })
            .flatten();
        Ok(self.bounded(until_inclusive(s, ends_turn)))
    }

    /// Ends a stream when the node's shutdown begins (the API's drain does not wait for
    /// open streams).
    fn bounded(
        &self,
        s: impl Stream<Item = Result<StreamResponse, A2aError>> + Send + 'static,
    ) -> EventStream {
        let stop = self.inner.tasks.shutdown_token().clone();
        Box::pin(s.take_until(stop.cancelled_owned()))
    }

    /// `GetTask`.
    pub async fn get_task(
        &self,
        agent_id: &str,
        caller: &Caller,
        task_id: &str,
        history: Option<usize>,
    ) -> Result<Task, A2aError> {
        let t = self.visible(agent_id, task_id, caller).await?;
        Ok(t.record.view(history, true))
    }

    /// `ListTasks`: the caller's tasks of this agent (an admin's: everyone's).
    pub async fn list_tasks(
        &self,
        agent_id: &str,
        caller: &Caller,
        req: &ListTasksRequest,
    ) -> Result<ListTasksResponse, A2aError> {
        let q = req.to_query()?;
        let owner = (!caller.admin).then_some(caller.owner.as_str());
        let page = self
            .inner
            .store
            .list(agent_id, owner, &q)
            .await
            .map_err(internal)?
            .map_err(|e| A2aError::invalid_field("pageToken", &e.to_string()))?;
        Ok(ListTasksResponse {
            tasks: page
                .records
                .iter()
                .map(|r| r.view(q.history_length, q.include_artifacts))
                .collect(),
            next_page_token: page.next_page_token,
            page_size: i32::try_from(q.page_size).unwrap_or(i32::MAX),
            total_size: i32::try_from(page.total).unwrap_or(i32::MAX),
        })
    }

    /// `CancelTask`: stops the running turn or cancels the waiting task.
    pub async fn cancel_task(
        &self,
        agent_id: &str,
        caller: &Caller,
        task_id: &str,
    ) -> Result<Task, A2aError> {
        for _ in 0..3 {
            let t = self.visible(agent_id, task_id, caller).await?;
            let state = t.record.state();
            if state.is_terminal() {
                return Err(A2aError::TaskNotCancelable {
                    task_id: task_id.to_owned(),
                    state,
                });
            }
            let token = self
                .inner
                .running
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(task_id)
                .cloned();
            if let Some(token) = token {
                let mut events = self.follow(task_id, t.seq);
                token.cancel();
                let waited = tokio::time::timeout(CANCEL_WAIT, async {
                    while let Some(e) = events.next().await {
                        match e {
                            Ok((_, e)) if is_final(&e) => return,
                            Ok(_) => {}
                            Err(_) => return,
                        }
                    }
                })
                .await;
                if waited.is_err() {
                    warn!(task_id, "a2a: the turn did not stop within the cancel wait");
                }
                // Answer once the turn is over here, so its slots are free for the caller's
                // next message.
                let _ = tokio::time::timeout(CANCEL_WAIT, async {
                    loop {
                        let ended = self.inner.turn_ended.notified();
                        if !self.is_running(task_id) {
                            return;
                        }
                        ended.await;
                    }
                })
                .await;
                let t = self.visible(agent_id, task_id, caller).await?;
                return Ok(t.record.view(None, true));
            }
            // Not running here: interrupted, waiting for a slot elsewhere, or orphaned.
            let mut record = t.record;
            let events = record
                .cancel(now(), &self.inner.settings.limits)
                .map_err(A2aError::from)?;
            match self
                .persist(agent_id, &t.owner, t.seq, &record, events)
                .await
            {
                Ok(_) => {
                    info!(task_id, "a2a: task canceled");
                    return Ok(record.view(None, true));
                }
                Err(SaveError::Conflict) => continue,
                Err(SaveError::Store(e)) => return Err(internal(e)),
            }
        }
        Err(A2aError::Conflict {
            task_id: task_id.to_owned(),
        })
    }

    fn is_running(&self, task_id: &str) -> bool {
        self.inner
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(task_id)
    }

    /// `SubscribeToTask`: the task, then its updates until it is final.
    pub async fn subscribe(
        &self,
        agent_id: &str,
        caller: &Caller,
        task_id: &str,
    ) -> Result<EventStream, A2aError> {
        let t = self.visible(agent_id, task_id, caller).await?;
        if t.record.state().is_terminal() {
            return Err(A2aError::UnsupportedOperation(format!(
                "task {task_id} is {} and has no more updates",
                t.record.state()
            )));
        }
        let first = StreamResponse::Task(t.record.view(None, true));
        let rest = self.follow(task_id, t.seq).map(|r| r.map(|(_, e)| e));
        let s = futures::stream::iter([Ok(first)]).chain(rest);
        Ok(self.bounded(until_inclusive(s, is_final)))
    }

    /// The task's events after `after`, then as they happen (with their `seq`). Never ends by
    /// itself; callers stop at the event they wait for.
    pub fn follow(&self, task_id: &str, after: i64) -> SeqStream {
        let state = Follow {
            sub: self.inner.bus.subscribe(),
            store: self.inner.store.clone(),
            task_id: task_id.to_owned(),
            last: after,
            buffer: VecDeque::new(),
            caught_up: false,
        };
        Box::pin(futures::stream::unfold(state, |mut st| async move {
            st.next().await.map(|item| (item, st))
        }))
    }

    /// The task's events after `after` for a remote reader (a peer following a task over
    /// KLP): waits up to `wait` for the first one, then returns what is there within
    /// `budget` bytes of JSON. `after: None` returns no events, only the current `seq`.
    pub async fn events_since(
        &self,
        agent_id: &str,
        caller: &Caller,
        task_id: &str,
        after: Option<i64>,
        wait: Duration,
        budget: usize,
    ) -> Result<EventPage, A2aError> {
        let t = self.visible(agent_id, task_id, caller).await?;
        let Some(after) = after else {
            return Ok(EventPage {
                seq: t.seq,
                events: Vec::new(),
            });
        };
        let mut events = self
            .inner
            .store
            .events_after(task_id, after, 64)
            .await
            .map_err(internal)?;
        if events.is_empty() && !wait.is_zero() && !t.record.state().is_terminal() {
            let mut follow = self.follow(task_id, after);
            if let Ok(Some(first)) = tokio::time::timeout(wait, follow.next()).await {
                events.push(first?);
                // Whatever else arrived meanwhile.
                events.extend(
                    self.inner
                        .store
                        .events_after(task_id, events.last().map_or(after, |e| e.0), 63)
                        .await
                        .map_err(internal)?,
                );
            }
        }
        let mut out = Vec::new();
        let mut used = 0usize;
        for (seq, event) in events {
            let value = serde_json::to_value(&event).map_err(internal)?;
            let size = kos_agents::limits::json_size(&value);
            if used + size > budget {
                if out.is_empty() {
                    // One event larger than the whole budget: say so instead of dropping it.
                    out.push(RemoteEvent { seq, event: None });
                }
                break;
            }
            used += size;
            out.push(RemoteEvent {
                seq,
                event: Some(value),
            });
        }
        let seq = out.last().map_or(t.seq.max(after), |e| e.seq);
        Ok(EventPage { seq, events: out })
    }

    /// A task the caller may see (for push config and remote routes).
    pub async fn check_visible(
        &self,
        agent_id: &str,
        caller: &Caller,
        task_id: &str,
    ) -> Result<Task, A2aError> {
        Ok(self
            .visible(agent_id, task_id, caller)
            .await?
            .record
            .view(Some(0), false))
    }

    /// The store, for the bindings' remote event reads.
    pub fn store(&self) -> &TaskStore {
        &self.inner.store
    }
}

fn agent_message(record: &TaskRecord, text: &str) -> Message {
    let task = record.task();
    let mut m = Message::new(
        Role::Agent,
        format!("{}-ask-{}", task.id, task.history.len()),
        vec![Part::text(text)],
    );
    m.task_id = Some(task.id.clone());
    m.context_id = Some(task.context_id.clone());
    m
}

fn cut(mut task: Task, history: Option<usize>) -> Task {
    if let Some(n) = history {
        let skip = task.history.len().saturating_sub(n);
        task.history.drain(..skip);
    }
    task
}

/// The answer of a blocking send: the task, or the direct message for a message-only task.
fn answer(record: &TaskRecord, history: Option<usize>) -> SendMessageResponse {
    if record.is_message_only()
        && let Some(m) = record
            .task()
            .history
            .iter()
            .rev()
            .find(|m| m.role == Role::Agent)
    {
        return SendMessageResponse::Message(m.clone());
    }
    SendMessageResponse::Task(record.view(history, true))
}

/// Saves a change and its events, then publishes them (bus, push).
async fn persist_row(
    inner: &Arc<Inner>,
    agent_id: &str,
    owner: &str,
    seq: i64,
    row: &RecordRow,
    events: Vec<StreamResponse>,
    message_id: Option<&str>,
) -> Result<i64, SaveError> {
    if events.is_empty() && message_id.is_none() {
        return Ok(seq);
    }
    let new_seq = inner
        .store
        .save(agent_id, owner, seq, row, &events, message_id)
        .await?;
    publish(inner, agent_id, &row.id, seq, &events).await;
    Ok(new_seq)
}

/// Publishes saved events (numbered from `seq + 1`) on the bus and queues push notifications.
async fn publish(
    inner: &Arc<Inner>,
    agent_id: &str,
    task_id: &str,
    seq: i64,
    events: &[StreamResponse],
) {
    let mut n = seq;
    for e in events {
        n += 1;
        let inline = serde_json::to_value(e)
            .ok()
            .filter(|v| kos_agents::limits::json_size(v) <= INLINE_EVENT_MAX);
        let ev = BusEvent {
            node_id: inner.node_id.clone(),
            id: n,
            at_ms: now_ms(),
            kind: BUS_KIND.into(),
            actor: agent_id.to_owned(),
            snapshot_id: None,
            detail: json!({"taskId": task_id, "event": inline}),
        };
        if let Err(err) = inner.bus.publish(ev) {
            // Readers find the event in the database on their next catch-up.
            warn!(error = %err, task_id, seq = n, "a2a: task event not published on the bus");
        }
        if let Some(push) = &inner.push
            && let Err(err) = push.enqueue(task_id, e).await
        {
            warn!(error = %err, task_id, seq = n, "a2a: cannot queue push notifications");
        }
    }
}

/// One turn, from the agent's slot to its end.
async fn run_turn(inner: Arc<Inner>, s: TurnStart) {
    let TurnStart {
        agent_id,
        owner,
        seq,
        mut record,
        message,
        call,
        accepted_output_modes,
        streaming,
        slot,
    } = s;
    let owner_slot = slot;
    let task_id = record.task().id.clone();
    let Some(hosted) = inner.agents.get(&agent_id) else {
        return;
    };
    let agent = hosted.agent.clone();
    let timeout = hosted.timeout;
    let stop = inner.tasks.token().clone();
    let limits = inner.settings.limits.clone();
    let store = inner.store.clone();
    let cancel = CancelToken::new();
    // Made final elsewhere (canceled through another replica): this turn stops at once, not
    // at its next save. Watched from before the slot wait, so nothing is missed meanwhile.
    let watch = watch_elsewhere(
        inner.bus.subscribe(),
        store.clone(),
        task_id.clone(),
        cancel.clone(),
    );
    tokio::pin!(watch);
    // Keep the lease while waiting for a slot too. The renewal also looks at the task's
    // state, for a cancel whose bus event was lost (the bus delivers at most once).
    let renew = {
        let store = store.clone();
        let task_id = task_id.clone();
        let cancel = cancel.clone();
        async move {
            loop {
                tokio::time::sleep(RENEW_EVERY).await;
                if let Err(e) = store.set_lease(&task_id, lease_until()).await {
                    warn!(task_id, error = %e, "a2a: cannot renew a task's lease");
                }
                if final_in_store(&store, &task_id).await {
                    cancel.cancel();
                }
            }
        }
    };
    tokio::pin!(renew);
    let permit = tokio::select! {
        p = hosted.slots.clone().acquire_owned() => p,
        () = stop.cancelled() => {
            let _ = store.set_lease(&task_id, 0).await;
            return;
        }
        () = &mut renew => return,
        () = &mut watch => return,
        // Canceled (here or elsewhere) before it got a slot: nothing to run.
        () = cancel.cancelled() => {
            let _ = store.set_lease(&task_id, 0).await;
            return;
        }
    };
    let Ok(agent_permit) = permit else { return };
    inner
        .running
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(task_id.clone(), cancel.clone());
    inner.metrics.a2a_turns_running.inc();
    let turn = Turn {
        task: record.task().clone(),
        message,
        call,
        accepted_output_modes,
        streaming,
        cancel: cancel.clone(),
    };
    let seq = Arc::new(AtomicI64::new(seq));
    let publish_change = {
        let inner = inner.clone();
        let seq = seq.clone();
        let cancel = cancel.clone();
        let (agent_id, owner) = (agent_id.clone(), owner.clone());
        move |record: &TaskRecord, events: Vec<StreamResponse>| {
            let row = RecordRow::of(record);
            let inner = inner.clone();
            let seq = seq.clone();
            let cancel = cancel.clone();
            let (agent_id, owner) = (agent_id.clone(), owner.clone());
            async move {
                let row = match row {
                    Ok(r) => r,
                    Err(e) => {
                        warn!(error = %e, "a2a: cannot encode a task");
                        cancel.cancel();
                        return;
                    }
                };
                let at = seq.load(Ordering::SeqCst);
                match persist_row(&inner, &agent_id, &owner, at, &row, events, None).await {
                    Ok(n) => seq.store(n, Ordering::SeqCst),
                    // Changed elsewhere (canceled on another replica): this turn stops.
                    Err(SaveError::Conflict) => cancel.cancel(),
                    Err(SaveError::Store(e)) => {
                        warn!(error = %e, "a2a: cannot save a task update; stopping the turn");
                        cancel.cancel();
                    }
                }
            }
        }
    };
    enum End {
        Done(TaskState),
        TimedOut,
        Stopped,
    }
    let end = {
        let drive = drive_turn(
            &*agent,
            &mut record,
            turn,
            &limits,
            now,
            publish_change.clone(),
        );
        tokio::select! {
            e = drive => End::Done(e.state),
            () = tokio::time::sleep(timeout) => End::TimedOut,
            () = stop.cancelled() => End::Stopped,
            () = &mut renew => End::Stopped,
            () = &mut watch => End::Stopped,
        }
    };
    match end {
        End::Done(state) => {
            info!(task_id, state = %state, "a2a: turn ended");
            let outcome = state
                .as_str()
                .trim_start_matches("TASK_STATE_")
                .to_ascii_lowercase();
            crate::metrics::Metrics::outcome(&inner.metrics.a2a_turns, &outcome);
        }
        End::TimedOut => {
            crate::metrics::Metrics::outcome(&inner.metrics.a2a_turns, "timed_out");
            warn!(task_id, timeout = ?timeout, "a2a: turn timed out");
            let events = record.fail(
                &format!(
                    "the agent did not finish within {}",
                    humantime::format_duration(timeout)
                ),
                now(),
                &limits,
            );
            publish_change(&record, events).await;
        }
        End::Stopped => {
            crate::metrics::Metrics::outcome(&inner.metrics.a2a_turns, "stopped");
            info!(
                task_id,
                "a2a: turn stopped by shutdown; the task resumes after a restart"
            );
        }
    }
    if let Err(e) = store.set_lease(&task_id, 0).await {
        warn!(task_id, error = %e, "a2a: cannot release a task's lease");
    }
    drop(agent_permit);
    drop(owner_slot);
    inner
        .running
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(&task_id);
    inner.metrics.a2a_turns_running.dec();
    inner.turn_ended.notify_waiters();
}

/// The task is final in the database (or gone).
async fn final_in_store(store: &TaskStore, task_id: &str) -> bool {
    match store.state(task_id).await {
        Ok(Some(state)) => state.is_terminal(),
        Ok(None) => true,
        Err(e) => {
            warn!(task_id, error = %e, "a2a: cannot read a running task's state");
            false
        }
    }
}

/// Cancels a running turn whose task is made final by someone else (a cancel that reached
/// another replica): follows the task's events on the bus, and on a final one, one that did
/// not travel inline, or a lag, reads the task's state from the database. The turn's own final
/// event cancels it too, which changes nothing: its record is final already. Never returns.
async fn watch_elsewhere(
    mut sub: Subscription,
    store: TaskStore,
    task_id: String,
    cancel: CancelToken,
) {
    loop {
        let check = match sub.recv().await {
            Ok(ev) => {
                if ev.kind != BUS_KIND
                    || ev.detail.get("taskId").and_then(|v| v.as_str()) != Some(task_id.as_str())
                {
                    continue;
                }
                ev.detail
                    .get("event")
                    .filter(|v| !v.is_null())
                    .and_then(|v| serde_json::from_value::<StreamResponse>(v.clone()).ok())
                    .is_none_or(|e| is_final(&e))
            }
            Err(BusError::Lagged(_)) => true,
            // The bus is gone (shutdown): the lease renewal still looks.
            Err(_) => break,
        };
        if check && final_in_store(&store, &task_id).await {
            debug!(
                task_id,
                "a2a: the task is final in the database; its turn stops"
            );
            cancel.cancel();
            break;
        }
    }
    std::future::pending::<()>().await;
}

/// The state of a [`AgentHost::follow`] stream.
struct Follow {
    sub: Subscription,
    store: TaskStore,
    task_id: String,
    last: i64,
    buffer: VecDeque<(i64, StreamResponse)>,
    caught_up: bool,
}

impl Follow {
    async fn next(&mut self) -> Option<Result<(i64, StreamResponse), A2aError>> {
        loop {
            if let Some(x) = self.buffer.pop_front() {
                return Some(Ok(x));
            }
            if !self.caught_up {
                match self
                    .store
                    .events_after(&self.task_id, self.last, READ_BATCH)
                    .await
                {
                    Ok(events) => {
                        self.caught_up = events.len() < READ_BATCH as usize;
                        if let Some((s, _)) = events.last() {
                            self.last = *s;
                        }
                        self.buffer.extend(events);
                        continue;
                    }
                    Err(e) => return Some(Err(internal(e))),
                }
            }
            match self.sub.recv().await {
                Ok(ev) => {
                    if ev.kind != BUS_KIND
                        || ev.detail.get("taskId").and_then(|v| v.as_str())
                            != Some(self.task_id.as_str())
                        || ev.id <= self.last
                    {
                        continue;
                    }
                    let inline = ev
                        .detail
                        .get("event")
                        .filter(|v| !v.is_null())
                        .and_then(|v| serde_json::from_value::<StreamResponse>(v.clone()).ok());
                    match inline {
                        Some(e) if ev.id == self.last + 1 => {
                            self.last = ev.id;
                            return Some(Ok((ev.id, e)));
                        }
                        // A gap, or an event that did not travel inline: read the database.
                        _ => self.caught_up = false,
                    }
                }
                Err(BusError::Lagged(_)) => self.caught_up = false,
                Err(_) => return None,
            }
        }
    }
}
