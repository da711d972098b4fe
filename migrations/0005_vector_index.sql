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

-- Entries per namespace (entry_counts) on insert: counted by the code that inserts,
-- once per batch and namespace (store.py _NewRows.flush, admin.py import_rows), in
-- the inserting transaction. The per-row trigger cost ~13 us per entry, 40% of a
-- bulk insert (measured). Deletes and namespace moves keep their triggers.
DROP TRIGGER entries_count_insert;
