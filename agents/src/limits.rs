//! Size bounds on what clients send and agents produce. A value over a bound is refused with an
//! `InvalidParams` error that names the field, its size and the bound.

use std::io;

use serde::Serialize;

use crate::error::A2aError;
use crate::types::{Artifact, Message, Metadata, Part, PartContent};

/// Bounds of one node (config values; the defaults suit a small node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of one part's content (text, raw bytes, url, or data as JSON).
    pub max_part_bytes: usize,
    /// Parts in one message or artifact.
    pub max_parts: usize,
    /// Bytes of one metadata object as JSON (message, part, artifact, task).
    pub max_metadata_bytes: usize,
    /// Bytes of all the parts of one artifact together (after appends).
    pub max_artifact_bytes: usize,
    /// Artifacts in one task.
    pub max_artifacts: usize,
    /// Messages kept in a task's history (the oldest go first).
    pub max_history: usize,
    /// Client turns in one task (messages accepted, duplicates aside).
    pub max_turns: usize,
    /// Bytes of one identifier (messageId, taskId, contextId, artifactId).
    pub max_id_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_part_bytes: 1 << 20,
            max_parts: 64,
            max_metadata_bytes: 16 << 10,
            max_artifact_bytes: 4 << 20,
            max_artifacts: 64,
            max_history: 100,
            max_turns: 100,
            max_id_bytes: 128,
        }
    }
}

/// Counts the bytes a value serializes to without keeping them.
struct Counter(usize);

impl io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 = self.0.saturating_add(buf.len());
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Bytes of a value's compact JSON.
pub fn json_size<T: Serialize + ?Sized>(value: &T) -> usize {
    let mut c = Counter(0);
    match serde_json::to_writer(&mut c, value) {
        Ok(()) => c.0,
        Err(_) => usize::MAX,
    }
}

/// Bytes of a part's content.
pub fn part_size(part: &Part) -> usize {
    match &part.content {
        PartContent::Text(t) => t.len(),
        PartContent::Raw(b) => b.len(),
        PartContent::Url(u) => u.len(),
        PartContent::Data(v) => json_size(v),
    }
}

fn over(field: &str, what: &str, size: usize, limit: usize) -> A2aError {
    A2aError::invalid_field(
        field,
        &format!("{what} is {size} bytes, over the limit of {limit} bytes"),
    )
}

impl Limits {
    fn check_id(&self, field: &str, id: &str) -> Result<(), A2aError> {
        if id.len() > self.max_id_bytes {
            return Err(over(field, "the identifier", id.len(), self.max_id_bytes));
        }
        Ok(())
    }

    fn check_metadata(&self, field: &str, metadata: Option<&Metadata>) -> Result<(), A2aError> {
        if let Some(m) = metadata {
            let size = json_size(m);
            if size > self.max_metadata_bytes {
                return Err(over(field, "the metadata", size, self.max_metadata_bytes));
            }
        }
        Ok(())
    }

    fn check_parts(&self, field: &str, parts: &[Part]) -> Result<usize, A2aError> {
        if parts.len() > self.max_parts {
            return Err(A2aError::invalid_field(
                field,
                &format!(
                    "has {} parts, over the limit of {}",
                    parts.len(),
                    self.max_parts
                ),
            ));
        }
        let mut total = 0usize;
        for (i, part) in parts.iter().enumerate() {
            let size = part_size(part);
            if size > self.max_part_bytes {
                return Err(over(
                    &format!("{field}[{i}]"),
                    "the part",
                    size,
                    self.max_part_bytes,
                ));
            }
            self.check_metadata(&format!("{field}[{i}].metadata"), part.metadata.as_ref())?;
            total = total.saturating_add(size);
        }
        Ok(total)
    }

    /// Checks a message (from a client, or an agent's status message).
    pub fn check_message(&self, field: &str, message: &Message) -> Result<(), A2aError> {
        self.check_id(&format!("{field}.messageId"), &message.message_id)?;
        if let Some(id) = &message.task_id {
            self.check_id(&format!("{field}.taskId"), id)?;
        }
        if let Some(id) = &message.context_id {
            self.check_id(&format!("{field}.contextId"), id)?;
        }
        self.check_metadata(&format!("{field}.metadata"), message.metadata.as_ref())?;
        self.check_parts(&format!("{field}.parts"), &message.parts)
            .map(|_| ())
    }

    /// Checks an artifact (or a chunk); returns its content bytes.
    pub fn check_artifact(&self, field: &str, artifact: &Artifact) -> Result<usize, A2aError> {
        self.check_id(&format!("{field}.artifactId"), &artifact.artifact_id)?;
        self.check_metadata(&format!("{field}.metadata"), artifact.metadata.as_ref())?;
        let size = self.check_parts(&format!("{field}.parts"), &artifact.parts)?;
        if size > self.max_artifact_bytes {
            return Err(over(field, "the artifact", size, self.max_artifact_bytes));
        }
        Ok(size)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::types::Role;
    use serde_json::json;

    fn small() -> Limits {
        Limits {
            max_part_bytes: 8,
            max_parts: 2,
            max_metadata_bytes: 16,
            max_id_bytes: 6,
            ..Limits::default()
        }
    }

    #[test]
    fn a_part_over_the_limit_is_refused_with_its_path() {
        let l = small();
        let ok = Message::new(Role::User, "m1", vec![Part::text("12345678")]);
        l.check_message("message", &ok).unwrap();
        let big = Message::new(
            Role::User,
            "m1",
            vec![Part::text("ok"), Part::text("123456789")],
        );
        let err = l.check_message("message", &big).unwrap_err();
        assert_eq!(err.jsonrpc_code(), -32602);
        assert_eq!(
            err.to_string(),
            "invalid parameters: message.parts[1] the part is 9 bytes, over the limit of 8 bytes"
        );
        let raw = Message::new(Role::User, "m1", vec![Part::raw(vec![0u8; 9])]);
        assert!(l.check_message("message", &raw).is_err());
        let data = Message::new(Role::User, "m1", vec![Part::data(json!({"k": "vvvv"}))]);
        assert!(
            l.check_message("message", &data).is_err(),
            "data counts as its JSON bytes"
        );
        let many = Message::new(
            Role::User,
            "m1",
            vec![Part::text("a"), Part::text("b"), Part::text("c")],
        );
        assert!(
            l.check_message("message", &many)
                .unwrap_err()
                .to_string()
                .contains("3 parts")
        );
    }

    #[test]
    fn metadata_and_ids_over_the_limit_are_refused() {
        let l = small();
        let mut m = Message::new(Role::User, "m1", vec![Part::text("a")]);
        m.metadata = Some(
            json!({"skill": "a-long-skill-name"})
                .as_object()
                .unwrap()
                .clone(),
        );
        let err = l.check_message("message", &m).unwrap_err().to_string();
        assert!(
            err.contains("message.metadata") && err.contains("over the limit of 16"),
            "{err}"
        );
        let mut p = Part::text("a");
        p.metadata = Some(json!({"x": "0123456789abc"}).as_object().unwrap().clone());
        let m = Message::new(Role::User, "m1", vec![p]);
        assert!(
            l.check_message("message", &m)
                .unwrap_err()
                .to_string()
                .contains("message.parts[0].metadata")
        );
        let m = Message::new(Role::User, "message-7", vec![Part::text("a")]);
        assert!(
            l.check_message("message", &m)
                .unwrap_err()
                .to_string()
                .contains("messageId")
        );
    }

    #[test]
    fn artifact_total_is_bounded() {
        let l = Limits {
            max_part_bytes: 8,
            max_artifact_bytes: 10,
            ..Limits::default()
        };
        let a = Artifact::new("a", vec![Part::text("12345"), Part::text("12345")]);
        assert_eq!(l.check_artifact("artifact", &a).unwrap(), 10);
        let a = Artifact::new("a", vec![Part::text("12345"), Part::text("123456")]);
        assert!(l.check_artifact("artifact", &a).is_err());
    }
}
