//! Agents of admitted peers, called over KLP (`/a2a/peers/<peer id>/<agent>/...` on this
//! node's API).
//!
//! Every operation becomes a KLP API call ([`Klp::call`]) to the peer's own HTTP+JSON route
//! (`/a2a/<agent>/...`), which the peer runs as this node with the role its
//! `federation.klp.remote_roles` grants (`agent` or more is needed). KLP calls are
//! request-response with a 10 s limit, so:
//! - a send goes out with `returnImmediately`; a blocking send then follows the task;
//! - a stream (send or subscribe) is a long poll of the peer's task events
//!   (`GET /a2a/<agent>/tasks/<id>/events?after=<seq>&waitMs=8000`, a kOS route), each answer
//!   within KLP's answer limit; an event larger than that ends the stream with an error;
//! - a peer that goes away ends a stream with `PeerUnavailable`.
//!
//! The peer knows only this node as the tasks' owner, so this node remembers which of its
//! principals runs which remote task (`a2a_remote_tasks`) and applies the same rule as for
//! local tasks: a principal sees and cancels only its own (admins all).

use std::collections::VecDeque;
use std::time::Duration;

use futures::StreamExt;
use kos_agents::A2aError;
use kos_agents::requests::{
    ListTaskPushNotificationConfigsRequest, ListTasksRequest, ListTasksResponse,
    SendMessageRequest, TaskPushNotificationConfig,
};
use kos_agents::types::{SendMessageResponse, StreamResponse, Task};
use kos_klp::{Klp, NodeId};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::host::{Caller, EventPage, EventStream, SeqStream};
use super::store::TaskStore;

/// How long one event poll waits at the peer (under KLP's 10 s call limit).
pub const EVENT_WAIT: Duration = Duration::from_secs(8);
/// Bytes of events one poll answer may carry (under the 200 KiB of a KLP API answer).
pub const EVENTS_BUDGET: usize = 150 * 1024;
const VERSION_QUERY: &str = "A2A-Version=1.0";

/// One agent of one peer, as this node's callers see it.
#[derive(Clone)]
pub struct RemoteAgent {
    klp: Klp,
    peer: NodeId,
    peer_text: String,
    agent: String,
    store: TaskStore,
    blocking_wait: Duration,
    stop: CancellationToken,
}

impl std::fmt::Debug for RemoteAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteAgent")
            .field("peer", &self.peer_text)
            .field("agent", &self.agent)
            .finish_non_exhaustive()
    }
}

/// A value as JSON for an answer or a request (a failure is internal: our own types).
pub(crate) fn enc<T: serde::Serialize>(v: &T) -> Result<Value, A2aError> {
    serde_json::to_value(v).map_err(|_| A2aError::Internal)
}

fn dec<T: serde::de::DeserializeOwned>(v: Value, peer: &str) -> Result<T, A2aError> {
    serde_json::from_value(v).map_err(|e| {
        warn!(peer, error = %e, "a2a: a peer's agent answered something that is not A2A");
        A2aError::InvalidAgentResponse
    })
}

/// Rebuilds the A2A error a peer answered (its `google.rpc.Status` body).
fn remote_error(peer: &str, status: u16, body: &[u8]) -> A2aError {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let e = &v["error"];
    let message = e["message"]
        .as_str()
        .or_else(|| v["detail"].as_str())
        .unwrap_or("")
        .to_owned();
    let info = e["details"]
        .as_array()
        .and_then(|d| d.iter().find(|x| x["reason"].is_string()));
    if let Some(info) = info {
        let reason = info["reason"].as_str().unwrap_or("");
        let task = info["metadata"]["taskId"].as_str().unwrap_or("");
        if let Some(err) = A2aError::from_reason(reason, task, &message) {
            return err;
        }
    }
    match status {
        401 | 403 => A2aError::UnsupportedOperation(format!(
            "peer {peer} does not let this node call its agents ({message}); its federation.klp.remote_roles must grant this node `agent`"
        )),
        404 => A2aError::MethodNotFound(format!("peer {peer}: {message}")),
        400 | 422 => A2aError::invalid_params(message),
        429 => A2aError::UnsupportedOperation(format!("peer {peer} is busy: {message}")),
        _ => A2aError::PeerUnavailable {
            peer: peer.to_owned(),
            why: format!("it answered HTTP {status}"),
        },
    }
}

impl RemoteAgent {
    pub fn new(
        klp: Klp,
        peer: NodeId,
        agent: &str,
        store: TaskStore,
        blocking_wait: Duration,
        stop: CancellationToken,
    ) -> Self {
        Self {
            klp,
            peer_text: peer.to_string(),
            peer,
            agent: agent.to_owned(),
            store,
            blocking_wait,
            stop,
        }
    }

    fn path(&self, rest: &str, query: &str) -> String {
        let sep = if query.is_empty() { "" } else { "&" };
        format!("/a2a/{}{rest}?{query}{sep}{VERSION_QUERY}", self.agent)
    }

    async fn call(
        &self,
        method: &str,
        path: String,
        body: Option<Value>,
    ) -> Result<Value, A2aError> {
        let bytes = match body {
            Some(b) => serde_json::to_vec(&b).map_err(|_| A2aError::Internal)?,
            None => Vec::new(),
        };
        match self.klp.call(&self.peer, method, &path, bytes).await {
            Err(e) => Err(A2aError::PeerUnavailable {
                peer: self.peer_text.clone(),
                why: e.to_string(),
            }),
            Ok((status, body)) if (200..300).contains(&status) => {
                if body.is_empty() {
                    Ok(Value::Null)
                } else {
                    serde_json::from_slice(&body).map_err(|_| A2aError::InvalidAgentResponse)
                }
            }
            Ok((status, body)) => Err(remote_error(&self.peer_text, status, &body)),
        }
    }

    /// The task is one of this caller's remote tasks on this agent.
    async fn owned(&self, caller: &Caller, task_id: &str) -> Result<(), A2aError> {
        let known = self
            .store
            .remote_owner(&self.peer_text, task_id)
            .await
            .map_err(|e| {
                warn!(error = %e, "a2a: cannot read remote task owners");
                A2aError::Internal
            })?;
        match known {
            Some((agent, owner))
                if agent == self.agent && (caller.admin || owner == caller.owner) =>
            {
                Ok(())
            }
            _ => Err(A2aError::TaskNotFound {
                task_id: task_id.to_owned(),
            }),
        }
    }

    async fn remember(&self, caller: &Caller, task_id: &str) {
        if let Err(e) = self
            .store
            .remember_remote(&self.peer_text, task_id, &self.agent, &caller.owner)
            .await
        {
            warn!(task_id, error = %e, "a2a: cannot remember a remote task's owner");
        }
    }

    /// Sends with `returnImmediately` and remembers the task.
    async fn send_now(
        &self,
        caller: &Caller,
        mut req: SendMessageRequest,
        remember: bool,
    ) -> Result<SendMessageResponse, A2aError> {
        if let Some(t) = &req.message.task_id {
            self.owned(caller, t).await?;
        }
        req.configuration
            .get_or_insert_with(Default::default)
            .return_immediately = true;
        let v = self
            .call("POST", self.path("/message:send", ""), Some(enc(&req)?))
            .await?;
        let out: SendMessageResponse = dec(v, &self.peer_text)?;
        if remember && let SendMessageResponse::Task(t) = &out {
            self.remember(caller, &t.id).await;
        }
        Ok(out)
    }

    /// The task's events after `after`, polled from the peer (never ends by itself).
    fn poll(&self, task_id: &str, after: i64) -> SeqStream {
        struct St {
            agent: RemoteAgent,
            task_id: String,
            after: i64,
            buffer: VecDeque<(i64, StreamResponse)>,
            failed: bool,
        }
        let st = St {
            agent: self.clone(),
            task_id: task_id.to_owned(),
            after,
            buffer: VecDeque::new(),
            failed: false,
        };
        Box::pin(futures::stream::unfold(st, |mut st| async move {
            loop {
                if let Some(x) = st.buffer.pop_front() {
                    return Some((Ok(x), st));
                }
                if st.failed || st.agent.stop.is_cancelled() {
                    return None;
                }
                let query = format!("after={}&waitMs={}", st.after, EVENT_WAIT.as_millis());
                let path = st
                    .agent
                    .path(&format!("/tasks/{}/events", st.task_id), &query);
                let page = tokio::select! {
                    r = st.agent.call("GET", path, None) => r,
                    () = st.agent.stop.cancelled() => return None,
                };
                let page: EventPage = match page.and_then(|v| dec(v, &st.agent.peer_text)) {
                    Ok(p) => p,
                    Err(e) => {
                        st.failed = true;
                        return Some((Err(e), st));
                    }
                };
                for e in page.events {
                    let Some(event) = e.event else {
                        st.failed = true;
                        let err = A2aError::UnsupportedOperation(format!(
                            "event {} of task {} is larger than KLP carries; read the task with GetTask",
                            e.seq, st.task_id
                        ));
                        return Some((Err(err), st));
                    };
                    match dec::<StreamResponse>(event, &st.agent.peer_text) {
                        Ok(ev) => st.buffer.push_back((e.seq, ev)),
                        Err(err) => {
                            st.failed = true;
                            return Some((Err(err), st));
                        }
                    }
                }
                st.after = st.after.max(page.seq);
            }
        }))
    }

    async fn current_seq(&self, task_id: &str) -> Result<i64, A2aError> {
        let v = self
            .call(
                "GET",
                self.path(&format!("/tasks/{task_id}/events"), ""),
                None,
            )
            .await?;
        Ok(dec::<EventPage>(v, &self.peer_text)?.seq)
    }

    /// `SendMessage`.
    pub async fn send_message(
        &self,
        caller: &Caller,
        req: SendMessageRequest,
    ) -> Result<SendMessageResponse, A2aError> {
        let history = req.history_length()?;
        let immediately = req.return_immediately();
        let out = self.send_now(caller, req, false).await?;
        let task = match &out {
            SendMessageResponse::Task(t) if !immediately && !t.status.state.ends_turn() => {
                t.clone()
            }
            SendMessageResponse::Task(t) => {
                self.remember(caller, &t.id).await;
                return Ok(out);
            }
            SendMessageResponse::Message(_) => return Ok(out),
        };
        // The owner is written while the first poll is under way (off the critical path).
        let events = self.poll(&task.id, 0);
        let wait = tokio::time::timeout(self.blocking_wait, async {
            let mut events = events;
            while let Some(e) = events.next().await {
                match e {
                    Ok((_, e)) if super::host::ends_turn(&e) => return Ok(()),
                    Ok(_) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        });
        let ((), ended) = tokio::join!(self.remember(caller, &task.id), wait);
        if let Ok(Err(e)) = ended {
            return Err(e);
        }
        let t = self.fetch_task(&task.id, history).await?;
        Ok(SendMessageResponse::Task(t))
    }

    /// `SendStreamingMessage`.
    pub async fn send_streaming(
        &self,
        caller: &Caller,
        req: SendMessageRequest,
    ) -> Result<EventStream, A2aError> {
        let after = match &req.message.task_id {
            Some(t) => {
                self.owned(caller, t).await?;
                self.current_seq(t).await?
            }
            None => 0,
        };
        let first = match self.send_now(caller, req, true).await? {
            SendMessageResponse::Message(m) => {
                return Ok(Box::pin(futures::stream::iter([Ok(
                    StreamResponse::Message(m),
                )])));
            }
            SendMessageResponse::Task(t) => t,
        };
        let id = first.id.clone();
        let first = StreamResponse::Task(first);
        if super::host::ends_turn(&first) {
            return Ok(Box::pin(futures::stream::iter([Ok(first)])));
        }
        let rest = self.poll(&id, after).map(|r| r.map(|(_, e)| e));
        let s = futures::stream::iter([Ok(first)]).chain(rest);
        Ok(Box::pin(super::host::until_inclusive(
            s,
            super::host::ends_turn,
        )))
    }

    /// The task from the peer, without the owner check (the caller checked it).
    async fn fetch_task(&self, task_id: &str, history: Option<usize>) -> Result<Task, A2aError> {
        let q = history
            .map(|h| format!("historyLength={h}"))
            .unwrap_or_default();
        let v = self
            .call("GET", self.path(&format!("/tasks/{task_id}"), &q), None)
            .await?;
        dec(v, &self.peer_text)
    }

    /// `GetTask`.
    pub async fn get_task(
        &self,
        caller: &Caller,
        task_id: &str,
        history: Option<usize>,
    ) -> Result<Task, A2aError> {
        self.owned(caller, task_id).await?;
        self.fetch_task(task_id, history).await
    }

    /// `ListTasks`: the peer lists this node's tasks; each caller gets its own (admins all).
    /// A page may hold fewer than `pageSize` tasks after that filter.
    pub async fn list_tasks(
        &self,
        caller: &Caller,
        req: &ListTasksRequest,
    ) -> Result<ListTasksResponse, A2aError> {
        let q = req.to_query()?;
        // Built in a block: the serializer is not `Send` and must not live across an await.
        let query = {
            let mut query = url::form_urlencoded::Serializer::new(String::new());
            if let Some(c) = &q.context_id {
                query.append_pair("contextId", c);
            }
            if let Some(s) = q.status {
                query.append_pair("status", s.as_str());
            }
            query.append_pair("pageSize", &q.page_size.to_string());
            if let Some(t) = &q.page_token {
                query.append_pair("pageToken", t);
            }
            if let Some(h) = q.history_length {
                query.append_pair("historyLength", &h.to_string());
            }
            if q.include_artifacts {
                query.append_pair("includeArtifacts", "true");
            }
            if let Some(t) = q.status_timestamp_after {
                query.append_pair("statusTimestampAfter", &t.to_string());
            }
            query.finish()
        };
        let v = self.call("GET", self.path("/tasks", &query), None).await?;
        let mut page: ListTasksResponse = dec(v, &self.peer_text)?;
        if !caller.admin {
            let mut mine = Vec::with_capacity(page.tasks.len());
            for t in page.tasks {
                if self.owned(caller, &t.id).await.is_ok() {
                    mine.push(t);
                }
            }
            page.total_size = i32::try_from(mine.len()).unwrap_or(i32::MAX);
            page.tasks = mine;
        }
        Ok(page)
    }

    /// `CancelTask`.
    pub async fn cancel_task(&self, caller: &Caller, task_id: &str) -> Result<Task, A2aError> {
        self.owned(caller, task_id).await?;
        let v = self
            .call(
                "POST",
                self.path(&format!("/tasks/{task_id}:cancel"), ""),
                Some(serde_json::json!({"id": task_id})),
            )
            .await?;
        dec(v, &self.peer_text)
    }

    /// `SubscribeToTask`.
    pub async fn subscribe(&self, caller: &Caller, task_id: &str) -> Result<EventStream, A2aError> {
        self.owned(caller, task_id).await?;
        let after = self.current_seq(task_id).await?;
        let task = self.get_task(caller, task_id, None).await?;
        if task.status.state.is_terminal() {
            return Err(A2aError::UnsupportedOperation(format!(
                "task {task_id} is {} and has no more updates",
                task.status.state
            )));
        }
        let rest = self.poll(task_id, after).map(|r| r.map(|(_, e)| e));
        let s = futures::stream::iter([Ok(StreamResponse::Task(task))]).chain(rest);
        Ok(Box::pin(super::host::until_inclusive(
            s,
            super::host::is_final,
        )))
    }

    /// `CreateTaskPushNotificationConfig` (the peer delivers, with its own SSRF guard).
    pub async fn create_push(
        &self,
        caller: &Caller,
        cfg: TaskPushNotificationConfig,
    ) -> Result<Value, A2aError> {
        self.owned(caller, &cfg.task_id).await?;
        let path = self.path(
            &format!("/tasks/{}/pushNotificationConfigs", cfg.task_id),
            "",
        );
        self.call("POST", path, Some(enc(&cfg)?)).await
    }

    /// `GetTaskPushNotificationConfig`.
    pub async fn get_push(
        &self,
        caller: &Caller,
        task_id: &str,
        id: &str,
    ) -> Result<Value, A2aError> {
        self.owned(caller, task_id).await?;
        let path = self.path(
            &format!("/tasks/{task_id}/pushNotificationConfigs/{id}"),
            "",
        );
        self.call("GET", path, None).await
    }

    /// `ListTaskPushNotificationConfigs`.
    pub async fn list_push(
        &self,
        caller: &Caller,
        r: &ListTaskPushNotificationConfigsRequest,
    ) -> Result<Value, A2aError> {
        self.owned(caller, &r.task_id).await?;
        let query = {
            let mut query = url::form_urlencoded::Serializer::new(String::new());
            if r.page_size > 0 {
                query.append_pair("pageSize", &r.page_size.to_string());
            }
            if !r.page_token.is_empty() {
                query.append_pair("pageToken", &r.page_token);
            }
            query.finish()
        };
        let path = self.path(
            &format!("/tasks/{}/pushNotificationConfigs", r.task_id),
            &query,
        );
        self.call("GET", path, None).await
    }

    /// `DeleteTaskPushNotificationConfig`.
    pub async fn delete_push(
        &self,
        caller: &Caller,
        task_id: &str,
        id: &str,
    ) -> Result<(), A2aError> {
        self.owned(caller, task_id).await?;
        let path = self.path(
            &format!("/tasks/{task_id}/pushNotificationConfigs/{id}"),
            "",
        );
        self.call("DELETE", path, None).await.map(|_| ())
    }

    /// The peer's signed card of this agent, verified against the peer's MAP-verified key
    /// (the key its node id is made of; `kid` must name the peer).
    pub async fn verified_card(&self) -> Result<Value, A2aError> {
        let path = format!("/a2a/{}/.well-known/agent-card.json", self.agent);
        let card = self.call("GET", path, None).await?;
        kos_agents::signing::verify_card(&card, self.peer.public_key(), &self.peer_text).map_err(|e| {
            warn!(peer = %self.peer_text, agent = %self.agent, error = %e, "a2a: a peer's card does not verify");
            A2aError::InvalidAgentResponse
        })?;
        Ok(card)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn peer_errors_become_a2a_errors() {
        let body = json!({"error": {"code": 404, "status": "NOT_FOUND", "message": "task t was not found",
            "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "TASK_NOT_FOUND",
                         "domain": "a2a-protocol.org", "metadata": {"taskId": "t"}}]}});
        assert_eq!(
            remote_error("p", 404, body.to_string().as_bytes()),
            A2aError::TaskNotFound {
                task_id: "t".into()
            }
        );
        let forbidden =
            json!({"type": "urn:kos:problem:forbidden", "status": 403, "detail": "no role"});
        assert!(matches!(
            remote_error("p", 403, forbidden.to_string().as_bytes()),
            A2aError::UnsupportedOperation(m) if m.contains("remote_roles")
        ));
        assert!(matches!(
            remote_error("p", 502, b"x"),
            A2aError::PeerUnavailable { .. }
        ));
    }
}
