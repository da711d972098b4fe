"""Reading line-oriented input files (warm-up files, JSONL exports) with every
problem reported by line number: the shared checks of ``warmup`` and ``transfer``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO, TypeVar

from .errors import InvalidFileError, InvalidInputError
from .validation import check_int, check_metadata, check_timestamp

T = TypeVar("T")

#: How many bad lines one error lists at most (the rest are counted).
MAX_REPORTED_PROBLEMS = 20

#: Progress callback: called with the number of rows just processed.
Advance = Callable[[int], None]


def no_progress(_n: int) -> None:
    return None


class LineError(ValueError):
    """A problem with one input line (becomes part of InvalidFileError)."""


def field_str(obj: dict[str, Any], key: str, default: str | None = None) -> str:
    value = obj.get(key, default)
    if value is None:
        raise LineError(f"missing {key!r}")
    if not isinstance(value, str):
        raise LineError(f"{key!r} must be a string, got {type(value).__name__}")
    return value


def field_number(obj: dict[str, Any], key: str, default: float | None) -> float | None:
    """A time in unix seconds, within what ``datetime`` represents (check_timestamp)."""
    value = obj.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LineError(f"{key!r} must be a number (unix seconds), got {value!r}")
    return checked(check_timestamp, value, repr(key))


def field_int(obj: dict[str, Any], key: str, default: int, minimum: int) -> int:
    return checked(check_int, obj.get(key, default), repr(key), minimum=minimum)


def field_metadata(obj: dict[str, Any]) -> dict[str, Any]:
    value = obj.get("metadata", {})
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise LineError(f"'metadata' must be a JSON object, got {type(value).__name__}")
    return checked(check_metadata, value)  # json.loads accepts NaN and Infinity


def checked(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    try:
        return func(*args, **kwargs)
    except InvalidInputError as exc:
        raise LineError(str(exc)) from exc


def raise_problems(path: Path, problems: list[tuple[int, str]], more: int, what: str) -> None:
    if not problems:
        return
    line, message = problems[0]
    others = [str(n) for n, _ in problems[1:]]
    extra = ""
    if others or more:
        shown = ", ".join(others[:8]) + (", ..." if len(others) > 8 or more else "")
        extra = f"; {len(problems) - 1 + more} more problem(s) (line {shown})"
    raise InvalidFileError(
        f"{path} line {line}: {message}{extra}; nothing was {what}", problems=problems
    )


def json_lines(handle: TextIO) -> Iterator[tuple[int, Any]]:
    """(line number, parsed object) for every non-blank line; bad JSON raises LineError."""
    for number, text in enumerate(handle, start=1):
        if not text.strip():
            continue
        try:
            yield number, json.loads(text)
        except json.JSONDecodeError as exc:
            yield number, LineError(f"not valid JSON ({exc.msg} at column {exc.colno})")
