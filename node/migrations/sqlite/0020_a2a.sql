-- A2A tasks hosted by this node (node/src/a2a/store.rs). One row per task; the record is the
-- task with its protocol memory (kos_agents::lifecycle::TaskRecord) as JSON.
CREATE TABLE a2a_tasks (
    id TEXT PRIMARY KEY,
    agent TEXT NOT NULL,
    owner TEXT NOT NULL,          -- the principal that created it: "<source>:<sub>"
    context_id TEXT NOT NULL,
    state TEXT NOT NULL,          -- TASK_STATE_*
    message_only BIGINT NOT NULL, -- 1: answered with a direct message (never shown as a task)
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,   -- the status timestamp
    seq BIGINT NOT NULL,          -- last event number (a2a_task_events.seq); optimistic lock
    lease_ms BIGINT NOT NULL,     -- a turn runs on some replica until then (renewed); 0: none
    record TEXT NOT NULL
);
CREATE INDEX a2a_tasks_owner ON a2a_tasks (agent, owner, updated_ms, id);
CREATE INDEX a2a_tasks_agent ON a2a_tasks (agent, updated_ms, id);
CREATE INDEX a2a_tasks_state ON a2a_tasks (state, lease_ms);

-- Idempotent send: a messageId is accepted once per agent and principal.
CREATE TABLE a2a_messages (
    agent TEXT NOT NULL,
    owner TEXT NOT NULL,
    message_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    PRIMARY KEY (agent, owner, message_id)
);
CREATE INDEX a2a_messages_task ON a2a_messages (task_id);

-- Every stream event of a task, numbered from 1 (resubscription, replicas, remote streams).
CREATE TABLE a2a_task_events (
    task_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    at_ms BIGINT NOT NULL,
    event TEXT NOT NULL,          -- StreamResponse JSON
    PRIMARY KEY (task_id, seq)
);

-- Push notification configs of a task.
CREATE TABLE a2a_push_configs (
    task_id TEXT NOT NULL,
    id TEXT NOT NULL,
    config TEXT NOT NULL,         -- TaskPushNotificationConfig JSON
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (task_id, id)
);

-- Push notifications not yet delivered (at-least-once; node/src/a2a/push.rs).
CREATE TABLE a2a_push_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id TEXT NOT NULL,
    config_id TEXT NOT NULL,
    body TEXT NOT NULL,           -- StreamResponse JSON
    attempts BIGINT NOT NULL,
    next_ms BIGINT NOT NULL,
    created_ms BIGINT NOT NULL
);
CREATE INDEX a2a_push_outbox_next ON a2a_push_outbox (next_ms);
