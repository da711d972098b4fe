"""What a cache lookup is keyed on when the prompt is a chat conversation.

``get_or_compute`` (and its async and streaming twins) accept either one query
string or a list of chat messages ``[{"role": ..., "content": ...}, ...]``.
For a conversation:

- **system / developer messages** are configuration, not content: they are
  hashed into the context key, so a conversation is only ever answered from
  entries made under exactly the same instructions ("answer in French" and
  "answer in German" differ by one word, and would embed almost identically).
- **every other turn** (user, assistant, tool) forms the query text that is
  embedded, stored and used by the exact-match path. It is rendered newest
  turn first: the last message, then ``[earlier in the conversation]`` and the
  earlier turns in order as ``role: content`` lines. Newest first because an
  embedder that truncates (the local model reads 256 tokens) must still see the
  question being asked, not only the oldest turns.
- A conversation of one user message is keyed exactly like that message as a
  plain string, so the two forms share entries.

So two conversations share an answer only if their instructions are identical
and their turns, taken together, are similar above the threshold. A long shared
history makes conversations look alike even when their last questions differ;
for chat apps, prefer caching standalone questions or raise the threshold.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from .errors import InvalidInputError, InvalidQueryError

#: One chat message as the OpenAI API takes it: {"role": ..., "content": ...}.
ChatMessage: TypeAlias = Mapping[str, Any]
#: What an LLM is asked: a query string, or a conversation.
Prompt: TypeAlias = str | Sequence[ChatMessage]

#: Roles that configure the model rather than talk to it.
INSTRUCTION_ROLES = frozenset({"system", "developer"})
HISTORY_MARKER = "[earlier in the conversation]"


@dataclass(frozen=True)
class KeyedPrompt:
    """A prompt split into what is embedded (``text``) and what is matched exactly."""

    text: str
    instructions: tuple[tuple[str, str], ...]  # (role, content) of system/developer messages


def message_text(message: object) -> tuple[str, str]:
    """(role, text) of one message; text parts of a multi-part content are joined."""
    if not isinstance(message, Mapping):
        raise InvalidInputError(f"a chat message must be a mapping, got {type(message).__name__}")
    role = message.get("role")
    if not isinstance(role, str) or not role:
        raise InvalidInputError("every chat message needs a 'role' string")
    content = message.get("content")
    if isinstance(content, str):
        return role, content
    if isinstance(content, Sequence):
        texts = []
        for part in content:
            if not (isinstance(part, Mapping) and part.get("type") == "text"):
                raise InvalidInputError(
                    "only text content can be cached (found a non-text content part)"
                )
            texts.append(str(part.get("text", "")))
        return role, "\n".join(texts)
    raise InvalidInputError(f"message content must be text, got {type(content).__name__}")


def key_prompt(prompt: Prompt) -> KeyedPrompt:
    """Split a prompt into its query text and its instructions (see module docstring)."""
    if isinstance(prompt, str):
        return KeyedPrompt(prompt, ())
    if not isinstance(prompt, Sequence) or isinstance(prompt, (bytes, bytearray)):
        raise InvalidQueryError(
            f"prompt must be a str or a list of chat messages, got {type(prompt).__name__}"
        )
    messages = [message_text(m) for m in prompt]
    instructions = tuple((r, c) for r, c in messages if r in INSTRUCTION_ROLES)
    turns = [(r, c) for r, c in messages if r not in INSTRUCTION_ROLES]
    if not turns:
        raise InvalidQueryError("the conversation has no user message")
    last_role, last_text = turns[-1]
    head = last_text if last_role == "user" else f"{last_role}: {last_text}"
    if len(turns) == 1:
        return KeyedPrompt(head, instructions)
    history = "\n".join(f"{role}: {text}" for role, text in turns[:-1])
    return KeyedPrompt(f"{head}\n\n{HISTORY_MARKER}\n{history}", instructions)


def conversation_text(prompt: Prompt) -> str:
    """The text a prompt is embedded and stored as (use it with lookup()/store())."""
    return key_prompt(prompt).text


def as_messages(prompt: Prompt, system_prompt: str | None = None) -> list[dict[str, Any]]:
    """The messages to send for ``prompt``, with ``system_prompt`` first if given."""
    messages: list[dict[str, Any]] = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    if isinstance(prompt, str):
        messages.append({"role": "user", "content": prompt})
    else:
        messages.extend(dict(m) for m in prompt)
    return messages
