//! The [`Agent`] trait the node's services implement, the update sink they write to, the
//! cancellation token they observe, and [`drive_turn`], the reference loop that runs one turn of
//! an agent against a [`TaskRecord`].
//!
//! Handlers are boxed futures (`dyn Agent` in the node's registry) and need no particular
//! runtime: updates go through a bounded `futures` channel, so a slow consumer slows the agent.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use futures::channel::mpsc;
use futures::future::BoxFuture;
use futures::{SinkExt, StreamExt};

use crate::card::AgentSkill;
use crate::lifecycle::{AgentUpdate, RestartPolicy, TaskRecord};
use crate::limits::Limits;
use crate::skill::SkillCall;
use crate::types::{Artifact, Message, Part, Role, StreamResponse, Task, TaskState, Timestamp};

/// What an agent says about itself; the node builds its card from this
/// (`signing::build_card`).
#[derive(Debug, Clone, PartialEq)]
pub struct AgentDescriptor {
    /// Path segment and registry key (`[a-z0-9-]`, 1..=64).
    pub id: String,
    /// Card name.
    pub name: String,
    /// Card description.
    pub description: String,
    /// Agent version.
    pub version: String,
    /// Skills.
    pub skills: Vec<AgentSkill>,
    /// Skill run when a message names none.
    pub default_skill: Option<String>,
    /// Accepted input media types.
    pub input_modes: Vec<String>,
    /// Produced output media types.
    pub output_modes: Vec<String>,
    /// The agent streams (chunked artifacts, progress).
    pub streaming: bool,
    /// What happens to its WORKING tasks after the node restarts.
    pub on_restart: RestartPolicy,
}

impl AgentDescriptor {
    /// Input modes of a skill (its own, else the agent's).
    pub fn input_modes_of(&self, skill: &str) -> &[String] {
        match self.skills.iter().find(|s| s.id == skill) {
            Some(s) if !s.input_modes.is_empty() => &s.input_modes,
            _ => &self.input_modes,
        }
    }
}

/// One turn given to an agent.
#[derive(Debug, Clone)]
pub struct Turn {
    /// The task as it is (full history, artifacts).
    pub task: Task,
    /// The client message of this turn.
    pub message: Message,
    /// The selected skill and the split input.
    pub call: SkillCall,
    /// Media types the client accepts (`acceptedOutputModes`).
    pub accepted_output_modes: Vec<String>,
    /// The client reads a stream (chunk artifacts where it helps).
    pub streaming: bool,
    /// Fired when the client cancels the task or the node stops the turn.
    pub cancel: CancelToken,
}

/// How a handler ends in error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    /// The task fails with this reason (shown to the client: no internals).
    #[error("{0}")]
    Failed(String),
    /// The node stopped reading updates (the turn was stopped).
    #[error("the update sink is closed")]
    SinkClosed,
}

/// The future of a handler.
pub type HandlerFuture<'a> = BoxFuture<'a, Result<(), AgentError>>;

/// An agent hosted by the node.
pub trait Agent: Send + Sync {
    /// Card parts, default skill, restart policy.
    fn descriptor(&self) -> &AgentDescriptor;

    /// Handles one turn: emits status and artifact updates through `updates` and returns when
    /// the task is terminal or interrupted (INPUT_REQUIRED / AUTH_REQUIRED ends the turn; the
    /// next client message starts a new one). Observe `turn.cancel`.
    fn handle<'a>(&'a self, turn: Turn, updates: Updates) -> HandlerFuture<'a>;
}

/// The sink a handler writes its updates to, with helpers for the usual ones.
#[derive(Debug)]
pub struct Updates {
    tx: mpsc::Sender<AgentUpdate>,
    task_id: String,
    context_id: String,
    counter: u32,
}

impl Updates {
    /// A sink for a task and the receiving end the node reads (bounded to `capacity`).
    pub fn channel(task: &Task, capacity: usize) -> (Updates, mpsc::Receiver<AgentUpdate>) {
        let (tx, rx) = mpsc::channel(capacity);
        (
            Updates {
                tx,
                task_id: task.id.clone(),
                context_id: task.context_id.clone(),
                counter: 0,
            },
            rx,
        )
    }

    /// A fresh id for something this handler creates (`<task>-<kind>-<n>`).
    pub fn next_id(&mut self, kind: &str) -> String {
        self.counter = self.counter.saturating_add(1);
        format!("{}-{kind}-{}", self.task_id, self.counter)
    }

    /// An agent message with these parts, ids filled in.
    pub fn message(&mut self, parts: Vec<Part>) -> Message {
        let mut m = Message::new(Role::Agent, self.next_id("msg"), parts);
        m.task_id = Some(self.task_id.clone());
        m.context_id = Some(self.context_id.clone());
        m
    }

    /// Sends an update (waits while the node is behind).
    pub async fn send(&mut self, update: AgentUpdate) -> Result<(), AgentError> {
        self.tx
            .send(update)
            .await
            .map_err(|_| AgentError::SinkClosed)
    }

    /// A status change with an optional text message.
    pub async fn status(&mut self, state: TaskState, text: Option<&str>) -> Result<(), AgentError> {
        let message = text.map(|t| self.message(vec![Part::text(t)]));
        self.send(AgentUpdate::Status { state, message }).await
    }

    /// An artifact or a chunk of one.
    pub async fn artifact(
        &mut self,
        artifact: Artifact,
        append: bool,
        last_chunk: bool,
    ) -> Result<(), AgentError> {
        self.send(AgentUpdate::Artifact {
            artifact,
            append,
            last_chunk,
        })
        .await
    }

    /// A direct answer instead of a task (first update of a new task only).
    pub async fn reply(&mut self, parts: Vec<Part>) -> Result<(), AgentError> {
        let m = self.message(parts);
        self.send(AgentUpdate::Reply(m)).await
    }
}

#[derive(Debug, Default)]
struct CancelInner {
    cancelled: AtomicBool,
    wakers: Mutex<Vec<Waker>>,
}

/// A cancellation signal shared between the node and a handler (clone freely).
#[derive(Debug, Clone, Default)]
pub struct CancelToken {
    inner: Arc<CancelInner>,
}

impl CancelToken {
    /// A token not yet fired.
    pub fn new() -> Self {
        CancelToken::default()
    }

    /// Fires the token and wakes every waiter.
    pub fn cancel(&self) {
        self.inner.cancelled.store(true, Ordering::SeqCst);
        let wakers = std::mem::take(
            &mut *self
                .inner
                .wakers
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for w in wakers {
            w.wake();
        }
    }

    /// The token fired.
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancelled.load(Ordering::SeqCst)
    }

    /// Resolves once the token fires.
    pub fn cancelled(&self) -> Cancelled {
        Cancelled {
            token: self.clone(),
        }
    }
}

/// Future of [`CancelToken::cancelled`].
#[derive(Debug)]
pub struct Cancelled {
    token: CancelToken,
}

impl Future for Cancelled {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.token.is_cancelled() {
            return Poll::Ready(());
        }
        let mut wakers = self
            .token
            .inner
            .wakers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Checked again under the lock: `cancel` takes the list under it after setting the flag.
        if self.token.is_cancelled() {
            return Poll::Ready(());
        }
        if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
            wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// How a driven turn ended.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnEnd {
    /// State after the turn.
    pub state: TaskState,
    /// The handler's error, if it returned one.
    pub error: Option<AgentError>,
}

/// Runs one turn: the handler's updates are applied to `record` in order, and after each
/// change (or each burst of updates already queued, at most 64 events) `publish` gets the
/// record and the events it caused; the future it returns (the node's write to its store and
/// bus) is awaited before the next update is read, so the order of the stored events is the
/// order of the changes. An update the lifecycle refuses
/// fails the task and stops the handler (its sink closes); a fired cancel token cancels the
/// task; a handler that returns without a final state fails the task
/// ([`TaskRecord::finish_turn`]). `now` is read once per change.
pub async fn drive_turn<A, N, P, F>(
    agent: &A,
    record: &mut TaskRecord,
    turn: Turn,
    limits: &Limits,
    mut now: N,
    mut publish: P,
) -> TurnEnd
where
    A: Agent + ?Sized,
    N: FnMut() -> Timestamp,
    P: FnMut(&TaskRecord, Vec<StreamResponse>) -> F,
    F: Future<Output = ()>,
{
    let cancel = turn.cancel.clone();
    let (updates, mut rx) = Updates::channel(&turn.task, 16);
    let handler = agent.handle(turn, updates);
    let consume = async {
        loop {
            let next = futures::future::select(rx.next(), cancel.cancelled()).await;
            let first = match next {
                futures::future::Either::Left((Some(u), _)) if !cancel.is_cancelled() => u,
                // Updates after a cancel are dropped; the cancel itself is applied below.
                futures::future::Either::Left(_) | futures::future::Either::Right(_) => break,
            };
            // Updates already queued behind it are applied too and published together: one
            // write of the store for a burst (status, artifact, final status), the events
            // still one by one and in order.
            let mut events = Vec::new();
            let mut update = Some(first);
            let mut refused = false;
            while let Some(u) = update.take() {
                match record.apply(u, now(), limits) {
                    Ok(e) => events.extend(e),
                    Err(_) => {
                        refused = true;
                        break;
                    }
                }
                if events.len() < 64 && !cancel.is_cancelled() {
                    update = rx.try_recv().ok();
                }
            }
            if refused {
                events.extend(record.fail("the agent produced an invalid update", now(), limits));
                publish(record, events).await;
                cancel.cancel();
                break;
            }
            publish(record, events).await;
        }
        drop(rx);
    };
    let (result, ()) = futures::join!(handler, consume);
    let error = result.err();
    if cancel.is_cancelled()
        && let Ok(events) = record.cancel(now(), limits)
    {
        publish(record, events).await;
    }
    let events = match &error {
        Some(AgentError::Failed(reason)) => record.fail(reason, now(), limits),
        Some(AgentError::SinkClosed) | None => record.finish_turn(now(), limits),
    };
    if !events.is_empty() {
        publish(record, events).await;
    }
    TurnEnd {
        state: record.state(),
        error,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use futures::executor::block_on;

    #[test]
    fn cancel_token_wakes_waiters() {
        let token = CancelToken::new();
        assert!(!token.is_cancelled());
        let t2 = token.clone();
        let waiter = std::thread::spawn(move || block_on(t2.cancelled()));
        std::thread::sleep(std::time::Duration::from_millis(20));
        token.cancel();
        waiter.join().unwrap();
        assert!(token.is_cancelled());
        block_on(token.cancelled()); // already fired: ready at once
    }

    #[test]
    fn the_sink_closes_when_the_reader_goes() {
        let task = Task {
            id: "t".into(),
            context_id: "c".into(),
            status: crate::types::TaskStatus {
                state: TaskState::Working,
                message: None,
                timestamp: None,
            },
            artifacts: vec![],
            history: vec![],
            metadata: None,
        };
        let (mut updates, rx) = Updates::channel(&task, 1);
        assert_eq!(updates.next_id("artifact"), "t-artifact-1");
        let m = updates.message(vec![Part::text("x")]);
        assert_eq!(
            (m.message_id.as_str(), m.context_id.as_deref()),
            ("t-msg-2", Some("c"))
        );
        drop(rx);
        assert_eq!(
            block_on(updates.status(TaskState::Completed, None)),
            Err(AgentError::SinkClosed)
        );
    }
}
