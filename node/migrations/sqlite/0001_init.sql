-- Node events: an audit trail of what happened to this node (start, stop, config changes).
CREATE TABLE node_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms BIGINT NOT NULL,
    kind TEXT NOT NULL,
    actor TEXT NOT NULL,
    snapshot_id TEXT,
    detail TEXT NOT NULL
);
CREATE INDEX node_events_kind ON node_events (kind, id);

-- Small key/value facts about the node (first start, last clean stop).
CREATE TABLE node_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated_ms BIGINT NOT NULL
);
