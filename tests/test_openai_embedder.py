"""OpenAIEmbedder hardening: batching limits, retries, timeouts, checked answers, async."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fakes import bag_of_words_vector
from openai_server import OpenAIServer, RawReply
from providers import NO_RETRY, make_embedder

from semcache_sqlite import (
    EmbedderError,
    EmbedderMismatchError,
    EmbedderResponseError,
    EmbedderTimeoutError,
    InvalidInputError,
    OpenAIEmbedder,
    RetryPolicy,
    SemanticCache,
)
from semcache_sqlite.embedders import approx_tokens, plan_batches


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as running:
        yield running


def test_batches_respect_count_and_token_budget() -> None:
    texts = ["a" * 30] * 5  # 10 tokens each by the bytes/3 estimate
    assert approx_tokens("a" * 30) == 10 and approx_tokens("é") == 1
    assert [len(b) for b in plan_batches(texts, max_inputs=2, max_tokens=1000)] == [2, 2, 1]
    assert [len(b) for b in plan_batches(texts, max_inputs=100, max_tokens=25)] == [2, 2, 1]
    huge = ["x" * 300, "y", "z"]  # one text over the budget travels alone
    assert plan_batches(huge, max_inputs=100, max_tokens=50) == [["x" * 300], ["y", "z"]]
    assert plan_batches([], 10, 10) == []


def test_openai_defaults_are_the_providers_limits(server: OpenAIServer) -> None:
    embedder = make_embedder(server)
    assert [len(b) for b in embedder.batches(["t"] * 5000)] == [2048, 2048, 904]
    big = ["w" * 3_000] * 400  # 1000 tokens each: 300 fit in a 300k-token request
    assert [len(b) for b in embedder.batches(big)] == [300, 100]


def test_token_budget_splits_real_requests(server: OpenAIServer) -> None:
    embedder = make_embedder(server, max_batch_tokens=40)
    texts = [f"sentence number {i} with some words" for i in range(6)]  # ~12 tokens each
    vectors = embedder.embed(texts)
    assert vectors.shape == (6, 64)
    sizes = [len(body["input"]) for body in server.state.bodies("/embeddings")]
    assert sizes == [3, 3] and sum(sizes) == 6
    embedder.close()


def test_embeddings_without_index_come_in_input_order(server: OpenAIServer) -> None:
    server.state.omit_index = True
    texts = ["first text", "second text here", "third"]
    embedder = make_embedder(server)
    vectors = embedder.embed(texts)
    assert np.allclose(vectors, np.stack([bag_of_words_vector(t, 64) for t in texts]), atol=1e-6)


@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_retried_on_429_and_5xx(server: OpenAIServer, status: int) -> None:
    embedder = make_embedder(server)
    server.state.fail_next = [status]
    assert embedder.embed(["retry this"]).shape == (1, 64)
    assert server.state.count("/embeddings") == 2
    embedder.close()


def test_retry_gives_up_with_typed_error(server: OpenAIServer) -> None:
    embedder = make_embedder(server, retry=RetryPolicy(max_retries=1, initial_backoff=0.001))
    server.state.fail_next = [500, 500]
    with pytest.raises(EmbedderError, match="HTTP 500") as caught:
        embedder.embed(["always failing"])
    assert caught.value.status_code == 500
    assert server.state.count("/embeddings") == 2
    server.state.fail_next = [404]
    with pytest.raises(EmbedderError, match="HTTP 404") as not_found:
        embedder.embed(["no such model"])
    assert not_found.value.status_code == 404
    assert server.state.count("/embeddings") == 3  # 4xx other than 408/409/429: no retry
    embedder.close()


def test_retry_after_header_is_honoured_within_limits() -> None:
    policy = RetryPolicy(initial_backoff=1.0, max_backoff=1.0, jitter=0.0, max_retry_after=5.0)
    assert policy.backoff(0, retry_after=0.01) == 0.01
    assert policy.backoff(0, retry_after=None) == 1.0
    assert policy.backoff(3) == 1.0  # capped
    assert policy.backoff(0, retry_after=10.0) == 1.0  # beyond max_retry_after: ours


def test_hang_hits_the_timeout(server: OpenAIServer) -> None:
    server.state.delay = 30.0
    embedder = make_embedder(
        server, timeout=0.25, retry=RetryPolicy(max_retries=1, initial_backoff=0.01)
    )
    started = time.monotonic()
    with pytest.raises(EmbedderTimeoutError, match=r"0\.25 s timeout"):
        embedder.embed(["hello"])
    assert time.monotonic() - started < 5.0
    assert server.state.count("/embeddings") == 2  # a timeout is retried once, then raised
    embedder.close()


def test_returned_vector_length_is_checked(server: OpenAIServer) -> None:
    server.state.wrong_dim = 32
    embedder = make_embedder(server, retry=NO_RETRY)
    with pytest.raises(EmbedderResponseError, match="32-d vectors, this embedder is declared 64-d"):
        embedder.embed(["hello"])
    embedder.close()


def test_dimension_is_checked_against_the_file(tmp_path: Path, server: OpenAIServer) -> None:
    path = tmp_path / "dims.db"
    first = make_embedder(server, dimensions=64)
    with SemanticCache(path, embedder=first) as cache:
        cache.store("hello world", None, "hi")
    other = make_embedder(server, dimensions=32)
    with pytest.raises(EmbedderMismatchError, match="re-embed"):
        SemanticCache(path, embedder=other)
    first.close()
    other.close()


def test_aembed_uses_the_async_client(server: OpenAIServer) -> None:
    embedder = make_embedder(server, batch_size=2)

    async def main() -> np.ndarray:
        try:
            server.state.fail_next = [503]
            return await embedder.aembed(["one", "two", "three"])
        finally:
            await embedder.aclose()

    vectors = asyncio.run(main())
    assert vectors.shape == (3, 64)
    assert np.allclose(vectors, embedder.embed(["one", "two", "three"]), atol=1e-6)
    requests = server.state.requests
    assert [r.headers.get("x-stainless-async") for r in requests[:3]] == ["async:asyncio"] * 3
    embedder.close()


def test_retry_deadline_stops_further_attempts(server: OpenAIServer) -> None:
    policy = RetryPolicy(max_retries=5, initial_backoff=1.0, jitter=0.0, deadline=0.5)
    embedder = make_embedder(server, retry=policy)
    server.state.fail_next = [503]
    started = time.monotonic()
    with pytest.raises(EmbedderError, match="HTTP 503"):
        embedder.embed(["no time to wait"])
    assert time.monotonic() - started < 0.9  # the 1 s backoff would pass the deadline
    assert server.state.count("/embeddings") == 1
    embedder.close()


def test_one_embedder_serves_several_event_loops(server: OpenAIServer) -> None:
    embedder = make_embedder(server)

    async def once() -> int:
        return len(await embedder.aembed(["same text"]))

    assert asyncio.run(once()) == 1
    assert asyncio.run(once()) == 1  # a new loop gets its own async client
    embedder.close()


@pytest.mark.parametrize(
    "options",
    [{"dim": 0}, {"dimensions": 0}, {"dim": -3}, {"dim": 2.5}, {"dimensions": True}],
)
def test_dimension_arguments_are_validated(options: dict[str, object]) -> None:
    """dim=0 and dimensions=0 were taken as "not given" (1536 for text-embedding-3-small,
    with dimensions=0 still sent to the API), dim=-3 and 2.5 were accepted."""
    with pytest.raises(InvalidInputError):
        OpenAIEmbedder("text-embedding-3-small", **options)  # type: ignore[arg-type]


def test_a_server_that_refuses_base64_is_asked_for_floats(server: OpenAIServer) -> None:
    """The openai client asks for base64 unless told otherwise, and vLLM before 0.5.1 and
    some gateways answer that with 400: every embedding failed (a fail-open cache then
    never stored anything). The request is sent once more as floats, which are kept."""
    server.state.reject_base64 = True
    texts = ["first text", "second text here"]
    expected = np.stack([bag_of_words_vector(t, 64) for t in texts])
    embedder = make_embedder(server, retry=NO_RETRY)
    assert np.allclose(embedder.embed(texts), expected, atol=1e-6)
    assert np.allclose(embedder.embed(texts), expected, atol=1e-6)
    formats = [body["encoding_format"] for body in server.state.bodies("/embeddings")]
    assert formats == ["base64", "float", "float"]
    embedder.close()

    fresh = make_embedder(server, retry=NO_RETRY)

    async def main() -> np.ndarray:
        try:
            return await fresh.aembed(texts)
        finally:
            await fresh.aclose()

    assert np.allclose(asyncio.run(main()), expected, atol=1e-6)
    formats = [body["encoding_format"] for body in server.state.bodies("/embeddings")]
    assert formats[3:] == ["base64", "float"]


def test_a_400_after_base64_worked_is_not_sent_again(server: OpenAIServer) -> None:
    embedder = make_embedder(server, retry=NO_RETRY)
    assert embedder.embed(["works as base64"]).shape == (1, 64)
    server.state.fail_next = [400]
    with pytest.raises(EmbedderError, match="HTTP 400") as caught:
        embedder.embed(["a text the server rejects"])
    assert caught.value.status_code == 400
    assert server.state.count("/embeddings") == 2  # no float request after base64 worked
    embedder.close()


@pytest.mark.parametrize("sent", ["float", "base64"])
def test_either_format_is_read_whatever_was_asked(server: OpenAIServer, sent: str) -> None:
    """Servers that ignore encoding_format answer floats to base64, and the odd one
    base64 to floats (asked once base64 was refused)."""
    server.state.force_encoding = sent
    server.state.reject_base64 = True  # so floats are asked for, then `sent` comes back
    texts = ["one text", "another text"]
    embedder = make_embedder(server, retry=NO_RETRY)
    vectors = embedder.embed(texts)
    assert np.allclose(vectors, np.stack([bag_of_words_vector(t, 64) for t in texts]), atol=1e-6)
    assert server.state.bodies("/embeddings")[-1]["encoding_format"] == "float"
    embedder.close()


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (RawReply.json({"error": {"message": "model not loaded"}}), "model not loaded"),
        (RawReply.json({"object": "error", "message": "out of memory"}), "out of memory"),
        (RawReply(b"<html>Bad gateway</html>", content_type="text/html"), "not JSON: .*Bad"),
        (RawReply.json({"object": "list", "data": [], "model": "m"}), "returned 0"),
    ],
    ids=["error", "vllm-error", "html", "no-data"],
)
def test_a_200_without_embeddings_is_a_response_error_with_the_servers_reason(
    server: OpenAIServer, reply: RawReply, message: str
) -> None:
    """Gateways answer errors with HTTP 200 and {"error": ...}: that was an untyped-looking
    EmbedderError "No embedding data received" (the openai client's ValueError) or
    "'str' object has no attribute 'data'", the server's own reason lost."""
    server.state.reply = lambda path, body: reply
    embedder = make_embedder(server, retry=NO_RETRY)
    with pytest.raises(EmbedderResponseError, match=message):
        embedder.embed(["hello"])

    async def main() -> None:
        try:
            await embedder.aembed(["hello"])
        finally:
            await embedder.aclose()

    with pytest.raises(EmbedderResponseError, match=message):
        asyncio.run(main())
    embedder.close()


def test_a_server_with_a_smaller_batch_limit_gets_smaller_batches(server: OpenAIServer) -> None:
    """A server that caps a request's inputs below ``batch_size`` answers 413 (TEI's
    default --max-client-batch-size is 32): every bulk load failed until the caller
    set batch_size=. The batch is halved until it fits, and later requests start at
    the size that fitted; the vectors are those of the whole batch, in order."""
    server.state.max_inputs = 8
    embedder = make_embedder(server, batch_size=100)
    texts = [f"question number {i} about topic {i % 7}" for i in range(30)]
    vectors = embedder.embed(texts)
    expected = np.stack([bag_of_words_vector(t, 64) for t in texts])
    np.testing.assert_allclose(
        vectors, expected / np.linalg.norm(expected, axis=1)[:, None], atol=1e-6
    )
    sizes = [len(body["input"]) for body in server.state.bodies("/embeddings")]
    assert sizes[:3] == [30, 15, 7] and max(sizes[3:]) == 7 and sum(sizes[2:]) == 30
    server.state.requests.clear()
    asyncio.run(embedder.aembed(texts[:20]))
    assert max(len(body["input"]) for body in server.state.bodies("/embeddings")) <= 8
    server.state.max_inputs = 0  # a 413 for a single input is the input's: raised
    with pytest.raises(EmbedderError) as raised:
        embedder.embed(["one more question"])
    assert raised.value.status_code == 413
    embedder.close()


def test_a_413_for_one_text_too_long_keeps_the_batch_size(server: OpenAIServer) -> None:
    """TEI answers 413 to a text over its token limit too (a validation error), whatever
    the batch: halving down to that text alone raised its error, as it should, but left
    the batch size at 1, so every later request carried one input (64x the requests of
    a bulk load). Only a 413 whose halves then went through is a limit on the inputs."""

    def too_long(path: str, body: dict[str, Any]) -> RawReply | None:
        if any(len(text) > 1000 for text in body["input"]):
            return RawReply.json({"error": "input too long", "error_type": "validation"}, 413)
        return None

    server.state.reply = too_long
    embedder = make_embedder(server, batch_size=64, retry=NO_RETRY)
    texts = [f"question number {i}" for i in range(64)]
    for embed in (embedder.embed, lambda t: asyncio.run(embedder.aembed(t))):
        with pytest.raises(EmbedderError) as raised:
            embed([*texts[:40], "word " * 500, *texts[40:63]])
        assert raised.value.status_code == 413
        server.state.requests.clear()
        assert embed(texts).shape == (64, 64)
        assert [len(body["input"]) for body in server.state.bodies("/embeddings")] == [64]
    server.state.max_inputs = 16  # a real limit on the inputs is still learned, once
    server.state.requests.clear()
    embedder.embed(texts)
    embedder.embed(texts)
    sizes = [len(body["input"]) for body in server.state.bodies("/embeddings")]
    assert sizes[:3] == [64, 32, 16] and max(sizes[3:]) == 16 and sum(sizes) == 64 + 32 + 128
    embedder.close()
