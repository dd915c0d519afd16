-- Tasks this node's callers run on peers' agents (node/src/a2a/remote.rs): the peer knows
-- only this node as their owner, so this node keeps which of its principals each one is.
CREATE TABLE a2a_remote_tasks (
    peer TEXT NOT NULL,
    task_id TEXT NOT NULL,
    agent TEXT NOT NULL,
    owner TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (peer, task_id)
);
CREATE INDEX a2a_remote_tasks_owner ON a2a_remote_tasks (peer, agent, owner);
