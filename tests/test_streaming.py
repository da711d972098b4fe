"""Streaming through the cache, sync and async, over real server-sent events."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fakes import FakeEmbedder
from openai_server import OpenAIServer, RawReply
from providers import make_chat

from semcache_sqlite import LLMError, OpenAIChat, SemanticCache
from semcache_sqlite.singleflight import FLIGHTS

QUESTION = "how do I reset my password"
ANSWER = "answer to: how do I reset my password"


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as running:
        yield running


@pytest.fixture
def chat(server: OpenAIServer) -> Iterator[OpenAIChat]:
    model = make_chat(server)
    yield model
    model.close()


@pytest.fixture
def cache(tmp_path: Path, chat: OpenAIChat) -> Iterator[SemanticCache]:
    with SemanticCache(tmp_path / "s.db", embedder=FakeEmbedder(), llm=chat) as c:
        yield c


@pytest.fixture(autouse=True)
def no_flights_left() -> Iterator[None]:
    yield
    assert FLIGHTS.in_flight() == 0


def test_miss_streams_through_then_hit_replays(cache: SemanticCache, server: OpenAIServer) -> None:
    with cache.stream(QUESTION) as stream:
        assert stream.is_cached is False
        pieces = list(stream)
    assert len(pieces) > 3 and "".join(pieces) == ANSWER  # word by word, as the server sent it
    assert stream.result is not None and stream.result.stored
    assert stream.result.timings.llm > 0
    assert server.state.bodies("/chat/completions")[0]["stream"] is True
    with cache.stream("How do I reset my password?") as again:
        assert again.is_cached is True
        assert list(again) == [ANSWER]  # replayed in one piece, no request
    assert server.state.count("/chat/completions") == 1
    assert cache.get_or_compute(QUESTION) == (ANSWER, True)


def test_error_mid_stream_stores_nothing(cache: SemanticCache, server: OpenAIServer) -> None:
    server.state.stream_fail_after = 2
    received: list[str] = []
    with (
        pytest.raises(LLMError, match="ended before the model finished"),
        cache.stream(QUESTION) as s,
    ):
        received.extend(s)
    assert len(received) == 2
    assert s.result is not None and s.result.outcome == "error"
    assert cache.stats()["cached_entries"] == 0


def test_server_error_before_the_stream_stores_nothing(
    cache: SemanticCache, server: OpenAIServer
) -> None:
    server.state.fail_next = [400]
    with pytest.raises(LLMError, match="HTTP 400"):
        list(cache.stream(QUESTION))
    assert cache.stats()["cached_entries"] == 0


def test_caller_stopping_early_stores_nothing(cache: SemanticCache) -> None:
    with cache.stream(QUESTION) as stream:
        for _piece in stream:
            break
    assert stream.result is not None and stream.result.reason == "stopped_early"
    assert cache.stats()["cached_entries"] == 0
    unentered = cache.stream(QUESTION)
    assert next(unentered) == "answer "
    unentered.close()
    assert cache.stats()["cached_entries"] == 0
    assert "".join(cache.stream(QUESTION)) == ANSWER  # exhausted without `with`: stored
    assert cache.stats()["cached_entries"] == 1


def test_refused_stream_is_passed_on_not_cached(cache: SemanticCache, server: OpenAIServer) -> None:
    server.state.refusal = "I cannot help with that."
    with cache.stream(QUESTION) as stream:
        assert "".join(stream) == "I cannot help with that."
    assert stream.result is not None and stream.result.reason == "refusal"
    assert cache.stats()["cached_entries"] == 0


def test_plain_callables_stream_too(tmp_path: Path) -> None:
    def generator_llm(prompt: str) -> Iterator[str]:
        yield from ("one ", "two ", "three")

    with SemanticCache(tmp_path / "g.db", embedder=FakeEmbedder()) as cache:
        assert list(cache.stream("count to three", generator_llm)) == ["one ", "two ", "three"]
        assert list(cache.stream("plain string answer", lambda p: "whole")) == ["whole"]
        assert cache.get_or_compute("count to three") == ("one two three", True)


def test_concurrent_request_waits_for_a_streaming_leader(cache: SemanticCache) -> None:
    with cache.stream(QUESTION) as leader:
        first = next(leader)
        with ThreadPoolExecutor(1) as pool:
            follower = pool.submit(cache.get_or_compute_result, QUESTION)
            assert FLIGHTS.wait_for_waiters(1, timeout=10)
            rest = list(leader)
            result = follower.result(timeout=10)
    assert first + "".join(rest) == ANSWER
    assert (result.outcome, result.is_cached, result.response) == ("coalesced", True, ANSWER)


def test_async_stream_miss_hit_error_and_early_stop(
    tmp_path: Path, server: OpenAIServer, chat: OpenAIChat
) -> None:
    async def main() -> None:
        async with SemanticCache(tmp_path / "a.db", embedder=FakeEmbedder(), llm=chat) as cache:
            async with cache.astream(QUESTION) as stream:
                assert stream.is_cached is False
                pieces = [piece async for piece in stream]
            assert "".join(pieces) == ANSWER and len(pieces) > 3
            async with cache.astream(QUESTION) as again:
                assert [piece async for piece in again] == [ANSWER] and again.is_cached
            assert server.state.count("/chat/completions") == 1

            async with cache.astream("stop me early") as early:
                async for _piece in early:
                    break
            assert early.result is not None and early.result.reason == "stopped_early"

            server.state.stream_fail_after = 1
            with pytest.raises(LLMError):
                async with cache.astream("this one breaks") as broken:
                    async for _piece in broken:
                        pass
            assert (await cache.astats())["cached_entries"] == 1
            await chat.aclose()

    asyncio.run(main())


def test_cancelled_astream_closes_a_sync_llm_stream_whose_read_is_running(
    tmp_path: Path,
) -> None:
    """A cancelled astream cannot close a sync stream while a worker thread is inside its
    next(); the close then happens when that read returns, not only whenever the
    generator is garbage-collected (here it is kept alive, as a caller's LLM may)."""
    reading, release, closed = threading.Event(), threading.Event(), threading.Event()
    kept: list[Iterator[str]] = []

    def sync_llm(prompt: str) -> Iterator[str]:
        def pieces() -> Iterator[str]:
            try:
                yield "first "
                reading.set()
                release.wait(10)  # a network read that outlives the cancellation
                yield "second "
                yield "third"
            finally:
                closed.set()

        kept.append(pieces())
        return kept[-1]

    async def main() -> None:
        async with SemanticCache(tmp_path / "c.db", embedder=FakeEmbedder()) as cache:

            async def consume() -> None:
                async with cache.astream("cancel me mid-read", sync_llm) as stream:
                    async for _ in stream:
                        pass

            task = asyncio.create_task(consume())
            assert await asyncio.to_thread(reading.wait, 10)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert not closed.is_set()
            release.set()
            assert await asyncio.to_thread(closed.wait, 10)
            assert (await cache.astats())["cached_entries"] == 0

    asyncio.run(main())


def test_async_generator_llm_and_cancelled_stream(tmp_path: Path) -> None:
    async def main() -> None:
        started = asyncio.Event()
        never = asyncio.Event()

        async def agen_llm(prompt: str) -> AsyncIterator[str]:
            yield "first "
            started.set()
            await never.wait()
            yield "never"

        async def consume(cache: SemanticCache, query: str) -> str:
            return "".join([piece async for piece in cache.astream(query, agen_llm)])

        async with SemanticCache(tmp_path / "c.db", embedder=FakeEmbedder()) as cache:
            task = asyncio.create_task(consume(cache, "cancel this stream"))
            await started.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert FLIGHTS.in_flight() == 0  # cancelled leader released its flight
            assert (await cache.astats())["cached_entries"] == 0

            async def short(prompt: str) -> AsyncIterator[str]:
                yield "short "
                yield "answer"

            assert [p async for p in cache.astream("short one", short)] == ["short ", "answer"]
            assert await cache.aget_or_compute("short one") == ("short answer", True)

    asyncio.run(main())


def test_stream_released_when_dropped(cache: SemanticCache) -> None:
    stream = cache.stream(QUESTION)
    next(stream)
    assert FLIGHTS.in_flight() == 1
    del stream  # garbage-collected without close(): waiters are released
    assert FLIGHTS.in_flight() == 0


def test_stream_following_a_failed_leader_raises_and_stays_closed(tmp_path: Path) -> None:
    cache_entered_llm, release = threading.Event(), threading.Event()

    def failing(prompt: str) -> str:
        cache_entered_llm.set()
        release.wait(10)
        raise RuntimeError("leader broke")

    with (
        SemanticCache(tmp_path / "f.db", embedder=FakeEmbedder(), llm=failing) as cache,
        ThreadPoolExecutor(2) as pool,
    ):
        leader = pool.submit(cache.get_or_compute, QUESTION)
        assert cache_entered_llm.wait(10)
        follower = cache.stream(QUESTION)
        started = pool.submit(follower.__enter__)
        assert FLIGHTS.wait_for_waiters(1, timeout=10)
        release.set()
        with pytest.raises(LLMError, match="leader broke"):
            started.result(timeout=10)
        with pytest.raises(LLMError):
            leader.result(timeout=10)
        assert list(follower) == []  # dead after its error, not a TypeError


def test_lists_and_async_iterables_from_plain_llms(tmp_path: Path) -> None:
    class Pieces:
        """An async iterable that is not itself an iterator."""

        def __aiter__(self) -> AsyncIterator[str]:
            async def pieces() -> AsyncIterator[str]:
                yield "async "
                yield "iterable"

            return pieces()

    with SemanticCache(tmp_path / "l.db", embedder=FakeEmbedder()) as cache:
        assert list(cache.stream("a list of pieces", lambda p: ["a ", "list"])) == ["a ", "list"]

        async def main() -> list[str]:
            return [p async for p in cache.astream("an async iterable", lambda p: Pieces())]

        assert asyncio.run(main()) == ["async ", "iterable"]
        assert cache.get_or_compute("a list of pieces") == ("a list", True)
        assert cache.get_or_compute("an async iterable") == ("async iterable", True)


def test_sync_streaming_llm_from_async_code(
    tmp_path: Path, server: OpenAIServer, chat: OpenAIChat
) -> None:
    class SyncOnly:
        """Only a sync ``stream`` (no astream): read in worker threads."""

        cache_context = chat.cache_context

        def stream(self, prompt: str) -> object:
            return chat.stream(prompt)

    server.state.finish_reason = "length"  # truncated: must still be known, and not cached

    async def main(cache: SemanticCache) -> str:
        async with cache.astream(QUESTION, SyncOnly()) as stream:
            text = "".join([p async for p in stream])
        assert stream.result is not None and stream.result.reason == "truncated"
        return text

    with SemanticCache(tmp_path / "y.db", embedder=FakeEmbedder()) as cache:
        assert asyncio.run(main(cache)) == ANSWER
        assert cache.stats()["cached_entries"] == 0


@pytest.mark.parametrize(
    "returned",
    [{"choices": [{"message": {"content": "real answer"}}]}, {"a", "b"}, b"bytes", None, 42],
    ids=["dict", "set", "bytes", "None", "int"],
)
def test_llm_returning_no_stream_of_pieces_is_refused(tmp_path: Path, returned: object) -> None:
    """A raw JSON response once streamed its keys and cached "choices" as the answer."""

    async def astreamed(cache: SemanticCache) -> str:
        async with cache.astream("the answer, async", lambda p: returned) as stream:
            return "".join([piece async for piece in stream])

    with SemanticCache(tmp_path / "d.db", embedder=FakeEmbedder()) as cache:
        with pytest.raises(LLMError, match="not text") as plain:
            cache.get_or_compute("the answer, plainly", lambda p: returned)
        stream = cache.stream("the answer", lambda p: returned)
        with pytest.raises(LLMError, match="not text or an iterable of text pieces"), stream:
            list(stream)
        assert stream.result is not None and stream.result.outcome == "error"
        with pytest.raises(type(plain.value), match="not text or an iterable of text pieces"):
            asyncio.run(astreamed(cache))
        assert cache.stats()["cached_entries"] == 0


def test_a_whole_json_answer_to_a_stream_request_is_an_error_not_lost_connection(
    cache: SemanticCache, server: OpenAIServer
) -> None:
    """A server that ignores "stream": true answers one JSON body: read as events it was no
    chunk at all, reported as "connection lost?". Nothing is cached, sync and async."""
    whole = {
        "id": "chatcmpl-x",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"content": ANSWER}}],
    }
    server.state.reply = lambda path, body: RawReply.json(whole)
    with pytest.raises(LLMError, match=r"one JSON body, not events: .*does this server stream"):
        list(cache.stream(QUESTION))

    async def main() -> None:
        async with cache.astream(QUESTION) as stream:
            async for _piece in stream:
                pass

    with pytest.raises(LLMError, match="one JSON body"):
        asyncio.run(main())
    assert cache.stats()["cached_entries"] == 0


def test_only_the_first_choice_is_streamed_and_stored(tmp_path: Path, server: OpenAIServer) -> None:
    """With n=2 the two choices' deltas interleave; they were concatenated, and the mix of
    two answers streamed to the caller and stored as one."""

    def chunk(index: int, content: str, finish: str | None = None) -> dict[str, object]:
        delta = {"index": index, "delta": {"content": content}, "finish_reason": finish}
        return {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                "choices": [delta]}  # fmt: skip

    events = [chunk(0, "Paris "), chunk(1, "It is "), chunk(0, "it is."), chunk(1, "Paris.")]
    events += [chunk(0, "", "stop"), chunk(1, "", "stop")]
    server.state.reply = lambda path, body: RawReply.sse(*events)
    chat = make_chat(server, extra={"n": 2})
    with SemanticCache(tmp_path / "n.db", embedder=FakeEmbedder(), llm=chat) as cache:
        assert "".join(cache.stream("capital of France")) == "Paris it is."
        assert cache.get_or_compute("capital of France") == ("Paris it is.", True)

        async def main() -> str:
            try:
                return "".join([p async for p in cache.astream("an unrelated zebra question")])
            finally:
                await chat.aclose()

        assert asyncio.run(main()) == "Paris it is."
        assert server.state.count("/chat/completions") == 2  # both streams were misses
    chat.close()
