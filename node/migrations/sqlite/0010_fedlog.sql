-- Federation op-log: every valid admin-signed op this node holds (see map-protocol fedlog).
CREATE TABLE fedlog_ops (
    hash TEXT PRIMARY KEY,
    lamport BIGINT NOT NULL,
    op TEXT NOT NULL,            -- base64 of the canonical wire form
    received_ms BIGINT NOT NULL
);
CREATE INDEX fedlog_ops_lamport ON fedlog_ops (lamport);
