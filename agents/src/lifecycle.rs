//! The task lifecycle as a sans-I/O state machine.
//!
//! A [`TaskRecord`] is what the node stores per task: the wire [`Task`] plus what the protocol
//! needs to remember between turns (accepted `messageId`s, closed artifacts). Every change
//! takes the time as an argument and returns the stream events it causes, in order, for the
//! bus, SSE subscribers and push notifications.
//!
//! Rules (spec §3.1, §3.4, §4.1.3):
//! - the agent moves a task from SUBMITTED or WORKING to WORKING (progress) or to any of
//!   COMPLETED, FAILED, CANCELED, REJECTED, INPUT_REQUIRED, AUTH_REQUIRED;
//! - an interrupted task (INPUT_REQUIRED, AUTH_REQUIRED) resumes to WORKING on a new client
//!   message; AUTH_REQUIRED may also resume by the agent (authorization arrived out of band,
//!   §7.6); the agent may fail or cancel an interrupted task;
//! - terminal states are final: a message to a terminal task is `UnsupportedOperation`, a
//!   cancel is `TaskNotCancelable`;
//! - a client message while the task is SUBMITTED or WORKING is refused (one turn at a time);
//! - a message carrying a `contextId` must match the task's; a duplicate `messageId` is
//!   accepted once and answered as a duplicate afterwards (idempotent send);
//! - artifacts: `append: false` replaces the artifact with the same id (or adds it),
//!   `append: true` extends it (or starts it), nothing may extend it after its `lastChunk`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::A2aError;
use crate::limits::{Limits, part_size};
use crate::types::{
    Artifact, Message, Part, Role, StreamResponse, Task, TaskArtifactUpdateEvent, TaskState,
    TaskStatus, TaskStatusUpdateEvent, Timestamp,
};

/// Metadata key under which the task keeps its selected skill.
pub const SKILL_KEY: &str = "skill";

/// What an agent emits while handling a turn.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentUpdate {
    /// A state change or progress note. The message, if any, must be `ROLE_AGENT`.
    Status {
        /// New state.
        state: TaskState,
        /// Message about it (kept in the history).
        message: Option<Message>,
    },
    /// A new artifact, a replacement, or a chunk of one.
    Artifact {
        /// The artifact or chunk.
        artifact: Artifact,
        /// Extend the artifact with the same id.
        append: bool,
        /// Final chunk.
        last_chunk: bool,
    },
    /// A direct answer instead of a task; only as the first update of a task's first turn.
    Reply(Message),
}

/// Why a change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LifecycleError {
    /// A message for a terminal task.
    #[error("task {task_id} is {state} and accepts no more messages")]
    Terminal {
        /// Task id.
        task_id: String,
        /// Its state.
        state: TaskState,
    },
    /// A message while the agent works.
    #[error("task {task_id} is {state}; send the next message when it asks for input")]
    Busy {
        /// Task id.
        task_id: String,
        /// Its state.
        state: TaskState,
    },
    /// The message's `contextId` differs from the task's.
    #[error("message contextId {got} does not match task {task_id} (context {expected})")]
    ContextMismatch {
        /// Task id.
        task_id: String,
        /// The task's context.
        expected: String,
        /// The message's context.
        got: String,
    },
    /// The message's `taskId` names another task.
    #[error("message taskId {got} is not task {task_id}")]
    TaskMismatch {
        /// This task.
        task_id: String,
        /// The message's task id.
        got: String,
    },
    /// A client message that is not `ROLE_USER`.
    #[error("a client message must have role ROLE_USER")]
    NotUserRole,
    /// The task reached its turn limit.
    #[error("task {task_id} reached its limit of {limit} turns")]
    TurnLimit {
        /// Task id.
        task_id: String,
        /// The limit.
        limit: usize,
    },
    /// Cancel of a terminal task.
    #[error("task {task_id} is {state} and cannot be canceled")]
    NotCancelable {
        /// Task id.
        task_id: String,
        /// Its state.
        state: TaskState,
    },
    /// An agent update the rules forbid.
    #[error("illegal transition {from} -> {to}")]
    IllegalTransition {
        /// Current state.
        from: TaskState,
        /// Requested state.
        to: TaskState,
    },
    /// An agent update that breaks the protocol otherwise (bad role, closed artifact...).
    #[error("invalid agent update: {0}")]
    InvalidUpdate(String),
    /// A value over a size bound.
    #[error(transparent)]
    TooLarge(A2aError),
}

impl From<LifecycleError> for A2aError {
    fn from(e: LifecycleError) -> Self {
        match e {
            LifecycleError::Terminal { .. }
            | LifecycleError::Busy { .. }
            | LifecycleError::TurnLimit { .. } => A2aError::UnsupportedOperation(e.to_string()),
            LifecycleError::ContextMismatch { .. } => {
                A2aError::invalid_field("message.contextId", &e.to_string())
            }
            LifecycleError::TaskMismatch { .. } => {
                A2aError::invalid_field("message.taskId", &e.to_string())
            }
            LifecycleError::NotUserRole => A2aError::invalid_field("message.role", &e.to_string()),
            LifecycleError::NotCancelable { task_id, state } => {
                A2aError::TaskNotCancelable { task_id, state }
            }
            LifecycleError::IllegalTransition { .. } | LifecycleError::InvalidUpdate(_) => {
                A2aError::InvalidAgentResponse
            }
            LifecycleError::TooLarge(inner) => inner,
        }
    }
}

/// Outcome of a client message on an existing task.
#[derive(Debug, Clone, PartialEq)]
pub enum Receipt {
    /// Accepted: the task resumed to WORKING; run the agent's next turn.
    Resumed(Vec<StreamResponse>),
    /// The same `messageId` was accepted before: answer with the task as it is, run nothing.
    Duplicate,
}

/// What the node does with a task it finds WORKING or SUBMITTED after a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestartPolicy {
    /// Run the agent's turn again from the last client message.
    Resume,
    /// Mark the task FAILED with this reason (shown to the client).
    Fail(String),
}

/// What [`TaskRecord::recover`] decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Recovery {
    /// Nothing to do (the task was interrupted or terminal).
    Idle,
    /// Run the agent again on this message.
    Resume(Message),
    /// The task failed; publish these events.
    Failed(Vec<StreamResponse>),
}

/// A task with its protocol memory; the unit the node stores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    task: Task,
    /// Client `messageId`s accepted, in order.
    message_ids: Vec<String>,
    /// Artifacts whose last chunk was seen.
    closed_artifacts: Vec<String>,
    /// Bytes of each artifact (by position in `task.artifacts`).
    artifact_bytes: Vec<usize>,
    /// The first turn answered with a direct message: the client never saw a task.
    message_only: bool,
    /// Agent messages generated by the record itself (for their ids).
    generated: u32,
}

fn status_event(task: &Task) -> StreamResponse {
    StreamResponse::StatusUpdate(TaskStatusUpdateEvent {
        task_id: task.id.clone(),
        context_id: task.context_id.clone(),
        status: task.status.clone(),
        metadata: None,
    })
}

impl TaskRecord {
    /// A new task for a client message: SUBMITTED, the message first in its history with the
    /// task and context ids filled in. `task_id` and `context_id` are generated by the node
    /// (`context_id` is the message's own when it carries one).
    pub fn create(
        task_id: String,
        context_id: String,
        mut message: Message,
        now: Timestamp,
        limits: &Limits,
    ) -> Result<Self, LifecycleError> {
        if message.role != Role::User {
            return Err(LifecycleError::NotUserRole);
        }
        if let Some(ctx) = &message.context_id
            && *ctx != context_id
        {
            return Err(LifecycleError::ContextMismatch {
                task_id,
                expected: context_id,
                got: ctx.clone(),
            });
        }
        limits
            .check_message("message", &message)
            .map_err(LifecycleError::TooLarge)?;
        message.task_id = Some(task_id.clone());
        message.context_id = Some(context_id.clone());
        let message_ids = vec![message.message_id.clone()];
        Ok(TaskRecord {
            task: Task {
                id: task_id,
                context_id,
                status: TaskStatus {
                    state: TaskState::Submitted,
                    message: None,
                    timestamp: Some(now),
                },
                artifacts: Vec::new(),
                history: vec![message],
                metadata: None,
            },
            message_ids,
            closed_artifacts: Vec::new(),
            artifact_bytes: Vec::new(),
            message_only: false,
            generated: 0,
        })
    }

    /// The task as stored (full history).
    pub fn task(&self) -> &Task {
        &self.task
    }

    /// Current state.
    pub fn state(&self) -> TaskState {
        self.task.status.state
    }

    /// The first turn was answered with a direct message (no task to show the client).
    pub fn is_message_only(&self) -> bool {
        self.message_only
    }

    /// This `messageId` was accepted by this task.
    pub fn has_message(&self, message_id: &str) -> bool {
        self.message_ids.iter().any(|m| m == message_id)
    }

    /// The latest client message (the input of the current turn).
    pub fn last_user_message(&self) -> Option<&Message> {
        self.task
            .history
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
    }

    /// The selected skill id stored in the task metadata.
    pub fn skill(&self) -> Option<&str> {
        self.task.metadata.as_ref()?.get(SKILL_KEY)?.as_str()
    }

    /// Stores the selected skill id in the task metadata.
    pub fn set_skill(&mut self, skill: &str) {
        self.task
            .metadata
            .get_or_insert_with(Default::default)
            .insert(SKILL_KEY.into(), Value::String(skill.into()));
    }

    /// The task for an answer: history cut to the `historyLength` most recent messages
    /// (`Some(0)`: none; `None`: all), artifacts left out unless asked for.
    pub fn view(&self, history_length: Option<usize>, include_artifacts: bool) -> Task {
        let mut task = self.task.clone();
        if let Some(n) = history_length {
            let skip = task.history.len().saturating_sub(n);
            task.history.drain(..skip);
        }
        if !include_artifacts {
            task.artifacts.clear();
        }
        task
    }

    fn push_history(&mut self, message: Message, limits: &Limits) {
        self.task.history.push(message);
        let excess = self.task.history.len().saturating_sub(limits.max_history);
        self.task.history.drain(..excess);
    }

    fn set_status(
        &mut self,
        state: TaskState,
        message: Option<Message>,
        now: Timestamp,
        limits: &Limits,
    ) -> StreamResponse {
        if let Some(m) = &message {
            self.push_history(m.clone(), limits);
        }
        self.task.status = TaskStatus {
            state,
            message,
            timestamp: Some(now),
        };
        status_event(&self.task)
    }

    fn agent_message(&mut self, text: &str) -> Message {
        self.generated = self.generated.saturating_add(1);
        let mut m = Message::new(
            Role::Agent,
            format!("{}-status-{}", self.task.id, self.generated),
            vec![Part::text(text)],
        );
        m.task_id = Some(self.task.id.clone());
        m.context_id = Some(self.task.context_id.clone());
        m
    }

    /// A client message for this task (the message names it by `taskId`).
    pub fn receive(
        &mut self,
        mut message: Message,
        now: Timestamp,
        limits: &Limits,
    ) -> Result<Receipt, LifecycleError> {
        let task_id = self.task.id.clone();
        if message.role != Role::User {
            return Err(LifecycleError::NotUserRole);
        }
        if let Some(t) = &message.task_id
            && *t != task_id
        {
            return Err(LifecycleError::TaskMismatch {
                task_id,
                got: t.clone(),
            });
        }
        if let Some(ctx) = &message.context_id
            && *ctx != self.task.context_id
        {
            return Err(LifecycleError::ContextMismatch {
                task_id,
                expected: self.task.context_id.clone(),
                got: ctx.clone(),
            });
        }
        if self.has_message(&message.message_id) {
            return Ok(Receipt::Duplicate);
        }
        let state = self.state();
        if state.is_terminal() {
            return Err(LifecycleError::Terminal { task_id, state });
        }
        if !state.is_interrupted() {
            return Err(LifecycleError::Busy { task_id, state });
        }
        if self.message_ids.len() >= limits.max_turns {
            return Err(LifecycleError::TurnLimit {
                task_id,
                limit: limits.max_turns,
            });
        }
        limits
            .check_message("message", &message)
            .map_err(LifecycleError::TooLarge)?;
        message.task_id = Some(task_id);
        message.context_id = Some(self.task.context_id.clone());
        self.message_ids.push(message.message_id.clone());
        self.push_history(message, limits);
        Ok(Receipt::Resumed(vec![self.set_status(
            TaskState::Working,
            None,
            now,
            limits,
        )]))
    }

    fn agent_may(from: TaskState, to: TaskState) -> bool {
        use TaskState::*;
        match (from, to) {
            (_, Unspecified | Submitted) => false,
            (f, _) if f.is_terminal() => false,
            (Submitted | Working, _) => true,
            (AuthRequired, Working) => true,
            (InputRequired | AuthRequired, Failed | Canceled) => true,
            _ => false,
        }
    }

    /// Applies an agent update; returns the events to publish.
    pub fn apply(
        &mut self,
        update: AgentUpdate,
        now: Timestamp,
        limits: &Limits,
    ) -> Result<Vec<StreamResponse>, LifecycleError> {
        match update {
            AgentUpdate::Status { state, message } => {
                let from = self.state();
                if !Self::agent_may(from, state) {
                    return Err(LifecycleError::IllegalTransition { from, to: state });
                }
                let message = match message {
                    Some(mut m) => {
                        if m.role != Role::Agent {
                            return Err(LifecycleError::InvalidUpdate(
                                "a status message must have role ROLE_AGENT".into(),
                            ));
                        }
                        limits
                            .check_message("status.message", &m)
                            .map_err(LifecycleError::TooLarge)?;
                        m.task_id = Some(self.task.id.clone());
                        m.context_id = Some(self.task.context_id.clone());
                        Some(m)
                    }
                    None => None,
                };
                Ok(vec![self.set_status(state, message, now, limits)])
            }
            AgentUpdate::Artifact {
                artifact,
                append,
                last_chunk,
            } => self
                .apply_artifact(artifact, append, last_chunk, limits)
                .map(|e| vec![e]),
            AgentUpdate::Reply(mut m) => {
                let first_turn = self.state() == TaskState::Submitted
                    && self.message_ids.len() == 1
                    && self.task.artifacts.is_empty();
                if !first_turn {
                    return Err(LifecycleError::InvalidUpdate(
                        "a direct reply must be the first update of a new task".into(),
                    ));
                }
                if m.role != Role::Agent {
                    return Err(LifecycleError::InvalidUpdate(
                        "a reply must have role ROLE_AGENT".into(),
                    ));
                }
                limits
                    .check_message("message", &m)
                    .map_err(LifecycleError::TooLarge)?;
                m.context_id = Some(self.task.context_id.clone());
                m.task_id = None;
                self.message_only = true;
                self.push_history(m.clone(), limits);
                self.task.status = TaskStatus {
                    state: TaskState::Completed,
                    message: None,
                    timestamp: Some(now),
                };
                Ok(vec![StreamResponse::Message(m)])
            }
        }
    }

    fn apply_artifact(
        &mut self,
        artifact: Artifact,
        append: bool,
        last_chunk: bool,
        limits: &Limits,
    ) -> Result<StreamResponse, LifecycleError> {
        if self.state().is_terminal() || self.state() == TaskState::InputRequired {
            return Err(LifecycleError::InvalidUpdate(format!(
                "no artifacts while the task is {}",
                self.state()
            )));
        }
        if artifact.parts.is_empty() {
            return Err(LifecycleError::InvalidUpdate(
                "an artifact needs at least one part".into(),
            ));
        }
        let chunk_bytes = limits
            .check_artifact("artifact", &artifact)
            .map_err(LifecycleError::TooLarge)?;
        let id = artifact.artifact_id.clone();
        let closed = self.closed_artifacts.contains(&id);
        let existing = self.task.artifacts.iter().position(|a| a.artifact_id == id);
        match (existing, append) {
            (Some(i), true) => {
                if closed {
                    return Err(LifecycleError::InvalidUpdate(format!(
                        "artifact {id} already had its last chunk"
                    )));
                }
                let total = self
                    .artifact_bytes
                    .get(i)
                    .copied()
                    .unwrap_or(0)
                    .saturating_add(chunk_bytes);
                if total > limits.max_artifact_bytes {
                    return Err(LifecycleError::TooLarge(A2aError::invalid_field(
                        "artifact",
                        &format!(
                            "artifact {id} would be {total} bytes, over the limit of {} bytes",
                            limits.max_artifact_bytes
                        ),
                    )));
                }
                if let (Some(a), Some(b)) = (
                    self.task.artifacts.get_mut(i),
                    self.artifact_bytes.get_mut(i),
                ) {
                    a.parts.extend(artifact.parts.iter().cloned());
                    if let Some(meta) = &artifact.metadata {
                        a.metadata
                            .get_or_insert_with(Default::default)
                            .extend(meta.clone());
                    }
                    *b = total;
                }
            }
            (Some(i), false) => {
                self.closed_artifacts.retain(|c| *c != id);
                if let (Some(a), Some(b)) = (
                    self.task.artifacts.get_mut(i),
                    self.artifact_bytes.get_mut(i),
                ) {
                    *a = artifact.clone();
                    *b = artifact.parts.iter().map(part_size).sum();
                }
            }
            (None, _) => {
                if self.task.artifacts.len() >= limits.max_artifacts {
                    return Err(LifecycleError::TooLarge(A2aError::invalid_field(
                        "artifacts",
                        &format!(
                            "the task has its limit of {} artifacts",
                            limits.max_artifacts
                        ),
                    )));
                }
                self.task.artifacts.push(artifact.clone());
                self.artifact_bytes.push(chunk_bytes);
            }
        }
        if last_chunk && !self.closed_artifacts.contains(&id) {
            self.closed_artifacts.push(id);
        }
        Ok(StreamResponse::ArtifactUpdate(TaskArtifactUpdateEvent {
            task_id: self.task.id.clone(),
            context_id: self.task.context_id.clone(),
            artifact,
            append,
            last_chunk,
            metadata: None,
        }))
    }

    /// Cancels the task (client request). Terminal tasks are not cancelable.
    pub fn cancel(
        &mut self,
        now: Timestamp,
        limits: &Limits,
    ) -> Result<Vec<StreamResponse>, LifecycleError> {
        let state = self.state();
        if state.is_terminal() {
            return Err(LifecycleError::NotCancelable {
                task_id: self.task.id.clone(),
                state,
            });
        }
        Ok(vec![self.set_status(
            TaskState::Canceled,
            None,
            now,
            limits,
        )])
    }

    /// Fails the task with a reason the client may read (agent error, timeout). No-op on a
    /// terminal task.
    pub fn fail(&mut self, reason: &str, now: Timestamp, limits: &Limits) -> Vec<StreamResponse> {
        if self.state().is_terminal() {
            return Vec::new();
        }
        let m = self.agent_message(reason);
        vec![self.set_status(TaskState::Failed, Some(m), now, limits)]
    }

    /// Ends the agent's turn after its handler returned: a task the agent left SUBMITTED or
    /// WORKING fails (the agent broke the protocol by not deciding).
    pub fn finish_turn(&mut self, now: Timestamp, limits: &Limits) -> Vec<StreamResponse> {
        if self.state().ends_turn() {
            return Vec::new();
        }
        self.fail(
            "the agent ended its turn without a final state",
            now,
            limits,
        )
    }

    /// After a restart: a task that was SUBMITTED or WORKING is resumed or failed as its agent
    /// declared.
    pub fn recover(&mut self, policy: &RestartPolicy, now: Timestamp, limits: &Limits) -> Recovery {
        if !matches!(self.state(), TaskState::Submitted | TaskState::Working) {
            return Recovery::Idle;
        }
        match (policy, self.last_user_message().cloned()) {
            (RestartPolicy::Resume, Some(m)) => Recovery::Resume(m),
            (RestartPolicy::Fail(reason), _) => Recovery::Failed(self.fail(reason, now, limits)),
            (RestartPolicy::Resume, None) => {
                Recovery::Failed(self.fail("the task lost its input in a restart", now, limits))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn t(s: u64) -> Timestamp {
        Timestamp::from_system_time(UNIX_EPOCH + Duration::from_secs(1_700_000_000 + s))
    }

    fn user(id: &str, text: &str) -> Message {
        Message::new(Role::User, id, vec![Part::text(text)])
    }

    fn agent(text: &str) -> Message {
        Message::new(Role::Agent, format!("a-{text}"), vec![Part::text(text)])
    }

    fn new_task() -> TaskRecord {
        TaskRecord::create(
            "task-1".into(),
            "ctx-1".into(),
            user("m1", "hello"),
            t(0),
            &Limits::default(),
        )
        .unwrap()
    }

    fn status(state: TaskState) -> AgentUpdate {
        AgentUpdate::Status {
            state,
            message: None,
        }
    }

    fn chunk(id: &str, text: &str, append: bool, last: bool) -> AgentUpdate {
        AgentUpdate::Artifact {
            artifact: Artifact::new(id, vec![Part::text(text)]),
            append,
            last_chunk: last,
        }
    }

    const ALL_TARGETS: [TaskState; 7] = [
        TaskState::Working,
        TaskState::Completed,
        TaskState::Failed,
        TaskState::Canceled,
        TaskState::Rejected,
        TaskState::InputRequired,
        TaskState::AuthRequired,
    ];

    #[test]
    fn create_fills_ids_and_starts_submitted() {
        let r = new_task();
        assert_eq!(r.state(), TaskState::Submitted);
        let h = &r.task().history[0];
        assert_eq!(
            (h.task_id.as_deref(), h.context_id.as_deref()),
            (Some("task-1"), Some("ctx-1"))
        );
        assert_eq!(r.task().status.timestamp, Some(t(0)));
        let mut m = user("m1", "x");
        m.context_id = Some("other".into());
        assert!(matches!(
            TaskRecord::create("t".into(), "ctx".into(), m, t(0), &Limits::default()),
            Err(LifecycleError::ContextMismatch { .. })
        ));
        assert_eq!(
            TaskRecord::create("t".into(), "c".into(), agent("x"), t(0), &Limits::default())
                .unwrap_err(),
            LifecycleError::NotUserRole
        );
    }

    #[test]
    fn submitted_and_working_reach_every_state() {
        let l = Limits::default();
        for to in ALL_TARGETS {
            let mut r = new_task();
            let ev = r.apply(status(to), t(1), &l).unwrap();
            assert!(
                matches!(&ev[..], [StreamResponse::StatusUpdate(s)] if s.status.state == to && s.task_id == "task-1")
            );
            let mut r = new_task();
            r.apply(status(TaskState::Working), t(1), &l).unwrap();
            r.apply(status(to), t(2), &l).unwrap();
            assert_eq!(r.state(), to);
            assert_eq!(r.task().status.timestamp, Some(t(2)));
        }
    }

    #[test]
    fn terminal_states_are_final() {
        let l = Limits::default();
        for terminal in [
            TaskState::Completed,
            TaskState::Failed,
            TaskState::Canceled,
            TaskState::Rejected,
        ] {
            let mut r = new_task();
            r.apply(status(terminal), t(1), &l).unwrap();
            for to in ALL_TARGETS {
                assert_eq!(
                    r.apply(status(to), t(2), &l).unwrap_err(),
                    LifecycleError::IllegalTransition { from: terminal, to }
                );
            }
            assert!(r.apply(chunk("a", "x", false, false), t(2), &l).is_err());
            let err = r.receive(user("m2", "more"), t(2), &l).unwrap_err();
            assert!(matches!(err, LifecycleError::Terminal { .. }));
            assert_eq!(A2aError::from(err).jsonrpc_code(), -32004);
            let err = r.cancel(t(3), &l).unwrap_err();
            assert_eq!(
                A2aError::from(err),
                A2aError::TaskNotCancelable {
                    task_id: "task-1".into(),
                    state: terminal
                }
            );
            assert!(r.fail("late", t(3), &l).is_empty());
            assert_eq!(r.state(), terminal);
        }
    }

    #[test]
    fn no_agent_update_to_unspecified_or_submitted() {
        let l = Limits::default();
        let mut r = new_task();
        assert!(r.apply(status(TaskState::Unspecified), t(1), &l).is_err());
        r.apply(status(TaskState::Working), t(1), &l).unwrap();
        assert!(r.apply(status(TaskState::Submitted), t(1), &l).is_err());
    }

    #[test]
    fn input_required_resumes_only_on_a_client_message() {
        let l = Limits::default();
        let mut r = new_task();
        r.apply(
            AgentUpdate::Status {
                state: TaskState::InputRequired,
                message: Some(agent("which language?")),
            },
            t(1),
            &l,
        )
        .unwrap();
        assert_eq!(
            r.apply(status(TaskState::Working), t(2), &l).unwrap_err(),
            LifecycleError::IllegalTransition {
                from: TaskState::InputRequired,
                to: TaskState::Working
            }
        );
        assert!(r.apply(status(TaskState::Completed), t(2), &l).is_err());
        let mut m = user("m2", "pt");
        m.task_id = Some("task-1".into());
        let Receipt::Resumed(ev) = r.receive(m, t(3), &l).unwrap() else {
            panic!("not resumed")
        };
        assert!(
            matches!(&ev[..], [StreamResponse::StatusUpdate(s)] if s.status.state == TaskState::Working)
        );
        let roles: Vec<Role> = r.task().history.iter().map(|m| m.role).collect();
        assert_eq!(roles, [Role::User, Role::Agent, Role::User]);
        assert_eq!(r.last_user_message().unwrap().message_id, "m2");
        r.apply(status(TaskState::Completed), t(4), &l).unwrap();
    }

    #[test]
    fn interrupted_tasks_may_be_failed_or_canceled_by_the_agent_and_auth_resumes() {
        let l = Limits::default();
        let mut r = new_task();
        r.apply(status(TaskState::InputRequired), t(1), &l).unwrap();
        r.apply(status(TaskState::Failed), t(2), &l).unwrap();
        let mut r = new_task();
        r.apply(status(TaskState::AuthRequired), t(1), &l).unwrap();
        assert!(r.apply(status(TaskState::Completed), t(2), &l).is_err());
        r.apply(status(TaskState::Working), t(2), &l).unwrap();
        r.apply(status(TaskState::Completed), t(3), &l).unwrap();
    }

    #[test]
    fn messages_while_working_are_refused() {
        let l = Limits::default();
        let mut r = new_task();
        assert!(matches!(
            r.receive(user("m2", "x"), t(1), &l),
            Err(LifecycleError::Busy { .. })
        ));
        r.apply(status(TaskState::Working), t(1), &l).unwrap();
        let err = r.receive(user("m2", "x"), t(1), &l).unwrap_err();
        assert_eq!(A2aError::from(err).jsonrpc_code(), -32004);
    }

    #[test]
    fn message_ids_are_idempotency_keys() {
        let l = Limits::default();
        let mut r = new_task();
        r.apply(status(TaskState::InputRequired), t(1), &l).unwrap();
        assert_eq!(
            r.receive(user("m1", "hello"), t(2), &l).unwrap(),
            Receipt::Duplicate
        );
        assert!(matches!(
            r.receive(user("m2", "x"), t(2), &l).unwrap(),
            Receipt::Resumed(_)
        ));
        r.apply(status(TaskState::Completed), t(3), &l).unwrap();
        // A resend of an accepted message stays a duplicate even after the task ended.
        assert_eq!(
            r.receive(user("m2", "x"), t(4), &l).unwrap(),
            Receipt::Duplicate
        );
        assert_eq!(r.task().history.len(), 2);
    }

    #[test]
    fn context_and_task_ids_must_match() {
        let l = Limits::default();
        let mut r = new_task();
        r.apply(status(TaskState::InputRequired), t(1), &l).unwrap();
        let mut m = user("m2", "x");
        m.context_id = Some("ctx-2".into());
        let err = r.receive(m, t(2), &l).unwrap_err();
        assert!(matches!(err, LifecycleError::ContextMismatch { .. }));
        assert_eq!(A2aError::from(err).jsonrpc_code(), -32602);
        let mut m = user("m2", "x");
        m.task_id = Some("task-2".into());
        assert!(matches!(
            r.receive(m, t(2), &l),
            Err(LifecycleError::TaskMismatch { .. })
        ));
        // Context inferred from the task when the message has only the task id.
        let mut m = user("m2", "x");
        m.task_id = Some("task-1".into());
        r.receive(m, t(2), &l).unwrap();
        assert_eq!(
            r.task().history.last().unwrap().context_id.as_deref(),
            Some("ctx-1")
        );
        assert_eq!(
            r.receive(agent("x"), t(2), &l).unwrap_err(),
            LifecycleError::NotUserRole
        );
    }

    #[test]
    fn turns_are_bounded() {
        let l = Limits {
            max_turns: 2,
            ..Limits::default()
        };
        let mut r = new_task();
        r.apply(status(TaskState::InputRequired), t(1), &l).unwrap();
        r.receive(user("m2", "x"), t(2), &l).unwrap();
        r.apply(status(TaskState::InputRequired), t(3), &l).unwrap();
        assert!(matches!(
            r.receive(user("m3", "x"), t(4), &l),
            Err(LifecycleError::TurnLimit { limit: 2, .. })
        ));
    }

    #[test]
    fn history_is_bounded_and_trimmed_for_answers() {
        let l = Limits {
            max_history: 3,
            ..Limits::default()
        };
        let mut r = new_task();
        for i in 0..4 {
            r.apply(
                AgentUpdate::Status {
                    state: TaskState::Working,
                    message: Some(agent(&format!("p{i}"))),
                },
                t(1),
                &l,
            )
            .unwrap();
        }
        let ids: Vec<&str> = r
            .task()
            .history
            .iter()
            .map(|m| m.message_id.as_str())
            .collect();
        assert_eq!(ids, ["a-p1", "a-p2", "a-p3"]);
        assert_eq!(r.view(None, true).history.len(), 3);
        assert_eq!(r.view(Some(1), true).history[0].message_id, "a-p3");
        let none = r.view(Some(0), true);
        assert!(none.history.is_empty());
        assert!(
            serde_json::to_value(&none)
                .unwrap()
                .get("history")
                .is_none(),
            "historyLength 0 omits history"
        );
        assert_eq!(r.view(Some(10), true).history.len(), 3);
    }

    #[test]
    fn artifacts_append_replace_and_close() {
        let l = Limits::default();
        let mut r = new_task();
        r.apply(status(TaskState::Working), t(1), &l).unwrap();
        r.apply(chunk("a", "chunk-1 ", true, false), t(1), &l)
            .unwrap();
        let ev = r
            .apply(chunk("a", "chunk-2", true, true), t(1), &l)
            .unwrap();
        assert!(matches!(&ev[..], [StreamResponse::ArtifactUpdate(u)] if u.append && u.last_chunk));
        let texts: Vec<&str> = r.task().artifacts[0]
            .parts
            .iter()
            .filter_map(Part::as_text)
            .collect();
        assert_eq!(texts, ["chunk-1 ", "chunk-2"]);
        let err = r
            .apply(chunk("a", "late", true, false), t(1), &l)
            .unwrap_err();
        assert!(matches!(err, LifecycleError::InvalidUpdate(_)));
        assert_eq!(A2aError::from(err), A2aError::InvalidAgentResponse);
        // Replacing reopens it with the new content.
        r.apply(chunk("a", "fresh", false, false), t(1), &l)
            .unwrap();
        assert_eq!(r.task().artifacts[0].parts.len(), 1);
        r.apply(chunk("a", "+more", true, false), t(1), &l).unwrap();
        r.apply(chunk("b", "other", false, true), t(1), &l).unwrap();
        assert_eq!(r.task().artifacts.len(), 2);
        assert!(r.view(None, false).artifacts.is_empty());
        let empty = AgentUpdate::Artifact {
            artifact: Artifact::new("c", vec![]),
            append: false,
            last_chunk: true,
        };
        assert!(r.apply(empty, t(1), &l).is_err());
    }

    #[test]
    fn artifact_bounds_hold_across_appends() {
        let l = Limits {
            max_artifact_bytes: 10,
            max_artifacts: 1,
            ..Limits::default()
        };
        let mut r = new_task();
        r.apply(chunk("a", "123456", true, false), t(1), &l)
            .unwrap();
        let err = r
            .apply(chunk("a", "12345", true, false), t(1), &l)
            .unwrap_err();
        assert!(matches!(err, LifecycleError::TooLarge(_)));
        assert!(A2aError::from(err).to_string().contains("11 bytes"));
        assert!(
            r.apply(chunk("b", "x", false, true), t(1), &l).is_err(),
            "artifact count bound"
        );
    }

    #[test]
    fn status_messages_must_come_from_the_agent() {
        let l = Limits::default();
        let mut r = new_task();
        let bad = AgentUpdate::Status {
            state: TaskState::Working,
            message: Some(user("u", "x")),
        };
        assert!(matches!(
            r.apply(bad, t(1), &l),
            Err(LifecycleError::InvalidUpdate(_))
        ));
    }

    #[test]
    fn a_direct_reply_only_opens_a_task() {
        let l = Limits::default();
        let mut r = new_task();
        let ev = r
            .apply(
                AgentUpdate::Reply(agent("Direct message response")),
                t(1),
                &l,
            )
            .unwrap();
        let [StreamResponse::Message(m)] = &ev[..] else {
            panic!("{ev:?}")
        };
        assert_eq!(
            (m.context_id.as_deref(), m.task_id.as_deref()),
            (Some("ctx-1"), None)
        );
        assert!(r.is_message_only() && r.state().is_terminal());
        let mut r = new_task();
        r.apply(status(TaskState::Working), t(1), &l).unwrap();
        assert!(
            r.apply(AgentUpdate::Reply(agent("late")), t(1), &l)
                .is_err()
        );
    }

    #[test]
    fn cancel_interrupted_and_working_tasks() {
        let l = Limits::default();
        for first in [
            TaskState::Working,
            TaskState::InputRequired,
            TaskState::AuthRequired,
        ] {
            let mut r = new_task();
            r.apply(status(first), t(1), &l).unwrap();
            let ev = r.cancel(t(2), &l).unwrap();
            assert!(
                matches!(&ev[..], [StreamResponse::StatusUpdate(s)] if s.status.state == TaskState::Canceled)
            );
            // The agent's late updates are refused after the cancel.
            assert!(r.apply(status(TaskState::Completed), t(3), &l).is_err());
        }
    }

    #[test]
    fn finish_turn_fails_an_undecided_task() {
        let l = Limits::default();
        let mut r = new_task();
        r.apply(status(TaskState::Working), t(1), &l).unwrap();
        let ev = r.finish_turn(t(2), &l);
        assert_eq!(ev.len(), 1);
        assert_eq!(r.state(), TaskState::Failed);
        assert_eq!(
            r.task().status.message.as_ref().unwrap().text(),
            "the agent ended its turn without a final state"
        );
        let mut r = new_task();
        r.apply(status(TaskState::InputRequired), t(1), &l).unwrap();
        assert!(r.finish_turn(t(2), &l).is_empty());
    }

    #[test]
    fn recovery_follows_the_agent_policy() {
        let l = Limits::default();
        let mut r = new_task();
        r.apply(status(TaskState::Working), t(1), &l).unwrap();
        let mut copy = r.clone();
        assert!(
            matches!(r.recover(&RestartPolicy::Resume, t(2), &l), Recovery::Resume(m) if m.message_id == "m1")
        );
        assert_eq!(r.state(), TaskState::Working);
        let Recovery::Failed(ev) =
            copy.recover(&RestartPolicy::Fail("node restarted".into()), t(2), &l)
        else {
            panic!()
        };
        assert_eq!(ev.len(), 1);
        assert_eq!(
            copy.task().status.message.as_ref().unwrap().text(),
            "node restarted"
        );
        let mut idle = new_task();
        idle.apply(status(TaskState::InputRequired), t(1), &l)
            .unwrap();
        assert_eq!(
            idle.recover(&RestartPolicy::Fail("x".into()), t(2), &l),
            Recovery::Idle
        );
    }

    #[test]
    fn records_persist_as_json() {
        let l = Limits::default();
        let mut r = new_task();
        r.set_skill("echo");
        r.apply(chunk("a", "x", true, true), t(1), &l).unwrap();
        let back: TaskRecord = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.skill(), Some("echo"));
        let mut back = back;
        assert!(
            back.apply(chunk("a", "y", true, false), t(2), &l).is_err(),
            "closed artifacts survive storage"
        );
    }
}
