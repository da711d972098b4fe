-- 0006: the centroids of namespaces large enough to have cells (see
-- semcache_sqlite/vector_cells.py). The vec0 index gains a `cell` partition key;
-- that DDL carries the dimension, so the index is rebuilt in the new layout when
-- the file is next opened by a cache (or by `semcache migrate`), as for 0005.
-- Readable with the stock sqlite3 shell:
--   SELECT namespace, cells, trained_on FROM vector_cells;

CREATE TABLE vector_cells (
    namespace  TEXT    PRIMARY KEY,
    cells      INTEGER NOT NULL,  -- rows of the centroid matrix
    trained_on INTEGER NOT NULL,  -- entries in the namespace when they were trained
    centroids  BLOB    NOT NULL   -- float32 little-endian, cells x embedding_dim, unit rows
);
