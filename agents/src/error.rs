//! The A2A error set (spec §3.3.2) and its three wire forms: JSON-RPC error objects (§9.5),
//! `google.rpc.Status` JSON for HTTP+JSON (§11.6) and the code table of §5.4.
//!
//! Messages are written for clients: they name what the client sent (a task id, a field, a
//! media type) and never what went wrong inside the node. [`A2aError::Internal`] carries no
//! text at all; the node logs the cause before mapping it.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::types::TaskState;

/// `domain` of the `google.rpc.ErrorInfo` details.
pub const ERROR_DOMAIN: &str = "a2a-protocol.org";
/// `@type` of `google.rpc.ErrorInfo`.
pub const ERROR_INFO_TYPE: &str = "type.googleapis.com/google.rpc.ErrorInfo";
/// `@type` of `google.rpc.BadRequest`.
pub const BAD_REQUEST_TYPE: &str = "type.googleapis.com/google.rpc.BadRequest";

/// An error answered to an A2A client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum A2aError {
    /// `TaskNotFoundError`: unknown, purged, or not visible to the caller (indistinguishable).
    #[error("task {task_id} was not found")]
    TaskNotFound {
        /// The id the client asked for.
        task_id: String,
    },
    /// `TaskNotCancelableError`.
    #[error("task {task_id} is {state} and cannot be canceled")]
    TaskNotCancelable {
        /// Task id.
        task_id: String,
        /// Its state.
        state: TaskState,
    },
    /// `PushNotificationNotSupportedError`.
    #[error("push notifications are not supported by this agent")]
    PushNotificationNotSupported,
    /// `UnsupportedOperationError`.
    #[error("unsupported operation: {0}")]
    UnsupportedOperation(String),
    /// `ContentTypeNotSupportedError`.
    #[error("content type {media_type} is not supported; accepted: {accepted}")]
    ContentTypeNotSupported {
        /// The refused media type.
        media_type: String,
        /// What is accepted, comma-separated.
        accepted: String,
    },
    /// `InvalidAgentResponseError`: the agent produced something the protocol does not allow.
    #[error("the agent produced an invalid response")]
    InvalidAgentResponse,
    /// `ExtendedAgentCardNotConfiguredError`.
    #[error("no extended agent card is configured")]
    ExtendedAgentCardNotConfigured,
    /// `ExtensionSupportRequiredError`.
    #[error("the agent requires support for extension {uri}")]
    ExtensionSupportRequired {
        /// The required extension.
        uri: String,
    },
    /// `VersionNotSupportedError`.
    #[error("A2A version {requested} is not supported; supported: {supported}")]
    VersionNotSupported {
        /// The version the client asked for.
        requested: String,
        /// Supported versions, comma-separated.
        supported: String,
    },
    /// JSON-RPC `-32700`: the body is not JSON.
    #[error("invalid JSON payload: {0}")]
    Parse(String),
    /// JSON-RPC `-32600`: not a JSON-RPC 2.0 request object.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// JSON-RPC `-32601`.
    #[error("method {0} not found")]
    MethodNotFound(String),
    /// JSON-RPC `-32602`: the parameters are invalid.
    #[error("invalid parameters: {}{description}", field.as_deref().map(|f| format!("{f} ")).unwrap_or_default())]
    InvalidParams {
        /// The offending field path (`message.parts[1]`), when known.
        field: Option<String>,
        /// What is wrong with it.
        description: String,
    },
    /// JSON-RPC `-32603`: internal failure; no detail goes to the client.
    #[error("internal error")]
    Internal,
    /// Too many turns of this caller run at once (a node limit, not an A2A error: HTTP 429,
    /// `RESOURCE_EXHAUSTED`, JSON-RPC `-32000` in the implementation-defined range).
    #[error(
        "{running} tasks of this caller are running, the limit is {limit}; retry when one ends"
    )]
    TooManyTasks {
        /// Turns running now.
        running: u32,
        /// The node's `a2a.max_tasks_per_principal`.
        limit: u32,
    },
    /// The peer that hosts a remote agent cannot be reached over KLP (HTTP 502,
    /// `UNAVAILABLE`, JSON-RPC `-32000`).
    #[error("the peer {peer} hosting this agent cannot be reached: {why}")]
    PeerUnavailable {
        /// The peer's id.
        peer: String,
        /// What happened (no internals of this node).
        why: String,
    },
    /// The task changed on another replica while this request worked on it (JSON-RPC
    /// `-32000`, HTTP 409 `ABORTED`); retry.
    #[error("task {task_id} changed while this request ran; retry")]
    Conflict {
        /// Task id.
        task_id: String,
    },
}

impl A2aError {
    /// An `InvalidParams` naming a field.
    pub fn invalid_field(field: &str, description: &str) -> Self {
        A2aError::InvalidParams {
            field: Some(field.to_owned()),
            description: description.to_owned(),
        }
    }

    /// An `InvalidParams` without a field.
    pub fn invalid_params(description: impl Into<String>) -> Self {
        A2aError::InvalidParams {
            field: None,
            description: description.into(),
        }
    }

    /// The JSON-RPC error code (§5.4, §9.5).
    pub fn jsonrpc_code(&self) -> i32 {
        match self {
            A2aError::TaskNotFound { .. } => -32001,
            A2aError::TaskNotCancelable { .. } => -32002,
            A2aError::PushNotificationNotSupported => -32003,
            A2aError::UnsupportedOperation(_) => -32004,
            A2aError::ContentTypeNotSupported { .. } => -32005,
            A2aError::InvalidAgentResponse => -32006,
            A2aError::ExtendedAgentCardNotConfigured => -32007,
            A2aError::ExtensionSupportRequired { .. } => -32008,
            A2aError::VersionNotSupported { .. } => -32009,
            A2aError::Parse(_) => -32700,
            A2aError::InvalidRequest(_) => -32600,
            A2aError::MethodNotFound(_) => -32601,
            A2aError::InvalidParams { .. } => -32602,
            A2aError::Internal => -32603,
            A2aError::TooManyTasks { .. }
            | A2aError::Conflict { .. }
            | A2aError::PeerUnavailable { .. } => -32000,
        }
    }

    /// The HTTP status of the HTTP+JSON binding (§5.4): 404 for an unknown task (and an
    /// unknown method: no such route), 409 for a task that cannot be canceled, 415 for an
    /// unsupported content type, 502 for an invalid agent response, 500 for internal errors,
    /// 400 otherwise.
    pub fn http_status(&self) -> u16 {
        match self {
            A2aError::TaskNotFound { .. } | A2aError::MethodNotFound(_) => 404,
            A2aError::TaskNotCancelable { .. } => 409,
            A2aError::ContentTypeNotSupported { .. } => 415,
            A2aError::InvalidAgentResponse => 502,
            A2aError::Internal => 500,
            A2aError::TooManyTasks { .. } => 429,
            A2aError::Conflict { .. } => 409,
            A2aError::PeerUnavailable { .. } => 502,
            _ => 400,
        }
    }

    /// The gRPC status name (§5.4), the `status` field of `google.rpc.Status` JSON.
    pub fn grpc_status(&self) -> &'static str {
        match self {
            A2aError::TaskNotFound { .. } => "NOT_FOUND",
            A2aError::TaskNotCancelable { .. }
            | A2aError::ExtendedAgentCardNotConfigured
            | A2aError::ExtensionSupportRequired { .. } => "FAILED_PRECONDITION",
            A2aError::PushNotificationNotSupported
            | A2aError::UnsupportedOperation(_)
            | A2aError::VersionNotSupported { .. } => "UNIMPLEMENTED",
            A2aError::ContentTypeNotSupported { .. }
            | A2aError::Parse(_)
            | A2aError::InvalidRequest(_)
            | A2aError::InvalidParams { .. } => "INVALID_ARGUMENT",
            A2aError::MethodNotFound(_) => "UNIMPLEMENTED",
            A2aError::InvalidAgentResponse | A2aError::Internal => "INTERNAL",
            A2aError::TooManyTasks { .. } => "RESOURCE_EXHAUSTED",
            A2aError::Conflict { .. } => "ABORTED",
            A2aError::PeerUnavailable { .. } => "UNAVAILABLE",
        }
    }

    /// The `ErrorInfo.reason` of an A2A-specific error: its name in UPPER_SNAKE_CASE without
    /// the `Error` suffix (§11.6). `None` for the generic JSON-RPC errors.
    pub fn reason(&self) -> Option<&'static str> {
        Some(match self {
            A2aError::TaskNotFound { .. } => "TASK_NOT_FOUND",
            A2aError::TaskNotCancelable { .. } => "TASK_NOT_CANCELABLE",
            A2aError::PushNotificationNotSupported => "PUSH_NOTIFICATION_NOT_SUPPORTED",
            A2aError::UnsupportedOperation(_) => "UNSUPPORTED_OPERATION",
            A2aError::ContentTypeNotSupported { .. } => "CONTENT_TYPE_NOT_SUPPORTED",
            A2aError::InvalidAgentResponse => "INVALID_AGENT_RESPONSE",
            A2aError::ExtendedAgentCardNotConfigured => "EXTENDED_AGENT_CARD_NOT_CONFIGURED",
            A2aError::ExtensionSupportRequired { .. } => "EXTENSION_SUPPORT_REQUIRED",
            A2aError::VersionNotSupported { .. } => "VERSION_NOT_SUPPORTED",
            A2aError::Parse(_)
            | A2aError::InvalidRequest(_)
            | A2aError::MethodNotFound(_)
            | A2aError::InvalidParams { .. }
            | A2aError::Internal
            | A2aError::TooManyTasks { .. }
            | A2aError::Conflict { .. }
            | A2aError::PeerUnavailable { .. } => return None,
        })
    }

    /// The error details (`@type`-tagged objects): an `ErrorInfo` for A2A errors, a
    /// `BadRequest` naming the field for invalid parameters.
    pub fn details(&self) -> Vec<Value> {
        let mut details = Vec::new();
        if let Some(reason) = self.reason() {
            let mut info =
                json!({"@type": ERROR_INFO_TYPE, "reason": reason, "domain": ERROR_DOMAIN});
            let metadata = match self {
                A2aError::TaskNotFound { task_id }
                | A2aError::TaskNotCancelable { task_id, .. } => Some(json!({"taskId": task_id})),
                A2aError::VersionNotSupported { supported, .. } => {
                    Some(json!({"supportedVersions": supported}))
                }
                A2aError::ExtensionSupportRequired { uri } => Some(json!({"extension": uri})),
                _ => None,
            };
            if let (Some(m), Some(obj)) = (metadata, info.as_object_mut()) {
                obj.insert("metadata".into(), m);
            }
            details.push(info);
        }
        if let A2aError::InvalidParams {
            field: Some(field),
            description,
        } = self
        {
            details.push(json!({"@type": BAD_REQUEST_TYPE,
                "fieldViolations": [{"field": field, "description": description}]}));
        }
        details
    }

    /// The JSON-RPC `error` object.
    pub fn to_jsonrpc(&self) -> JsonRpcErrorObject {
        let details = self.details();
        JsonRpcErrorObject {
            code: self.jsonrpc_code(),
            message: self.to_string(),
            data: if details.is_empty() {
                None
            } else {
                Some(Value::Array(details))
            },
        }
    }

    /// The HTTP+JSON body: `{"error": google.rpc.Status}` (§11.6).
    pub fn to_rest_body(&self) -> Value {
        json!({"error": {
            "code": self.http_status(),
            "status": self.grpc_status(),
            "message": self.to_string(),
            "details": self.details(),
        }})
    }

    /// Rebuilds an A2A error from an `ErrorInfo.reason` (a peer's answer relayed over KLP, or a
    /// remote agent's JSON-RPC error). Fields the reason does not carry are taken from `message`.
    pub fn from_reason(reason: &str, task_id: &str, message: &str) -> Option<Self> {
        Some(match reason {
            "TASK_NOT_FOUND" => A2aError::TaskNotFound {
                task_id: task_id.to_owned(),
            },
            "TASK_NOT_CANCELABLE" => A2aError::TaskNotCancelable {
                task_id: task_id.to_owned(),
                state: TaskState::Unspecified,
            },
            "PUSH_NOTIFICATION_NOT_SUPPORTED" => A2aError::PushNotificationNotSupported,
            "UNSUPPORTED_OPERATION" => A2aError::UnsupportedOperation(message.to_owned()),
            "CONTENT_TYPE_NOT_SUPPORTED" => A2aError::ContentTypeNotSupported {
                media_type: message.to_owned(),
                accepted: String::new(),
            },
            "INVALID_AGENT_RESPONSE" => A2aError::InvalidAgentResponse,
            "EXTENDED_AGENT_CARD_NOT_CONFIGURED" => A2aError::ExtendedAgentCardNotConfigured,
            "EXTENSION_SUPPORT_REQUIRED" => A2aError::ExtensionSupportRequired {
                uri: message.to_owned(),
            },
            "VERSION_NOT_SUPPORTED" => A2aError::VersionNotSupported {
                requested: message.to_owned(),
                supported: String::new(),
            },
            _ => return None,
        })
    }
}

/// A JSON-RPC 2.0 error object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JsonRpcErrorObject {
    /// Error code.
    pub code: i32,
    /// Human-readable message.
    pub message: String,
    /// Details (an array of `@type`-tagged objects for A2A errors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn all() -> Vec<A2aError> {
        vec![
            A2aError::TaskNotFound {
                task_id: "t".into(),
            },
            A2aError::TaskNotCancelable {
                task_id: "t".into(),
                state: TaskState::Completed,
            },
            A2aError::PushNotificationNotSupported,
            A2aError::UnsupportedOperation("x".into()),
            A2aError::ContentTypeNotSupported {
                media_type: "image/png".into(),
                accepted: "text/plain".into(),
            },
            A2aError::InvalidAgentResponse,
            A2aError::ExtendedAgentCardNotConfigured,
            A2aError::ExtensionSupportRequired {
                uri: "urn:x".into(),
            },
            A2aError::VersionNotSupported {
                requested: "0.3".into(),
                supported: "1.0".into(),
            },
            A2aError::Parse("eof".into()),
            A2aError::InvalidRequest("no method".into()),
            A2aError::MethodNotFound("Nope".into()),
            A2aError::invalid_field("message.parts", "at least one part is required"),
            A2aError::Internal,
        ]
    }

    #[test]
    fn code_table_matches_spec_5_4_and_9_5() {
        let codes: Vec<(i32, u16, &str)> = all()
            .iter()
            .map(|e| (e.jsonrpc_code(), e.http_status(), e.grpc_status()))
            .collect();
        assert_eq!(
            codes,
            vec![
                (-32001, 404, "NOT_FOUND"),
                (-32002, 409, "FAILED_PRECONDITION"),
                (-32003, 400, "UNIMPLEMENTED"),
                (-32004, 400, "UNIMPLEMENTED"),
                (-32005, 415, "INVALID_ARGUMENT"),
                (-32006, 502, "INTERNAL"),
                (-32007, 400, "FAILED_PRECONDITION"),
                (-32008, 400, "FAILED_PRECONDITION"),
                (-32009, 400, "UNIMPLEMENTED"),
                (-32700, 400, "INVALID_ARGUMENT"),
                (-32600, 400, "INVALID_ARGUMENT"),
                (-32601, 404, "UNIMPLEMENTED"),
                (-32602, 400, "INVALID_ARGUMENT"),
                (-32603, 500, "INTERNAL"),
            ]
        );
    }

    #[test]
    fn reasons_round_trip_through_from_reason() {
        for e in all() {
            if let Some(reason) = e.reason() {
                let back = A2aError::from_reason(reason, "t", "x").unwrap();
                assert_eq!(back.jsonrpc_code(), e.jsonrpc_code(), "{reason}");
            }
        }
        assert!(A2aError::from_reason("SOMETHING_ELSE", "t", "").is_none());
    }

    #[test]
    fn jsonrpc_error_matches_spec_example_shape() {
        let e = A2aError::TaskNotFound {
            task_id: "nonexistent-task-id".into(),
        };
        let v = serde_json::to_value(e.to_jsonrpc()).unwrap();
        assert_eq!(v["code"], -32001);
        assert_eq!(
            v["data"],
            json!([{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "TASK_NOT_FOUND",
                    "domain": "a2a-protocol.org", "metadata": {"taskId": "nonexistent-task-id"}}])
        );
        let bad = A2aError::invalid_field("message.parts", "At least one part is required");
        let v = serde_json::to_value(bad.to_jsonrpc()).unwrap();
        assert_eq!(v["code"], -32602);
        assert_eq!(v["data"][0]["@type"], BAD_REQUEST_TYPE);
        assert_eq!(v["data"][0]["fieldViolations"][0]["field"], "message.parts");
        assert!(
            serde_json::to_value(A2aError::Internal.to_jsonrpc())
                .unwrap()
                .get("data")
                .is_none()
        );
    }

    #[test]
    fn rest_body_is_google_rpc_status() {
        let e = A2aError::TaskNotCancelable {
            task_id: "task-123".into(),
            state: TaskState::Completed,
        };
        let v = e.to_rest_body();
        assert_eq!(v["error"]["code"], 409);
        assert_eq!(v["error"]["status"], "FAILED_PRECONDITION");
        assert_eq!(v["error"]["details"][0]["reason"], "TASK_NOT_CANCELABLE");
        assert_eq!(v["error"]["details"][0]["domain"], "a2a-protocol.org");
        assert_eq!(
            v["error"]["message"],
            "task task-123 is TASK_STATE_COMPLETED and cannot be canceled"
        );
    }

    #[test]
    fn internal_errors_carry_no_detail() {
        let v = A2aError::Internal.to_rest_body();
        assert_eq!(v["error"]["message"], "internal error");
        assert_eq!(v["error"]["details"], json!([]));
        assert_eq!(
            A2aError::InvalidAgentResponse.to_string(),
            "the agent produced an invalid response"
        );
    }
}
