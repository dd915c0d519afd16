//! The built-in `echo` agent: for tests, benchmarks and conformance runs (off by default in
//! the node).
//!
//! - skill `echo` (default): answers the text parts as a text artifact and completes; with a
//!   data part `{"chunkSize": n}` it streams the text as artifact chunks of `n` characters
//!   (`append`, the last one `lastChunk`); with no text it asks for some (INPUT_REQUIRED).
//! - the TCK's `messageId` prefixes (a2aproject/a2a-tck `scenarios/*.feature`) drive the
//!   scripted behaviours the conformance suite expects (`tck-complete-task`,
//!   `tck-input-required`, `tck-stream-*`, ...).

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::{Value, json};

use crate::agent::{Agent, AgentDescriptor, AgentError, HandlerFuture, Turn, Updates};
use crate::card::AgentSkill;
use crate::lifecycle::RestartPolicy;
use crate::types::{Artifact, Part, TaskState};

/// A timer supplied by the host (the node passes `tokio::time::sleep`).
pub type Sleep = Arc<dyn Fn(Duration) -> BoxFuture<'static, ()> + Send + Sync>;

/// The echo agent.
pub struct EchoAgent {
    descriptor: AgentDescriptor,
    sleep: Option<Sleep>,
    long_wait: Duration,
}

impl std::fmt::Debug for EchoAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EchoAgent")
            .field("descriptor", &self.descriptor)
            .finish_non_exhaustive()
    }
}

impl Default for EchoAgent {
    fn default() -> Self {
        EchoAgent::new()
    }
}

/// The TCK scenarios, longest prefix first where one prefix extends another.
const TCK_PREFIXES: &[&str] = &[
    "tck-stream-artifact-chunked",
    "tck-stream-artifact-text",
    "tck-stream-artifact-file",
    "tck-stream-ordering-001",
    "tck-stream-001",
    "tck-stream-002",
    "tck-stream-003",
    "tck-artifact-file-url",
    "tck-artifact-file",
    "tck-artifact-text",
    "tck-artifact-data",
    "tck-message-response",
    "tck-input-required",
    "tck-complete-task",
    "tck-reject-task",
    "test-resubscribe-message-id",
];

impl EchoAgent {
    /// The agent without a timer (the TCK's long-running scenario completes at once).
    pub fn new() -> Self {
        EchoAgent {
            descriptor: AgentDescriptor {
                id: "echo".into(),
                name: "Echo".into(),
                description: "Echoes its input back: a test agent of the kOS node.".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                skills: vec![AgentSkill {
                    id: "echo".into(),
                    name: "Echo".into(),
                    description: "Answers the text it receives as a text artifact. A data part {\"chunkSize\": n} streams it back in chunks of n characters.".into(),
                    tags: vec!["test".into(), "echo".into()],
                    examples: vec!["Hello".into()],
                    input_modes: vec![],
                    output_modes: vec![],
                    security_requirements: vec![],
                }],
                default_skill: Some("echo".into()),
                input_modes: vec!["text/plain".into(), "application/json".into()],
                output_modes: vec!["text/plain".into(), "application/json".into(), "application/octet-stream".into()],
                streaming: true,
                on_restart: RestartPolicy::Resume,
            },
            sleep: None,
            long_wait: Duration::from_secs(4),
        }
    }

    /// With a host timer for the TCK's long-running scenario, waiting `long_wait` there.
    pub fn with_sleep(mut self, sleep: Sleep, long_wait: Duration) -> Self {
        self.sleep = Some(sleep);
        self.long_wait = long_wait;
        self
    }

    async fn tck(&self, prefix: &str, turn: &Turn, u: &mut Updates) -> Result<(), AgentError> {
        use TaskState::{Completed, InputRequired, Rejected, Working};
        let text_artifact = |u: &mut Updates, text: &str| {
            Artifact::new(u.next_id("artifact"), vec![Part::text(text)])
        };
        let file_part = || {
            Part::raw(b"tck".to_vec())
                .with_filename("output.txt")
                .with_media_type("text/plain")
        };
        match prefix {
            "tck-stream-artifact-chunked" => {
                u.status(Working, None).await?;
                let id = u.next_id("artifact");
                u.artifact(
                    Artifact::new(id.clone(), vec![Part::text("chunk-1 ")]),
                    false,
                    false,
                )
                .await?;
                u.artifact(Artifact::new(id, vec![Part::text("chunk-2")]), true, true)
                    .await?;
                u.status(Completed, None).await
            }
            "tck-stream-artifact-text"
            | "tck-stream-ordering-001"
            | "tck-stream-001"
            | "tck-stream-003" => {
                let text = match prefix {
                    "tck-stream-artifact-text" => "Streamed text content",
                    "tck-stream-ordering-001" => "Ordered output",
                    "tck-stream-001" => "Stream hello from TCK",
                    _ => "Stream task lifecycle",
                };
                u.status(Working, None).await?;
                let a = text_artifact(u, text);
                u.artifact(a, false, true).await?;
                u.status(Completed, None).await
            }
            "tck-stream-artifact-file" => {
                u.status(Working, None).await?;
                let id = u.next_id("artifact");
                u.artifact(Artifact::new(id, vec![file_part()]), false, true)
                    .await?;
                u.status(Completed, None).await
            }
            "tck-stream-002" => u.status(Completed, None).await,
            "tck-artifact-file-url" => {
                let part = Part::url("https://example.com/output.txt")
                    .with_filename("output.txt")
                    .with_media_type("text/plain");
                let id = u.next_id("artifact");
                u.artifact(Artifact::new(id, vec![part]), false, true)
                    .await?;
                u.status(Completed, None).await
            }
            "tck-artifact-file" => {
                let id = u.next_id("artifact");
                u.artifact(Artifact::new(id, vec![file_part()]), false, true)
                    .await?;
                u.status(Completed, None).await
            }
            "tck-artifact-text" => {
                let a = text_artifact(u, "Generated text content");
                u.artifact(a, false, true).await?;
                u.status(Completed, None).await
            }
            "tck-artifact-data" => {
                let id = u.next_id("artifact");
                u.artifact(
                    Artifact::new(id, vec![Part::data(json!({"key": "value", "count": 42}))]),
                    false,
                    true,
                )
                .await?;
                u.status(Completed, None).await
            }
            "tck-message-response" => u.reply(vec![Part::text("Direct message response")]).await,
            "tck-input-required" => u.status(InputRequired, None).await,
            "tck-reject-task" => u.status(Rejected, Some("rejected")).await,
            "test-resubscribe-message-id" => {
                u.status(Working, None).await?;
                if let Some(sleep) = &self.sleep {
                    let wait = sleep(self.long_wait);
                    futures::pin_mut!(wait);
                    let cancelled = turn.cancel.cancelled();
                    if let futures::future::Either::Right(_) =
                        futures::future::select(wait, cancelled).await
                    {
                        return Ok(());
                    }
                }
                u.status(Completed, None).await
            }
            // tck-complete-task
            _ => u.status(Completed, Some("Hello from TCK")).await,
        }
    }

    async fn echo(&self, turn: &Turn, u: &mut Updates) -> Result<(), AgentError> {
        let text = &turn.call.text;
        if text.is_empty() {
            return u
                .status(TaskState::InputRequired, Some("Send some text to echo."))
                .await;
        }
        let chunk_size = match turn.call.args.get("chunkSize") {
            None | Some(Value::Null) => None,
            // JSON numbers from protobuf `Struct`s arrive as floats (`4.0`): whole ones count.
            Some(v) => match v
                .as_u64()
                .or_else(|| {
                    v.as_f64()
                        .filter(|f| f.fract() == 0.0 && *f >= 1.0 && *f <= 1e9)
                        .map(|f| f as u64)
                })
                .and_then(|n| usize::try_from(n).ok())
                .filter(|n| *n > 0)
            {
                Some(n) => Some(n),
                None => {
                    return Err(AgentError::Failed(
                        "chunkSize must be a positive integer".into(),
                    ));
                }
            },
        };
        u.status(TaskState::Working, None).await?;
        let id = u.next_id("artifact");
        match chunk_size {
            None => {
                u.artifact(
                    Artifact::new(id, vec![Part::text(text.clone())]),
                    false,
                    true,
                )
                .await?
            }
            Some(n) => {
                let chars: Vec<char> = text.chars().collect();
                let chunks: Vec<String> = chars.chunks(n).map(|c| c.iter().collect()).collect();
                let last = chunks.len().saturating_sub(1);
                for (i, chunk) in chunks.into_iter().enumerate() {
                    if turn.cancel.is_cancelled() {
                        return Ok(());
                    }
                    // The first chunk creates the artifact, the next ones extend it.
                    u.artifact(
                        Artifact::new(id.clone(), vec![Part::text(chunk)]),
                        i > 0,
                        i == last,
                    )
                    .await?;
                }
            }
        }
        u.status(TaskState::Completed, None).await
    }
}

impl Agent for EchoAgent {
    fn descriptor(&self) -> &AgentDescriptor {
        &self.descriptor
    }

    fn handle<'a>(&'a self, turn: Turn, mut updates: Updates) -> HandlerFuture<'a> {
        Box::pin(async move {
            let id = turn.message.message_id.as_str();
            match TCK_PREFIXES.iter().find(|p| id.starts_with(**p)) {
                Some(prefix) => self.tck(prefix, &turn, &mut updates).await,
                None => self.echo(&turn, &mut updates).await,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::agent::{CancelToken, TurnEnd, drive_turn};
    use crate::lifecycle::{Receipt, TaskRecord};
    use crate::limits::Limits;
    use crate::skill::{Selection, select};
    use crate::types::{Message, PartContent, Role, StreamResponse, Timestamp};
    use futures::executor::block_on;
    use std::time::UNIX_EPOCH;

    fn clock() -> impl FnMut() -> Timestamp {
        let mut s = 0u64;
        move || {
            s += 1;
            Timestamp::from_system_time(UNIX_EPOCH + Duration::from_secs(1_700_000_000 + s))
        }
    }

    fn user(id: &str, parts: Vec<Part>) -> Message {
        Message::new(Role::User, id, parts)
    }

    /// Creates a task for `message` and runs echo's first turn, collecting the events.
    fn run(
        agent: &EchoAgent,
        message: Message,
        cancel: CancelToken,
    ) -> (TaskRecord, TurnEnd, Vec<StreamResponse>) {
        let limits = Limits::default();
        let mut now = clock();
        let mut record =
            TaskRecord::create("task".into(), "ctx".into(), message.clone(), now(), &limits)
                .unwrap();
        let (turn_end, events) = turn(agent, &mut record, message, cancel, &mut now);
        (record, turn_end, events)
    }

    fn turn(
        agent: &EchoAgent,
        record: &mut TaskRecord,
        message: Message,
        cancel: CancelToken,
        now: &mut impl FnMut() -> Timestamp,
    ) -> (TurnEnd, Vec<StreamResponse>) {
        let d = agent.descriptor();
        let Selection::Run(call) = select(
            &d.skills,
            d.default_skill.as_deref(),
            record.skill(),
            &message,
        )
        .unwrap() else {
            panic!("no skill")
        };
        record.set_skill(&call.skill);
        let t = Turn {
            task: record.task().clone(),
            message,
            call,
            accepted_output_modes: vec![],
            streaming: true,
            cancel,
        };
        let mut events = Vec::new();
        let end = block_on(drive_turn(
            agent,
            record,
            t,
            &Limits::default(),
            now,
            |_, e: Vec<StreamResponse>| {
                events.extend(e);
                futures::future::ready(())
            },
        ));
        (end, events)
    }

    fn kinds(events: &[StreamResponse]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                StreamResponse::StatusUpdate(s) => s
                    .status
                    .state
                    .as_str()
                    .trim_start_matches("TASK_STATE_")
                    .to_owned(),
                StreamResponse::ArtifactUpdate(a) => {
                    format!("artifact(append={},last={})", a.append, a.last_chunk)
                }
                StreamResponse::Message(_) => "message".into(),
                StreamResponse::Task(_) => "task".into(),
            })
            .collect()
    }

    #[test]
    fn echoes_text_as_an_artifact() {
        let (record, end, events) = run(
            &EchoAgent::new(),
            user("m1", vec![Part::text("hello")]),
            CancelToken::new(),
        );
        assert_eq!((end.state, end.error), (TaskState::Completed, None));
        assert_eq!(
            kinds(&events),
            ["WORKING", "artifact(append=false,last=true)", "COMPLETED"]
        );
        assert_eq!(record.task().artifacts[0].parts[0].as_text(), Some("hello"));
        assert_eq!(record.skill(), Some("echo"));
    }

    #[test]
    fn streams_chunks_when_asked() {
        let msg = user(
            "m1",
            vec![Part::text("abcdefg"), Part::data(json!({"chunkSize": 3.0}))],
        );
        let (record, end, events) = run(&EchoAgent::new(), msg, CancelToken::new());
        assert_eq!(end.state, TaskState::Completed);
        assert_eq!(
            kinds(&events),
            [
                "WORKING",
                "artifact(append=false,last=false)",
                "artifact(append=true,last=false)",
                "artifact(append=true,last=true)",
                "COMPLETED"
            ]
        );
        let texts: Vec<&str> = record.task().artifacts[0]
            .parts
            .iter()
            .filter_map(Part::as_text)
            .collect();
        assert_eq!(texts, ["abc", "def", "g"]);
        let bad = user(
            "m1",
            vec![Part::text("x"), Part::data(json!({"chunkSize": 0}))],
        );
        let (record, end, _) = run(&EchoAgent::new(), bad, CancelToken::new());
        assert_eq!(end.state, TaskState::Failed);
        assert_eq!(
            record.task().status.message.as_ref().unwrap().text(),
            "chunkSize must be a positive integer"
        );
    }

    #[test]
    fn asks_for_input_then_completes_on_the_next_turn() {
        let agent = EchoAgent::new();
        let mut now = clock();
        let limits = Limits::default();
        let first = user("m1", vec![Part::data(json!({}))]);
        let mut record =
            TaskRecord::create("task".into(), "ctx".into(), first.clone(), now(), &limits).unwrap();
        let (end, _) = turn(&agent, &mut record, first, CancelToken::new(), &mut now);
        assert_eq!(end.state, TaskState::InputRequired);
        assert_eq!(
            record.task().status.message.as_ref().unwrap().text(),
            "Send some text to echo."
        );
        let mut second = user("m2", vec![Part::text("now")]);
        second.task_id = Some("task".into());
        assert!(matches!(
            record.receive(second.clone(), now(), &limits).unwrap(),
            Receipt::Resumed(_)
        ));
        let (end, events) = turn(&agent, &mut record, second, CancelToken::new(), &mut now);
        assert_eq!(end.state, TaskState::Completed);
        assert_eq!(
            kinds(&events),
            ["WORKING", "artifact(append=false,last=true)", "COMPLETED"]
        );
        assert_eq!(record.task().history.len(), 3, "user, agent question, user");
    }

    #[test]
    fn a_fired_token_cancels_the_task() {
        let cancel = CancelToken::new();
        cancel.cancel();
        let msg = user(
            "m1",
            vec![Part::text("abcdef"), Part::data(json!({"chunkSize": 1}))],
        );
        let (record, end, events) = run(&EchoAgent::new(), msg, cancel);
        assert_eq!(end.state, TaskState::Canceled);
        assert!(kinds(&events).contains(&"CANCELED".to_owned()));
        assert!(record.task().artifacts.len() <= 1);
    }

    #[test]
    fn tck_prefixes_follow_the_scenarios() {
        let cases: &[(&str, TaskState, &[&str])] = &[
            (
                "tck-complete-task-1a2b",
                TaskState::Completed,
                &["COMPLETED"],
            ),
            (
                "tck-input-required-1",
                TaskState::InputRequired,
                &["INPUT_REQUIRED"],
            ),
            ("tck-reject-task-1", TaskState::Rejected, &["REJECTED"]),
            (
                "tck-artifact-text-1",
                TaskState::Completed,
                &["artifact(append=false,last=true)", "COMPLETED"],
            ),
            (
                "tck-artifact-file-url-1",
                TaskState::Completed,
                &["artifact(append=false,last=true)", "COMPLETED"],
            ),
            (
                "tck-stream-001-x",
                TaskState::Completed,
                &["WORKING", "artifact(append=false,last=true)", "COMPLETED"],
            ),
            ("tck-stream-002-x", TaskState::Completed, &["COMPLETED"]),
            (
                "tck-stream-artifact-chunked-x",
                TaskState::Completed,
                &[
                    "WORKING",
                    "artifact(append=false,last=false)",
                    "artifact(append=true,last=true)",
                    "COMPLETED",
                ],
            ),
            ("tck-message-response-1", TaskState::Completed, &["message"]),
            (
                "test-resubscribe-message-id",
                TaskState::Completed,
                &["WORKING", "COMPLETED"],
            ),
        ];
        for (id, state, expected) in cases {
            let (record, end, events) = run(
                &EchoAgent::new(),
                user(id, vec![Part::text("Hello from TCK")]),
                CancelToken::new(),
            );
            assert_eq!(end.state, *state, "{id}");
            assert_eq!(kinds(&events), *expected, "{id}");
            if id.starts_with("tck-complete-task") {
                assert_eq!(
                    record.task().status.message.as_ref().unwrap().text(),
                    "Hello from TCK"
                );
            }
            if id.starts_with("tck-message-response") {
                assert!(record.is_message_only());
            }
            if id.starts_with("tck-artifact-file-url") {
                assert!(
                    matches!(&record.task().artifacts[0].parts[0].content, PartContent::Url(u) if u == "https://example.com/output.txt")
                );
            }
        }
        let (record, _, _) = run(
            &EchoAgent::new(),
            user("tck-artifact-file-9", vec![Part::text("x")]),
            CancelToken::new(),
        );
        assert_eq!(
            serde_json::to_value(&record.task().artifacts[0].parts[0]).unwrap(),
            json!({"raw": "dGNr", "filename": "output.txt", "mediaType": "text/plain"})
        );
        let (record, _, _) = run(
            &EchoAgent::new(),
            user("tck-artifact-data-9", vec![Part::text("x")]),
            CancelToken::new(),
        );
        assert_eq!(
            record.task().artifacts[0].parts[0].content,
            PartContent::Data(json!({"key": "value", "count": 42}))
        );
    }

    #[test]
    fn the_long_scenario_waits_on_the_host_timer_or_a_cancel() {
        let slept = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = slept.clone();
        let sleep: Sleep = Arc::new(move |d| {
            log.lock().unwrap().push(d);
            Box::pin(async {})
        });
        let agent = EchoAgent::new().with_sleep(sleep, Duration::from_secs(2));
        let (_, end, _) = run(
            &agent,
            user("test-resubscribe-message-id", vec![Part::text("x")]),
            CancelToken::new(),
        );
        assert_eq!(end.state, TaskState::Completed);
        assert_eq!(*slept.lock().unwrap(), [Duration::from_secs(2)]);
        let never: Sleep = Arc::new(|_| Box::pin(futures::future::pending()));
        let agent = EchoAgent::new().with_sleep(never, Duration::from_secs(2));
        let cancel = CancelToken::new();
        let c2 = cancel.clone();
        let h = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            c2.cancel();
        });
        let (_, end, _) = run(
            &agent,
            user("test-resubscribe-message-id", vec![Part::text("x")]),
            cancel,
        );
        h.join().unwrap();
        assert_eq!(end.state, TaskState::Canceled);
    }

    /// An agent that breaks the protocol: its bad update fails the task and closes its sink.
    struct Rogue(AgentDescriptor);
    impl Agent for Rogue {
        fn descriptor(&self) -> &AgentDescriptor {
            &self.0
        }
        fn handle<'a>(&'a self, _turn: Turn, mut u: Updates) -> HandlerFuture<'a> {
            Box::pin(async move {
                u.status(TaskState::Submitted, None).await?;
                for _ in 0..100 {
                    u.status(TaskState::Working, None).await?;
                }
                u.status(TaskState::Completed, None).await
            })
        }
    }

    #[test]
    fn an_invalid_update_fails_the_task() {
        let limits = Limits::default();
        let mut now = clock();
        let msg = user("m1", vec![Part::text("x")]);
        let mut record =
            TaskRecord::create("task".into(), "ctx".into(), msg.clone(), now(), &limits).unwrap();
        let call = crate::skill::SkillCall {
            skill: "x".into(),
            text: "x".into(),
            args: Default::default(),
            files: vec![],
        };
        let t = Turn {
            task: record.task().clone(),
            message: msg,
            call,
            accepted_output_modes: vec![],
            streaming: false,
            cancel: CancelToken::new(),
        };
        let end = block_on(drive_turn(
            &Rogue(EchoAgent::new().descriptor().clone()),
            &mut record,
            t,
            &limits,
            &mut now,
            |_, _| futures::future::ready(()),
        ));
        assert_eq!(end.state, TaskState::Failed);
        assert_eq!(end.error, Some(AgentError::SinkClosed));
        assert_eq!(
            record.task().status.message.as_ref().unwrap().text(),
            "the agent produced an invalid update"
        );
    }
}
