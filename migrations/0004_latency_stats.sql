-- 0005: latency counters per namespace, so stats() can report the mean latency of
-- hits and misses and the time the cache saved, across restarts. Updated in the
-- same transaction that counts the hit or miss (store.record_lookup).
--   hit_seconds    sum of the wall time of every hit (lookup start to answer)
--   miss_seconds   sum of the wall time of every miss, including the LLM call and
--                  the store when the cache made them (get_or_compute, stream)
--   llm_seconds    sum of the duration of every successful LLM call the cache made
--   llm_calls      how many calls llm_seconds sums over
--   embed_failures lookups whose embedding failed or missed its deadline
--   coalesced      requests answered by waiting on an identical in-flight request

ALTER TABLE namespace_stats ADD COLUMN hit_seconds REAL NOT NULL DEFAULT 0;
ALTER TABLE namespace_stats ADD COLUMN miss_seconds REAL NOT NULL DEFAULT 0;
ALTER TABLE namespace_stats ADD COLUMN llm_seconds REAL NOT NULL DEFAULT 0;
ALTER TABLE namespace_stats ADD COLUMN llm_calls INTEGER NOT NULL DEFAULT 0;
ALTER TABLE namespace_stats ADD COLUMN embed_failures INTEGER NOT NULL DEFAULT 0;
ALTER TABLE namespace_stats ADD COLUMN coalesced INTEGER NOT NULL DEFAULT 0;
