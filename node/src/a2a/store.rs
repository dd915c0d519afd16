//! A2A tasks in the node's database (SQLite or PostgreSQL, `migrations/*/0020_a2a.sql`).
//!
//! - `a2a_tasks`: one row per task, the [`TaskRecord`] as JSON plus the columns the queries
//!   filter on (agent, owner, context, state, status time). `seq` numbers the task's events
//!   and is the optimistic lock of a write: a save names the `seq` it read and fails with
//!   [`SaveError::Conflict`] when another writer (another replica) got there first.
//! - `a2a_task_events`: every stream event of a task in order, for subscribers that join
//!   late, replicas and remote streams (they read "after seq n").
//! - `a2a_messages`: `(agent, owner, messageId) -> task`, the idempotency of `SendMessage`.
//! - `lease_ms`: a turn runs on some replica until then; a SUBMITTED or WORKING task whose
//!   lease ran out is recovered ([`TaskStore::claim_orphans`]).
//!
//! Retention: terminal tasks are deleted with their events, messages and push configs
//! `a2a.retention` after their last change ([`TaskStore::purge`]).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use kos_agents::lifecycle::TaskRecord;
use kos_agents::requests::TaskQuery;
use kos_agents::types::{StreamResponse, TaskState};
use sqlx::Row;

use crate::store::{Db, StoreError, now_ms};

/// A task as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredTask {
    /// The agent that runs it.
    pub agent: String,
    /// The principal that created it (`<source>:<sub>`).
    pub owner: String,
    /// Its last event number.
    pub seq: i64,
    /// The task with its protocol memory.
    pub record: TaskRecord,
}

/// Why a save did not happen.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    /// Someone else changed the task since it was read.
    #[error("the task changed meanwhile")]
    Conflict,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for SaveError {
    fn from(e: sqlx::Error) -> Self {
        SaveError::Store(StoreError::from(e))
    }
}

/// What [`TaskStore::create`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// Stored; the task's events are numbered up to this.
    New(i64),
    /// The `messageId` was accepted before, for this task.
    Duplicate(String),
}

/// A task's row, encoded while the record is at hand (a save can then run after the record
/// changed again or went away).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordRow {
    pub id: String,
    state: &'static str,
    message_only: i64,
    updated_ms: i64,
    json: String,
}

impl RecordRow {
    pub fn of(record: &TaskRecord) -> Result<Self, StoreError> {
        Ok(RecordRow {
            id: record.task().id.clone(),
            state: record.state().as_str(),
            message_only: i64::from(record.is_message_only()),
            updated_ms: millis(record),
            json: to_json(record)?,
        })
    }
}

/// A page of [`TaskStore::list`].
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub records: Vec<TaskRecord>,
    /// Cursor of the next page; empty at the end.
    pub next_page_token: String,
    /// Matching tasks in all pages.
    pub total: i64,
}

/// The repository of A2A tasks. Cheap to clone.
#[derive(Debug, Clone)]
pub struct TaskStore {
    db: Db,
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(format!("cannot encode: {e}")))
}

fn millis(record: &TaskRecord) -> i64 {
    record.task().status.timestamp.map_or_else(now_ms, |t| {
        i64::try_from(t.unix_millis()).unwrap_or(i64::MAX)
    })
}

/// The page cursor: the sort key of the last task of a page.
fn encode_token(updated_ms: i64, id: &str) -> String {
    B64.encode(format!("{updated_ms}:{id}"))
}

fn decode_token(token: &str) -> Option<(i64, String)> {
    let raw = String::from_utf8(B64.decode(token).ok()?).ok()?;
    let (ms, id) = raw.split_once(':')?;
    Some((ms.parse().ok()?, id.to_owned()))
}

/// Why a page token is refused (the caller turns it into `InvalidParams`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pageToken is not a token this node issued")]
pub struct BadPageToken;

impl TaskStore {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    fn decode(
        agent: String,
        owner: String,
        seq: i64,
        record: &str,
    ) -> Result<StoredTask, StoreError> {
        let record: TaskRecord = serde_json::from_str(record)
            .map_err(|e| StoreError::Corrupt(format!("a2a task record: {e}")))?;
        Ok(StoredTask {
            agent,
            owner,
            seq,
            record,
        })
    }

    async fn insert_events(
        conn: &mut sqlx::AnyConnection,
        task_id: &str,
        first_seq: i64,
        events: &[StreamResponse],
    ) -> Result<i64, StoreError> {
        let at = now_ms();
        let mut seq = first_seq;
        for e in events {
            seq += 1;
            sqlx::query(
                "INSERT INTO a2a_task_events (task_id, seq, at_ms, event) VALUES ($1, $2, $3, $4)",
            )
            .bind(task_id)
            .bind(seq)
            .bind(at)
            .bind(to_json(e)?)
            .execute(&mut *conn)
            .await?;
        }
        Ok(seq)
    }

    /// Stores a new task with its first events, unless `(agent, owner, message_id)` was seen
    /// before. `lease_ms`: when its first turn's lease ends (0: no turn).
    pub async fn create(
        &self,
        agent: &str,
        owner: &str,
        message_id: &str,
        record: &TaskRecord,
        events: &[StreamResponse],
        lease_ms: i64,
    ) -> Result<Created, StoreError> {
        let task = record.task();
        let mut tx = self
            .db
            .pool()
            .begin()
            .await
            .map_err(|e| self.db.query_err(e))?;
        let inserted = sqlx::query(
            "INSERT INTO a2a_messages (agent, owner, message_id, task_id) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (agent, owner, message_id) DO NOTHING",
        )
        .bind(agent)
        .bind(owner)
        .bind(message_id)
        .bind(&task.id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            tx.rollback().await?;
            return match self.find_message(agent, owner, message_id).await? {
                Some(id) => Ok(Created::Duplicate(id)),
                // Deleted between the two statements (purged): a conflict the client retries.
                None => Err(StoreError::Corrupt("message id raced with a purge".into())),
            };
        }
        let seq = Self::insert_events(&mut tx, &task.id, 0, events).await?;
        let now = now_ms();
        sqlx::query(
            "INSERT INTO a2a_tasks (id, agent, owner, context_id, state, message_only, created_ms, updated_ms, seq, lease_ms, record) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(&task.id)
        .bind(agent)
        .bind(owner)
        .bind(&task.context_id)
        .bind(task.status.state.as_str())
        .bind(i64::from(record.is_message_only()))
        .bind(now)
        .bind(millis(record))
        .bind(seq)
        .bind(lease_ms)
        .bind(to_json(record)?)
        .execute(&mut *tx)
        .await?;
        tx.commit().await.map_err(|e| self.db.query_err(e))?;
        Ok(Created::New(seq))
    }

    /// Saves a changed task and its new events if nobody changed it since `seq`; returns the
    /// new `seq`. `message_id`: a client message accepted in this change (idempotency).
    pub async fn save(
        &self,
        agent: &str,
        owner: &str,
        seq: i64,
        row: &RecordRow,
        events: &[StreamResponse],
        message_id: Option<&str>,
    ) -> Result<i64, SaveError> {
        let new_seq = seq + i64::try_from(events.len()).unwrap_or(0);
        let mut tx = self
            .db
            .pool()
            .begin()
            .await
            .map_err(|e| self.db.query_err(e))?;
        let changed = sqlx::query(
            "UPDATE a2a_tasks SET state = $1, message_only = $2, updated_ms = $3, seq = $4, record = $5 \
             WHERE id = $6 AND seq = $7",
        )
        .bind(row.state)
        .bind(row.message_only)
        .bind(row.updated_ms)
        .bind(new_seq)
        .bind(row.json.as_str())
        .bind(row.id.as_str())
        .bind(seq)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed == 0 {
            tx.rollback().await?;
            return Err(SaveError::Conflict);
        }
        Self::insert_events(&mut tx, &row.id, seq, events).await?;
        if let Some(m) = message_id {
            sqlx::query(
                "INSERT INTO a2a_messages (agent, owner, message_id, task_id) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (agent, owner, message_id) DO NOTHING",
            )
            .bind(agent)
            .bind(owner)
            .bind(m)
            .bind(row.id.as_str())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await.map_err(|e| self.db.query_err(e))?;
        Ok(new_seq)
    }

    /// The task an earlier `messageId` of this principal created or continued.
    pub async fn find_message(
        &self,
        agent: &str,
        owner: &str,
        message_id: &str,
    ) -> Result<Option<String>, StoreError> {
        let row = self
            .db
            .idempotent(|| {
                sqlx::query(
                    "SELECT task_id FROM a2a_messages WHERE agent = $1 AND owner = $2 AND message_id = $3",
                )
                .bind(agent)
                .bind(owner)
                .bind(message_id)
                .fetch_optional(self.db.pool())
            })
            .await?;
        Ok(match row {
            Some(r) => Some(r.try_get(0)?),
            None => None,
        })
    }

    /// One task.
    pub async fn get(&self, task_id: &str) -> Result<Option<StoredTask>, StoreError> {
        let row = self
            .db
            .idempotent(|| {
                sqlx::query("SELECT agent, owner, seq, record FROM a2a_tasks WHERE id = $1")
                    .bind(task_id)
                    .fetch_optional(self.db.pool())
            })
            .await?;
        match row {
            None => Ok(None),
            Some(r) => {
                let record: String = r.try_get(3)?;
                Self::decode(r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, &record).map(Some)
            }
        }
    }

    /// A task's state alone (cheaper than [`TaskStore::get`]: the record is not read).
    pub async fn state(&self, task_id: &str) -> Result<Option<TaskState>, StoreError> {
        let row = self
            .db
            .idempotent(|| {
                sqlx::query("SELECT state FROM a2a_tasks WHERE id = $1")
                    .bind(task_id)
                    .fetch_optional(self.db.pool())
            })
            .await?;
        match row {
            None => Ok(None),
            Some(r) => {
                let name: String = r.try_get(0)?;
                TaskState::from_name(&name)
                    .map(Some)
                    .ok_or_else(|| StoreError::Corrupt(format!("a2a task state `{name}`")))
            }
        }
    }

    /// The task's events after `after` (at most `limit`), in order.
    pub async fn events_after(
        &self,
        task_id: &str,
        after: i64,
        limit: u32,
    ) -> Result<Vec<(i64, StreamResponse)>, StoreError> {
        let rows = self
            .db
            .idempotent(|| {
                sqlx::query(
                    "SELECT seq, event FROM a2a_task_events WHERE task_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                )
                .bind(task_id)
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(self.db.pool())
            })
            .await?;
        rows.into_iter()
            .map(|r| {
                let seq: i64 = r.try_get(0)?;
                let text: String = r.try_get(1)?;
                let event = serde_json::from_str(&text)
                    .map_err(|e| StoreError::Corrupt(format!("a2a task event {seq}: {e}")))?;
                Ok((seq, event))
            })
            .collect()
    }

    /// A page of an agent's tasks, newest status first; `owner: None` lists every owner's.
    /// Tasks answered with a direct message are not listed (the client never saw them).
    pub async fn list(
        &self,
        agent: &str,
        owner: Option<&str>,
        q: &TaskQuery,
    ) -> Result<Result<Page, BadPageToken>, StoreError> {
        let cursor = match q.page_token.as_deref() {
            None => None,
            Some(t) => match decode_token(t) {
                Some(c) => Some(c),
                None => return Ok(Err(BadPageToken)),
            },
        };
        // Filters as SQL with their binds, shared by the count and the page. The SQL text is
        // built only from the fixed fragments below; every value is a bind.
        let mut filter = String::from("agent = $1 AND message_only = 0");
        let mut binds: Vec<Bind> = vec![Bind::Text(agent.to_owned())];
        let push = |sql: &str, b: Bind, filter: &mut String, binds: &mut Vec<Bind>| {
            binds.push(b);
            filter.push_str(&sql.replace('?', &format!("${}", binds.len())));
        };
        if let Some(o) = owner {
            push(
                " AND owner = ?",
                Bind::Text(o.into()),
                &mut filter,
                &mut binds,
            );
        }
        if let Some(c) = &q.context_id {
            push(
                " AND context_id = ?",
                Bind::Text(c.clone()),
                &mut filter,
                &mut binds,
            );
        }
        if let Some(s) = q.status {
            push(
                " AND state = ?",
                Bind::Text(s.as_str().into()),
                &mut filter,
                &mut binds,
            );
        }
        if let Some(t) = q.status_timestamp_after {
            let ms = i64::try_from(t.unix_millis()).unwrap_or(i64::MAX);
            push(
                " AND updated_ms >= ?",
                Bind::Int(ms),
                &mut filter,
                &mut binds,
            );
        }
        let count_sql = format!("SELECT COUNT(*) FROM a2a_tasks WHERE {filter}");
        let mut page_filter = filter.clone();
        let mut page_binds = binds.clone();
        if let Some((ms, id)) = cursor {
            page_binds.push(Bind::Int(ms));
            let a = page_binds.len();
            page_binds.push(Bind::Int(ms));
            let b = page_binds.len();
            page_binds.push(Bind::Text(id));
            let c = page_binds.len();
            page_filter.push_str(&format!(
                " AND (updated_ms < ${a} OR (updated_ms = ${b} AND id < ${c}))"
            ));
        }
        page_binds.push(Bind::Int(i64::from(q.page_size) + 1));
        let page_sql = format!(
            "SELECT updated_ms, id, record FROM a2a_tasks WHERE {page_filter} ORDER BY updated_ms DESC, id DESC LIMIT ${}",
            page_binds.len()
        );
        let total: i64 = {
            let row = self
                .db
                .idempotent(|| {
                    bind_all(sqlx::query(sqlx::AssertSqlSafe(count_sql.as_str())), &binds)
                        .fetch_one(self.db.pool())
                })
                .await?;
            row.try_get(0)?
        };
        let rows = self
            .db
            .idempotent(|| {
                bind_all(
                    sqlx::query(sqlx::AssertSqlSafe(page_sql.as_str())),
                    &page_binds,
                )
                .fetch_all(self.db.pool())
            })
            .await?;
        let more = rows.len() > q.page_size as usize;
        let mut records = Vec::with_capacity(rows.len().min(q.page_size as usize));
        let mut last = None;
        for r in rows.into_iter().take(q.page_size as usize) {
            let ms: i64 = r.try_get(0)?;
            let id: String = r.try_get(1)?;
            let text: String = r.try_get(2)?;
            let record: TaskRecord = serde_json::from_str(&text)
                .map_err(|e| StoreError::Corrupt(format!("a2a task {id}: {e}")))?;
            records.push(record);
            last = Some((ms, id));
        }
        let next_page_token = match (more, last) {
            (true, Some((ms, id))) => encode_token(ms, &id),
            _ => String::new(),
        };
        Ok(Ok(Page {
            records,
            next_page_token,
            total,
        }))
    }

    /// Sets the lease of a task's turn (renewal, or 0 to release it).
    pub async fn set_lease(&self, task_id: &str, lease_ms: i64) -> Result<(), StoreError> {
        self.db
            .idempotent(|| {
                sqlx::query("UPDATE a2a_tasks SET lease_ms = $1 WHERE id = $2")
                    .bind(lease_ms)
                    .bind(task_id)
                    .execute(self.db.pool())
            })
            .await?;
        Ok(())
    }

    /// Takes over SUBMITTED and WORKING tasks whose lease ran out (their replica stopped or
    /// died): each is claimed with a new lease until `lease_ms`, atomically, so two replicas
    /// never claim the same task. At most `limit` per call.
    pub async fn claim_orphans(
        &self,
        lease_ms: i64,
        limit: u32,
    ) -> Result<Vec<StoredTask>, StoreError> {
        let now = now_ms();
        let rows = self
            .db
            .idempotent(|| {
                sqlx::query(
                    "SELECT id, lease_ms FROM a2a_tasks WHERE state IN ($1, $2) AND lease_ms < $3 ORDER BY updated_ms LIMIT $4",
                )
                .bind(TaskState::Submitted.as_str())
                .bind(TaskState::Working.as_str())
                .bind(now)
                .bind(i64::from(limit))
                .fetch_all(self.db.pool())
            })
            .await?;
        let mut out = Vec::new();
        for r in rows {
            let id: String = r.try_get(0)?;
            let old: i64 = r.try_get(1)?;
            let claimed =
                sqlx::query("UPDATE a2a_tasks SET lease_ms = $1 WHERE id = $2 AND lease_ms = $3")
                    .bind(lease_ms)
                    .bind(&id)
                    .bind(old)
                    .execute(self.db.pool())
                    .await
                    .map_err(|e| self.db.query_err(e))?
                    .rows_affected();
            if claimed == 1
                && let Some(t) = self.get(&id).await?
            {
                out.push(t);
            }
        }
        Ok(out)
    }

    /// Deletes terminal tasks last changed before `before_ms`, with their events, messages and
    /// push configs and notifications; returns how many tasks went.
    pub async fn purge(&self, before_ms: i64) -> Result<u64, StoreError> {
        let terminal = [
            TaskState::Completed,
            TaskState::Failed,
            TaskState::Canceled,
            TaskState::Rejected,
        ];
        let rows = sqlx::query(
            "SELECT id FROM a2a_tasks WHERE state IN ($1, $2, $3, $4) AND updated_ms < $5 LIMIT 500",
        )
        .bind(terminal[0].as_str())
        .bind(terminal[1].as_str())
        .bind(terminal[2].as_str())
        .bind(terminal[3].as_str())
        .bind(before_ms)
        .fetch_all(self.db.pool())
        .await
        .map_err(|e| self.db.query_err(e))?;
        let mut n = 0;
        for r in rows {
            let id: String = r.try_get(0)?;
            let mut tx = self
                .db
                .pool()
                .begin()
                .await
                .map_err(|e| self.db.query_err(e))?;
            for table in [
                "DELETE FROM a2a_task_events WHERE task_id = $1",
                "DELETE FROM a2a_messages WHERE task_id = $1",
                "DELETE FROM a2a_push_configs WHERE task_id = $1",
                "DELETE FROM a2a_push_outbox WHERE task_id = $1",
                "DELETE FROM a2a_tasks WHERE id = $1",
            ] {
                sqlx::query(table).bind(&id).execute(&mut *tx).await?;
            }
            tx.commit().await.map_err(|e| self.db.query_err(e))?;
            n += 1;
        }
        Ok(n)
    }
}

impl TaskStore {
    /// Remembers which principal of this node runs a task on a peer's agent.
    pub async fn remember_remote(
        &self,
        peer: &str,
        task_id: &str,
        agent: &str,
        owner: &str,
    ) -> Result<(), StoreError> {
        self.db
            .idempotent(|| {
                sqlx::query(
                    "INSERT INTO a2a_remote_tasks (peer, task_id, agent, owner, created_ms) VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (peer, task_id) DO NOTHING",
                )
                .bind(peer)
                .bind(task_id)
                .bind(agent)
                .bind(owner)
                .bind(now_ms())
                .execute(self.db.pool())
            })
            .await?;
        Ok(())
    }

    /// The principal of this node that runs a task on a peer (agent, owner).
    pub async fn remote_owner(
        &self,
        peer: &str,
        task_id: &str,
    ) -> Result<Option<(String, String)>, StoreError> {
        let row = self
            .db
            .idempotent(|| {
                sqlx::query(
                    "SELECT agent, owner FROM a2a_remote_tasks WHERE peer = $1 AND task_id = $2",
                )
                .bind(peer)
                .bind(task_id)
                .fetch_optional(self.db.pool())
            })
            .await?;
        Ok(match row {
            Some(r) => Some((r.try_get(0)?, r.try_get(1)?)),
            None => None,
        })
    }
}

#[derive(Debug, Clone)]
enum Bind {
    Text(String),
    Int(i64),
}

fn bind_all<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    binds: &'q [Bind],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    for b in binds {
        q = match b {
            Bind::Text(s) => q.bind(s.as_str()),
            Bind::Int(i) => q.bind(*i),
        };
    }
    q
}

#[cfg(test)]
mod tests {
    //! Only what is not about a backend: the repository's contract (idempotent creates, the
    //! optimistic lock, event order, listing, claims, purge) is one suite run on SQLite and
    //! PostgreSQL, `tests/tests/a2a_store.rs`.
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_garbage_is_refused() {
        let t = encode_token(1_700_000_000_123, "a-b");
        assert_eq!(decode_token(&t), Some((1_700_000_000_123, "a-b".into())));
        assert_eq!(decode_token("%%%"), None);
        assert_eq!(decode_token(&B64.encode("nocolon")), None);
    }
}
