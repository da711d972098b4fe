"""OpenAIChat and the LLM fallback, driving the real openai client against a local server."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from fakes import FakeEmbedder
from openai_server import OpenAIServer, RawReply
from providers import NO_RETRY, make_chat, make_embedder

from semcache_sqlite import (
    CacheResult,
    Completion,
    EmbedderError,
    EmbedderTimeoutError,
    FallbackPolicy,
    InvalidInputError,
    LLMError,
    LLMRefusalError,
    LLMTimeoutError,
    OpenAIChat,
    SemanticCache,
    conversation_text,
)


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as running:
        yield running


@pytest.fixture
def cache(tmp_path: Path, server: OpenAIServer) -> Iterator[SemanticCache]:
    embedder = make_embedder(server)
    with SemanticCache(tmp_path / "llm.db", embedder=embedder, llm=make_chat(server)) as c:
        yield c
    embedder.close()


def chats(server: OpenAIServer) -> int:
    return server.state.count("/chat/completions")


def test_miss_makes_one_chat_request_and_paraphrase_hit_makes_none(
    cache: SemanticCache, server: OpenAIServer
) -> None:
    assert cache.get_or_compute("what is the refund policy") == (
        "answer to: what is the refund policy",
        False,
    )
    assert chats(server) == 1
    answer, cached = cache.get_or_compute("What is the refund policy, please?")
    assert (answer, cached) == ("answer to: what is the refund policy", True)
    assert chats(server) == 1  # the paraphrase was served from the file
    assert cache.stats()["cached_entries"] == 1


def test_request_carries_model_system_prompt_and_parameters(
    tmp_path: Path, server: OpenAIServer
) -> None:
    chat = make_chat(
        server,
        model="gpt-test",
        system_prompt="Be brief.",
        temperature=0.2,
        max_tokens=42,
        extra={"top_p": 0.5, "num_ctx": 4096},
    )
    with SemanticCache(tmp_path / "p.db", embedder=FakeEmbedder(), llm=chat) as cache:
        cache.get_or_compute("hello there")
    (body,) = server.state.bodies("/chat/completions")
    assert body["model"] == "gpt-test"
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello there"},
    ]
    assert (body["temperature"], body["max_tokens"]) == (0.2, 42)
    assert (body["top_p"], body["num_ctx"]) == (0.5, 4096)  # extra fields go in the body
    assert "stream" not in body


@pytest.mark.parametrize(
    "change",
    [
        {"system_prompt": "Answer in French."},
        {"model": "other-model"},
        {"temperature": 1.0},
        {"max_tokens": 7},
        {"extra": {"seed": 3}},
    ],
)
def test_changed_configuration_misses(
    tmp_path: Path, server: OpenAIServer, change: dict[str, object]
) -> None:
    with SemanticCache(tmp_path / "c.db", embedder=FakeEmbedder(), llm=make_chat(server)) as cache:
        assert cache.get_or_compute("say hello")[1] is False
        assert cache.get_or_compute("say hello")[1] is True
        changed = make_chat(server, **change)
        assert cache.get_or_compute("say hello", changed)[1] is False
        assert cache.get_or_compute("say hello", changed)[1] is True
    assert chats(server) == 2


def test_chat_500_then_success_is_retried(tmp_path: Path, server: OpenAIServer) -> None:
    chat = make_chat(server)
    server.state.fail_next = [500]
    assert chat("retry me") == "answer to: retry me"
    assert chats(server) == 2
    with SemanticCache(tmp_path / "r.db", embedder=FakeEmbedder(), llm=chat) as cache:
        server.state.fail_next = [503, 429]
        result = cache.get_or_compute_result("and me too please")
        assert result.stored and result.response == "answer to: and me too please"
    assert chats(server) == 5
    chat.close()


def test_chat_hang_hits_the_timeout(cache: SemanticCache, server: OpenAIServer) -> None:
    server.state.delay, server.state.delay_path = 30.0, "/chat/completions"
    slow = make_chat(server, timeout=0.3, retry=NO_RETRY)
    started = time.monotonic()
    with pytest.raises(LLMTimeoutError, match=r"0\.3 s timeout") as caught:
        cache.get_or_compute("will this ever answer", slow)
    assert time.monotonic() - started < 5.0
    assert isinstance(caught.value, TimeoutError) and isinstance(caught.value, LLMError)
    assert cache.stats()["cached_entries"] == 0


def test_failing_llm_stores_nothing(cache: SemanticCache, server: OpenAIServer) -> None:
    server.state.fail_path = "/chat/completions"
    server.state.fail_next = [400]
    with pytest.raises(LLMError, match="HTTP 400: scripted 400") as bad_request:
        cache.get_or_compute("a question the server rejects")
    assert bad_request.value.status_code == 400
    assert chats(server) == 1  # 400 is not retried
    server.state.fail_next = [500, 500, 500]
    with pytest.raises(LLMError) as server_error:
        cache.get_or_compute("a question the server cannot answer")
    assert server_error.value.status_code == 500
    assert chats(server) == 4  # 1 + 2 retries
    stats = cache.stats()
    assert stats["cached_entries"] == 0 and stats["misses"] == 2 and stats["llm_calls"] == 0


def test_refusals_and_truncated_answers_are_returned_not_cached(
    cache: SemanticCache, server: OpenAIServer
) -> None:
    server.state.refusal = "I can't help with that."
    result = cache.get_or_compute_result("how do I pick a lock")
    assert (result.response, result.is_cached, result.outcome) == (
        "I can't help with that.",
        False,
        "uncached",
    )
    assert result.reason == "refusal" and not result.stored
    server.state.refusal = None
    server.state.finish_reason = "length"
    truncated = cache.get_or_compute_result("write a long essay")
    assert truncated.reason == "truncated" and truncated.response == "answer to: write a long essay"
    server.state.finish_reason = "content_filter"
    filtered = cache.get_or_compute_result("something filtered")
    assert filtered.reason == "content_filter"
    assert cache.stats()["cached_entries"] == 0
    server.state.finish_reason = "stop"
    assert cache.get_or_compute("how do I pick a lock")[1] is False  # asked again: LLM again
    assert cache.stats()["cached_entries"] == 1


@pytest.mark.parametrize(
    ("finish_reason", "tool_call", "reason"),
    [
        ("tool_calls", True, "tool_call"),
        ("stop", True, "tool_call"),  # some servers say "stop" beside a tool call
        ("function_call", False, "tool_call"),
        ("abort", False, "unfinished"),  # vLLM: an aborted, partial answer
        ("error", False, "unfinished"),  # OpenRouter: failed mid-answer
    ],
)
def test_answers_that_are_not_final_are_returned_not_cached(
    cache: SemanticCache, server: OpenAIServer, finish_reason: str, tool_call: bool, reason: str
) -> None:
    server.state.answer = lambda messages: "Let me look that up for you."
    server.state.finish_reason, server.state.tool_call = finish_reason, tool_call
    result = cache.get_or_compute_result("where is my order")
    assert (result.response, result.is_cached, result.reason) == (
        "Let me look that up for you.",
        False,
        reason,
    )
    with cache.stream("where is my parcel") as stream:
        assert "".join(stream) == "Let me look that up for you."
    assert stream.result is not None and stream.result.reason == reason
    assert cache.stats()["cached_entries"] == 0
    server.state.finish_reason, server.state.tool_call = "stop", False
    assert cache.get_or_compute_result("where is my order").stored


@pytest.mark.parametrize(
    ("finish_reason", "reason"),
    [
        ("STOP", None),  # Gemini's, passed through by gateways
        ("complete", None),
        ("eos", None),
        ("MAX_TOKENS", "truncated"),
        ("model_length", "truncated"),
        ("SAFETY", "unfinished"),
    ],
)
def test_finish_reasons_of_other_servers(finish_reason: str, reason: str | None) -> None:
    answer = Completion("an answer", finish_reason=finish_reason)
    assert answer.uncacheable_reason() == reason
    if reason == "truncated":
        assert answer.uncacheable_reason(cache_truncated=True) is None


def test_llm_errors_chain_the_servers_error(cache: SemanticCache, server: OpenAIServer) -> None:
    import openai

    server.state.fail_next, server.state.fail_path = [401, 401], "/chat/completions"
    with pytest.raises(LLMError) as caught:
        cache.get_or_compute("who am I")
    assert isinstance(caught.value.__cause__, openai.AuthenticationError)
    with pytest.raises(LLMError) as streamed, cache.stream("who are you"):
        pass
    assert isinstance(streamed.value.__cause__, openai.AuthenticationError)


def test_an_llms_own_timeout_is_an_llm_timeout_error(tmp_path: Path) -> None:
    def hung(prompt: str) -> str:
        raise TimeoutError("upstream read timed out")

    with SemanticCache(tmp_path / "t.db", embedder=FakeEmbedder(), llm=hung) as cache:
        with pytest.raises(LLMTimeoutError, match="upstream read timed out") as caught:
            cache.get_or_compute("a slow question")
        assert isinstance(caught.value.__cause__, TimeoutError)
        with pytest.raises(LLMTimeoutError), cache.stream("a slow stream"):
            pass
        assert cache.stats()["cached_entries"] == 0


def test_timeout_applies_to_a_client_passed_in(server: OpenAIServer) -> None:
    import openai

    server.state.delay, server.state.delay_path = 5.0, "/chat/completions"
    client = openai.OpenAI(base_url=server.base_url, api_key="test-key", timeout=30.0)
    chat = make_chat(server, client=client, timeout=0.3, retry=NO_RETRY)
    with pytest.raises(LLMTimeoutError, match=r"0\.3 s"):
        chat.complete("hello")


@pytest.mark.parametrize("timeout", [None, 0, -1, float("nan"), float("inf"), "30", True])
def test_a_timeout_that_is_not_a_positive_number_is_refused(
    server: OpenAIServer, timeout: object
) -> None:
    """float(timeout) let NaN, 0 and negative timeouts through and made None a TypeError."""
    for make in (make_chat, make_embedder):
        with pytest.raises(InvalidInputError, match="timeout must be a positive number"):
            make(server, timeout=timeout)
    assert make_chat(server, timeout=np.float32(2.5)).complete("hello")  # numpy numbers too


def test_empty_refusal_raises_and_truncated_can_be_cached(
    tmp_path: Path, server: OpenAIServer
) -> None:
    server.state.answer = lambda messages: ""
    server.state.finish_reason = "content_filter"
    with SemanticCache(tmp_path / "r.db", embedder=FakeEmbedder(), llm=make_chat(server)) as cache:
        with pytest.raises(LLMRefusalError):
            cache.get_or_compute("filtered to nothing")
        server.state.finish_reason = "stop"
        with pytest.raises(LLMError, match="no text"):
            cache.get_or_compute("an empty answer")
    server.state.answer = lambda messages: "cut short"
    server.state.finish_reason = "length"
    policy = FallbackPolicy(cache_truncated=True)
    with SemanticCache(
        tmp_path / "t.db", embedder=FakeEmbedder(), llm=make_chat(server), policy=policy
    ) as cache:
        assert cache.get_or_compute_result("long answer please").stored


def test_should_cache_veto(tmp_path: Path) -> None:
    policy = FallbackPolicy(should_cache=lambda text: not text.startswith("Sorry"))
    with SemanticCache(
        tmp_path / "v.db", embedder=FakeEmbedder(), policy=policy, llm=lambda q: "Sorry, no."
    ) as cache:
        result = cache.get_or_compute_result("anything at all")
        assert (result.outcome, result.reason, result.response) == (
            "uncached",
            "should_cache",
            "Sorry, no.",
        )
        assert cache.stats()["cached_entries"] == 0


def test_should_cache_that_raises_returns_the_answer_uncached(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug in the user's hook must not throw away the paid-for answer."""

    def broken(text: str) -> bool:
        raise RuntimeError("hook bug")

    policy = FallbackPolicy(should_cache=broken)
    events: list[CacheResult] = []
    with SemanticCache(
        tmp_path / "h.db",
        embedder=FakeEmbedder(),
        policy=policy,
        llm=lambda q: "answer",
        on_event=events.append,
    ) as cache:
        assert cache.get_or_compute("a question") == ("answer", False)
        assert [(e.outcome, e.reason) for e in events] == [("uncached", "should_cache_failed")]
        assert "hook bug" in caplog.text  # logged with its traceback
        stats = cache.stats()
        assert stats["cached_entries"] == 0 and stats["total_requests"] == 1


def test_plain_callable_may_return_a_completion(tmp_path: Path) -> None:
    def llm(prompt: str) -> Completion:
        return Completion("half an answ", finish_reason="length")

    with SemanticCache(tmp_path / "x.db", embedder=FakeEmbedder(), llm=llm) as cache:
        assert cache.get_or_compute("tell me everything") == ("half an answ", False)
        assert cache.stats()["cached_entries"] == 0


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ("half an emoji: \ud83d", "not valid Unicode"),  # a JSON escape cut in half
        (Completion(None, finish_reason="tool_calls"), "no text"),  # type: ignore[arg-type]
        (Completion(42), "text is int"),  # type: ignore[arg-type]
    ],
)
def test_unusable_answers_raise_llm_error_on_every_path(
    tmp_path: Path, answer: object, message: str
) -> None:
    """Sync, async and streaming reject the same bad returns alike: LLMError, nothing stored."""

    async def async_llm(prompt: str) -> object:
        return answer

    async def astreamed(cache: SemanticCache) -> str:
        async with cache.astream("asked by astream", async_llm) as stream:
            return "".join([piece async for piece in stream])

    with SemanticCache(tmp_path / "u.db", embedder=FakeEmbedder()) as cache:
        with pytest.raises(LLMError, match=message):
            cache.get_or_compute("asked in sync", lambda p: answer)
        with pytest.raises(LLMError, match=message):
            asyncio.run(cache.aget_or_compute("asked in async", async_llm))
        with pytest.raises(LLMError, match=message), cache.stream("streamed", lambda p: answer):
            pass
        with pytest.raises(LLMError, match=message):
            asyncio.run(astreamed(cache))
        stats = cache.stats()
        assert stats["cached_entries"] == 0 and stats["total_requests"] == 4


def test_conversation_is_embedded_keyed_and_sent_whole(
    tmp_path: Path, server: OpenAIServer
) -> None:
    chat = make_chat(server, system_prompt="Be brief.")
    conversation = [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Germany?"},
    ]
    with SemanticCache(tmp_path / "m.db", embedder=FakeEmbedder(), llm=chat) as cache:
        result = cache.get_or_compute_result(conversation)
        assert result.response == "answer to: And of Germany?" and result.stored
        (body,) = server.state.bodies("/chat/completions")
        assert body["messages"] == [{"role": "system", "content": "Be brief."}, *conversation]
        text = conversation_text(conversation)
        assert text.startswith("And of Germany?\n\n[earlier in the conversation]\nuser: What")
        assert cache.get(result.entry_id or 0).query == text
        assert cache.get_or_compute(conversation)[1] is True  # same conversation: exact hit
        other_history = [
            {"role": "user", "content": "What is the capital of Spain?"},
            *conversation[1:],
        ]
        assert cache.get_or_compute(other_history, threshold=1.0)[1] is False
        # One user message is keyed like the plain string.
        assert cache.get_or_compute([{"role": "user", "content": "hi there"}])[1] is False
        assert cache.get_or_compute("hi there")[1] is True
        # System messages inside the conversation scope it exactly.
        french = [{"role": "system", "content": "Answer in French."}, conversation[0]]
        german = [{"role": "system", "content": "Answer in German."}, conversation[0]]
        assert cache.get_or_compute(french)[1] is False
        assert cache.get_or_compute(german)[1] is False
        assert cache.get_or_compute(french)[1] is True


def test_api_key_base_url_and_model_from_environment(
    monkeypatch: pytest.MonkeyPatch, server: OpenAIServer
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "env-key")
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("OPENAI_MODEL", "env-model")
    chat = OpenAIChat(retry=NO_RETRY)
    try:
        assert chat("from the environment") == "answer to: from the environment"
    finally:
        chat.close()
    request = server.state.requests[-1]
    assert request.headers.get("authorization") == "Bearer env-key"
    assert request.body["model"] == "env-model"
    assert chat.cache_context["model"] == "env-model"


def test_embedder_failure_fails_open_by_default(cache: SemanticCache, server: OpenAIServer) -> None:
    # The embeddings request (base64, then once as floats); 400 is not retried.
    server.state.fail_next = [400, 400]
    result = cache.get_or_compute_result("embedder is down today")
    assert (result.response, result.is_cached, result.outcome) == (
        "answer to: embedder is down today",
        False,
        "uncached",
    )
    assert result.reason == "embedder_failed" and not result.stored
    stats = cache.stats()
    assert (stats["embed_failures"], stats["cached_entries"], stats["misses"]) == (1, 0, 1)


def test_embedder_failure_raises_in_strict_mode(tmp_path: Path, server: OpenAIServer) -> None:
    embedder = make_embedder(server)
    with SemanticCache(
        tmp_path / "s.db", embedder=embedder, llm=make_chat(server), policy=FallbackPolicy.strict()
    ) as cache:
        server.state.fail_next = [401]
        with pytest.raises(EmbedderError, match="HTTP 401") as caught:
            cache.get_or_compute("strict mode please")
        assert caught.value.status_code == 401
        assert chats(server) == 0
        assert cache.stats()["embed_failures"] == 1
    embedder.close()


def test_embedder_hang_fails_open_within_its_timeout(tmp_path: Path, server: OpenAIServer) -> None:
    server.state.delay, server.state.delay_path = 30.0, "/embeddings"
    embedder = make_embedder(server, timeout=0.3, retry=NO_RETRY)
    with SemanticCache(tmp_path / "h.db", embedder=embedder, llm=make_chat(server)) as cache:
        started = time.monotonic()
        result = cache.get_or_compute_result("is the embedder there")
        assert time.monotonic() - started < 5.0
        assert result.outcome == "uncached" and result.reason == "embedder_failed"
        assert result.response == "answer to: is the embedder there"
        assert isinstance(result, CacheResult)
    embedder.close()


class BlockingEmbedder(FakeEmbedder):
    """Blocks in embed() until released: a local model stuck on a busy machine."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.blocking = False

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        if self.blocking:
            self.release.wait(10.0)
        return super().embed(texts)


def test_embed_deadline_fails_open_or_raises(tmp_path: Path) -> None:
    embedder = BlockingEmbedder()
    policy = FallbackPolicy(embed_timeout=0.2)
    with SemanticCache(
        tmp_path / "d.db", embedder=embedder, llm=lambda q: "from the LLM", policy=policy
    ) as cache:
        embedder.blocking = True
        result = cache.get_or_compute_result("slow embedding here")
        assert (result.response, result.reason) == ("from the LLM", "embedder_failed")
        cache.policy = FallbackPolicy.strict(embed_timeout=0.2)
        with pytest.raises(EmbedderTimeoutError, match=r"0\.2 s deadline"):
            cache.get_or_compute("slow embedding here")
        embedder.release.set()
        embedder.blocking = False
        assert cache.get_or_compute_result("slow embedding here").stored
        assert cache.stats()["embed_failures"] == 2


def test_lookup_stays_strict_when_the_embedder_fails(
    cache: SemanticCache, server: OpenAIServer
) -> None:
    server.state.fail_next = [400, 400]  # base64, then once as floats
    with pytest.raises(EmbedderError):
        cache.lookup("nothing to fall back on")


def test_no_llm_configured_raises_after_counting_the_miss(tmp_path: Path) -> None:
    with SemanticCache(tmp_path / "n.db", embedder=FakeEmbedder()) as cache:
        with pytest.raises(LLMError, match="no LLM configured"):
            cache.get_or_compute("who answers this")
        assert cache.stats()["misses"] == 1


def test_async_llm_in_sync_api_is_a_clear_error(tmp_path: Path) -> None:
    async def llm(prompt: str) -> str:
        return "async answer"

    with SemanticCache(tmp_path / "a.db", embedder=FakeEmbedder()) as cache:
        with pytest.raises(ValueError, match="aget_or_compute"):
            cache.get_or_compute("sync call, async llm", llm)
        assert cache.stats()["cached_entries"] == 0


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (RawReply.json({"error": {"message": "quota exceeded", "code": 429}}), "quota exceeded"),
        (RawReply.json({"object": "error", "message": "engine dead", "code": 500}), "engine dead"),
        (RawReply(b"<html>proxy error</html>", content_type="text/html"), "not JSON"),
    ],
    ids=["error", "vllm-error", "html"],
)
def test_a_200_carrying_an_error_says_the_servers_reason(
    tmp_path: Path, server: OpenAIServer, reply: RawReply, message: str
) -> None:
    """It said "returned no choices" (and for a stream "connection lost?"), dropping the
    server's own reason; nothing is cached either way."""
    server.state.reply = lambda path, body: reply if path.endswith("/chat/completions") else None
    with SemanticCache(tmp_path / "e.db", embedder=FakeEmbedder(), llm=make_chat(server)) as cache:
        with pytest.raises(LLMError, match=message):
            cache.get_or_compute("a question")
        if reply.content_type == "application/json":  # an HTML page: "connection lost?"
            with pytest.raises(LLMError, match=f"one JSON body, not events: .*{message}"):
                list(cache.stream("a streamed question"))
        assert cache.stats()["cached_entries"] == 0


@pytest.mark.parametrize(
    "choice",
    [{"index": 0, "finish_reason": "stop", "message": None}, {"index": 0}, None],
    ids=["null-message", "no-message", "null-choice"],
)
def test_a_choice_without_a_message_is_an_llm_error(server: OpenAIServer, choice: object) -> None:
    """OpenAIChat.complete()/acomplete()/__call__ raised AttributeError (untyped) on it."""
    answer = {"id": "x", "object": "chat.completion", "created": 1, "model": "m"}
    server.state.reply = lambda path, body: RawReply.json({**answer, "choices": [choice]})
    chat = make_chat(server, retry=NO_RETRY)
    with pytest.raises(LLMError, match="choice without a message"):
        chat.complete("hello")
    with pytest.raises(LLMError, match="choice without a message"):
        chat("hello")

    async def main() -> None:
        try:
            await chat.acomplete("hello")
        finally:
            await chat.aclose()

    with pytest.raises(LLMError, match="choice without a message"):
        asyncio.run(main())
