-- 0001: the first schema. Plain tables only: everything here is readable with
-- the stock sqlite3 shell, no extension needed. The vec0 vector table is created
-- by semcache_sqlite/store.py when the file is bound to an embedder, because its
-- column type carries the embedding dimension.

CREATE TABLE cache_info (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE entries (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,  -- ids are never reused
    namespace       TEXT    NOT NULL,
    user_id         TEXT    NOT NULL DEFAULT '',  -- '' = shared by every user of the namespace
    context_key     TEXT    NOT NULL DEFAULT '',  -- hash of model / system prompt / params; '' = none
    query           TEXT    NOT NULL,
    query_hash      TEXT    NOT NULL,             -- sha256 of the normalised query (exact-match path)
    response        TEXT    NOT NULL,
    created_at      REAL    NOT NULL,             -- unix seconds (UTC)
    updated_at      REAL    NOT NULL,             -- unix seconds (UTC)
    timestamp       TEXT    GENERATED ALWAYS AS
                        (strftime('%Y-%m-%dT%H:%M:%fZ', created_at, 'unixepoch')) VIRTUAL,
    embedding_model TEXT    NOT NULL,
    embedding_dim   INTEGER NOT NULL,
    version         INTEGER NOT NULL DEFAULT 1,   -- bumped by every update
    hit_count       INTEGER NOT NULL DEFAULT 0,
    last_hit_at     REAL,
    expires_at      REAL,                         -- reserved for TTLs; NULL = never
    metadata        TEXT    NOT NULL DEFAULT '{}' CHECK (json_valid(metadata))
);

CREATE INDEX entries_by_exact_query ON entries (namespace, context_key, query_hash);
CREATE INDEX entries_by_scope ON entries (namespace, user_id);

-- Hit/miss counters, persisted so stats() survives restarts.
CREATE TABLE namespace_stats (
    namespace TEXT PRIMARY KEY,
    hits      INTEGER NOT NULL DEFAULT 0,
    misses    INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at TEXT NOT NULL
);
