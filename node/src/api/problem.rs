//! RFC 9457 problem details (`application/problem+json`). Internal errors are logged with
//! the request id and answered with a generic message: no internals leak.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

pub const PROBLEM_JSON: &str = "application/problem+json";

#[derive(Debug)]
pub struct Problem {
    pub status: StatusCode,
    /// A URN naming the problem type (`urn:kos:problem:invalid-config`).
    pub kind: &'static str,
    pub title: &'static str,
    pub detail: String,
    /// Extension members (`errors`, `current_snapshot_id`, ...).
    pub extra: Map<String, Value>,
}

impl Problem {
    pub fn new(
        status: StatusCode,
        kind: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            status,
            kind,
            title,
            detail: detail.into(),
            extra: Map::new(),
        }
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(key.into(), value.into());
        self
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "urn:kos:problem:bad-request",
            "Bad request",
            detail,
        )
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "urn:kos:problem:not-found",
            "Not found",
            detail,
        )
    }

    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "urn:kos:problem:conflict",
            "Conflict",
            detail,
        )
    }

    /// A failure inside the node. The cause is logged; the client sees a generic message.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "urn:kos:problem:internal",
            "Internal error",
            "the node could not complete the request; the node log has details",
        )
    }

    /// The configuration is invalid: every diagnostic is listed under `errors`.
    pub fn invalid_config(diags: &kos_config::Diagnostics) -> Self {
        let errors: Vec<&kos_config::Diagnostic> = diags.errors().collect();
        let warnings: Vec<&kos_config::Diagnostic> = diags.warnings().collect();
        let n = errors.len();
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "urn:kos:problem:invalid-config",
            "Invalid configuration",
            format!(
                "the configuration has {n} error{}; nothing was changed",
                if n == 1 { "" } else { "s" }
            ),
        )
        .with("errors", json!(errors))
        .with("warnings", json!(warnings))
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut body = Map::new();
        body.insert("type".into(), self.kind.into());
        body.insert("title".into(), self.title.into());
        body.insert("status".into(), self.status.as_u16().into());
        body.insert("detail".into(), self.detail.into());
        body.extend(self.extra);
        let mut resp = (self.status, Value::Object(body).to_string()).into_response();
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        resp
    }
}

impl From<kos_config::StoreError> for Problem {
    fn from(e: kos_config::StoreError) -> Self {
        use kos_config::StoreError as E;
        match e {
            E::Invalid(d) => Problem::invalid_config(&d),
            E::CurrentInvalid(d) => Problem::new(
                StatusCode::CONFLICT,
                "urn:kos:problem:current-config-invalid",
                "The configuration on disk is invalid",
                "fix the files or apply a complete new document with `If-Match: *`",
            )
            .with("errors", json!(d.errors().collect::<Vec<_>>())),
            E::Conflict { expected, current } => Problem::new(
                StatusCode::PRECONDITION_FAILED,
                "urn:kos:problem:snapshot-mismatch",
                "Snapshot mismatch",
                format!("If-Match names {expected}, but the current snapshot is another; fetch it and retry"),
            )
            .with("current_snapshot_id", json!(current)),
            E::NotFound(id) => Problem::not_found(format!("no snapshot `{id}` in the history")),
            other => Problem::internal(&other),
        }
    }
}
