//! Operation parameter objects (spec §3.2, proto request/response messages) and their
//! validation (§3.2.4 history length, §3.1.4 page size 1..=100, default 50).

use serde::{Deserialize, Serialize};

use crate::error::A2aError;
use crate::types::{Message, Metadata, Task, TaskState, Timestamp};

/// Page size of `ListTasks` when the client sets none (proto comment on `page_size`).
pub const DEFAULT_PAGE_SIZE: u32 = 50;
/// Largest page size of `ListTasks`.
pub const MAX_PAGE_SIZE: u32 = 100;

/// `SendMessageRequest` (params of `SendMessage` and `SendStreamingMessage`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SendMessageRequest {
    /// Routing tenant.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tenant: String,
    /// The message.
    pub message: Message,
    /// Send options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configuration: Option<SendMessageConfiguration>,
    /// Request metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
}

/// `SendMessageConfiguration`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SendMessageConfiguration {
    /// Media types the client accepts in answers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[serde(alias = "accepted_output_modes")]
    pub accepted_output_modes: Vec<String>,
    /// Push notifications for the task this message creates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(alias = "task_push_notification_config")]
    pub task_push_notification_config: Option<TaskPushNotificationConfig>,
    /// Most recent history messages in the answer (unset: no limit, 0: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(alias = "history_length")]
    pub history_length: Option<i32>,
    /// Answer at once instead of waiting for a terminal or interrupted state.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    #[serde(alias = "return_immediately")]
    pub return_immediately: bool,
}

impl SendMessageRequest {
    /// Checks the request's own fields (the message's size bounds are checked by
    /// [`crate::limits::Limits::check_message`]).
    pub fn validate(&self) -> Result<(), A2aError> {
        if self.message.message_id.is_empty() {
            return Err(A2aError::invalid_field("message.messageId", "is required"));
        }
        if self.message.parts.is_empty() {
            return Err(A2aError::invalid_field(
                "message.parts",
                "at least one part is required",
            ));
        }
        if let Some(cfg) = &self.configuration {
            history_length(cfg.history_length, "configuration.historyLength")?;
        }
        Ok(())
    }

    /// `returnImmediately` as set (false when absent).
    pub fn return_immediately(&self) -> bool {
        self.configuration
            .as_ref()
            .is_some_and(|c| c.return_immediately)
    }

    /// The validated history length of the answer.
    pub fn history_length(&self) -> Result<Option<usize>, A2aError> {
        history_length(
            self.configuration.as_ref().and_then(|c| c.history_length),
            "configuration.historyLength",
        )
    }
}

/// Validates a `historyLength`: unset is no limit, negative is refused.
pub fn history_length(value: Option<i32>, field: &str) -> Result<Option<usize>, A2aError> {
    match value {
        None => Ok(None),
        Some(n) => usize::try_from(n).map(Some).map_err(|_| {
            A2aError::invalid_field(field, &format!("must be a non-negative integer, got {n}"))
        }),
    }
}

/// `GetTaskRequest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GetTaskRequest {
    /// Routing tenant.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tenant: String,
    /// Task id.
    pub id: String,
    /// Most recent history messages to return.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(alias = "history_length")]
    pub history_length: Option<i32>,
}

/// `ListTasksRequest`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListTasksRequest {
    /// Routing tenant.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tenant: String,
    /// Only tasks of this context.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[serde(alias = "context_id")]
    pub context_id: String,
    /// Only tasks in this state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<TaskState>,
    /// Page size, 1..=100, default 50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(alias = "page_size")]
    pub page_size: Option<i32>,
    /// Cursor from a previous answer.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[serde(alias = "page_token")]
    pub page_token: String,
    /// History messages per task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(alias = "history_length")]
    pub history_length: Option<i32>,
    /// Only tasks whose status changed at or after this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(alias = "status_timestamp_after")]
    pub status_timestamp_after: Option<Timestamp>,
    /// Include artifacts (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(alias = "include_artifacts")]
    pub include_artifacts: Option<bool>,
}

/// A `ListTasksRequest` with its values checked and defaults applied, for the store.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskQuery {
    /// Context filter.
    pub context_id: Option<String>,
    /// State filter.
    pub status: Option<TaskState>,
    /// Page size.
    pub page_size: u32,
    /// Cursor (opaque to this crate; the store defines it).
    pub page_token: Option<String>,
    /// History per task.
    pub history_length: Option<usize>,
    /// Status time filter.
    pub status_timestamp_after: Option<Timestamp>,
    /// Include artifacts.
    pub include_artifacts: bool,
}

impl ListTasksRequest {
    /// Validates the filters and applies the defaults (§6.5 "Validation Error Example").
    pub fn to_query(&self) -> Result<TaskQuery, A2aError> {
        let page_size = match self.page_size {
            None => DEFAULT_PAGE_SIZE,
            Some(n) => match u32::try_from(n) {
                Ok(n) if (1..=MAX_PAGE_SIZE).contains(&n) => n,
                _ => {
                    return Err(A2aError::invalid_field(
                        "pageSize",
                        &format!("must be between 1 and {MAX_PAGE_SIZE} inclusive, got {n}"),
                    ));
                }
            },
        };
        if self.status == Some(TaskState::Unspecified) {
            return Err(A2aError::invalid_field(
                "status",
                "TASK_STATE_UNSPECIFIED is not a filter",
            ));
        }
        Ok(TaskQuery {
            context_id: Some(self.context_id.clone()).filter(|c| !c.is_empty()),
            status: self.status,
            page_size,
            page_token: Some(self.page_token.clone()).filter(|t| !t.is_empty()),
            history_length: history_length(self.history_length, "historyLength")?,
            status_timestamp_after: self.status_timestamp_after,
            include_artifacts: self.include_artifacts.unwrap_or(false),
        })
    }
}

/// `ListTasksResponse`; all four fields are REQUIRED and always written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListTasksResponse {
    /// The page.
    pub tasks: Vec<Task>,
    /// Cursor of the next page, empty at the end.
    #[serde(alias = "next_page_token")]
    pub next_page_token: String,
    /// Page size used.
    #[serde(alias = "page_size")]
    pub page_size: i32,
    /// Matching tasks before paging.
    #[serde(alias = "total_size")]
    pub total_size: i32,
}

/// `CancelTaskRequest`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CancelTaskRequest {
    /// Routing tenant.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tenant: String,
    /// Task id.
    pub id: String,
    /// Request metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
}

/// `SubscribeToTaskRequest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscribeToTaskRequest {
    /// Routing tenant.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tenant: String,
    /// Task id.
    pub id: String,
}

/// `GetExtendedAgentCardRequest`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GetExtendedAgentCardRequest {
    /// Routing tenant.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tenant: String,
}

/// `AuthenticationInfo` of a push notification target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthenticationInfo {
    /// HTTP auth scheme (`Bearer`, `Basic`), case-insensitive.
    pub scheme: String,
    /// Credentials for the scheme.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub credentials: String,
}

/// `TaskPushNotificationConfig` (the params of `CreateTaskPushNotificationConfig` too).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskPushNotificationConfig {
    /// Routing tenant.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tenant: String,
    /// Config id.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// Task id (empty inside `SendMessageConfiguration`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[serde(alias = "task_id")]
    pub task_id: String,
    /// Webhook URL.
    pub url: String,
    /// Token echoed to the webhook.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token: String,
    /// Credentials the node sends to the webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<AuthenticationInfo>,
}

/// `GetTaskPushNotificationConfigRequest` and `DeleteTaskPushNotificationConfigRequest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskPushNotificationConfigRef {
    /// Routing tenant.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tenant: String,
    /// Task id.
    #[serde(alias = "task_id")]
    pub task_id: String,
    /// Config id.
    pub id: String,
}

/// `ListTaskPushNotificationConfigsRequest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListTaskPushNotificationConfigsRequest {
    /// Routing tenant.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tenant: String,
    /// Task id.
    #[serde(alias = "task_id")]
    pub task_id: String,
    /// Page size.
    #[serde(default, skip_serializing_if = "is_zero")]
    #[serde(alias = "page_size")]
    pub page_size: i32,
    /// Cursor.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[serde(alias = "page_token")]
    pub page_token: String,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

/// `ListTaskPushNotificationConfigsResponse`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListTaskPushNotificationConfigsResponse {
    /// The configs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub configs: Vec<TaskPushNotificationConfig>,
    /// Cursor of the next page.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[serde(alias = "next_page_token")]
    pub next_page_token: String,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::types::{PartContent, Role, SendMessageResponse, TaskState};
    use serde_json::json;

    #[test]
    fn spec_push_setup_request_round_trips() {
        // Spec §6.6, initial request.
        let v = json!({
          "message": {
            "role": "ROLE_USER",
            "parts": [{"text": "Generate the Q1 sales report. This usually takes a while. Notify me when it's ready."}],
            "messageId": "6dbc13b5-bd57-4c2b-b503-24e381b6c8d6"
          },
          "configuration": {
            "taskPushNotificationConfig": {
              "url": "https://client.example.com/webhook/a2a-notifications",
              "authentication": {"scheme": "Bearer", "credentials": "secure-client-token-for-task-aaa"}
            }
          }
        });
        let req: SendMessageRequest = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(req.message.role, Role::User);
        let push = req
            .configuration
            .as_ref()
            .unwrap()
            .task_push_notification_config
            .as_ref()
            .unwrap();
        assert_eq!(push.authentication.as_ref().unwrap().scheme, "Bearer");
        assert!(!req.return_immediately());
        req.validate().unwrap();
        assert_eq!(serde_json::to_value(&req).unwrap(), v);
    }

    #[test]
    fn spec_send_with_configuration_and_file_answer() {
        // Spec §11.4 request and §6.7 answer.
        let v = json!({
            "message": {"messageId": "uuid", "role": "ROLE_USER", "parts": [{"text": "Hello"}]},
            "configuration": {"acceptedOutputModes": ["text/plain"], "historyLength": 2, "returnImmediately": true}
        });
        let req: SendMessageRequest = serde_json::from_value(v.clone()).unwrap();
        assert!(req.return_immediately());
        assert_eq!(req.history_length().unwrap(), Some(2));
        assert_eq!(serde_json::to_value(&req).unwrap(), v);

        let answer = json!({"task": {
            "id": "43667960-d455-4453-b0cf-1bae4955270d",
            "contextId": "c295ea44-7543-4f78-b524-7a38915ad6e4",
            "status": {"state": "TASK_STATE_COMPLETED", "timestamp": "2024-03-15T12:05:00Z"},
            "artifacts": [{
                "artifactId": "9b6934dd-37e3-4eb1-8766-962efaab63a1",
                "name": "processed_image_with_faces.png",
                "parts": [{"url": "https://storage.example.com/processed/task-bbb/output.png?token=xyz",
                           "filename": "output.png", "mediaType": "image/png"}]
            }]
        }});
        let resp: SendMessageResponse = serde_json::from_value(answer.clone()).unwrap();
        let SendMessageResponse::Task(task) = &resp else {
            panic!("not a task")
        };
        assert_eq!(task.status.state, TaskState::Completed);
        assert!(matches!(
            task.artifacts[0].parts[0].content,
            PartContent::Url(_)
        ));
        assert_eq!(serde_json::to_value(&resp).unwrap(), answer);
    }

    #[test]
    fn send_validation_refuses_missing_parts_and_negative_history() {
        let mut req: SendMessageRequest = serde_json::from_value(json!({
            "message": {"messageId": "m", "role": "ROLE_USER", "parts": []}}))
        .unwrap();
        let err = req.validate().unwrap_err();
        assert!(err.to_string().contains("message.parts"), "{err}");
        req.message.parts.push(crate::types::Part::text("x"));
        req.configuration = Some(SendMessageConfiguration {
            history_length: Some(-1),
            ..Default::default()
        });
        assert!(
            req.validate()
                .unwrap_err()
                .to_string()
                .contains("historyLength")
        );
    }

    #[test]
    fn list_tasks_defaults_and_bounds() {
        // Spec §6.5 response shape.
        let v = json!({"tasks": [{"id": "3f36680c-7f37-4a5f-945e-d78981fafd36",
            "contextId": "c295ea44-7543-4f78-b524-7a38915ad6e4",
            "status": {"state": "TASK_STATE_COMPLETED", "timestamp": "2024-03-15T10:15:00Z"}}],
            "totalSize": 5, "pageSize": 10, "nextPageToken": ""});
        let resp: ListTasksResponse = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(serde_json::to_value(&resp).unwrap(), v);

        let q = ListTasksRequest::default().to_query().unwrap();
        assert_eq!(
            (q.page_size, q.context_id, q.include_artifacts),
            (50, None, false)
        );
        let req: ListTasksRequest = serde_json::from_value(json!({
            "contextId": "context-uuid", "status": "TASK_STATE_WORKING", "pageSize": 100, "pageToken": "cursor-token"})).unwrap();
        let q = req.to_query().unwrap();
        assert_eq!(
            (q.page_size, q.status, q.page_token.as_deref()),
            (100, Some(TaskState::Working), Some("cursor-token"))
        );
        for bad in [0, 101, -3] {
            let req = ListTasksRequest {
                page_size: Some(bad),
                ..Default::default()
            };
            assert!(req.to_query().unwrap_err().to_string().contains("pageSize"));
        }
        let req = ListTasksRequest {
            history_length: Some(-5),
            ..Default::default()
        };
        assert!(req.to_query().is_err());
        assert!(
            serde_json::from_value::<ListTasksRequest>(json!({"status": "TASK_STATE_RUNNING"}))
                .is_err()
        );
    }
}
