//! Core A2A v1.0 objects (`specification/a2a.proto`, package `lf.a2a.v1`) in their ProtoJSON
//! form: camelCase field names, enums as their proto names (`TASK_STATE_COMPLETED`),
//! `oneof` members as the member name (`{"text": ..}`, `{"statusUpdate": ..}`), bytes as base64,
//! timestamps as RFC 3339 UTC strings.
//!
//! Unknown fields are ignored (spec §5.7 "SHOULD ignore unrecognized fields"); a `oneof` with
//! two members set and an unknown enum name are refused, as ProtoJSON parsers do.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// `google.protobuf.Struct`: a JSON object.
pub type Metadata = Map<String, Value>;

// ---------------------------------------------------------------------------------------------
// Enums
// ---------------------------------------------------------------------------------------------

proto_enum! {
    /// Lifecycle state of a task (`TaskState`).
    TaskState {
        Unspecified = 0 => "TASK_STATE_UNSPECIFIED",
        Submitted = 1 => "TASK_STATE_SUBMITTED",
        Working = 2 => "TASK_STATE_WORKING",
        Completed = 3 => "TASK_STATE_COMPLETED",
        Failed = 4 => "TASK_STATE_FAILED",
        Canceled = 5 => "TASK_STATE_CANCELED",
        InputRequired = 6 => "TASK_STATE_INPUT_REQUIRED",
        Rejected = 7 => "TASK_STATE_REJECTED",
        AuthRequired = 8 => "TASK_STATE_AUTH_REQUIRED",
    }
}

impl TaskState {
    /// Completed, failed, canceled or rejected: nothing changes the task any more.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Completed | TaskState::Failed | TaskState::Canceled | TaskState::Rejected
        )
    }

    /// Input-required or auth-required: the task waits for the client.
    pub fn is_interrupted(self) -> bool {
        matches!(self, TaskState::InputRequired | TaskState::AuthRequired)
    }

    /// Where a blocking `SendMessage` returns: terminal or interrupted.
    pub fn ends_turn(self) -> bool {
        self.is_terminal() || self.is_interrupted()
    }
}

proto_enum! {
    /// Sender of a message (`Role`).
    Role {
        Unspecified = 0 => "ROLE_UNSPECIFIED",
        User = 1 => "ROLE_USER",
        Agent = 2 => "ROLE_AGENT",
    }
}

// ---------------------------------------------------------------------------------------------
// Timestamp
// ---------------------------------------------------------------------------------------------

/// `google.protobuf.Timestamp` as an RFC 3339 UTC string. Keeps the number of fractional digits
/// it was read with (0, 3, 6 or 9), so a parsed value writes back as it came; values built from
/// a clock reading carry milliseconds (spec §5.6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Timestamp {
    time: SystemTime,
    digits: u8,
}

impl Timestamp {
    /// A timestamp at millisecond precision (the spec's SHOULD), truncating finer digits.
    pub fn from_system_time(time: SystemTime) -> Self {
        let since = time.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        let millis = Duration::from_millis(since.as_millis().try_into().unwrap_or(u64::MAX));
        Timestamp {
            time: UNIX_EPOCH + millis,
            digits: 3,
        }
    }

    /// Milliseconds since the Unix epoch (for stores and comparisons).
    pub fn unix_millis(&self) -> u128 {
        self.time
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    }

    /// The instant.
    pub fn system_time(&self) -> SystemTime {
        self.time
    }

    /// Parses an RFC 3339 timestamp in UTC (`Z`); offsets other than `Z` are refused (§5.6.1).
    pub fn parse(s: &str) -> Result<Self, String> {
        if !s.ends_with('Z') {
            return Err(format!("timestamp '{s}' must be UTC with a 'Z' suffix"));
        }
        let time = humantime::parse_rfc3339(s).map_err(|e| format!("timestamp '{s}': {e}"))?;
        let frac = s
            .rfind('.')
            .map(|dot| s.len().saturating_sub(dot + 2))
            .unwrap_or(0);
        let digits = match frac {
            0 => 0,
            1..=3 => 3,
            4..=6 => 6,
            _ => 9,
        };
        Ok(Timestamp { time, digits })
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.digits {
            0 => write!(f, "{}", humantime::format_rfc3339_seconds(self.time)),
            3 => write!(f, "{}", humantime::format_rfc3339_millis(self.time)),
            6 => write!(f, "{}", humantime::format_rfc3339_micros(self.time)),
            _ => write!(f, "{}", humantime::format_rfc3339_nanos(self.time)),
        }
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Timestamp::parse(&s).map_err(D::Error::custom)
    }
}

// ---------------------------------------------------------------------------------------------
// Part
// ---------------------------------------------------------------------------------------------

/// The `content` oneof of a [`Part`].
#[derive(Debug, Clone, PartialEq)]
pub enum PartContent {
    /// `text`
    Text(String),
    /// `raw`: file bytes (base64 on the wire).
    Raw(Vec<u8>),
    /// `url`: a reference to file content.
    Url(String),
    /// `data`: any JSON value.
    Data(Value),
}

/// A piece of message or artifact content (`Part`).
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    /// Exactly one of text, raw, url, data.
    pub content: PartContent,
    /// Optional part metadata.
    pub metadata: Option<Metadata>,
    /// Optional file name.
    pub filename: Option<String>,
    /// Optional media type (`mediaType`).
    pub media_type: Option<String>,
}

impl Part {
    fn new(content: PartContent) -> Self {
        Part {
            content,
            metadata: None,
            filename: None,
            media_type: None,
        }
    }

    /// A text part.
    pub fn text(text: impl Into<String>) -> Self {
        Part::new(PartContent::Text(text.into()))
    }

    /// A raw bytes part.
    pub fn raw(bytes: impl Into<Vec<u8>>) -> Self {
        Part::new(PartContent::Raw(bytes.into()))
    }

    /// A URL part.
    pub fn url(url: impl Into<String>) -> Self {
        Part::new(PartContent::Url(url.into()))
    }

    /// A structured data part.
    pub fn data(value: Value) -> Self {
        Part::new(PartContent::Data(value))
    }

    /// Sets the file name.
    pub fn with_filename(mut self, name: impl Into<String>) -> Self {
        self.filename = Some(name.into());
        self
    }

    /// Sets the media type.
    pub fn with_media_type(mut self, media_type: impl Into<String>) -> Self {
        self.media_type = Some(media_type.into());
        self
    }

    /// The text, for a text part.
    pub fn as_text(&self) -> Option<&str> {
        match &self.content {
            PartContent::Text(t) => Some(t),
            _ => None,
        }
    }

    /// The media type this part is taken to have: its `mediaType`, else `text/plain` for text,
    /// `application/json` for data, `application/octet-stream` for files.
    pub fn effective_media_type(&self) -> &str {
        if let Some(m) = self.media_type.as_deref().filter(|m| !m.is_empty()) {
            return m;
        }
        match self.content {
            PartContent::Text(_) => "text/plain",
            PartContent::Data(_) => "application/json",
            PartContent::Raw(_) | PartContent::Url(_) => "application/octet-stream",
        }
    }
}

/// Base64 as ProtoJSON reads it: standard or URL-safe alphabet, padding optional.
fn decode_base64(s: &str) -> Result<Vec<u8>, base64::DecodeError> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    let config =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    let standard = GeneralPurpose::new(&base64::alphabet::STANDARD, config);
    let url_safe = GeneralPurpose::new(&base64::alphabet::URL_SAFE, config);
    standard.decode(s).or_else(|_| url_safe.decode(s))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PartOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    raw: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<&'a Metadata>,
    #[serde(skip_serializing_if = "Option::is_none")]
    filename: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    media_type: Option<&'a str>,
}

impl Serialize for Part {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut out = PartOut {
            text: None,
            raw: None,
            url: None,
            data: None,
            metadata: self.metadata.as_ref(),
            filename: self.filename.as_deref(),
            media_type: self.media_type.as_deref(),
        };
        match &self.content {
            PartContent::Text(t) => out.text = Some(t),
            PartContent::Raw(b) => {
                out.raw = Some(base64::engine::general_purpose::STANDARD.encode(b))
            }
            PartContent::Url(u) => out.url = Some(u),
            PartContent::Data(v) => out.data = Some(v),
        }
        out.serialize(s)
    }
}

/// Reads a field that may be present with `null` (a `google.protobuf.Value` null is set).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PartIn {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    raw: Option<String>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default, deserialize_with = "present")]
    data: Option<Value>,
    #[serde(default)]
    metadata: Option<Metadata>,
    #[serde(default)]
    filename: Option<String>,
    #[serde(default)]
    #[serde(alias = "media_type")]
    media_type: Option<String>,
}

impl<'de> Deserialize<'de> for Part {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let p = PartIn::deserialize(d)?;
        let set = [
            p.text.is_some(),
            p.raw.is_some(),
            p.url.is_some(),
            p.data.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if set != 1 {
            return Err(D::Error::custom(format!(
                "a part must have exactly one of text, raw, url, data (found {set})"
            )));
        }
        let content = if let Some(t) = p.text {
            PartContent::Text(t)
        } else if let Some(r) = p.raw {
            PartContent::Raw(
                decode_base64(&r)
                    .map_err(|e| D::Error::custom(format!("part.raw is not base64: {e}")))?,
            )
        } else if let Some(u) = p.url {
            PartContent::Url(u)
        } else {
            PartContent::Data(p.data.unwrap_or(Value::Null))
        };
        Ok(Part {
            content,
            metadata: p.metadata,
            filename: p.filename,
            media_type: p.media_type,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Message, Task, Artifact
// ---------------------------------------------------------------------------------------------

/// One unit of communication (`Message`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    /// Sender-created id; the node's idempotency key.
    #[serde(alias = "message_id")]
    pub message_id: String,
    /// Conversation the message belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(alias = "context_id")]
    pub context_id: Option<String>,
    /// Task the message belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(alias = "task_id")]
    pub task_id: Option<String>,
    /// `ROLE_USER` or `ROLE_AGENT`.
    pub role: Role,
    /// Content.
    pub parts: Vec<Part>,
    /// Optional metadata (`metadata.skill` selects a skill: the `skill` module).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
    /// Extension URIs present in this message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extensions: Vec<String>,
    /// Tasks this message refers to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[serde(alias = "reference_task_ids")]
    pub reference_task_ids: Vec<String>,
}

impl Message {
    /// A message with the given role, id and parts and nothing else.
    pub fn new(role: Role, message_id: impl Into<String>, parts: Vec<Part>) -> Self {
        Message {
            message_id: message_id.into(),
            context_id: None,
            task_id: None,
            role,
            parts,
            metadata: None,
            extensions: Vec::new(),
            reference_task_ids: Vec::new(),
        }
    }

    /// The text parts joined by newlines.
    pub fn text(&self) -> String {
        let texts: Vec<&str> = self.parts.iter().filter_map(Part::as_text).collect();
        texts.join("\n")
    }
}

/// Current status of a task (`TaskStatus`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskStatus {
    /// The state.
    pub state: TaskState,
    /// A message about the status (e.g. what input is needed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<Message>,
    /// When the status was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Timestamp>,
}

/// A task output (`Artifact`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Artifact {
    /// Unique within the task.
    #[serde(alias = "artifact_id")]
    pub artifact_id: String,
    /// Human-readable name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Human-readable description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Content (at least one part).
    pub parts: Vec<Part>,
    /// Optional metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
    /// Extension URIs contributing to this artifact.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extensions: Vec<String>,
}

impl Artifact {
    /// An artifact with an id and parts.
    pub fn new(artifact_id: impl Into<String>, parts: Vec<Part>) -> Self {
        Artifact {
            artifact_id: artifact_id.into(),
            name: None,
            description: None,
            parts,
            metadata: None,
            extensions: Vec::new(),
        }
    }
}

/// The unit of work (`Task`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Task {
    /// Server-generated id.
    pub id: String,
    /// Conversation id.
    #[serde(default)]
    #[serde(alias = "context_id")]
    pub context_id: String,
    /// Current status.
    pub status: TaskStatus,
    /// Outputs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<Artifact>,
    /// Messages exchanged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<Message>,
    /// Task metadata (the node keeps the selected skill under `skill`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
}

// ---------------------------------------------------------------------------------------------
// Stream events
// ---------------------------------------------------------------------------------------------

/// A task status change (`TaskStatusUpdateEvent`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskStatusUpdateEvent {
    /// Task id.
    #[serde(alias = "task_id")]
    pub task_id: String,
    /// Context id.
    #[serde(alias = "context_id")]
    pub context_id: String,
    /// The new status.
    pub status: TaskStatus,
    /// Optional metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
}

/// A new or extended artifact (`TaskArtifactUpdateEvent`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskArtifactUpdateEvent {
    /// Task id.
    #[serde(alias = "task_id")]
    pub task_id: String,
    /// Context id.
    #[serde(alias = "context_id")]
    pub context_id: String,
    /// The artifact (or the chunk of it).
    pub artifact: Artifact,
    /// Append these parts to the artifact with the same id.
    #[serde(default, skip_serializing_if = "is_false")]
    pub append: bool,
    /// This is the artifact's final chunk.
    #[serde(default, skip_serializing_if = "is_false")]
    #[serde(alias = "last_chunk")]
    pub last_chunk: bool,
    /// Optional metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

proto_oneof! {
    /// One event of a stream, a push notification body (`StreamResponse`).
    StreamResponse {
        /// The task snapshot.
        Task(Task) => "task",
        /// A direct message.
        Message(Message) => "message",
        /// A status change.
        StatusUpdate(TaskStatusUpdateEvent) => "statusUpdate",
        /// An artifact update.
        ArtifactUpdate(TaskArtifactUpdateEvent) => "artifactUpdate",
    }
}

proto_oneof! {
    /// Answer of `SendMessage` (`SendMessageResponse`).
    SendMessageResponse {
        /// The task created or continued.
        Task(Task) => "task",
        /// A direct message (no task).
        Message(Message) => "message",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn task_states_use_proto_names_and_numbers() {
        assert_eq!(
            serde_json::to_value(TaskState::InputRequired).unwrap(),
            json!("TASK_STATE_INPUT_REQUIRED")
        );
        assert_eq!(
            serde_json::from_value::<TaskState>(json!(7)).unwrap(),
            TaskState::Rejected
        );
        let err = serde_json::from_value::<TaskState>(json!("TASK_STATE_RUNNING"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("TASK_STATE_RUNNING") && err.contains("TASK_STATE_AUTH_REQUIRED"),
            "{err}"
        );
        assert!(serde_json::from_value::<Role>(json!("user")).is_err());
        assert!(TaskState::Rejected.is_terminal() && !TaskState::AuthRequired.is_terminal());
        assert!(TaskState::AuthRequired.is_interrupted() && TaskState::AuthRequired.ends_turn());
        assert!(!TaskState::Working.ends_turn());
    }

    #[test]
    fn part_oneof_members_and_raw_base64() {
        let p: Part = serde_json::from_value(
            json!({"raw": "dGNr", "filename": "output.txt", "mediaType": "text/plain"}),
        )
        .unwrap();
        assert_eq!(p.content, PartContent::Raw(b"tck".to_vec()));
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            json!({"raw": "dGNr", "filename": "output.txt", "mediaType": "text/plain"})
        );
        // URL-safe alphabet without padding is accepted too.
        let p: Part = serde_json::from_value(json!({"raw": "-_8"})).unwrap();
        assert_eq!(p.content, PartContent::Raw(vec![0xfb, 0xff]));
        // `data: null` is a set member.
        let p: Part = serde_json::from_value(json!({"data": null})).unwrap();
        assert_eq!(p.content, PartContent::Data(Value::Null));
        let two =
            serde_json::from_value::<Part>(json!({"text": "a", "url": "https://x"})).unwrap_err();
        assert!(two.to_string().contains("exactly one"), "{two}");
        assert!(serde_json::from_value::<Part>(json!({"mediaType": "text/plain"})).is_err());
        assert!(serde_json::from_value::<Part>(json!({"raw": "not base64!"})).is_err());
        assert!(serde_json::from_value::<Part>(json!({"text": "a", "metadata": "nope"})).is_err());
    }

    #[test]
    fn stream_response_oneof_is_strict() {
        let ev: StreamResponse = serde_json::from_value(json!({"statusUpdate": {
            "taskId": "t", "contextId": "c", "status": {"state": "TASK_STATE_COMPLETED"}}}))
        .unwrap();
        assert!(
            matches!(ev, StreamResponse::StatusUpdate(ref s) if s.status.state == TaskState::Completed)
        );
        let both = json!({"task": {"id": "t", "status": {"state": "TASK_STATE_WORKING"}},
                          "message": {"messageId": "m", "role": "ROLE_AGENT", "parts": []}});
        assert!(serde_json::from_value::<StreamResponse>(both).is_err());
        assert!(serde_json::from_value::<StreamResponse>(json!({"other": {}})).is_err());
    }

    #[test]
    fn timestamps_keep_their_precision_and_refuse_offsets() {
        for s in [
            "2024-03-15T10:15:00Z",
            "2025-04-17T17:47:09.680794Z",
            "2025-10-28T10:30:00.000Z",
        ] {
            let t: Timestamp = serde_json::from_value(json!(s)).unwrap();
            assert_eq!(serde_json::to_value(t).unwrap(), json!(s));
        }
        assert!(Timestamp::parse("2024-03-15T10:15:00+02:00").is_err());
        assert!(Timestamp::parse("yesterday").is_err());
        let t = Timestamp::from_system_time(UNIX_EPOCH + Duration::from_nanos(1_500_000_123));
        assert_eq!(t.to_string(), "1970-01-01T00:00:01.500Z");
        assert_eq!(t.unix_millis(), 1500);
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let m: Message = serde_json::from_value(json!({
            "messageId": "m1", "role": "ROLE_USER", "parts": [{"text": "hi", "future": 1}],
            "someFutureField": {"x": 1}
        }))
        .unwrap();
        assert_eq!(m.text(), "hi");
        assert_eq!(
            serde_json::to_value(&m).unwrap(),
            json!({"messageId": "m1", "role": "ROLE_USER", "parts": [{"text": "hi"}]})
        );
    }
}
