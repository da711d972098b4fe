"""The public surface: everything in __all__ exists, is sorted, and errors form one tree."""

from __future__ import annotations

import semcache_sqlite
from semcache_sqlite import errors


def test_all_is_sorted_and_importable() -> None:
    names = [n for n in semcache_sqlite.__all__ if n != "__version__"]
    # ruff's RUF022 order: ALL-CAPS names first, then the rest alphabetically
    assert names == sorted(names, key=lambda n: (not n.isupper(), n))
    for name in semcache_sqlite.__all__:
        assert hasattr(semcache_sqlite, name), name


def test_every_error_is_a_semcache_error_and_exported() -> None:
    for name in dir(errors):
        obj = getattr(errors, name)
        if (
            isinstance(obj, type)
            and issubclass(obj, Exception)
            and obj.__module__ == errors.__name__
        ):
            assert issubclass(obj, errors.SemCacheError)
            assert name in semcache_sqlite.__all__, name


def test_input_errors_are_value_errors() -> None:
    assert issubclass(errors.InvalidVectorError, ValueError)
    assert issubclass(errors.EntryNotFoundError, KeyError)
    assert str(errors.EntryNotFoundError("no entry 3")) == "no entry 3"
