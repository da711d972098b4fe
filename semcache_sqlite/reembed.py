"""Re-embed a cache file with another embedding model: in batches, resumable, one switch.

The loop (the SQL is in ``store_reembed.py``):

1. Purge expired entries (no point converting them) and start, or continue,
   staging towards ``(new.model_id, new.dim)``. Staged vectors live in a plain
   table of the file, so an exception or a crash loses at most the batch in
   flight; the next call skips what is staged already.
2. Walk the entries by id, ``batch_size`` at a time: embed with the new model,
   validate, stage (one short transaction per batch, so other writers are only
   briefly blocked and lookups never are).
3. One more pass from the start picks up entries stored or changed meanwhile.
4. Switch in one transaction (anything changed since step 3 is embedded inside
   it): from then on the file belongs to the new model.
"""

from __future__ import annotations

from collections.abc import Callable

from .embedder_calls import embed_many
from .embedders import Embedder
from .errors import InvalidInputError
from .quality_store import QualityStore, describe_calibrations
from .store import Store
from .timing import logger
from .validation import FloatMatrix, check_int


def run_reembed(
    store: Store,
    new: Embedder,
    *,
    batch_size: int = 256,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Convert every entry of ``store``'s file to ``new``; return how many were converted."""
    if not isinstance(new, Embedder):
        raise InvalidInputError(f"reembed needs an Embedder, got {type(new).__name__}")
    batch_size = check_int(batch_size, "batch_size", 1, 1_000_000)  # numpy ints too
    model_id, dim = new.model_id, int(new.dim)

    def embed(queries: list[str]) -> FloatMatrix:
        return embed_many(new, queries)  # its failures typed as EmbedderErrors

    store.purge_expired()
    state = store.reembed_begin(model_id, dim)
    done, total = state.done, state.total
    if progress is not None:
        progress(done, total)
    after, passes = 0, 0
    while passes < 2:
        rows = store.reembed_pending(after, batch_size)
        if not rows:
            passes += 1  # the second pass from the start catches late writes
            after = 0
            continue
        store.reembed_save(rows, embed([query for _, query in rows]))
        after = rows[-1][0]
        done += len(rows)
        if progress is not None:
            progress(min(done, total), total)
    converted = store.reembed_switch(model_id, dim, embed)
    if progress is not None:
        progress(converted, converted)
    _note_stale_calibrations(store, model_id)
    return converted


def _note_stale_calibrations(store: Store, model_id: str) -> None:
    """Say which stored calibrations stopped applying: they were measured with the old
    model, so lookups ignore them (kept as history) until the file is calibrated again."""
    stale = QualityStore(store.db).calibrations_not_for(model_id)
    if stale:
        logger.warning(
            "%s: stored calibrations measured with another embedding model no longer apply "
            "(%s); calibrate again for %s (`semcache calibrate`)",
            store.db.path,
            describe_calibrations(stale),
            model_id,
        )
