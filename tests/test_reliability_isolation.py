"""Tenant isolation, property-based: random interleavings of store / lookup / update /
delete / clear over 3 namespaces, 3 users ('' = shared) and 2 contexts, checked
against a small in-memory model of what each caller may see.

Queries come from a few topics whose fake embeddings are far apart, asked either
exactly (case and spacing changed: the exact-match path) or paraphrased (one word
added: the vector path), so the model can predict every answer. Each example uses
a fresh file. ``SEMCACHE_ISOLATION_EXAMPLES`` raises the number of examples (the
default run is derandomized, so CI sees the same examples every time).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fakes import FakeEmbedder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from semcache_sqlite import SemanticCache

NAMESPACES = ("ns-a", "ns-b", "ns-c")
USERS = ("", "alice", "bob")
CONTEXTS: tuple[dict[str, str] | None, ...] = (None, {"model": "m2"})
TOPICS = (
    "reset forgotten password",
    "weather forecast tomorrow",
    "cancel premium subscription",
    "export invoices spreadsheet",
)
THRESHOLD = 0.75
EMBEDDER = FakeEmbedder(dim=256)


def ask(topic: int, variant: int) -> str:
    text = TOPICS[topic]
    return (text, f"  {text.upper()} ", f"{text} please")[variant]


def test_topics_are_far_apart_and_paraphrases_close() -> None:
    """The precondition that lets the model predict answers."""
    for i in range(len(TOPICS)):
        for j in range(len(TOPICS)):
            similarity = float(EMBEDDER.vector(ask(i, 0)) @ EMBEDDER.vector(ask(j, 2)))
            assert (similarity >= THRESHOLD + 0.05) == (i == j), (i, j, similarity)


scope = st.tuples(
    st.integers(0, len(NAMESPACES) - 1),
    st.integers(0, len(USERS) - 1),
    st.integers(0, len(CONTEXTS) - 1),
)
operation = st.one_of(
    st.tuples(st.just("store"), st.integers(0, len(TOPICS) - 1), st.integers(0, 1), scope),
    st.tuples(st.just("lookup"), st.integers(0, len(TOPICS) - 1), st.integers(0, 2), scope),
    st.tuples(st.just("update"), st.integers(0, 99)),
    st.tuples(st.just("delete"), st.integers(0, 99)),
    st.tuples(
        st.just("clear"),
        st.one_of(st.none(), st.sampled_from(NAMESPACES)),
        st.one_of(st.none(), st.sampled_from(USERS)),
    ),
)

Key = tuple[str, str, int, int]  # namespace, user, context index, topic


@dataclass
class Stored:
    id: int
    response: str


def check_lookup(
    cache: SemanticCache,
    model: dict[Key, Stored],
    topic: int,
    variant: int,
    namespace: str,
    user: str,
    ctx: int,
) -> None:
    hit = cache.lookup(
        ask(topic, variant), namespace=namespace, user_id=user, context=CONTEXTS[ctx]
    )
    visible = [(namespace, u, ctx, topic) for u in dict.fromkeys(("", user))]
    candidates = [model[k] for k in visible if k in model]
    if hit is not None:  # whatever happens: never outside the caller's scope
        assert hit.namespace == namespace and hit.user_id in ("", user)
        assert hit.entry.context_key == cache.context_key(CONTEXTS[ctx])
    if variant < 2 and user and (namespace, user, ctx, topic) in model:
        expected = [model[(namespace, user, ctx, topic)]]  # exact path: own entry first
    elif variant < 2 and (namespace, "", ctx, topic) in model:
        expected = [model[(namespace, "", ctx, topic)]]
    else:
        expected = candidates  # vector path: a tie between own and shared may go either way
    if not expected:
        assert hit is None, (hit, model)
    else:
        assert hit is not None, (namespace, user, ctx, topic, model)
        assert (hit.entry_id, hit.response) in [(s.id, s.response) for s in expected]
        assert hit.exact == (variant < 2)


def apply(cache: SemanticCache, model: dict[Key, Stored], step: int, op: tuple[Any, ...]) -> None:
    kind = op[0]
    if kind == "store":
        _, topic, variant, (n, u, c) = op
        key = (NAMESPACES[n], USERS[u], c, topic)
        response = f"answer {step}"
        entry_id = cache.store(
            ask(topic, variant), None, response,
            namespace=key[0], user_id=key[1], context=CONTEXTS[c],
        )  # fmt: skip
        if key in model:
            assert entry_id == model[key].id  # same query, same exact scope: replaced
        else:
            assert entry_id not in {s.id for s in model.values()}
        model[key] = Stored(entry_id, response)
    elif kind == "lookup":
        _, topic, variant, (n, u, c) = op
        check_lookup(cache, model, topic, variant, NAMESPACES[n], USERS[u], c)
    elif kind in ("update", "delete"):
        if not model:
            assert cache.delete(10**9) is False
            return
        key = sorted(model)[op[1] % len(model)]
        if kind == "update":
            model[key] = Stored(model[key].id, f"updated {step}")
            assert cache.update(model[key].id, response=model[key].response).version >= 2
        else:
            assert cache.delete(model.pop(key).id) is True
    else:
        _, namespace, user = op
        doomed = [
            k
            for k in model
            if (namespace is None or k[0] == namespace) and (user is None or k[1] == user)
        ]
        assert cache.clear(namespace, user_id=user) == len(doomed)
        for k in doomed:
            del model[k]


@settings(
    max_examples=int(os.environ.get("SEMCACHE_ISOLATION_EXAMPLES", "60")),
    deadline=None,
    database=None,
    derandomize="SEMCACHE_ISOLATION_EXAMPLES" not in os.environ,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.lists(operation, min_size=1, max_size=30))
def test_lookups_see_only_their_scope(ops: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory(prefix="semcache-isolation-") as tmp:
        path = Path(tmp) / "cache.db"
        with SemanticCache(path, embedder=EMBEDDER, threshold=THRESHOLD) as cache:
            model: dict[Key, Stored] = {}
            for step, op in enumerate(ops):
                apply(cache, model, step, op)
            assert cache.stats()["cached_entries"] == len(model)
            assert cache._store.orphan_counts() == (0, 0)
            # finally, every scope asks every topic once more, exactly and paraphrased
            for n, u, c, t in np.ndindex(len(NAMESPACES), len(USERS), len(CONTEXTS), 4):
                if (n + u + c + t) % 3 == 0:  # a third of them keeps it quick
                    for variant in (0, 2):
                        check_lookup(cache, model, int(t), variant, NAMESPACES[n], USERS[u], c)
