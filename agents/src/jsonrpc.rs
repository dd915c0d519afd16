//! JSON-RPC 2.0 envelope of the A2A JSON-RPC binding (spec §9): request parsing into typed
//! A2A operations, success and error responses, one SSE `data:` payload per stream event.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{A2aError, JsonRpcErrorObject};
use crate::requests::{
    CancelTaskRequest, GetExtendedAgentCardRequest, GetTaskRequest,
    ListTaskPushNotificationConfigsRequest, ListTasksRequest, SendMessageRequest,
    SubscribeToTaskRequest, TaskPushNotificationConfig, TaskPushNotificationConfigRef,
};

/// A JSON-RPC request id: string, number or null.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RequestId {
    /// String id.
    Str(String),
    /// Numeric id.
    Num(serde_json::Number),
    /// `null` (or an id that could not be read, in error answers).
    Null,
}

/// The A2A methods (§9.4), PascalCase as on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// `SendMessage`
    SendMessage,
    /// `SendStreamingMessage`
    SendStreamingMessage,
    /// `GetTask`
    GetTask,
    /// `ListTasks`
    ListTasks,
    /// `CancelTask`
    CancelTask,
    /// `SubscribeToTask`
    SubscribeToTask,
    /// `CreateTaskPushNotificationConfig`
    CreateTaskPushNotificationConfig,
    /// `GetTaskPushNotificationConfig`
    GetTaskPushNotificationConfig,
    /// `ListTaskPushNotificationConfigs`
    ListTaskPushNotificationConfigs,
    /// `DeleteTaskPushNotificationConfig`
    DeleteTaskPushNotificationConfig,
    /// `GetExtendedAgentCard`
    GetExtendedAgentCard,
}

impl Method {
    /// Every method.
    pub const ALL: [Method; 11] = [
        Method::SendMessage,
        Method::SendStreamingMessage,
        Method::GetTask,
        Method::ListTasks,
        Method::CancelTask,
        Method::SubscribeToTask,
        Method::CreateTaskPushNotificationConfig,
        Method::GetTaskPushNotificationConfig,
        Method::ListTaskPushNotificationConfigs,
        Method::DeleteTaskPushNotificationConfig,
        Method::GetExtendedAgentCard,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::SendMessage => "SendMessage",
            Method::SendStreamingMessage => "SendStreamingMessage",
            Method::GetTask => "GetTask",
            Method::ListTasks => "ListTasks",
            Method::CancelTask => "CancelTask",
            Method::SubscribeToTask => "SubscribeToTask",
            Method::CreateTaskPushNotificationConfig => "CreateTaskPushNotificationConfig",
            Method::GetTaskPushNotificationConfig => "GetTaskPushNotificationConfig",
            Method::ListTaskPushNotificationConfigs => "ListTaskPushNotificationConfigs",
            Method::DeleteTaskPushNotificationConfig => "DeleteTaskPushNotificationConfig",
            Method::GetExtendedAgentCard => "GetExtendedAgentCard",
        }
    }

    /// Parses a wire name (exact, case-sensitive).
    pub fn from_name(name: &str) -> Option<Self> {
        Method::ALL.into_iter().find(|m| m.as_str() == name)
    }

    /// The answer is an SSE stream.
    pub fn is_streaming(self) -> bool {
        matches!(self, Method::SendStreamingMessage | Method::SubscribeToTask)
    }
}

/// A parsed A2A call with its typed parameters.
#[derive(Debug, Clone, PartialEq)]
pub enum A2aRequest {
    /// `SendMessage`
    SendMessage(SendMessageRequest),
    /// `SendStreamingMessage`
    SendStreamingMessage(SendMessageRequest),
    /// `GetTask`
    GetTask(GetTaskRequest),
    /// `ListTasks`
    ListTasks(ListTasksRequest),
    /// `CancelTask`
    CancelTask(CancelTaskRequest),
    /// `SubscribeToTask`
    SubscribeToTask(SubscribeToTaskRequest),
    /// `CreateTaskPushNotificationConfig`
    CreateTaskPushNotificationConfig(TaskPushNotificationConfig),
    /// `GetTaskPushNotificationConfig`
    GetTaskPushNotificationConfig(TaskPushNotificationConfigRef),
    /// `ListTaskPushNotificationConfigs`
    ListTaskPushNotificationConfigs(ListTaskPushNotificationConfigsRequest),
    /// `DeleteTaskPushNotificationConfig`
    DeleteTaskPushNotificationConfig(TaskPushNotificationConfigRef),
    /// `GetExtendedAgentCard`
    GetExtendedAgentCard(GetExtendedAgentCardRequest),
}

impl A2aRequest {
    /// The method of this call.
    pub fn method(&self) -> Method {
        match self {
            A2aRequest::SendMessage(_) => Method::SendMessage,
            A2aRequest::SendStreamingMessage(_) => Method::SendStreamingMessage,
            A2aRequest::GetTask(_) => Method::GetTask,
            A2aRequest::ListTasks(_) => Method::ListTasks,
            A2aRequest::CancelTask(_) => Method::CancelTask,
            A2aRequest::SubscribeToTask(_) => Method::SubscribeToTask,
            A2aRequest::CreateTaskPushNotificationConfig(_) => {
                Method::CreateTaskPushNotificationConfig
            }
            A2aRequest::GetTaskPushNotificationConfig(_) => Method::GetTaskPushNotificationConfig,
            A2aRequest::ListTaskPushNotificationConfigs(_) => {
                Method::ListTaskPushNotificationConfigs
            }
            A2aRequest::DeleteTaskPushNotificationConfig(_) => {
                Method::DeleteTaskPushNotificationConfig
            }
            A2aRequest::GetExtendedAgentCard(_) => Method::GetExtendedAgentCard,
        }
    }

    /// Parses typed params for a method. Absent params read as `{}`.
    pub fn from_params(method: Method, params: Option<Value>) -> Result<Self, A2aError> {
        let params = match params {
            None | Some(Value::Null) => Value::Object(Map::new()),
            Some(v @ Value::Object(_)) => v,
            Some(_) => return Err(A2aError::invalid_params("params must be an object")),
        };
        fn p<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, A2aError> {
            serde_json::from_value(v).map_err(|e| A2aError::invalid_params(e.to_string()))
        }
        Ok(match method {
            Method::SendMessage => A2aRequest::SendMessage(p(params)?),
            Method::SendStreamingMessage => A2aRequest::SendStreamingMessage(p(params)?),
            Method::GetTask => A2aRequest::GetTask(p(params)?),
            Method::ListTasks => A2aRequest::ListTasks(p(params)?),
            Method::CancelTask => A2aRequest::CancelTask(p(params)?),
            Method::SubscribeToTask => A2aRequest::SubscribeToTask(p(params)?),
            Method::CreateTaskPushNotificationConfig => {
                A2aRequest::CreateTaskPushNotificationConfig(p(params)?)
            }
            Method::GetTaskPushNotificationConfig => {
                A2aRequest::GetTaskPushNotificationConfig(p(params)?)
            }
            Method::ListTaskPushNotificationConfigs => {
                A2aRequest::ListTaskPushNotificationConfigs(p(params)?)
            }
            Method::DeleteTaskPushNotificationConfig => {
                A2aRequest::DeleteTaskPushNotificationConfig(p(params)?)
            }
            Method::GetExtendedAgentCard => A2aRequest::GetExtendedAgentCard(p(params)?),
        })
    }
}

/// A request that could not be turned into an [`A2aRequest`]: the id to answer with (null
/// when unreadable) and the error.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    /// Id for the error response.
    pub id: RequestId,
    /// What is wrong.
    pub error: A2aError,
}

/// Parses one JSON-RPC request body. Batches are refused (A2A defines none).
pub fn parse_request(body: &[u8]) -> Result<(RequestId, A2aRequest), Rejected> {
    let value: Value = serde_json::from_slice(body).map_err(|e| Rejected {
        id: RequestId::Null,
        error: A2aError::Parse(e.to_string()),
    })?;
    let Value::Object(mut obj) = value else {
        return Err(Rejected {
            id: RequestId::Null,
            error: A2aError::InvalidRequest("the request must be a JSON object".into()),
        });
    };
    let id = match obj.remove("id") {
        None => None,
        Some(v) => match serde_json::from_value::<RequestId>(v) {
            Ok(id) => Some(id),
            Err(_) => {
                return Err(Rejected {
                    id: RequestId::Null,
                    error: A2aError::InvalidRequest("id must be a string, a number or null".into()),
                });
            }
        },
    };
    let reject = |error: A2aError, id: &Option<RequestId>| Rejected {
        id: id.clone().unwrap_or(RequestId::Null),
        error,
    };
    if obj.get("jsonrpc") != Some(&Value::String("2.0".into())) {
        return Err(reject(
            A2aError::InvalidRequest("jsonrpc must be \"2.0\"".into()),
            &id,
        ));
    }
    let Some(id_value) = id.clone() else {
        // Notifications get no answer in JSON-RPC; every A2A method has a result.
        return Err(reject(
            A2aError::InvalidRequest("id is required".into()),
            &id,
        ));
    };
    let method = match obj.remove("method") {
        Some(Value::String(m)) => m,
        _ => {
            return Err(reject(
                A2aError::InvalidRequest("method must be a string".into()),
                &id,
            ));
        }
    };
    let Some(method) = Method::from_name(&method) else {
        return Err(reject(A2aError::MethodNotFound(method), &id));
    };
    let request =
        A2aRequest::from_params(method, obj.remove("params")).map_err(|e| reject(e, &id))?;
    Ok((id_value, request))
}

/// A JSON-RPC response (success or error).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JsonRpcResponse {
    /// Always `"2.0"`.
    pub jsonrpc: String,
    /// The request id.
    pub id: RequestId,
    /// Result on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// Error on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<JsonRpcErrorObject>,
}

impl JsonRpcResponse {
    /// A success answer (also one SSE event of a streaming method).
    pub fn success<T: Serialize>(id: RequestId, result: &T) -> Result<Self, A2aError> {
        let result = serde_json::to_value(result).map_err(|_| A2aError::Internal)?;
        Ok(JsonRpcResponse {
            jsonrpc: "2.0".into(),
            id,
            result: Some(result),
            error: None,
        })
    }

    /// An error answer.
    pub fn failure(id: RequestId, error: &A2aError) -> Self {
        JsonRpcResponse {
            jsonrpc: "2.0".into(),
            id,
            result: None,
            error: Some(error.to_jsonrpc()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::types::{
        Message, Part, Role, SendMessageResponse, StreamResponse, TaskState, TaskStatus,
        TaskStatusUpdateEvent,
    };
    use serde_json::json;

    #[test]
    fn parses_the_spec_examples() {
        // §9.4.3 .. §9.4.8
        let (id, req) = parse_request(br#"{"jsonrpc":"2.0","id":2,"method":"GetTask","params":{"id":"task-uuid","historyLength":10}}"#).unwrap();
        assert_eq!(id, RequestId::Num(2.into()));
        assert_eq!(
            req,
            A2aRequest::GetTask(GetTaskRequest {
                tenant: String::new(),
                id: "task-uuid".into(),
                history_length: Some(10)
            })
        );
        let (_, req) = parse_request(br#"{"jsonrpc":"2.0","id":3,"method":"ListTasks","params":{"contextId":"context-uuid","status":"TASK_STATE_WORKING","pageSize":50,"pageToken":"cursor-token"}}"#).unwrap();
        assert!(
            matches!(req, A2aRequest::ListTasks(ref l) if l.status == Some(TaskState::Working) && l.page_size == Some(50))
        );
        let (_, req) = parse_request(
            br#"{"jsonrpc":"2.0","id":4,"method":"CancelTask","params":{"id":"task-uuid"}}"#,
        )
        .unwrap();
        assert_eq!(req.method(), Method::CancelTask);
        let (_, req) = parse_request(
            br#"{"jsonrpc":"2.0","id":5,"method":"SubscribeToTask","params":{"id":"task-uuid"}}"#,
        )
        .unwrap();
        assert!(req.method().is_streaming());
        let (id, req) =
            parse_request(br#"{"jsonrpc":"2.0","id":"six","method":"GetExtendedAgentCard"}"#)
                .unwrap();
        assert_eq!(
            (id, req.method()),
            (RequestId::Str("six".into()), Method::GetExtendedAgentCard)
        );
        let (_, req) = parse_request(br#"{"jsonrpc":"2.0","id":1,"method":"SendMessage","params":{"message":{"messageId":"tck-complete-task-1234","role":"ROLE_USER","parts":[{"text":"Hello from TCK"}]}}}"#).unwrap();
        assert!(
            matches!(req, A2aRequest::SendMessage(ref s) if s.message.message_id == "tck-complete-task-1234")
        );
        let (_, req) = parse_request(br#"{"jsonrpc":"2.0","id":7,"method":"CreateTaskPushNotificationConfig","params":{"taskId":"t","url":"https://hook"}}"#).unwrap();
        assert_eq!(req.method(), Method::CreateTaskPushNotificationConfig);
    }

    #[test]
    fn errors_keep_the_id_when_readable() {
        let r = parse_request(b"{not json").unwrap_err();
        assert_eq!((r.id, r.error.jsonrpc_code()), (RequestId::Null, -32700));
        let r = parse_request(br#"[{"jsonrpc":"2.0"}]"#).unwrap_err();
        assert_eq!(r.error.jsonrpc_code(), -32600);
        let r = parse_request(br#"{"jsonrpc":"1.0","id":9,"method":"GetTask"}"#).unwrap_err();
        assert_eq!(
            (r.id, r.error.jsonrpc_code()),
            (RequestId::Num(9.into()), -32600)
        );
        let r = parse_request(br#"{"jsonrpc":"2.0","method":"GetTask","params":{"id":"x"}}"#)
            .unwrap_err();
        assert_eq!(r.error.jsonrpc_code(), -32600);
        let r =
            parse_request(br#"{"jsonrpc":"2.0","id":"a","method":"message/send"}"#).unwrap_err();
        assert_eq!(
            (r.id, r.error.jsonrpc_code()),
            (RequestId::Str("a".into()), -32601)
        );
        let r = parse_request(br#"{"jsonrpc":"2.0","id":"a","method":"GetTask","params":{}}"#)
            .unwrap_err();
        assert_eq!(r.error.jsonrpc_code(), -32602);
        let r = parse_request(br#"{"jsonrpc":"2.0","id":"a","method":"GetTask","params":[1]}"#)
            .unwrap_err();
        assert_eq!(r.error.jsonrpc_code(), -32602);
        let r = parse_request(br#"{"jsonrpc":"2.0","id":{"x":1},"method":"GetTask"}"#).unwrap_err();
        assert_eq!((r.id, r.error.jsonrpc_code()), (RequestId::Null, -32600));
    }

    #[test]
    fn responses_serialize_as_jsonrpc() {
        let msg = Message::new(Role::Agent, "m", vec![Part::text("hi")]);
        let ok =
            JsonRpcResponse::success(RequestId::Num(1.into()), &SendMessageResponse::Message(msg))
                .unwrap();
        assert_eq!(
            serde_json::to_value(&ok).unwrap(),
            json!({"jsonrpc": "2.0", "id": 1,
            "result": {"message": {"messageId": "m", "role": "ROLE_AGENT", "parts": [{"text": "hi"}]}}})
        );
        let ev = StreamResponse::StatusUpdate(TaskStatusUpdateEvent {
            task_id: "t".into(),
            context_id: "c".into(),
            status: TaskStatus {
                state: TaskState::Completed,
                message: None,
                timestamp: None,
            },
            metadata: None,
        });
        let sse = JsonRpcResponse::success(RequestId::Str("s".into()), &ev).unwrap();
        assert_eq!(
            serde_json::to_value(&sse).unwrap()["result"]["statusUpdate"]["status"]["state"],
            "TASK_STATE_COMPLETED"
        );
        let err = JsonRpcResponse::failure(RequestId::Null, &A2aError::MethodNotFound("X".into()));
        let v = serde_json::to_value(&err).unwrap();
        assert_eq!(
            (v["id"].clone(), v["error"]["code"].clone()),
            (Value::Null, json!(-32601))
        );
        assert!(v.get("result").is_none());
    }
}
