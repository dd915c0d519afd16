//! The A2A v1.0 bindings of the hosted agents (spec §9 JSON-RPC, §11 HTTP+JSON), over
//! [`crate::a2a::host::AgentHost`].
//!
//! | method | path (under `/a2a/<agent>`) | operation |
//! |---|---|---|
//! | GET | `/.well-known/agent-card.json` | the agent's signed card (open) |
//! | POST | `/jsonrpc`, `/jsonrpc/` | JSON-RPC 2.0, every method |
//! | POST | `/message:send`, `/message:stream` | SendMessage, SendStreamingMessage (SSE) |
//! | GET | `/tasks`, `/tasks/{id}` | ListTasks, GetTask |
//! | POST | `/tasks/{id}:cancel` | CancelTask |
//! | GET, POST | `/tasks/{id}:subscribe` | SubscribeToTask (SSE) |
//! | POST, GET | `/tasks/{id}/pushNotificationConfigs` | create, list push configs |
//! | GET, DELETE | `/tasks/{id}/pushNotificationConfigs/{config}` | get, delete one |
//! | GET | `/extendedAgentCard` | GetExtendedAgentCard (not configured) |
//!
//! The node's own card is at `/.well-known/agent-card.json` (the default agent's, see
//! `a2a.default_agent`); `GET /api/agents` lists the hosted agents with their card URLs.
//!
//! Every operation needs `A2A-Version: 1.0` (header or query parameter); a request without it
//! is taken as 0.3, which this node does not serve (`VersionNotSupportedError`). Errors are
//! A2A's: `google.rpc.Status` with an `ErrorInfo` on HTTP+JSON, JSON-RPC error objects with
//! the same details in `error.data`. Internal failures are logged and answered as
//! "internal error" without detail.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use kos_agents::A2aError;
use kos_agents::card::{
    AgentCard, AgentInterface, AgentProvider, BINDING_HTTP_JSON, BINDING_JSONRPC,
    HttpAuthSecurityScheme, OpenIdConnectSecurityScheme, SecurityRequirement, SecurityScheme,
    StringList,
};
use kos_agents::jsonrpc::{A2aRequest, JsonRpcResponse, RequestId, parse_request};
use kos_agents::requests::{
    CancelTaskRequest, GetTaskRequest, ListTaskPushNotificationConfigsRequest, ListTasksRequest,
    ListTasksResponse, SendMessageRequest, SubscribeToTaskRequest, TaskPushNotificationConfig,
    TaskPushNotificationConfigRef,
};
use kos_agents::signing::{self, CardContext};
#[cfg(test)]
use kos_agents::types::TaskState;
use kos_agents::types::{SendMessageResponse, Task};
use serde_json::{Value, json};
use sha2::Digest as _;

use super::AppState;
use crate::a2a::host::{AgentHost, Caller, EventStream};
use crate::a2a::push::PushError;
use crate::a2a::remote::{RemoteAgent, enc};
use crate::a2a::store::TaskStore;
use crate::auth::{Principal, Role};

/// The protocol version served.
pub const VERSION: &str = "1.0";
const VERSION_HEADER: &str = "a2a-version";
/// How long the public cards may be cached.
const CARD_MAX_AGE: u32 = 300;
const SSE_KEEPALIVE: Duration = Duration::from_secs(15);

/// An A2A error in the HTTP+JSON binding.
#[derive(Debug)]
pub struct RestError(A2aError);

impl IntoResponse for RestError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
        (status, axum::Json(self.0.to_rest_body())).into_response()
    }
}

impl From<A2aError> for RestError {
    fn from(e: A2aError) -> Self {
        RestError(e)
    }
}

pub type RestResult = Result<Response, RestError>;

fn host(state: &AppState) -> Result<&AgentHost, A2aError> {
    state
        .agents
        .as_ref()
        .ok_or_else(|| A2aError::UnsupportedOperation("this node hosts no agents".into()))
}

/// The caller of a request (set by `authz::authorize`); an open API has one anonymous caller.
fn caller(req_principal: Option<&Principal>) -> Caller {
    match req_principal {
        Some(p) => Caller {
            owner: format!("{}:{}", p.source, p.sub),
            admin: p.role >= Role::Admin,
        },
        None => Caller {
            owner: "anonymous".into(),
            admin: false,
        },
    }
}

/// Checks `A2A-Version` (header, else query parameter); absent means 0.3.
fn check_version(headers: &HeaderMap, query: Option<&str>) -> Result<(), A2aError> {
    let from_query = query.and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k.eq_ignore_ascii_case("A2A-Version"))
            .map(|(_, v)| v.into_owned())
    });
    let requested = headers
        .get(VERSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_owned())
        .or(from_query)
        .unwrap_or_else(|| "0.3".into());
    if requested == VERSION || requested == "1" {
        Ok(())
    } else {
        Err(A2aError::VersionNotSupported {
            requested,
            supported: VERSION.into(),
        })
    }
}

fn check_content_type(headers: &HeaderMap) -> Result<(), A2aError> {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return Ok(());
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence == "application/json" || essence == "application/a2a+json" {
        Ok(())
    } else {
        // HTTP's answer to a request body of the wrong type: 415 (and -32005 on JSON-RPC).
        Err(A2aError::ContentTypeNotSupported {
            media_type: essence,
            accepted: "application/json, application/a2a+json".into(),
        })
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, A2aError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(A2aError::invalid_params("the request body is empty"));
    }
    serde_json::from_slice(body).map_err(|e| A2aError::invalid_params(e.to_string()))
}

fn ok_json<T: serde::Serialize>(v: &T) -> RestResult {
    let body = serde_json::to_vec(v).map_err(|_| A2aError::Internal)?;
    Ok((
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response())
}

/// Request parts every A2A handler reads.
struct Ctx {
    state: AppState,
    caller: Caller,
}

fn ctx(state: AppState, req: &Request) -> Result<Ctx, A2aError> {
    check_version(req.headers(), req.uri().query())?;
    let caller = caller(req.extensions().get::<Principal>());
    Ok(Ctx { state, caller })
}

/// The request body, at most `api.max_body_bytes` (read whole: A2A bodies are JSON).
async fn body_of(state: &AppState, req: Request) -> Result<Bytes, A2aError> {
    check_content_type(req.headers())?;
    let limit = state.config.boot().config.api.max_body_bytes as usize;
    axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|_| {
            A2aError::InvalidRequest(format!(
                "the request body is unreadable or larger than api.max_body_bytes ({limit} bytes)"
            ))
        })
}

// ---------------------------------------------------------------------------------------------
// HTTP+JSON
// ---------------------------------------------------------------------------------------------

/// The A2A routes under `base` (`/a2a/{agent}` or `/a2a/peers/{peer}/{agent}`).
pub fn routes(base: &str) -> axum::Router<AppState> {
    use axum::routing::{get, post};
    axum::Router::new()
        .route(&format!("{base}/jsonrpc"), post(jsonrpc))
        .route(&format!("{base}/jsonrpc/"), post(jsonrpc))
        .route(&format!("{base}/message:send"), post(message_send))
        .route(&format!("{base}/message:stream"), post(message_stream))
        .route(&format!("{base}/tasks"), get(list_tasks))
        .route(
            &format!("{base}/tasks/{{task}}"),
            get(task_get).post(task_post),
        )
        .route(
            &format!("{base}/tasks/{{task}}/pushNotificationConfigs"),
            get(push_list).post(push_create),
        )
        .route(
            &format!("{base}/tasks/{{task}}/pushNotificationConfigs/{{config}}"),
            get(push_one).delete(push_one),
        )
        .route(&format!("{base}/extendedAgentCard"), get(extended_card))
}

/// The path parameters of an A2A route (`agent`, and `peer`, `task`, `config` where present).
type Params = Path<HashMap<String, String>>;

fn param<'a>(p: &'a HashMap<String, String>, name: &str) -> Result<&'a str, A2aError> {
    p.get(name).map(String::as_str).ok_or(A2aError::Internal)
}

/// The agent a route addresses: hosted here, or on a peer (`/a2a/peers/<peer>/<agent>`).
enum Target<'a> {
    Local { host: &'a AgentHost, agent: String },
    Remote(Box<RemoteAgent>),
}

fn target<'a>(c: &'a Ctx, p: &HashMap<String, String>) -> Result<Target<'a>, A2aError> {
    let agent = param(p, "agent")?.to_owned();
    let Some(peer) = p.get("peer") else {
        let host = host(&c.state)?;
        if host.descriptor(&agent).is_none() {
            return Err(A2aError::MethodNotFound(format!(
                "no agent {agent} on this node"
            )));
        }
        return Ok(Target::Local { host, agent });
    };
    if c.caller.owner.starts_with("klp:") {
        return Err(A2aError::UnsupportedOperation(
            "a peer cannot call a third node's agents through this node".into(),
        ));
    }
    let Some(klp) = &c.state.klp else {
        return Err(A2aError::UnsupportedOperation(
            "KLP is not enabled on this node: it has no peers".into(),
        ));
    };
    let peer: kos_klp::NodeId = peer
        .parse()
        .map_err(|_| A2aError::invalid_field("peer", &format!("`{peer}` is not a peer id")))?;
    let cfg = c.state.config.current();
    let blocking_wait = cfg
        .config
        .api
        .request_timeout
        .get()
        .saturating_sub(Duration::from_secs(1))
        .max(Duration::from_millis(500));
    Ok(Target::Remote(Box::new(RemoteAgent::new(
        klp.clone(),
        peer,
        &agent,
        TaskStore::new(c.state.db.clone()),
        blocking_wait,
        c.state.tasks.shutdown_token().clone(),
    ))))
}

impl Target<'_> {
    async fn send_message(
        &self,
        c: &Caller,
        r: SendMessageRequest,
    ) -> Result<SendMessageResponse, A2aError> {
        match self {
            Target::Local { host, agent } => host.send_message(agent, c, r).await,
            Target::Remote(a) => a.send_message(c, r).await,
        }
    }

    async fn send_streaming(
        &self,
        c: &Caller,
        r: SendMessageRequest,
    ) -> Result<EventStream, A2aError> {
        match self {
            Target::Local { host, agent } => host.send_streaming(agent, c, r).await,
            Target::Remote(a) => a.send_streaming(c, r).await,
        }
    }

    async fn get_task(
        &self,
        c: &Caller,
        id: &str,
        history: Option<usize>,
    ) -> Result<Task, A2aError> {
        match self {
            Target::Local { host, agent } => host.get_task(agent, c, id, history).await,
            Target::Remote(a) => a.get_task(c, id, history).await,
        }
    }

    async fn list_tasks(
        &self,
        c: &Caller,
        r: &ListTasksRequest,
    ) -> Result<ListTasksResponse, A2aError> {
        match self {
            Target::Local { host, agent } => host.list_tasks(agent, c, r).await,
            Target::Remote(a) => a.list_tasks(c, r).await,
        }
    }

    async fn cancel_task(&self, c: &Caller, id: &str) -> Result<Task, A2aError> {
        match self {
            Target::Local { host, agent } => host.cancel_task(agent, c, id).await,
            Target::Remote(a) => a.cancel_task(c, id).await,
        }
    }

    async fn subscribe(&self, c: &Caller, id: &str) -> Result<EventStream, A2aError> {
        match self {
            Target::Local { host, agent } => host.subscribe(agent, c, id).await,
            Target::Remote(a) => a.subscribe(c, id).await,
        }
    }

    /// The push config operations.
    async fn push(&self, c: &Caller, r: A2aRequest) -> Result<Value, A2aError> {
        match self {
            Target::Local { host, agent } => push_op(host, agent, c, r).await,
            Target::Remote(a) => match r {
                A2aRequest::CreateTaskPushNotificationConfig(cfg) => a.create_push(c, cfg).await,
                A2aRequest::GetTaskPushNotificationConfig(r) => {
                    a.get_push(c, &r.task_id, &r.id).await
                }
                A2aRequest::ListTaskPushNotificationConfigs(r) => a.list_push(c, &r).await,
                A2aRequest::DeleteTaskPushNotificationConfig(r) => a
                    .delete_push(c, &r.task_id, &r.id)
                    .await
                    .map(|()| json!({})),
                _ => Err(A2aError::Internal),
            },
        }
    }
}

/// `POST .../message:send`.
pub async fn message_send(
    State(state): State<AppState>,
    Path(p): Params,
    req: Request,
) -> RestResult {
    let c = ctx(state, &req)?;
    let body = body_of(&c.state, req).await?;
    let r: SendMessageRequest = parse_json(&body)?;
    let out = target(&c, &p)?.send_message(&c.caller, r).await?;
    ok_json(&out)
}

/// `POST .../message:stream`.
pub async fn message_stream(
    State(state): State<AppState>,
    Path(p): Params,
    req: Request,
) -> RestResult {
    let c = ctx(state, &req)?;
    let body = body_of(&c.state, req).await?;
    let r: SendMessageRequest = parse_json(&body)?;
    let s = target(&c, &p)?.send_streaming(&c.caller, r).await?;
    Ok(sse(rest_events(s)))
}

/// `GET .../tasks`.
pub async fn list_tasks(
    State(state): State<AppState>,
    Path(p): Params,
    req: Request,
) -> RestResult {
    let c = ctx(state, &req)?;
    let q = list_query(req.uri().query().unwrap_or(""))?;
    let out = target(&c, &p)?.list_tasks(&c.caller, &q).await?;
    ok_json(&out)
}

/// The query of `GET /tasks` (camelCase names as in the proto, `A2A-Version` ignored).
fn list_query(query: &str) -> Result<ListTasksRequest, A2aError> {
    let mut obj = serde_json::Map::new();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        let value = match k.as_ref() {
            "pageSize" | "historyLength" => Value::from(
                v.parse::<i64>()
                    .map_err(|_| A2aError::invalid_field(&k, "must be an integer"))?,
            ),
            "includeArtifacts" => Value::Bool(match v.as_ref() {
                "true" | "1" => true,
                "false" | "0" => false,
                _ => return Err(A2aError::invalid_field(&k, "must be true or false")),
            }),
            "contextId" | "status" | "pageToken" | "statusTimestampAfter" | "tenant" => {
                Value::String(v.into_owned())
            }
            k if k.eq_ignore_ascii_case("A2A-Version") => continue,
            other => {
                return Err(A2aError::invalid_field(
                    other,
                    "is not a parameter of ListTasks",
                ));
            }
        };
        obj.insert(k.into_owned(), value);
    }
    serde_json::from_value(Value::Object(obj)).map_err(|e| A2aError::invalid_params(e.to_string()))
}

/// Splits `id:action` (the colon form of custom methods).
fn split_action(segment: &str) -> (&str, Option<&str>) {
    match segment.rsplit_once(':') {
        Some((id, action)) => (id, Some(action)),
        None => (segment, None),
    }
}

/// An integer query parameter.
fn int_param(query: &str, name: &str) -> Result<Option<i64>, A2aError> {
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| {
            v.parse::<i64>()
                .map_err(|_| A2aError::invalid_field(name, "must be an integer"))
        })
        .transpose()
}

/// `GET .../tasks/{id}` and `GET .../tasks/{id}:subscribe`.
pub async fn task_get(State(state): State<AppState>, Path(p): Params, req: Request) -> RestResult {
    let c = ctx(state, &req)?;
    let segment = param(&p, "task")?;
    let (id, action) = split_action(segment);
    match action {
        None => {
            let history = match int_param(req.uri().query().unwrap_or(""), "historyLength")? {
                None => None,
                Some(n) => kos_agents::requests::history_length(
                    Some(i32::try_from(n).unwrap_or(-1)),
                    "historyLength",
                )?,
            };
            let t = target(&c, &p)?.get_task(&c.caller, id, history).await?;
            ok_json(&t)
        }
        Some("subscribe") => {
            let s = target(&c, &p)?.subscribe(&c.caller, id).await?;
            Ok(sse(rest_events(s)))
        }
        Some(other) => Err(A2aError::MethodNotFound(format!("GET tasks/{{id}}:{other}")).into()),
    }
}

/// `POST .../tasks/{id}:cancel` and `POST .../tasks/{id}:subscribe`.
pub async fn task_post(State(state): State<AppState>, Path(p): Params, req: Request) -> RestResult {
    let c = ctx(state, &req)?;
    let segment = param(&p, "task")?;
    let (id, action) = split_action(segment);
    match action {
        Some("cancel") => {
            let t = target(&c, &p)?.cancel_task(&c.caller, id).await?;
            ok_json(&t)
        }
        Some("subscribe") => {
            let s = target(&c, &p)?.subscribe(&c.caller, id).await?;
            Ok(sse(rest_events(s)))
        }
        _ => Err(A2aError::MethodNotFound(format!("POST tasks/{segment}")).into()),
    }
}

/// `GET /a2a/{agent}/tasks/{id}/events?after=<seq>&waitMs=<ms>` (kOS, not A2A): a page of the
/// task's events after `seq`, waiting up to `waitMs` (at most 8000) for the first; without
/// `after`, only the current `seq`. Peers follow remote tasks with it over KLP.
pub async fn task_events(
    State(state): State<AppState>,
    Path(p): Params,
    req: Request,
) -> RestResult {
    let c = ctx(state, &req)?;
    let q = req.uri().query().unwrap_or("");
    let after = int_param(q, "after")?;
    let wait = int_param(q, "waitMs")?.unwrap_or(0).clamp(0, 8000);
    let host = host(&c.state)?;
    let agent = param(&p, "agent")?;
    let page = host
        .events_since(
            agent,
            &c.caller,
            param(&p, "task")?,
            after,
            Duration::from_millis(u64::try_from(wait).unwrap_or(0)),
            crate::a2a::remote::EVENTS_BUDGET,
        )
        .await?;
    ok_json(&page)
}

/// `POST .../tasks/{id}/pushNotificationConfigs`.
pub async fn push_create(
    State(state): State<AppState>,
    Path(p): Params,
    req: Request,
) -> RestResult {
    let c = ctx(state, &req)?;
    let task_id = param(&p, "task")?.to_owned();
    let body = body_of(&c.state, req).await?;
    let mut cfg: TaskPushNotificationConfig = parse_json(&body)?;
    if !cfg.task_id.is_empty() && cfg.task_id != task_id {
        return Err(A2aError::invalid_field("taskId", "differs from the task in the path").into());
    }
    cfg.task_id = task_id;
    let out = target(&c, &p)?
        .push(&c.caller, A2aRequest::CreateTaskPushNotificationConfig(cfg))
        .await?;
    ok_json(&out)
}

/// `GET .../tasks/{id}/pushNotificationConfigs`.
pub async fn push_list(State(state): State<AppState>, Path(p): Params, req: Request) -> RestResult {
    let c = ctx(state, &req)?;
    let mut r = ListTaskPushNotificationConfigsRequest {
        tenant: String::new(),
        task_id: param(&p, "task")?.to_owned(),
        page_size: 0,
        page_token: String::new(),
    };
    let q = req.uri().query().unwrap_or("");
    if let Some(n) = int_param(q, "pageSize")? {
        r.page_size =
            i32::try_from(n).map_err(|_| A2aError::invalid_field("pageSize", "is out of range"))?;
    }
    if let Some((_, v)) = url::form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "pageToken")
    {
        r.page_token = v.into_owned();
    }
    let out = target(&c, &p)?
        .push(&c.caller, A2aRequest::ListTaskPushNotificationConfigs(r))
        .await?;
    ok_json(&out)
}

/// `GET` and `DELETE .../tasks/{id}/pushNotificationConfigs/{config}`.
pub async fn push_one(State(state): State<AppState>, Path(p): Params, req: Request) -> RestResult {
    let c = ctx(state, &req)?;
    let r = TaskPushNotificationConfigRef {
        tenant: String::new(),
        task_id: param(&p, "task")?.to_owned(),
        id: param(&p, "config")?.to_owned(),
    };
    let t = target(&c, &p)?;
    if req.method() == axum::http::Method::DELETE {
        t.push(&c.caller, A2aRequest::DeleteTaskPushNotificationConfig(r))
            .await?;
        return ok_json(&json!({}));
    }
    let out = t
        .push(&c.caller, A2aRequest::GetTaskPushNotificationConfig(r))
        .await?;
    ok_json(&out)
}

/// `GET .../extendedAgentCard`.
pub async fn extended_card(
    State(state): State<AppState>,
    Path(p): Params,
    req: Request,
) -> RestResult {
    let c = ctx(state, &req)?;
    target(&c, &p)?;
    Err(A2aError::ExtendedAgentCardNotConfigured.into())
}

/// Push config operations on a local task, after the task is checked to be the caller's.
async fn push_op(
    host: &AgentHost,
    agent: &str,
    caller: &Caller,
    r: A2aRequest,
) -> Result<Value, A2aError> {
    let Some(push) = host.push() else {
        return Err(A2aError::PushNotificationNotSupported);
    };
    let task_id = match &r {
        A2aRequest::CreateTaskPushNotificationConfig(cfg) => cfg.task_id.clone(),
        A2aRequest::GetTaskPushNotificationConfig(r)
        | A2aRequest::DeleteTaskPushNotificationConfig(r) => r.task_id.clone(),
        A2aRequest::ListTaskPushNotificationConfigs(r) => r.task_id.clone(),
        _ => return Err(A2aError::Internal),
    };
    if task_id.is_empty() {
        return Err(A2aError::invalid_field("taskId", "is required"));
    }
    host.check_visible(agent, caller, &task_id).await?;
    match r {
        // Also on a terminal task (spec §3.1.7 lists no error for it): stored, and never
        // used, as a terminal task has no more updates.
        A2aRequest::CreateTaskPushNotificationConfig(cfg) => {
            push.validate_config(&cfg, "").await?;
            enc(&push
                .create_config(&task_id, cfg)
                .await
                .map_err(PushError::into_a2a)?)
        }
        A2aRequest::GetTaskPushNotificationConfig(r) => {
            match push
                .get_config(&r.task_id, &r.id)
                .await
                .map_err(store_error)?
            {
                Some(cfg) => enc(&cfg),
                // The spec names no error for an unknown config; the task's is the closest.
                None => Err(A2aError::TaskNotFound { task_id: r.task_id }),
            }
        }
        A2aRequest::ListTaskPushNotificationConfigs(r) => {
            enc(&push.list_configs(&r).await.map_err(PushError::into_a2a)?)
        }
        A2aRequest::DeleteTaskPushNotificationConfig(r) => {
            // Deleting a config that is not there is done already (idempotent).
            push.delete_config(&r.task_id, &r.id)
                .await
                .map_err(store_error)?;
            Ok(json!({}))
        }
        _ => Err(A2aError::Internal),
    }
}

fn store_error(e: crate::store::StoreError) -> A2aError {
    tracing::warn!(error = %e, "a2a: push config store error");
    A2aError::Internal
}

// ---------------------------------------------------------------------------------------------
// SSE
// ---------------------------------------------------------------------------------------------

/// An SSE item: a data event, or an error event (`event: error`).
enum Item {
    Data(Value),
    Error(Value),
}

fn sse(s: impl Stream<Item = Item> + Send + 'static) -> Response {
    let events = s.map(|item| {
        Ok::<_, Infallible>(match item {
            Item::Data(v) => Event::default().data(v.to_string()),
            Item::Error(v) => Event::default().event("error").data(v.to_string()),
        })
    });
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(SSE_KEEPALIVE))
        .into_response()
}

/// HTTP+JSON stream items: `StreamResponse` objects, an error as `{"error": Status}`.
fn rest_events(s: EventStream) -> impl Stream<Item = Item> + Send + 'static {
    s.map(|item| match item {
        Ok(e) => match serde_json::to_value(&e) {
            Ok(v) => Item::Data(v),
            Err(_) => Item::Error(A2aError::Internal.to_rest_body()),
        },
        Err(e) => Item::Error(e.to_rest_body()),
    })
}

/// JSON-RPC stream items: one response object per event, with the request's id.
fn rpc_events(id: RequestId, s: EventStream) -> impl Stream<Item = Item> + Send + 'static {
    s.map(move |item| {
        let resp = match item {
            Ok(e) => JsonRpcResponse::success(id.clone(), &e)
                .unwrap_or_else(|e| JsonRpcResponse::failure(id.clone(), &e)),
            Err(e) => JsonRpcResponse::failure(id.clone(), &e),
        };
        let v = serde_json::to_value(&resp).unwrap_or(Value::Null);
        if v.get("error").is_some() {
            Item::Error(v)
        } else {
            Item::Data(v)
        }
    })
}

// ---------------------------------------------------------------------------------------------
// JSON-RPC
// ---------------------------------------------------------------------------------------------

fn rpc_answer(resp: &JsonRpcResponse) -> Response {
    match serde_json::to_vec(resp) {
        Ok(body) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// `POST .../jsonrpc` (and with a trailing slash).
pub async fn jsonrpc(State(state): State<AppState>, Path(p): Params, req: Request) -> Response {
    let version = check_version(req.headers(), req.uri().query());
    let caller = caller(req.extensions().get::<Principal>());
    let body = match body_of(&state, req).await {
        Ok(b) => b,
        Err(e) => return rpc_answer(&JsonRpcResponse::failure(RequestId::Null, &e)),
    };
    let (id, call) = match parse_request(&body) {
        Ok(x) => x,
        Err(rejected) => {
            return rpc_answer(&JsonRpcResponse::failure(rejected.id, &rejected.error));
        }
    };
    if let Err(e) = version {
        return rpc_answer(&JsonRpcResponse::failure(id, &e));
    }
    let c = Ctx { state, caller };
    let out = match target(&c, &p) {
        Ok(t) => rpc_call(&c, &t, call).await,
        Err(e) => Err(e),
    };
    match out {
        Ok(RpcOut::Value(v)) => rpc_answer(
            &JsonRpcResponse::success(id.clone(), &v)
                .unwrap_or_else(|e| JsonRpcResponse::failure(id, &e)),
        ),
        Ok(RpcOut::Stream(s)) => sse(rpc_events(id, s)),
        Err(e) => rpc_answer(&JsonRpcResponse::failure(id, &e)),
    }
}

enum RpcOut {
    Value(Value),
    Stream(EventStream),
}

async fn rpc_call(c: &Ctx, t: &Target<'_>, call: A2aRequest) -> Result<RpcOut, A2aError> {
    let caller = &c.caller;
    let id = match &call {
        A2aRequest::GetTask(r) => Some(&r.id),
        A2aRequest::CancelTask(r) => Some(&r.id),
        A2aRequest::SubscribeToTask(r) => Some(&r.id),
        _ => None,
    };
    if id.is_some_and(String::is_empty) {
        return Err(A2aError::invalid_field("id", "is required"));
    }
    match call {
        A2aRequest::SendMessage(r) => Ok(RpcOut::Value(enc(&t.send_message(caller, r).await?)?)),
        A2aRequest::SendStreamingMessage(r) => {
            Ok(RpcOut::Stream(t.send_streaming(caller, r).await?))
        }
        A2aRequest::GetTask(GetTaskRequest {
            id, history_length, ..
        }) => {
            let history = kos_agents::requests::history_length(history_length, "historyLength")?;
            Ok(RpcOut::Value(enc(&t
                .get_task(caller, &id, history)
                .await?)?))
        }
        A2aRequest::ListTasks(r) => Ok(RpcOut::Value(enc(&t.list_tasks(caller, &r).await?)?)),
        A2aRequest::CancelTask(CancelTaskRequest { id, .. }) => {
            Ok(RpcOut::Value(enc(&t.cancel_task(caller, &id).await?)?))
        }
        A2aRequest::SubscribeToTask(SubscribeToTaskRequest { id, .. }) => {
            Ok(RpcOut::Stream(t.subscribe(caller, &id).await?))
        }
        A2aRequest::GetExtendedAgentCard(_) => Err(A2aError::ExtendedAgentCardNotConfigured),
        push => t.push(caller, push).await.map(RpcOut::Value),
    }
}

// ---------------------------------------------------------------------------------------------
// Cards
// ---------------------------------------------------------------------------------------------

/// The card context of this node for a request: its public base URL and real auth.
fn card_context(state: &AppState, headers: &HeaderMap) -> CardContext {
    let cfg = state.config.current();
    let a2a = &cfg.config.a2a;
    let base_url = a2a
        .public_url
        .clone()
        .unwrap_or_else(|| super::authz::base_url(headers, cfg.config.api.tls.is_some()));
    let mut schemes = std::collections::BTreeMap::new();
    let mut requirements = Vec::new();
    if state.auth.enabled() {
        schemes.insert(
            "bearer".to_owned(),
            SecurityScheme::HttpAuth(HttpAuthSecurityScheme {
                description:
                    "A JWT from `kos token create` or from the node's OpenID Connect provider."
                        .into(),
                scheme: "Bearer".into(),
                bearer_format: "JWT".into(),
            }),
        );
        requirements.push(SecurityRequirement {
            schemes: [("bearer".to_owned(), StringList { list: vec![] })].into(),
        });
        if let Some(oidc) = state.auth.oidc() {
            schemes.insert(
                "oidc".to_owned(),
                SecurityScheme::OpenIdConnect(OpenIdConnectSecurityScheme {
                    description: "The node's OpenID Connect provider; send its access token as a bearer token.".into(),
                    open_id_connect_url: format!(
                        "{}/.well-known/openid-configuration",
                        oidc.issuer().trim_end_matches('/')
                    ),
                }),
            );
            requirements.push(SecurityRequirement {
                schemes: [("oidc".to_owned(), StringList { list: vec![] })].into(),
            });
        }
    }
    CardContext {
        base_url,
        security_schemes: schemes,
        security_requirements: requirements,
        push_notifications: state.agents.as_ref().is_some_and(|h| h.push().is_some()),
        extended_agent_card: false,
        provider: Some(AgentProvider {
            organization: cfg
                .config
                .node
                .name
                .clone()
                .unwrap_or_else(|| format!("kOS node {}", state.identity.id())),
            url: a2a.public_url.clone().unwrap_or_default(),
        }),
        documentation_url: None,
    }
}

/// The signed card of a hosted agent as JSON.
pub fn agent_card(state: &AppState, headers: &HeaderMap, agent: &str) -> Result<Value, A2aError> {
    let host = host(state)?;
    let Some(d) = host.descriptor(agent) else {
        return Err(A2aError::MethodNotFound(format!("agent {agent}")));
    };
    let ctx = card_context(state, headers);
    let mut card = signing::build_card(d, &ctx).map_err(|e| {
        tracing::warn!(error = %e, "a2a: cannot build a card");
        A2aError::Internal
    })?;
    signing::sign_card(
        &mut card,
        state.identity.signing_key(),
        &state.identity.id().to_string(),
    )
    .map_err(|_| A2aError::Internal)?;
    enc(&card)
}

fn card_response(state: &AppState, headers: &HeaderMap, card: &Value) -> Response {
    let body = card.to_string();
    let etag = format!(
        "\"{}\"",
        hex::encode(&sha2::Sha256::digest(body.as_bytes())[..16])
    );
    let last_modified = httpdate::fmt_http_date(state.started_at);
    let not_modified = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut resp = if not_modified {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response()
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&last_modified) {
        h.insert(header::LAST_MODIFIED, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("public, max-age={CARD_MAX_AGE}")) {
        h.insert(header::CACHE_CONTROL, v);
    }
    resp
}

/// A card for a peer's agent as served through this node: the peer's verified card with
/// this node's interfaces and security, signed by this node.
fn proxy_card(
    state: &AppState,
    headers: &HeaderMap,
    peer: &str,
    agent: &str,
    peer_card: Value,
) -> Result<Value, A2aError> {
    let mut card: AgentCard =
        serde_json::from_value(peer_card).map_err(|_| A2aError::InvalidAgentResponse)?;
    let ctx = card_context(state, headers);
    let base = format!(
        "{}/a2a/peers/{peer}/{agent}",
        ctx.base_url.trim_end_matches('/')
    );
    let iface = |url: String, binding: &str| AgentInterface {
        url,
        protocol_binding: binding.to_owned(),
        tenant: None,
        protocol_version: VERSION.to_owned(),
    };
    card.supported_interfaces = vec![
        iface(format!("{base}/jsonrpc"), BINDING_JSONRPC),
        iface(base, BINDING_HTTP_JSON),
    ];
    card.security_schemes = ctx.security_schemes;
    card.security_requirements = ctx.security_requirements;
    card.signatures.clear();
    signing::sign_card(
        &mut card,
        state.identity.signing_key(),
        &state.identity.id().to_string(),
    )
    .map_err(|_| A2aError::Internal)?;
    enc(&card)
}

/// `GET /a2a/peers/{peer}/{agent}/.well-known/agent-card.json`: a peer's agent as this node
/// serves it (the peer's own signed card is in `GET /api/agents`).
pub async fn remote_card(
    State(state): State<AppState>,
    Path(p): Params,
    headers: HeaderMap,
) -> RestResult {
    let c = Ctx {
        state,
        caller: caller(None),
    };
    let Target::Remote(a) = target(&c, &p)? else {
        return Err(A2aError::Internal.into());
    };
    let peer_card = a.verified_card().await?;
    let card = proxy_card(
        &c.state,
        &headers,
        param(&p, "peer")?,
        param(&p, "agent")?,
        peer_card,
    )?;
    Ok(card_response(&c.state, &headers, &card))
}

/// `GET /a2a/{agent}/.well-known/agent-card.json`.
pub async fn card(
    State(state): State<AppState>,
    Path(agent): Path<String>,
    headers: HeaderMap,
) -> RestResult {
    let card = agent_card(&state, &headers, &agent)?;
    Ok(card_response(&state, &headers, &card))
}

/// The agent behind the node's own card.
fn default_agent(state: &AppState) -> Option<String> {
    let host = state.agents.as_ref()?;
    let cfg = state.config.current();
    match &cfg.config.a2a.default_agent {
        Some(a) => host.descriptor(a).map(|d| d.id.clone()),
        None => host.descriptors().next().map(|d| d.id.clone()),
    }
}

/// `GET /.well-known/agent-card.json`: the node's card (its default agent's).
pub async fn node_card(State(state): State<AppState>, headers: HeaderMap) -> RestResult {
    let Some(agent) = default_agent(&state) else {
        return Err(A2aError::MethodNotFound(
            "this node hosts no agents (see `agents` in the configuration)".into(),
        )
        .into());
    };
    let card = agent_card(&state, &headers, &agent)?;
    Ok(card_response(&state, &headers, &card))
}

/// `GET /api/agents`: the hosted agents and those admitted peers advertise in their MAP
/// manifests, each with its absolute card URL (through this node) and, for a peer's, the
/// peer's own signed card, verified against its MAP-verified key.
pub async fn list_agents(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let ctx = card_context(&state, &headers);
    let base = ctx.base_url.trim_end_matches('/').to_owned();
    let mut agents: Vec<Value> = state
        .agents
        .iter()
        .flat_map(|h| h.descriptors())
        .map(|d| {
            json!({
                "id": d.id,
                "name": d.name,
                "description": d.description,
                "version": d.version,
                "skills": d.skills.iter().map(|s| &s.id).collect::<Vec<_>>(),
                "node": state.identity.id().to_string(),
                "local": true,
                "cardUrl": signing::card_url(&base, &d.id).unwrap_or_default(),
            })
        })
        .collect();
    if let Some(klp) = &state.klp {
        let peers = klp.peers().await.unwrap_or_default();
        let c = Ctx {
            state: state.clone(),
            caller: caller(None),
        };
        let mut lookups = Vec::new();
        for p in peers
            .iter()
            .filter(|p| p.state == kos_klp::HandshakeState::Admitted)
        {
            for (agent, version) in &p.services {
                let params: HashMap<String, String> = [
                    ("peer".to_owned(), p.id.clone()),
                    ("agent".to_owned(), agent.clone()),
                ]
                .into();
                let entry = json!({
                    "id": agent,
                    "version": version,
                    "node": p.id,
                    "nodeName": p.name,
                    "local": false,
                    "cardUrl": format!("{base}/a2a/peers/{}/{agent}/.well-known/agent-card.json", p.id),
                });
                let c = &c;
                lookups.push(async move {
                    let card = match target(c, &params) {
                        Ok(Target::Remote(a)) => {
                            tokio::time::timeout(Duration::from_secs(5), a.verified_card())
                                .await
                                .unwrap_or_else(|_| {
                                    Err(A2aError::PeerUnavailable {
                                        peer: String::new(),
                                        why: "timed out".into(),
                                    })
                                })
                        }
                        Ok(Target::Local { .. }) => Err(A2aError::Internal),
                        Err(e) => Err(e),
                    };
                    let mut entry = entry;
                    match card {
                        Ok(card) => entry["card"] = card,
                        Err(e) => entry["cardError"] = json!(e.to_string()),
                    }
                    entry
                });
            }
        }
        // At most 16 card fetches at once (each a KLP call, bounded by 5 s).
        let fetched: Vec<Value> = futures::stream::iter(lookups).buffered(16).collect().await;
        agents.extend(fetched);
    }
    super::json(StatusCode::OK, json!({"agents": agents}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        let mut h = HeaderMap::new();
        assert!(matches!(
            check_version(&h, None),
            Err(A2aError::VersionNotSupported { ref requested, .. }) if requested == "0.3"
        ));
        assert!(check_version(&h, Some("A2A-Version=1.0")).is_ok());
        h.insert("A2A-Version", HeaderValue::from_static("1.0"));
        assert!(check_version(&h, None).is_ok());
        h.insert("A2A-Version", HeaderValue::from_static("2.0"));
        assert!(check_version(&h, Some("A2A-Version=1.0")).is_err());
    }

    #[test]
    fn content_types() {
        let mut h = HeaderMap::new();
        assert!(check_content_type(&h).is_ok());
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/a2a+json; charset=utf-8"),
        );
        assert!(check_content_type(&h).is_ok());
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert!(check_content_type(&h).is_err());
    }

    #[test]
    fn list_queries() {
        let q = list_query("contextId=c1&status=TASK_STATE_WORKING&pageSize=2&A2A-Version=1.0")
            .unwrap_or_default();
        assert_eq!(
            (q.context_id.as_str(), q.status, q.page_size),
            ("c1", Some(TaskState::Working), Some(2))
        );
        assert!(list_query("pageSize=x").is_err());
        assert!(list_query("bogus=1").is_err());
        assert!(list_query("status=TASK_STATE_NOPE").is_err());
    }

    #[test]
    fn actions_split_at_the_last_colon() {
        assert_eq!(split_action("abc:cancel"), ("abc", Some("cancel")));
        assert_eq!(split_action("abc"), ("abc", None));
    }
}
