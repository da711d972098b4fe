"""Deterministic stand-ins for fast tests of logic that does not depend on meaning.

``FakeEmbedder`` hashes words into a bag-of-words vector: texts sharing most
words are similar, texts sharing none are orthogonal. It counts its calls so
tests can prove the embedder was (not) run.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

_WORD = re.compile(r"\w+")


def bag_of_words_vector(text: str, dim: int) -> npt.NDArray[np.float32]:
    vector = np.zeros(dim, dtype=np.float64)
    for word in _WORD.findall(text.lower()) or [text]:
        digest = hashlib.sha256(word.encode("utf-8", "surrogatepass")).digest()
        vector[int.from_bytes(digest[:4], "little") % dim] += 1.0
    unit: npt.NDArray[np.float32] = (vector / np.linalg.norm(vector)).astype(np.float32)
    return unit


class FakeEmbedder:
    """Bag-of-hashed-words embedder; ``calls`` counts embed() calls, ``texts`` what it saw."""

    def __init__(self, dim: int = 64, model_id: str | None = None, threshold: float = 0.8) -> None:
        self._dim = dim
        self._model_id = model_id or f"fake-bow-{dim}"
        self._threshold = threshold
        self.calls = 0
        self.texts: list[str] = []
        self._lock = threading.Lock()

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def default_threshold(self) -> float:
        return self._threshold

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        with self._lock:
            self.calls += 1
            self.texts.extend(texts)
        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32)
        return np.stack([bag_of_words_vector(t, self._dim) for t in texts])

    def vector(self, text: str) -> npt.NDArray[np.float32]:
        return bag_of_words_vector(text, self._dim)
