"""The LLM the cache falls back to on a miss.

Anything callable ``str -> str`` works as an LLM. An object may also expose
``cache_context`` (a JSON-serialisable mapping: model, system prompt,
generation parameters); the cache hashes it into the context key of every
entry it reads and writes, so an answer produced under one model or system
prompt is never served for another. ``OpenAIChat`` does this for you.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

from .errors import LLMError

#: The seed tutorial's model and answer budget.
DEFAULT_CHAT_MODEL = "gpt-4o"
DEFAULT_MAX_TOKENS = 500


@runtime_checkable
class LLM(Protocol):
    """Minimal LLM interface: one prompt in, one answer out."""

    def __call__(self, prompt: str) -> str: ...


LLMCallable = Callable[[str], str]


def llm_cache_context(llm: object | None) -> Mapping[str, Any] | None:
    """The part of the context key an LLM contributes (None for plain callables)."""
    context = getattr(llm, "cache_context", None)
    if context is None:
        return None
    if not isinstance(context, Mapping):
        raise TypeError(f"{type(llm).__name__}.cache_context must be a mapping")
    return context


class OpenAIChat:
    """Chat completions from OpenAI or any OpenAI-compatible server.

    ``api_key`` / ``base_url`` default to ``OPENAI_API_KEY`` / ``OPENAI_BASE_URL``
    (and ``OPENAI_MODEL`` for the model). Model, system prompt, temperature,
    max_tokens and ``extra`` parameters form ``cache_context``.
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        system_prompt: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = DEFAULT_MAX_TOKENS,
        extra: Mapping[str, Any] | None = None,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 2,
        client: Any = None,
    ) -> None:
        self.model = model or os.environ.get("OPENAI_MODEL") or DEFAULT_CHAT_MODEL
        self.system_prompt = system_prompt
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.extra = dict(extra or {})
        if client is None:
            import openai

            client = openai.OpenAI(
                api_key=api_key or os.environ.get("OPENAI_API_KEY") or "not-needed",
                base_url=base_url,
                timeout=timeout,
                max_retries=max_retries,
            )
        self._client = client

    @property
    def cache_context(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "system_prompt": self.system_prompt,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "extra": self.extra,
        }

    def __repr__(self) -> str:
        return f"OpenAIChat(model={self.model!r})"

    def __call__(self, prompt: str) -> str:
        import openai

        messages: list[dict[str, str]] = []
        if self.system_prompt:
            messages.append({"role": "system", "content": self.system_prompt})
        messages.append({"role": "user", "content": prompt})
        params: dict[str, Any] = dict(self.extra)
        if self.temperature is not None:
            params["temperature"] = self.temperature
        if self.max_tokens is not None:
            params["max_tokens"] = self.max_tokens
        try:
            completion = self._client.chat.completions.create(
                model=self.model, messages=messages, **params
            )
        except openai.OpenAIError as exc:
            raise LLMError(f"chat completion with {self.model!r} failed: {exc}") from exc
        if not completion.choices:
            raise LLMError(f"chat completion with {self.model!r} returned no choices")
        content = completion.choices[0].message.content
        if not content or not content.strip():
            raise LLMError(f"chat completion with {self.model!r} returned an empty answer")
        return str(content)
