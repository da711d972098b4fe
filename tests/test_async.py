"""The async API passes the same scenarios as the sync one, with openai.AsyncOpenAI."""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
import numpy.typing as npt
import pytest
from fakes import FakeEmbedder
from openai_server import OpenAIServer
from providers import NO_RETRY, make_chat, make_embedder

from semcache_sqlite import (
    EmbedderError,
    EmbedderTimeoutError,
    FallbackPolicy,
    LLMError,
    LLMTimeoutError,
    OpenAIChat,
    OpenAIEmbedder,
    SemanticCache,
)

T = TypeVar("T")


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as running:
        yield running


def run_with(
    server: OpenAIServer,
    path: Path,
    body: Callable[[SemanticCache, OpenAIServer], Awaitable[T]],
    *,
    chat: OpenAIChat | None = None,
    embedder: OpenAIEmbedder | None = None,
    policy: FallbackPolicy | None = None,
) -> T:
    """Run ``body`` in a fresh event loop with an OpenAI-backed cache; close the clients."""
    chat = chat or make_chat(server)
    embedder = embedder or make_embedder(server)

    async def main() -> T:
        async with SemanticCache(path, embedder=embedder, llm=chat, policy=policy) as cache:
            try:
                return await body(cache, server)
            finally:
                await chat.aclose()
                await embedder.aclose()

    return asyncio.run(main())


def chats(server: OpenAIServer) -> int:
    return server.state.count("/chat/completions")


def test_miss_makes_one_request_and_paraphrase_hit_makes_none(
    tmp_path: Path, server: OpenAIServer
) -> None:
    async def body(cache: SemanticCache, server: OpenAIServer) -> None:
        assert await cache.aget_or_compute("what is the refund policy") == (
            "answer to: what is the refund policy",
            False,
        )
        assert chats(server) == 1
        hit = await cache.aget_or_compute_result("What is the refund policy, please?")
        assert (hit.outcome, hit.is_cached, chats(server)) == ("hit", True, 1)
        assert hit.similarity is not None and 0.8 <= hit.similarity < 1.0

    run_with(server, tmp_path / "a.db", body)
    # Both providers went through the async client.
    assert {r.headers.get("x-stainless-async") for r in server.state.requests} == {"async:asyncio"}


def test_changed_system_prompt_or_model_misses(tmp_path: Path, server: OpenAIServer) -> None:
    async def body(cache: SemanticCache, server: OpenAIServer) -> None:
        assert (await cache.aget_or_compute("say hello"))[1] is False
        assert (await cache.aget_or_compute("say hello"))[1] is True
        for changed in (make_chat(server, system_prompt="Be rude."), make_chat(server, model="m2")):
            assert (await cache.aget_or_compute("say hello", changed))[1] is False
            assert (await cache.aget_or_compute("say hello", changed))[1] is True
            await changed.aclose()
        assert chats(server) == 3

    run_with(server, tmp_path / "c.db", body)


def test_500_then_success_is_retried_for_embedder_and_chat(
    tmp_path: Path, server: OpenAIServer
) -> None:
    async def body(cache: SemanticCache, server: OpenAIServer) -> None:
        server.state.fail_path = "/embeddings"
        server.state.fail_next = [500]
        first = await cache.aget_or_compute_result("retry the embedder")
        assert first.stored and server.state.count("/embeddings") == 2
        server.state.fail_path = "/chat/completions"
        server.state.fail_next = [500]
        second = await cache.aget_or_compute_result("retry the chat model")
        assert second.stored and chats(server) == 3

    run_with(server, tmp_path / "r.db", body)


def test_hang_hits_the_timeout(tmp_path: Path, server: OpenAIServer) -> None:
    server.state.delay, server.state.delay_path = 30.0, "/chat/completions"
    slow = make_chat(server, timeout=0.3, retry=NO_RETRY)

    async def body(cache: SemanticCache, server: OpenAIServer) -> None:
        started = time.monotonic()
        with pytest.raises(LLMTimeoutError):
            await cache.aget_or_compute("are you there")
        assert time.monotonic() - started < 5.0
        assert (await cache.astats())["cached_entries"] == 0

    run_with(server, tmp_path / "h.db", body, chat=slow)


def test_embedder_hang_fails_open(tmp_path: Path, server: OpenAIServer) -> None:
    server.state.delay, server.state.delay_path = 30.0, "/embeddings"
    slow = make_embedder(server, timeout=0.3, retry=NO_RETRY)

    async def body(cache: SemanticCache, server: OpenAIServer) -> None:
        result = await cache.aget_or_compute_result("embedder hangs")
        assert (result.outcome, result.reason) == ("uncached", "embedder_failed")
        assert result.response == "answer to: embedder hangs"
        cache.policy = FallbackPolicy.strict()
        with pytest.raises(EmbedderError):
            await cache.aget_or_compute("embedder hangs")
        assert (await cache.astats())["embed_failures"] == 2

    run_with(server, tmp_path / "e.db", body, embedder=slow)


def test_failing_llm_stores_nothing(tmp_path: Path, server: OpenAIServer) -> None:
    async def body(cache: SemanticCache, server: OpenAIServer) -> None:
        server.state.fail_path = "/chat/completions"
        server.state.fail_next = [400]
        with pytest.raises(LLMError) as caught:
            await cache.aget_or_compute("rejected question")
        assert caught.value.status_code == 400
        with pytest.raises(LLMError, match="broken"):
            await cache.aget_or_compute("another question", _broken_async_llm)
        assert (await cache.astats())["cached_entries"] == 0

    run_with(server, tmp_path / "f.db", body)


async def _broken_async_llm(prompt: str) -> str:
    raise RuntimeError("broken")


def test_plain_async_and_sync_callables(tmp_path: Path) -> None:
    async def async_llm(prompt: str) -> str:
        await asyncio.sleep(0)
        return f"async: {prompt}"

    async def main() -> None:
        loop_is_free = asyncio.Event()
        seen_free = threading.Event()

        def blocking_llm(prompt: str) -> str:
            # Runs in a worker thread: it can wait for the loop to do other work.
            assert seen_free.wait(5), "the event loop was blocked by a sync LLM"
            return f"sync: {prompt}"

        async def other_work() -> None:
            loop_is_free.set()
            seen_free.set()

        async with SemanticCache(tmp_path / "p.db", embedder=FakeEmbedder()) as cache:
            assert await cache.aget_or_compute("first question", async_llm) == (
                "async: first question",
                False,
            )
            results = await asyncio.gather(
                cache.aget_or_compute("second question", blocking_llm), other_work()
            )
            assert results[0] == ("sync: second question", False)
            assert loop_is_free.is_set()

    asyncio.run(main())


def test_lookups_run_no_sql_on_the_event_loop_thread(tmp_path: Path) -> None:
    """alookup / aget_or_compute (hit, miss, the exact path) read the file only in worker
    threads: the loop's thread never opens a connection (it read the calibrations)."""
    opened: list[SemanticCache] = []
    opener = threading.Thread(
        target=lambda: opened.append(
            SemanticCache(tmp_path / "loop.db", embedder=FakeEmbedder(), guards=False)
        )
    )
    opener.start()
    opener.join()
    cache = opened[0]

    async def llm(prompt: str) -> str:
        return f"answer to {prompt}"

    async def main() -> None:
        assert await cache.alookup("alpha beta gamma") is None
        assert await cache.aget_or_compute("alpha beta gamma", llm) == (
            "answer to alpha beta gamma",
            False,
        )
        assert (await cache.aget_or_compute("Alpha beta gamma", llm))[1]  # the exact path
        found = await cache.alookup("alpha beta gamma delta")  # the similar path
        assert found is not None and found.response == "answer to alpha beta gamma"

    try:
        asyncio.run(main())
        assert getattr(cache._db._local, "state", None) is None  # this (the loop's) thread
    finally:
        cache.close()


def test_async_io_methods(tmp_path: Path) -> None:
    embedder = FakeEmbedder()

    async def main() -> None:
        async with SemanticCache(tmp_path / "io.db", embedder=embedder, threshold=0.8) as cache:
            first = await cache.astore("alpha beta gamma", None, "one")
            ids = await cache.astore_many(["delta epsilon", "zeta eta"], ["two", "three"])
            assert len(ids) == 2
            hit = await cache.alookup("alpha beta gamma delta")
            assert hit is not None and hit.entry_id == first and hit.timings.total > 0
            assert await cache.alookup("nothing like it") is None
            found = await cache.afind_similar(embedder.vector("zeta eta"))
            assert found is not None and found[0] == "three"
            assert [r.response for r in await cache.asearch("delta epsilon", k=1)] == ["two"]
            assert (await cache.aupdate(first, response="uno")).version == 2
            assert (await cache.aget(first)).response == "uno"
            assert await cache.adelete(first) is True
            assert await cache.aclear() == 2
            stats = await cache.astats()
            assert (stats["hits"], stats["misses"], stats["cached_entries"]) == (2, 1, 0)

    asyncio.run(main())


def test_async_embed_deadline_with_a_sync_embedder(tmp_path: Path) -> None:
    release = threading.Event()

    class Stuck(FakeEmbedder):
        def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
            release.wait(10)
            return super().embed(texts)

    async def main() -> None:
        policy = FallbackPolicy(embed_timeout=0.2)
        async with SemanticCache(
            tmp_path / "d.db", embedder=Stuck(), llm=lambda q: "fallback", policy=policy
        ) as cache:
            result = await cache.aget_or_compute_result("stuck embedding")
            release.set()
            assert (result.response, result.reason) == ("fallback", "embedder_failed")

    asyncio.run(main())


def test_embedders_own_timeout_keeps_its_message(tmp_path: Path) -> None:
    """An embedder's own TimeoutError (socket.timeout) is not our deadline: with none set
    it used to give "unsupported format string passed to NoneType.__format__"."""

    class TimingOut(FakeEmbedder):
        def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
            raise TimeoutError("read timed out")

    class AsyncTimingOut(FakeEmbedder):
        async def aembed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
            raise TimeoutError("read timed out")

    async def main(embedder: FakeEmbedder, policy: FallbackPolicy) -> None:
        async with SemanticCache(
            tmp_path / "t.db", embedder=embedder, llm=lambda q: "fallback", policy=policy
        ) as cache:
            for call in (cache.aget_or_compute("a question"), cache.alookup("a question")):
                with pytest.raises(EmbedderTimeoutError) as caught:
                    await call
                assert str(caught.value) == "the embedder timed out: read timed out"
                assert isinstance(caught.value.__cause__, TimeoutError)

    for embedder in (TimingOut(), AsyncTimingOut()):
        for policy in (FallbackPolicy.strict(), FallbackPolicy.strict(embed_timeout=30)):
            asyncio.run(main(embedder, policy))


def test_every_io_method_has_an_async_twin_with_the_same_parameters() -> None:
    """``a`` + name for every public method but the pure ``context_key``; parameters equal
    (name, kind, default) besides self, so a new parameter cannot be forgotten in a twin."""

    def parameters(method: Callable[..., object]) -> list[tuple[str, object, object]]:
        params = list(inspect.signature(method).parameters.values())[1:]
        return [(p.name, p.kind, p.default) for p in params]

    methods = [
        name
        for name, _ in inspect.getmembers(SemanticCache, inspect.isfunction)
        if not name.startswith("_")
        and not (name.startswith("a") and hasattr(SemanticCache, name[1:]))
    ]
    assert {"forget_similar", "reembed", "search_vector", "update"} <= set(methods)
    missing = [m for m in methods if not hasattr(SemanticCache, "a" + m)]
    assert missing == ["context_key"]  # no I/O: nothing to wait for
    for name in methods:
        if name != "context_key":
            twin = getattr(SemanticCache, "a" + name)
            assert parameters(twin) == parameters(getattr(SemanticCache, name)), name


def test_async_lifecycle_twins(tmp_path: Path) -> None:
    embedder = FakeEmbedder()
    clock = [1_000.0]

    async def main() -> None:
        async with SemanticCache(
            tmp_path / "l.db", embedder=embedder, threshold=0.8, clock=lambda: clock[0]
        ) as cache:
            first = await cache.astore("alpha beta gamma", None, "one", ttl=10)
            again = await cache.astore("alpha beta gamma", None, "uno", on_duplicate="keep")
            assert again == first and (await cache.aget(first)).response == "one"
            await cache.astore_many(["delta epsilon", "zeta eta"], ["two", "three"], ttl=None)
            moved = await cache.aupdate(first, query="theta iota kappa", ttl=100)
            assert moved.query == "theta iota kappa"
            found = await cache.asearch_vector(embedder.vector("theta iota kappa"), 1)
            assert [r.entry_id for r in found] == [first]
            assert await cache.aforget_similar("delta epsilon", min_similarity=0.99) == 1
            policy = await cache.aconfigure_namespace("default", max_entries=10)
            assert policy.max_entries == 10
            assert (await cache.anamespace_policy()).max_entries == 10
            clock[0] += 200
            assert await cache.apurge() == 1  # the updated entry's 100 s are over
            assert await cache.adelete_older_than(0) == 1
            assert await cache.areembed(FakeEmbedder(32)) == 0
            assert (await cache.astats())["embedding_dim"] == 32
            assert await cache.areembed_status() is None
            assert await cache.acancel_reembed() is False
            assert (await cache.avacuum())["bytes_after"] > 0

    asyncio.run(main())
