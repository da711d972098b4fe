"""Single-flight: concurrent identical misses call the LLM once (threads and asyncio tasks).

No sleeps stand in for synchronisation: the leader's LLM call is held open with an
event (the server's ``gate`` or a local one) until the test has seen every follower
waiting (``FLIGHTS.wait_for_waiters``), then released.
"""

from __future__ import annotations

import asyncio
import os
import threading
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from fakes import FakeEmbedder
from openai_server import OpenAIServer
from providers import make_chat, make_embedder

from semcache_sqlite import CacheResult, FallbackPolicy, LLMError, SemanticCache
from semcache_sqlite.singleflight import FLIGHTS

N = 20


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as running:
        yield running


@pytest.fixture(autouse=True)
def no_flights_left() -> Iterator[None]:
    yield
    assert FLIGHTS.in_flight() == 0 and FLIGHTS.waiting() == 0


def check_one_leader(results: list[CacheResult]) -> None:
    assert len({r.response for r in results}) == 1
    assert sorted(r.outcome for r in results) == ["coalesced"] * (N - 1) + ["miss"]
    assert sum(r.is_cached for r in results) == N - 1
    leader = next(r for r in results if r.outcome == "miss")
    assert all(r.entry_id == leader.entry_id for r in results)


def test_concurrent_identical_misses_in_threads_call_the_llm_once(
    tmp_path: Path, server: OpenAIServer
) -> None:
    server.state.gate = threading.Event()
    embedder = make_embedder(server)
    chat = make_chat(server)
    start = threading.Barrier(N)

    with SemanticCache(tmp_path / "t.db", embedder=embedder, llm=chat) as cache:

        def ask(_: int) -> CacheResult:
            start.wait(10)
            return cache.get_or_compute_result("what is the refund policy")

        with ThreadPoolExecutor(N) as pool:
            futures = [pool.submit(ask, i) for i in range(N)]
            assert server.state.wait_for_requests("/chat/completions", 1)
            assert FLIGHTS.wait_for_waiters(N - 1, timeout=10)
            server.state.gate.set()
            results = [f.result(timeout=10) for f in futures]
        check_one_leader(results)
        assert server.state.count("/chat/completions") == 1
        assert server.state.count("/embeddings") == 1  # followers skip the lookup too
        stats = cache.stats()
        assert (stats["misses"], stats["hits"], stats["coalesced"], stats["llm_calls"]) == (
            1,
            N - 1,
            N - 1,
            1,
        )
        assert cache.get_or_compute("what is the refund policy")[1] is True
    embedder.close()
    chat.close()


def test_concurrent_identical_misses_in_tasks_call_the_llm_once(
    tmp_path: Path, server: OpenAIServer
) -> None:
    server.state.gate = threading.Event()
    gate = server.state.gate
    embedder = make_embedder(server)
    chat = make_chat(server)

    async def main(cache: SemanticCache) -> list[CacheResult]:
        tasks = [
            asyncio.create_task(cache.aget_or_compute_result("what is the refund policy"))
            for _ in range(N)
        ]
        assert await asyncio.to_thread(server.state.wait_for_requests, "/chat/completions", 1)
        assert await asyncio.to_thread(FLIGHTS.wait_for_waiters, N - 1, 10.0)
        gate.set()
        try:
            return await asyncio.gather(*tasks)
        finally:
            await chat.aclose()
            await embedder.aclose()

    with SemanticCache(tmp_path / "a.db", embedder=embedder, llm=chat) as cache:
        results = asyncio.run(main(cache))
        check_one_leader(results)
        assert server.state.count("/chat/completions") == 1
        assert cache.stats()["coalesced"] == N - 1


def test_threads_and_tasks_share_flights(tmp_path: Path) -> None:
    entered, release = threading.Event(), threading.Event()
    calls: list[str] = []

    def llm(prompt: str) -> str:
        calls.append(prompt)
        entered.set()
        release.wait(10)
        return "shared answer"

    with (
        SemanticCache(tmp_path / "m.db", embedder=FakeEmbedder(), llm=llm) as cache,
        ThreadPoolExecutor(1) as pool,
    ):
        leader = pool.submit(cache.get_or_compute, "mixed question")
        assert entered.wait(10)  # the thread leads: it is inside the LLM call

        async def follower() -> tuple[str, bool]:
            task = asyncio.create_task(cache.aget_or_compute("mixed question"))
            assert await asyncio.to_thread(FLIGHTS.wait_for_waiters, 1, 10.0)
            release.set()
            return await task

        assert asyncio.run(follower()) == ("shared answer", True)
        assert leader.result(timeout=10) == ("shared answer", False)
    assert calls == ["mixed question"]


def test_leader_failure_is_shared_and_nothing_stored(tmp_path: Path) -> None:
    release = threading.Event()
    calls = 0

    def failing(prompt: str) -> str:
        nonlocal calls
        calls += 1
        release.wait(10)
        raise RuntimeError("upstream is down")

    with SemanticCache(tmp_path / "f.db", embedder=FakeEmbedder(), llm=failing) as cache:
        with ThreadPoolExecutor(5) as pool:
            futures = [pool.submit(cache.get_or_compute, "doomed question") for _ in range(5)]
            assert FLIGHTS.wait_for_waiters(4, timeout=10)
            release.set()
            for future in futures:
                with pytest.raises(LLMError, match="upstream is down"):
                    future.result(timeout=10)
        assert calls == 1
        assert cache.stats()["cached_entries"] == 0


def test_cancelled_leader_hands_over_to_a_follower(tmp_path: Path) -> None:
    calls: list[int] = []

    async def main(cache: SemanticCache) -> tuple[str, bool]:
        entered = asyncio.Event()
        release = asyncio.Event()

        async def llm(prompt: str) -> str:
            calls.append(len(calls))
            entered.set()
            await release.wait()
            return f"answer {len(calls)}"

        leader = asyncio.create_task(cache.aget_or_compute("cancel me", llm))
        await entered.wait()
        follower = asyncio.create_task(cache.aget_or_compute("cancel me", llm))
        assert await asyncio.to_thread(FLIGHTS.wait_for_waiters, 1, 10.0)
        entered.clear()
        leader.cancel()
        await entered.wait()  # the follower took over and called the LLM itself
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await leader
        return await follower

    with SemanticCache(tmp_path / "c.db", embedder=FakeEmbedder()) as cache:
        assert asyncio.run(main(cache)) == ("answer 2", False)
    assert calls == [0, 1]


def test_reentrant_call_from_inside_the_llm_does_not_deadlock(tmp_path: Path) -> None:
    with SemanticCache(tmp_path / "r.db", embedder=FakeEmbedder()) as cache:

        def inner(prompt: str) -> str:
            return "inner answer"

        def outer(prompt: str) -> str:
            # Same question, same scope, same thread: must not wait for itself.
            return cache.get_or_compute(prompt, inner)[0] + " (via outer)"

        assert cache.get_or_compute("nested question", outer) == (
            "inner answer (via outer)",
            False,
        )


def test_different_queries_do_not_wait_for_each_other(tmp_path: Path) -> None:
    both_inside = threading.Barrier(2)

    def llm(prompt: str) -> str:
        both_inside.wait(10)  # raises BrokenBarrierError if the calls were serialised
        return f"answer to {prompt}"

    with (
        SemanticCache(tmp_path / "d.db", embedder=FakeEmbedder(), llm=llm) as cache,
        ThreadPoolExecutor(2) as pool,
    ):
        first = pool.submit(cache.get_or_compute, "first question here")
        second = pool.submit(cache.get_or_compute, "another topic entirely")
        assert first.result(timeout=10)[1] is False
        assert second.result(timeout=10)[1] is False


@pytest.mark.parametrize(
    "policy",
    [FallbackPolicy(single_flight=False), FallbackPolicy(coalesce_timeout=0.05)],
    ids=["disabled", "coalesce-timeout"],
)
def test_followers_may_call_the_llm_themselves(tmp_path: Path, policy: FallbackPolicy) -> None:
    all_inside = threading.Barrier(3)

    def llm(prompt: str) -> str:
        all_inside.wait(10)
        return "independent answer"

    with SemanticCache(tmp_path / "p.db", embedder=FakeEmbedder(), llm=llm, policy=policy) as c:
        with ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(c.get_or_compute, "same question") for _ in range(3)]
            assert [f.result(timeout=10) for f in futures] == [("independent answer", False)] * 3
        # Across processes there is no lock either; the upsert keeps one entry.
        assert c.stats()["cached_entries"] == 1
        assert c.get(c.search("same question", k=1)[0].entry_id).version == 3


def test_reentrant_call_from_a_worker_thread_of_an_async_leader(tmp_path: Path) -> None:
    def inner(prompt: str) -> str:
        return "inner answer"

    async def main(cache: SemanticCache) -> tuple[str, bool]:
        def sync_llm(prompt: str) -> str:
            # Runs via asyncio.to_thread for the async leader: another thread, same chain.
            return cache.get_or_compute(prompt, inner)[0] + " (via sync llm)"

        return await cache.aget_or_compute("nested again", sync_llm)

    with SemanticCache(tmp_path / "w.db", embedder=FakeEmbedder()) as cache:
        assert asyncio.run(main(cache)) == ("inner answer (via sync llm)", False)


class GatedEmbedder(FakeEmbedder):
    """A FakeEmbedder whose embed() waits for ``gate`` (holds a leader in its lookup)."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.gate = threading.Event()

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        self.entered.set()
        self.gate.wait(10)
        return super().embed(texts)


def test_caches_with_other_rules_on_one_file_do_not_coalesce(tmp_path: Path) -> None:
    """A follower is handed the leader's decision, so only requests judged by the same
    rule may share a flight: a cache whose verifier refuses every semantic hit must
    not be served the hit of another cache (same file, no verifier)."""
    path = tmp_path / "rules.db"
    gated = GatedEmbedder()
    refused: list[str] = []

    def refuse(query: str, cached: str, response: str) -> bool:
        refused.append(query)
        return False

    with (
        SemanticCache(path, embedder=gated, guards=False) as plain,
        SemanticCache(path, embedder=FakeEmbedder(), guards=False, verify=refuse) as strict,
        ThreadPoolExecutor(2) as pool,
    ):
        cached = "how do i reset my password"
        plain.store(cached, gated.vector(cached), "cached answer")
        question = "how can i reset my password"
        leader = pool.submit(plain.get_or_compute_result, question)
        assert gated.entered.wait(10)  # the leader's flight is open, held in embed()
        other = pool.submit(strict.get_or_compute_result, question, lambda q: "fresh answer")
        done = threading.Thread(target=lambda: other.exception(timeout=10))
        done.start()
        while done.is_alive() and FLIGHTS.waiting() == 0:
            done.join(0.01)
        gated.gate.set()
        result = other.result(timeout=10)
        assert leader.result(timeout=10).is_cached  # its own hit (maybe the fresh entry)
        assert (result.response, result.outcome) == ("fresh answer", "miss")
        assert refused == [question]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_starts_with_no_flights() -> None:
    flight, leader = FLIGHTS.join(("fork-test",))
    assert flight is not None and leader
    try:
        with warnings.catch_warnings():  # 3.12+ warns about fork() with threads alive
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # the child: the parent's flight must not be visible here
            os._exit(0 if FLIGHTS.in_flight() == 0 else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        FLIGHTS.abandon(flight)
