-- 0003: hit quality. Calibrated thresholds and feedback on served hits.
-- Plain tables: readable with the stock sqlite3 shell.

-- A threshold chosen by `semcache calibrate`, per namespace ('' = the whole file),
-- with where it came from. The cache uses it (per call > namespace row > file row >
-- constructor > embedder default). One row per namespace: a new calibration replaces it.
CREATE TABLE calibrations (
    namespace       TEXT    PRIMARY KEY,          -- '' = file-wide
    threshold       REAL    NOT NULL CHECK (threshold >= 0 AND threshold <= 1),
    embedding_model TEXT    NOT NULL,             -- the model the threshold was measured with
    guards          TEXT    NOT NULL DEFAULT '{}' CHECK (json_valid(guards)),  -- signals + weights
    source          TEXT    NOT NULL,             -- data set name, or 'feedback'
    target          TEXT    NOT NULL,             -- e.g. 'false_hit_rate<=0.05'
    figures         TEXT    NOT NULL DEFAULT '{}' CHECK (json_valid(figures)),
    created_at      REAL    NOT NULL              -- unix seconds (UTC)
);

-- Was a served hit right? One row per cache.feedback() call. No foreign key to
-- entries: the judgement stays useful after the entry is updated or deleted.
CREATE TABLE feedback (
    id            INTEGER PRIMARY KEY,
    entry_id      INTEGER NOT NULL,
    namespace     TEXT    NOT NULL,               -- of the matched entry
    user_id       TEXT    NOT NULL DEFAULT '',    -- of the matched entry ('' = shared)
    query         TEXT,                           -- the query asked (NULL if unknown)
    matched_query TEXT    NOT NULL,               -- the cached query that was served
    similarity    REAL,                           -- cosine similarity (NULL if unknown)
    score         REAL,                           -- the guarded score compared with the threshold
    signals       TEXT    NOT NULL DEFAULT '{}' CHECK (json_valid(signals)),
    correct       INTEGER NOT NULL CHECK (correct IN (0, 1)),
    created_at    REAL    NOT NULL
);

CREATE INDEX feedback_by_namespace ON feedback (namespace, created_at);
