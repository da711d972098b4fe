"""Helpers for tests that drive the real ``openai`` clients against tests/openai_server.py.

Retries back off for milliseconds here (the default starts at 0.5 s), so a
scripted 500-then-success costs a few milliseconds of test time.
"""

from __future__ import annotations

from typing import Any

from openai_server import OpenAIServer

from semcache_sqlite import OpenAIChat, OpenAIEmbedder, RetryPolicy

FAST_RETRY = RetryPolicy(max_retries=2, initial_backoff=0.005, max_backoff=0.01)
NO_RETRY = RetryPolicy(max_retries=0)


def make_chat(server: OpenAIServer, **overrides: Any) -> OpenAIChat:
    options: dict[str, Any] = {
        "model": "test-chat",
        "base_url": server.base_url,
        "api_key": "test-key",
        "timeout": 5.0,
        "retry": FAST_RETRY,
    }
    options.update(overrides)
    return OpenAIChat(**options)


def make_embedder(server: OpenAIServer, **overrides: Any) -> OpenAIEmbedder:
    options: dict[str, Any] = {
        "model": "test-embed",
        "dimensions": 64,
        "base_url": server.base_url,
        "api_key": "test-key",
        "timeout": 5.0,
        "retry": FAST_RETRY,
        "default_threshold": 0.8,
    }
    options.update(overrides)
    return OpenAIEmbedder(**options)
