"""Embedders: the real offline model, its integrity check, and OpenAI over a real local server."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from openai_server import OpenAIServer

from semcache_sqlite import (
    EmbedderError,
    InvalidInputError,
    InvalidQueryError,
    LocalEmbedder,
    ModelIntegrityError,
    OpenAIEmbedder,
    SemanticCache,
    embedders,
)
from semcache_sqlite.embedders import _default_model_path, _default_tokenizer_path


def test_local_embedder_output_shape_and_norm(local_embedder: LocalEmbedder) -> None:
    vectors = local_embedder.embed(["How do I reset my password?", "short", "x " * 2000])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert local_embedder.model_id == "all-MiniLM-L6-v2-onnx-int8" and local_embedder.dim == 384


def test_local_embedder_batch_equals_single(local_embedder: LocalEmbedder) -> None:
    texts = ["a", "How do I reset my password?", "What are the pricing plans for teams of ten?"]
    batch = local_embedder.embed(texts)
    single = np.stack([local_embedder.embed([t])[0] for t in texts])
    assert np.allclose(batch, single, atol=1e-4)  # padding must not change a text's vector


def test_long_text_padded_with_whitespace_keeps_its_words(local_embedder: LocalEmbedder) -> None:
    """The text handed to the tokenizer was cut at 16,384 characters whatever they held:
    a prompt behind 17,000 blank lines lost every word, so any two such prompts got the
    same vector (cosine 1.0, a hit at any threshold). Whitespace makes no tokens: the
    model must see the same words as without it."""
    padding = "\n" * 17_000
    questions = ["How do I reset my password?", "What is the capital of France?"]
    padded = local_embedder.embed([padding + q for q in questions])
    plain = local_embedder.embed(questions)
    assert float(padded[0] @ padded[1]) < 0.5
    assert np.allclose(padded, plain, atol=1e-4)
    code = ("    " * 40 + "}\n") * 150  # deeply indented code: 150 tokens in 24k characters
    ends = local_embedder.embed([code + "def refund(): ...", code + "class Invoice: ..."])
    assert float(ends[0] @ ends[1]) < 0.999


def test_local_embedder_rejects_bad_text(local_embedder: LocalEmbedder) -> None:
    with pytest.raises(InvalidQueryError):
        local_embedder.embed(["fine", "  "])
    with pytest.raises(InvalidInputError):
        local_embedder.embed("a bare string is not a batch")
    assert local_embedder.embed([]).shape == (0, 384)


def test_paraphrase_hits_and_lookalike_misses_with_real_model(
    tmp_path: Path, local_embedder: LocalEmbedder
) -> None:
    with SemanticCache(tmp_path / "real.db", embedder=local_embedder) as cache:
        cache.store_many(
            ["How do I reset my password?", "What are the pricing plans?", "Can I export my data?"],
            ["reset answer", "pricing answer", "export answer"],
        )
        hit = cache.lookup("How can I reset my password?")
        assert hit is not None and hit.response == "reset answer" and not hit.exact
        assert cache.threshold <= hit.similarity < 1.0
        assert cache.lookup("How do I reset my router?") is None
        assert cache.lookup("What is the capital of France?") is None


def test_tampered_model_file_is_refused(tmp_path: Path) -> None:
    tampered = tmp_path / "model.onnx"
    shutil.copyfile(_default_model_path(), tampered)
    with tampered.open("r+b") as handle:
        handle.seek(1000)
        byte = handle.read(1)
        handle.seek(1000)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ModelIntegrityError, match="sha256"):
        LocalEmbedder(model_path=tampered).embed(["hello"])


def test_tampered_tokenizer_is_refused(tmp_path: Path) -> None:
    tampered = tmp_path / "tokenizer.json"
    tampered.write_bytes(_default_tokenizer_path().read_bytes().replace(b"[UNK]", b"[UNX]", 1))
    with pytest.raises(ModelIntegrityError):
        LocalEmbedder(tokenizer_path=tampered).embed(["hello"])


def test_shared_model_still_checks_each_instances_dim_and_sha256(
    tmp_path: Path, local_embedder: LocalEmbedder
) -> None:
    """The loaded model is shared per process; an instance whose settings disagree with the
    instance that loaded it must still be refused (a ValueError from numpy, or no sha256
    check at all, before)."""
    local_embedder.embed(["loads the shared model"])
    with pytest.raises(EmbedderError, match="384-d"):
        LocalEmbedder(dim=512).embed(["hello"])
    copy = tmp_path / "model.onnx"
    shutil.copyfile(_default_model_path(), copy)
    assert LocalEmbedder(model_path=copy, model_sha256=None).embed(["unchecked"]).shape == (1, 384)
    with pytest.raises(ModelIntegrityError, match="sha256"):
        LocalEmbedder(model_path=copy, model_sha256="0" * 64).embed(["checked"])


def test_missing_model_file_is_a_typed_error(tmp_path: Path) -> None:
    with pytest.raises(ModelIntegrityError, match="not found"):
        LocalEmbedder(model_path=tmp_path / "absent.onnx").embed(["hello"])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() is POSIX only")
def test_fork_while_another_thread_loads_the_model() -> None:
    """A child forked while another thread of the parent was loading the model (~0.5 s
    under the model lock) inherited that lock held by a thread it does not have: its
    first embed() hung forever. The fork now waits for the load to end."""
    holding = threading.Event()

    def loader() -> None:  # what LocalEmbedder._load does while it loads the files
        with embedders._MODELS_LOCK:
            holding.set()
            time.sleep(0.5)

    thread = threading.Thread(target=loader)
    thread.start()
    assert holding.wait(10)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its first embed(), watched (a hang would block forever)
        done = threading.Event()

        def embed() -> None:
            LocalEmbedder().embed(["hello from the child"])
            done.set()

        threading.Thread(target=embed, daemon=True).start()
        os.write(write_end, b"\x00" if done.wait(30) else b"\x01")
        os._exit(0)
    os.close(write_end)
    status = os.read(read_end, 1)
    os.close(read_end)
    os.waitpid(pid, 0)
    thread.join()
    assert status == b"\x00", "the child's embed() hung on the inherited model lock"


def test_openai_embedder_batches_against_real_server(openai_server: OpenAIServer) -> None:
    embedder = OpenAIEmbedder(
        "text-embedding-3-small",
        dimensions=64,
        base_url=openai_server.base_url,
        api_key="test",
        batch_size=10,
        max_retries=0,
    )
    texts = [f"text number {i}" for i in range(25)]
    vectors = embedder.embed(texts)
    assert vectors.shape == (25, 64)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert openai_server.state.count("/embeddings") == 3  # 10 + 10 + 5
    assert [len(r.body["input"]) for r in openai_server.state.requests] == [10, 10, 5]
    assert embedder.model_id == "text-embedding-3-small@64"


def test_openai_embedder_server_error_is_typed(openai_server: OpenAIServer) -> None:
    openai_server.state.fail_next = [400, 400]  # base64, then once as floats
    embedder = OpenAIEmbedder(dim=64, base_url=openai_server.base_url, api_key="t", max_retries=0)
    with pytest.raises(EmbedderError, match="400"):
        embedder.embed(["hello"])


def test_openai_embedder_in_cache_end_to_end(tmp_path: Path, openai_server: OpenAIServer) -> None:
    embedder = OpenAIEmbedder(dimensions=64, base_url=openai_server.base_url, api_key="t")
    with SemanticCache(tmp_path / "oa.db", embedder=embedder) as cache:
        assert cache.threshold == 0.95
        cache.store("what is the refund policy", None, "30 days")
        hit = cache.lookup("What is  the Refund policy")
        assert hit is not None and hit.exact
        near = cache.lookup("what is the refund policy today", threshold=0.8)
        assert near is not None and near.response == "30 days" and not near.exact
