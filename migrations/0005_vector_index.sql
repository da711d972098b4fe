-- 0005: the exact vectors move to a plain table; the vec0 table becomes a
-- bit-quantized index partitioned by namespace (see semcache_sqlite/vector_index.py).
-- The plain table is readable with the stock sqlite3 shell:
--   SELECT e.query, length(b.embedding) FROM entries e JOIN entry_embeddings b USING (id);
-- Filling it from the old vec0 table and rebuilding that table in the new layout
-- need the dimension, so semcache_sqlite/store_lifecycle.py (ensure_vector_layout)
-- does it when the file is next opened by a cache (or by `semcache migrate`).

CREATE TABLE entry_embeddings (
    id        INTEGER PRIMARY KEY,  -- entries.id
    embedding BLOB    NOT NULL      -- float32 little-endian, entries.embedding_dim values
);
