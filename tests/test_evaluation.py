"""Metrics, the cache simulation, and `semcache evaluate` / `semcache calibrate`."""

from __future__ import annotations

import csv
import gzip
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from fakes import FakeEmbedder
from openai_server import OpenAIServer
from providers import make_embedder

from semcache_sqlite import InvalidInputError, LocalEmbedder, SemanticCache, cli_common
from semcache_sqlite.cli import cli
from semcache_sqlite.evaluation import (
    choose_threshold,
    embed_texts,
    load_pairs,
    pair_metrics,
    simulate,
    split_pairs,
    sweep,
)
from semcache_sqlite.quality import GuardConfig
from semcache_sqlite.validation import normalize_query

# Small labelled set: paraphrases (1) and look-alikes (0), as the QQP file has them.
PAIRS = [
    ("How do I reset my password?", "How can I reset my password?", 1),
    ("What is the capital of France?", "What's the capital city of France?", 1),
    ("Can I export my data?", "Is it possible to export my data?", 1),
    ("How do I cancel my subscription?", "How can I cancel my subscription?", 1),
    ("What are your opening hours?", "When are you open?", 1),
    ("How do I enable 2FA?", "How do I disable 2FA?", 0),
    ("What is the price of the iPhone 12?", "What is the price of the iPhone 13?", 0),
    ("What is the best time to visit Paris?", "What is the best time to visit London?", 0),
    ("How do I turn on dark mode?", "How do I turn off dark mode?", 0),
    ("How do I reset my router?", "How do I reset my modem?", 0),
    ("Is it safe to eat raw eggs?", "Is it safe to eat raw fish?", 0),
    ("How do I learn Python fast?", "How do I learn Java fast?", 0),
]


def _write_jsonl(path: Path, pairs: list[tuple[str, str, int]]) -> Path:
    lines = [json.dumps({"text_a": a, "text_b": b, "label": label}) for a, b, label in pairs]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_pair_metrics_on_known_scores() -> None:
    perfect = pair_metrics(np.array([0.9, 0.8, 0.3, 0.2]), np.array([True, True, False, False]))
    assert perfect.roc_auc == 1.0 and perfect.average_precision == 1.0
    assert perfect.best_f1 == 1.0 and perfect.best_f1_threshold == 0.8
    ties = pair_metrics(np.array([0.5, 0.5, 0.5, 0.5]), np.array([True, False, True, False]))
    assert ties.roc_auc == 0.5
    inverted = pair_metrics(np.array([0.1, 0.2, 0.8, 0.9]), np.array([True, True, False, False]))
    assert inverted.roc_auc == 0.0
    with pytest.raises(InvalidInputError):
        pair_metrics(np.array([0.1]), np.array([True]))


def test_sweep_and_choice_on_crafted_lookups() -> None:
    scores = np.array([1.0, 0.99, 0.95, 0.93, 0.91, 0.85])
    exact = np.array([True, False, False, False, False, False])
    correct = np.array([True, True, True, False, True, False])
    rows = sweep(scores, exact, correct, thresholds=[0.8, 0.9, 0.92, 0.94, 1.0])
    by_t = {r.threshold: r for r in rows}
    assert (by_t[0.8].hits, by_t[0.8].wrong_hits) == (6, 2)
    assert (by_t[0.9].hits, by_t[0.9].wrong_hits) == (5, 1)
    assert (by_t[0.94].hits, by_t[0.94].wrong_hits) == (3, 0)
    assert by_t[1.0].hits == 1  # the exact-path lookup hits at any threshold
    assert by_t[0.9].false_hit_rate == pytest.approx(1 / 6)
    assert by_t[0.9].precision == pytest.approx(4 / 5)
    choice = choose_threshold(rows, max_false_hit_rate=0.2)
    assert choice is not None and choice.threshold == 0.9  # most hits with <= 20% false
    choice = choose_threshold(rows, max_false_hit_rate=0.0)
    assert choice is not None and choice.threshold == 0.94  # no wrong hit, most hits
    strict = choose_threshold(rows, min_precision=0.99)
    assert strict is not None and strict.threshold == 0.94
    with pytest.raises(InvalidInputError):
        choose_threshold(rows)


def test_a_threshold_that_serves_nothing_is_never_chosen() -> None:
    """Its precision is 1.0 by convention, so it met any precision target: calibrate
    stored threshold 1.0 (hit rate 0) and every lookup of the file missed after it."""
    scores = np.array([0.97, 0.93, 0.9])
    rows = sweep(scores, np.zeros(3, bool), np.zeros(3, bool), thresholds=[0.85, 0.95, 1.0])
    assert rows[-1].hits == 0 and rows[-1].precision == 1.0
    assert choose_threshold(rows, min_precision=0.95) is None
    assert choose_threshold(rows, max_false_hit_rate=0.0) is None


def test_evaluate_finds_the_default_data_from_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """../shared/data/qqp_pairs_dev.jsonl.gz beside the checkout it is run from: found
    from the package's location, it pointed into the virtualenv once installed."""
    data = tmp_path / "shared" / "data" / "qqp_pairs_dev.jsonl.gz"
    data.parent.mkdir(parents=True)
    with gzip.open(data, "wt", encoding="utf-8") as handle:
        handle.write(_write_jsonl(tmp_path / "plain.jsonl", PAIRS).read_text(encoding="utf-8"))
    checkout = tmp_path / "repo"
    checkout.mkdir()
    monkeypatch.chdir(checkout)
    result = CliRunner().invoke(cli, ["evaluate", "--svg", "", "--embedding-cache", ""])
    assert result.exit_code == 0 and f"{len(PAIRS)} pairs" in result.output, result.output
    monkeypatch.chdir(tmp_path)  # no ../shared/data from here: a usage error naming it
    missing = CliRunner().invoke(cli, ["evaluate", "--svg", "", "--embedding-cache", ""])
    assert missing.exit_code == 2 and "labelled pairs not found" in missing.output


def test_load_pairs_formats_and_sampling(tmp_path: Path) -> None:
    jsonl = _write_jsonl(tmp_path / "p.jsonl", [*PAIRS, ("  ", "blank", 1)])
    loaded = load_pairs(jsonl)
    assert len(loaded.pairs) == len(PAIRS) and loaded.skipped == 1
    gz = tmp_path / "p.jsonl.gz"
    gz.write_bytes(gzip.compress(jsonl.read_bytes()))
    assert load_pairs(gz).pairs == loaded.pairs
    with (tmp_path / "p.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text_a", "text_b", "label"])
        writer.writerows(PAIRS)
    assert load_pairs(tmp_path / "p.csv").pairs == loaded.pairs
    sample = load_pairs(jsonl, limit=5, seed=1)
    assert len(sample.pairs) == 5 and sample.pairs == load_pairs(jsonl, limit=5, seed=1).pairs
    assert len(sample.all_texts) == 2 * len(PAIRS)  # the cache key covers the whole file
    fit, held = split_pairs(loaded.pairs, 0.5, seed=3)
    assert len(fit) == 6 and not set(map(id, fit)) & set(map(id, held))
    _write_jsonl(tmp_path / "bad.jsonl", [("a", "b", 7)])
    with pytest.raises(InvalidInputError, match="label"):
        load_pairs(tmp_path / "bad.jsonl")


def test_simulation_exact_path_and_labels(tmp_path: Path) -> None:
    pairs = load_pairs(
        _write_jsonl(
            tmp_path / "s.jsonl",
            [
                ("alpha beta gamma", "alpha beta gamma delta", 1),
                ("alpha beta gamma", "alpha beta", 0),
                ("zeta eta theta", "ZETA eta  theta", 0),  # normalised identical
                ("iota kappa", "lambda mu", 0),
            ],
        )
    ).pairs
    embedder = FakeEmbedder()
    embedded = embed_texts([t for p in pairs for t in (p.text_a, p.text_b)], embedder)
    sim = simulate(pairs, embedded)
    assert sim.cached == 3 and len(sim.probes) == 4
    assert [p.exact for p in sim.probes] == [False, False, True, False]
    assert [p.correct for p in sim.probes] == [True, False, True, False]
    assert simulate(pairs, embedded, scoring="strict").probes[2].correct is False
    rows = sim.rows(GuardConfig.off(), thresholds=[0.0, 1.0])
    assert rows[0].hits == 4 and rows[1].hits == 1
    # "pair-label" (DESIGN.md's rule): the asked text itself is never its own match,
    # and a hit is right iff its pair is labelled a duplicate, whatever came back.
    by_label = simulate(pairs, embedded, scoring="pair-label")
    assert [p.exact for p in by_label.probes] == [False] * 4
    assert by_label.probes[2].matched != "zeta eta theta"  # identical text left out
    assert [p.correct for p in by_label.probes] == [True, False, False, False]
    assert by_label.answerable == 1
    with pytest.raises(InvalidInputError, match="pair-label"):
        simulate(pairs, embedded, scoring="loose")


def test_embedding_cache_is_reused_for_samples(tmp_path: Path) -> None:
    embedder = FakeEmbedder()
    texts = ["one two", "three four", "five six"]
    embed_texts(texts, embedder, tmp_path)
    calls = embedder.calls
    again = embed_texts(texts[:2], embedder, tmp_path, superset=texts)
    assert embedder.calls == calls  # read from the whole set's file
    assert np.allclose(again.rows(["three four"]), embedder.vector("three four"))


def _expected_threshold(
    pairs: list[tuple[str, str, int]], embedder: LocalEmbedder, max_false_hit_rate: float
) -> float:
    """The simulation by hand, with loops: the threshold `calibrate` must choose."""
    cached = sorted({a for a, _, _ in pairs})
    duplicates = {(a, b) for a, b, label in pairs if label} | {
        (b, a) for a, b, label in pairs if label
    }
    vectors = {t: v for t, v in zip(cached, embedder.embed(cached), strict=True)}
    lookups = []
    for _, b, _ in pairs:
        same = [t for t in cached if normalize_query(t) == normalize_query(b)]
        if same:
            lookups.append((1.0, True, True))
            continue
        q = embedder.embed([b])[0]
        best = max(cached, key=lambda t: float(vectors[t] @ q))
        lookups.append((float(vectors[best] @ q), False, (best, b) in duplicates))
    best_t, best_hits = 1.0, -1
    for t in (x / 1000 for x in range(500, 1001)):
        hits = [(s, c) for s, exact, c in lookups if exact or s >= t - 1e-6]
        wrong = sum(1 for _, c in hits if not c)
        if wrong / len(lookups) <= max_false_hit_rate + 1e-12 and len(hits) >= best_hits:
            best_t, best_hits = t, len(hits)
    return best_t


def test_calibrate_stores_the_right_threshold(
    tmp_path: Path, local_embedder: LocalEmbedder
) -> None:
    data = _write_jsonl(tmp_path / "labelled.jsonl", PAIRS)
    db = tmp_path / "app.db"
    runner = CliRunner()
    args = ["calibrate", str(db), str(data), "--no-guards", "--embedding-cache", ""]
    done = runner.invoke(cli, [*args, "--max-false-hit-rate", "0.1", "--namespace", "faq"])
    assert done.exit_code == 0, done.output
    expected = _expected_threshold(PAIRS, local_embedder, 0.1)
    with SemanticCache(db, embedder=local_embedder, guards=False) as cache:
        stored = cache.calibration("faq")
        assert stored is not None and stored.threshold == pytest.approx(expected)
        assert stored.source == "labelled.jsonl" and stored.target == "false_hit_rate<=0.1"
        assert stored.figures["false_hit_rate"] <= 0.1 and stored.figures["pairs"] == len(PAIRS)
        assert cache.threshold_for("faq") == pytest.approx(expected)
        assert cache.calibration() is None  # nothing file-wide
    dry = runner.invoke(cli, [*args, "--min-precision", "0.9", "--dry-run"])
    assert dry.exit_code == 0 and "nothing stored" in dry.output, dry.output
    guarded = ["calibrate", str(db), str(data), "--embedding-cache", "", "--refit", "--dry-run"]
    refit = runner.invoke(cli, guarded)  # 12 pairs are too few to fit weights on
    assert refit.exit_code != 0 and "at least 20" in refit.output, refit.output
    cleared = runner.invoke(cli, ["calibrate", str(db), "--namespace", "faq", "--clear"])
    assert cleared.exit_code == 0 and "removed" in cleared.output


def test_calibrate_from_feedback(tmp_path: Path) -> None:
    db = tmp_path / "fb.db"
    with SemanticCache(db, embedder=LocalEmbedder(), guards=False, threshold=0.0) as cache:
        cache.store_many([a for a, _, _ in PAIRS], [f"answer {i}" for i in range(len(PAIRS))])
        for _, b, label in PAIRS:
            result = cache.lookup(b)
            assert result is not None
            cache.feedback(result, correct=bool(label))
    runner = CliRunner()
    done = runner.invoke(
        cli, ["calibrate", str(db), "--from-feedback", "--no-guards", "--min-precision", "1.0"]
    )
    assert done.exit_code == 0, done.output
    with SemanticCache(db, embedder=LocalEmbedder(), guards=False) as cache:
        stored = cache.calibration()
        assert stored is not None and stored.source == "feedback"
        rows = cache.feedback_rows()
        served = [r for r in rows if r.similarity is not None and r.similarity >= stored.threshold]
        assert served and all(r.correct for r in served)  # precision 1.0 above it
        assert stored.figures["feedback_rows"] == len(PAIRS)


def test_calibrate_uses_the_global_embedder_options_like_every_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """They were ignored: calibrate embedded with the local model and, on a file of an
    OpenAI model, exited with the library's advice instead of the options to pass."""
    data = _write_jsonl(tmp_path / "labelled.jsonl", PAIRS)
    db = tmp_path / "remote.db"
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    with OpenAIServer() as server:
        remote = make_embedder(server)
        with SemanticCache(db, embedder=remote) as cache:
            cache.store("an entry", None, "its answer")
        args = ["calibrate", str(db), str(data), "--embedding-cache", ""]
        args += ["--no-guards", "--dry-run", "--max-false-hit-rate", "1"]  # its vectors are hashes
        refused = CliRunner().invoke(cli, args)
        assert refused.exit_code == 6, refused.output
        assert f"--embedder openai --embedding-model {remote.model_id}" in refused.output
        options = ["--embedder", "openai", "--embedding-model", remote.model_id]
        options += ["--base-url", server.base_url]
        stored_entry = server.state.count("/embeddings")
        done = CliRunner().invoke(cli, [*options, *args])
        assert done.exit_code == 0 and "dry run" in done.output, done.output
        assert server.state.count("/embeddings") > stored_entry  # it measured the pairs


def test_evaluate_and_calibrate_progress_only_on_a_terminal_and_not_with_quiet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _write_jsonl(tmp_path / "labelled.jsonl", PAIRS)
    evaluate = ["evaluate", str(data), "--svg", "", "--embedding-cache", ""]
    calibrate = ["calibrate", str(tmp_path / "c.db"), str(data), "--embedding-cache", ""]
    calibrate += ["--no-guards", "--dry-run"]
    runner = CliRunner()
    for args in (evaluate, calibrate):
        piped = runner.invoke(cli, args)  # CliRunner's stderr is not a terminal
        assert piped.exit_code == 0 and "embedding" not in piped.stderr, piped.stderr
    monkeypatch.setattr(cli_common, "_stderr_is_tty", lambda: True)
    for args in (evaluate, calibrate):
        shown = runner.invoke(cli, args)
        assert shown.exit_code == 0 and "embedding texts" in shown.stderr, shown.stderr
        quiet = runner.invoke(cli, ["-q", *args])
        assert quiet.exit_code == 0 and "embedding" not in quiet.stderr, quiet.stderr


def test_evaluate_prints_table_and_writes_svg(tmp_path: Path) -> None:
    data = _write_jsonl(tmp_path / "labelled.jsonl", PAIRS)
    svg = tmp_path / "chart.svg"
    runner = CliRunner()
    done = runner.invoke(
        cli, ["evaluate", str(data), "--svg", str(svg), "--embedding-cache", str(tmp_path)]
    )
    assert done.exit_code == 0, done.output
    assert "ROC-AUC" in done.output and "plain cosine" in done.output and "guarded" in done.output
    assert "0.95" in done.output and "operating point" in done.output
    root = ET.fromstring(svg.read_text("utf-8"))
    tags = [element.tag.split("}")[-1] for element in root.iter()]
    assert tags.count("polyline") == 6 and "circle" in tags  # 2 rules x 3 figures, marked points
    assert list(tmp_path.glob("*.npy"))  # embeddings cached for the next run
    plain = runner.invoke(cli, ["evaluate", str(data), "--no-guards", "--svg", "", "--limit", "6"])
    assert plain.exit_code == 0 and "guarded" not in plain.output, plain.output
    held = runner.invoke(cli, ["evaluate", str(data), "--held-out", "--svg", ""])
    assert held.exit_code == 0 and "(held-out half): 6 pairs" in held.output, held.output
    missing = runner.invoke(cli, ["evaluate", str(tmp_path / "absent.jsonl")])
    assert missing.exit_code != 0 and "not found" in missing.output


def test_calibrate_and_evaluate_errors_exit_with_the_documented_codes(tmp_path: Path) -> None:
    data = _write_jsonl(tmp_path / "labelled.jsonl", PAIRS)
    foreign = tmp_path / "notes.txt"
    foreign.write_text("not a cache file\n" * 100)
    runner = CliRunner()
    bad_file = runner.invoke(cli, ["calibrate", str(foreign), str(data), "--dry-run"])
    assert bad_file.exit_code == 5, bad_file.output  # NotACacheFileError, as everywhere
    assert foreign.read_text() == "not a cache file\n" * 100
    bad_line = tmp_path / "bad.jsonl"
    bad_line.write_text('{"question1": "a"}\n')
    for command in (
        ["evaluate", str(bad_line)],
        ["calibrate", str(tmp_path / "c.db"), str(bad_line)],
    ):
        done = runner.invoke(cli, [*command, "--embedding-cache", ""])
        assert done.exit_code == 2, done.output  # the data is the caller's input
