-- 0002: entry lifecycle: TTLs, size limits and eviction, per-namespace settings.
-- Plain tables, indexes and triggers only (readable with the stock sqlite3 shell).
-- The vec0 table gains an `expires_at` metadata column too, so expired entries are
-- filtered inside the KNN; that table's DDL carries the dimension, so it is rebuilt
-- by semcache_sqlite/store_lifecycle.py (ensure_vector_layout) when the file is
-- opened, not here.

-- Seconds an entry lives after each write (NULL = never). expires_at (already in
-- 0001) is write time + ttl; a sliding TTL moves it to hit time + ttl.
ALTER TABLE entries ADD COLUMN ttl REAL;

-- Eviction victims come off the front of one of these (one index per policy, so a
-- batch of victims is an index walk, never a sort of the whole table).
CREATE INDEX entries_by_lru ON entries (coalesce(last_hit_at, created_at));
CREATE INDEX entries_by_lfu ON entries (hit_count, created_at);
CREATE INDEX entries_by_age ON entries (created_at);
-- Expired rows, for purge() and the few deleted in passing by every write.
CREATE INDEX entries_by_expiry ON entries (expires_at) WHERE expires_at IS NOT NULL;

-- Overrides of the cache's lifecycle settings for one namespace, as a JSON object
-- with any of: ttl, sliding_ttl, max_entries, eviction, on_duplicate. A key that is
-- absent inherits the cache's setting; null means "never" / "no limit".
CREATE TABLE namespace_config (
    namespace  TEXT PRIMARY KEY,
    settings   TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(settings)),
    updated_at REAL NOT NULL
);

-- Entries per namespace, kept by triggers, so checking a limit on every write costs
-- one lookup instead of count(*) over the table.
CREATE TABLE entry_counts (
    namespace TEXT PRIMARY KEY,
    entries   INTEGER NOT NULL
) WITHOUT ROWID;

INSERT INTO entry_counts (namespace, entries)
SELECT namespace, count(*) FROM entries GROUP BY namespace;

CREATE TRIGGER entries_count_insert AFTER INSERT ON entries BEGIN
    INSERT INTO entry_counts (namespace, entries) VALUES (NEW.namespace, 1)
    ON CONFLICT (namespace) DO UPDATE SET entries = entries + 1;
END;

CREATE TRIGGER entries_count_delete AFTER DELETE ON entries BEGIN
    UPDATE entry_counts SET entries = entries - 1 WHERE namespace = OLD.namespace;
    DELETE FROM entry_counts WHERE namespace = OLD.namespace AND entries <= 0;
END;

CREATE TRIGGER entries_count_move AFTER UPDATE OF namespace ON entries
WHEN NEW.namespace IS NOT OLD.namespace BEGIN
    UPDATE entry_counts SET entries = entries - 1 WHERE namespace = OLD.namespace;
    DELETE FROM entry_counts WHERE namespace = OLD.namespace AND entries <= 0;
    INSERT INTO entry_counts (namespace, entries) VALUES (NEW.namespace, 1)
    ON CONFLICT (namespace) DO UPDATE SET entries = entries + 1;
END;
