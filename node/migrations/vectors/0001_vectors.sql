-- The embedded vector engine's own SQLite file (`vectors.db`, next to the node database).
-- Vectors are little-endian f32 blobs (unit length for cosine collections); payloads are
-- JSON objects. Point ids are u64 stored bit for bit in SQLite's signed 64-bit integer.
CREATE TABLE vector_collections (
    name TEXT PRIMARY KEY,
    dimension INTEGER NOT NULL,
    distance TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);

CREATE TABLE vector_points (
    collection TEXT NOT NULL REFERENCES vector_collections (name) ON DELETE CASCADE,
    id INTEGER NOT NULL,
    vector BLOB NOT NULL,
    payload TEXT NOT NULL,
    PRIMARY KEY (collection, id)
);
-- A rowid table, not WITHOUT ROWID: rows of 1.5 KiB and more (384 floats) are what SQLite
-- advises against for WITHOUT ROWID tables (they spill to overflow pages).
