"""``semcache evaluate`` and ``semcache calibrate`` (registered on the group in cli.py).

evaluate:  pair metrics and a cache simulation on labelled pairs, static vs guarded,
           a table on stdout and an SVG chart with the chosen operating points.
calibrate: choose the threshold meeting a target with the highest hit rate and
           store it in a cache file, for one namespace or the whole file.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
import numpy as np

from .admin import Admin
from .cache import SemanticCache
from .cli import cli
from .cli_common import (
    CliState,
    closing,
    open_existing,
    pass_state,
    progress,
    resolve_embedder,
)
from .combiner import SignalTable, fit_weights
from .embedders import Embedder, LocalEmbedder, OpenAIEmbedder
from .evaluation import (
    DEFAULT_EMBEDDING_CACHE,
    SCORINGS,
    TABLE_THRESHOLDS,
    LoadedPairs,
    PairMetrics,
    Probe,
    Simulation,
    SimulationRow,
    at_threshold,
    choose_threshold,
    default_data_path,
    embed_texts,
    load_pairs,
    pair_metrics,
    simulate,
    split_pairs,
)
from .quality import GuardConfig
from .quality_store import FILE_WIDE, Calibration
from .svgchart import threshold_chart

Command = Callable[..., Any]


def _pct(x: float) -> str:
    return f"{100 * x:5.1f}%"


def _embedder_options(func: Command) -> Command:
    options = [
        click.option(
            "--embedder",
            "embedder_kind",
            type=click.Choice(["local", "openai"]),
            default=None,
            help="Embedding model: the offline local one, or an OpenAI-compatible endpoint "
            "(default: as the global options say, e.g. `semcache --embedder openai "
            "--embedding-model M calibrate ...`; else the file's model, or the local one).",
        ),
        click.option("--model", default=None, help="OpenAI embedding model name."),
        click.option("--base-url", default=None, help="OpenAI-compatible server URL."),
        click.option("--api-key", default=None, help="API key (default: $OPENAI_API_KEY)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _data_options(func: Command) -> Command:
    options = [
        click.option("--limit", type=int, default=None, help="Use a random sample of N pairs."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of --limit."),
        click.option(
            "--guards/--no-guards",
            default=True,
            show_default=True,
            help="Measure the guarded rule (default guards) as well as plain cosine.",
        ),
        click.option(
            "--embedding-cache",
            type=click.Path(file_okay=False),
            default=str(DEFAULT_EMBEDDING_CACHE),
            show_default=True,
            help="Folder of cached embeddings (.npy per model and text set); '' to disable.",
        ),
        click.option(
            "--scoring",
            type=click.Choice(list(SCORINGS)),
            default="labelled",
            show_default=True,
            help="strict: a hit on the identical text counts as correct only if labelled; "
            "pair-label: the design notes' rule (../shared/DESIGN.md; the asked text is "
            "left out of the cache, a hit is right iff its pair is labelled a duplicate).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _chosen_embedder(
    state: CliState,
    kind: str | None,
    model: str | None,
    base_url: str | None,
    key: str | None,
    db_path: str | None = None,
) -> Embedder:
    """The command's own --embedder options if given; else the global ones, resolved
    like every other command's (the file's model, refused with the options to pass if
    they do not match: they were ignored, and the local model was used)."""
    if kind is not None:
        return _make_embedder(kind, model, base_url, key)
    info: dict[str, str] = {}
    if db_path is not None and Path(db_path).exists():
        with closing(open_existing(db_path)) as database:
            info = Admin(database).facts().info
    return resolve_embedder(state, db_path or "the labelled pairs", info)


def _make_embedder(kind: str, model: str | None, base_url: str | None, key: str | None) -> Embedder:
    if kind == "local":
        return LocalEmbedder()
    return OpenAIEmbedder(
        model or os.environ.get("OPENAI_EMBEDDING_MODEL") or "text-embedding-3-small",
        base_url=base_url or os.environ.get("OPENAI_BASE_URL"),
        api_key=key,
    )


def _data_path(data: str | None) -> Path:
    path = Path(data).expanduser() if data else default_data_path()
    if not path.is_file():
        raise click.UsageError(
            f"labelled pairs not found at {path}; pass the file (JSONL or CSV with text_a, "
            "text_b, label), e.g. ../shared/data/qqp_pairs_dev.jsonl.gz"
        )
    return path


def _simulate(
    state: CliState, loaded: LoadedPairs, embedder: Embedder, cache_dir: str, scoring: str
) -> tuple[Simulation, PairMetrics | None]:
    pairs = loaded.pairs
    # The shared progress bar: only on a terminal, off with -q (README "The `semcache` command").
    with progress(state, "embedding texts", None) as bar:
        embedded = embed_texts(
            [t for p in pairs for t in (p.text_a, p.text_b)],
            embedder,
            cache_dir or None,
            superset=loaded.all_texts,
            progress=bar.set_done,
        )
    labels = np.array([p.label for p in pairs], dtype=bool)
    metrics = None
    if labels.any() and not labels.all():
        va = embedded.rows(p.text_a for p in pairs)
        vb = embedded.rows(p.text_b for p in pairs)
        cosine = np.einsum("ij,ij->i", va, vb).astype(np.float64)
        metrics = pair_metrics(cosine, labels)
    return simulate(pairs, embedded, scoring=scoring), metrics


def _target(max_false_hit_rate: float | None, min_precision: float | None) -> dict[str, float]:
    if max_false_hit_rate is not None and min_precision is not None:
        raise click.UsageError("give --max-false-hit-rate or --min-precision, not both")
    if min_precision is not None:
        return {"min_precision": min_precision}
    return {"max_false_hit_rate": 0.05 if max_false_hit_rate is None else max_false_hit_rate}


def _target_text(target: dict[str, float]) -> str:
    if "min_precision" in target:
        return f"min_precision>={target['min_precision']:g}"
    return f"false_hit_rate<={target['max_false_hit_rate']:g}"


def _print_table(curves: dict[str, list[SimulationRow]]) -> None:
    names = list(curves)
    header = " thresh |" + "|".join(f" {name[:30]:^44s} " for name in names)
    click.echo(header)
    click.echo(
        "        |" + "|".join("  hit rate  false hits  precision    recall  " for _ in names)
    )
    for t in TABLE_THRESHOLDS:
        cells = []
        for name in names:
            r = at_threshold(curves[name], t)
            cells.append(
                f"  {_pct(r.hit_rate)}     {_pct(r.false_hit_rate)}     {_pct(r.precision)}"
                f"    {_pct(r.recall)}  "
            )
        click.echo(f"  {t:.2f}  |" + "|".join(cells))


@cli.command()
@click.argument("data", required=False)
@_data_options
@click.option("--max-false-hit-rate", type=float, default=None, help="Target (default 0.05).")
@click.option("--min-precision", type=float, default=None, help="Target instead: precision.")
@click.option(
    "--held-out",
    is_flag=True,
    help="Only the half of the pairs the packaged weights were not fitted on (split by "
    "pair, seed 0, as benchmarks/quality_guards.py does; meaningful for qqp_pairs_dev).",
)
@click.option(
    "--svg",
    "svg_path",
    type=click.Path(dir_okay=False),
    default="semcache-evaluate.svg",
    show_default=True,
    help="Where to write the chart ('' for none).",
)
@_embedder_options
@pass_state
def evaluate(
    state: CliState,
    data: str | None,
    limit: int | None,
    seed: int,
    guards: bool,
    embedding_cache: str,
    scoring: str,
    max_false_hit_rate: float | None,
    min_precision: float | None,
    held_out: bool,
    svg_path: str,
    embedder_kind: str,
    model: str | None,
    base_url: str | None,
    api_key: str | None,
) -> None:
    """Measure hit quality on labelled pairs (JSONL/CSV: text_a, text_b, label).

    Pair metrics of cos(a, b), then a cache simulation: every text_a cached, every
    text_b asked; hit rate, false hits, precision and recall per threshold, for
    plain cosine and (unless --no-guards) the default guards. DATA defaults to
    ../shared/data/qqp_pairs_dev.jsonl.gz from the current directory (the
    labelled pairs beside a source checkout, run from its root).

    Example: semcache evaluate ../shared/data/qqp_pairs_dev.jsonl.gz --limit 5000
    """
    target = _target(max_false_hit_rate, min_precision)
    embedder = _chosen_embedder(state, embedder_kind, model, base_url, api_key)
    loaded = load_pairs(_data_path(data), None if held_out else limit, seed)
    if held_out:
        part = split_pairs(loaded.pairs, 0.5, seed=0)[1]
        if limit is not None and limit < len(part):
            keep = sorted(random.Random(seed).sample(range(len(part)), limit))
            part = [part[i] for i in keep]
        loaded = replace(loaded, pairs=part, name=f"{loaded.name} (held-out half)")
    sim, metrics = _simulate(state, loaded, embedder, embedding_cache, scoring)
    positives = sum(p.label for p in loaded.pairs)
    click.echo(
        f"data: {loaded.name}: {len(loaded.pairs):,} pairs ({positives:,} duplicates), "
        f"{loaded.skipped} skipped; model {embedder.model_id}"
    )
    if metrics is not None:
        click.echo(
            f"\npair metrics, cos(a, b) as a duplicate classifier: ROC-AUC {metrics.roc_auc:.4f}, "
            f"average precision {metrics.average_precision:.4f}, best F1 {metrics.best_f1:.4f} "
            f"at {metrics.best_f1_threshold:.3f}"
        )
    click.echo(
        f"\ncache simulation: {sim.cached:,} cached questions, {len(sim.probes):,} lookups "
        f"({int(sim.exact.sum()):,} on the exact-match path), scoring '{scoring}'"
    )
    rules = {"plain cosine": GuardConfig.off()}
    if guards:
        rules["guarded"] = GuardConfig()
    curves = {name: sim.rows(config) for name, config in rules.items()}
    _print_table(curves)
    chosen = {name: choose_threshold(rows, **target) for name, rows in curves.items()}
    click.echo(f"\noperating point ({_target_text(target)}, highest hit rate):")
    for name, row in chosen.items():
        if row is None:
            click.echo(f"  {name}: no threshold meets the target")
            continue
        click.echo(
            f"  {name}: threshold {row.threshold:.3f}: hit rate {_pct(row.hit_rate).strip()}, "
            f"false hits {_pct(row.false_hit_rate).strip()}, precision "
            f"{_pct(row.precision).strip()}, recall {_pct(row.recall).strip()}"
        )
    plain, guarded = chosen.get("plain cosine"), chosen.get("guarded")
    exact = float(sim.exact.mean())
    if plain is not None and guarded is not None and plain.hit_rate > exact:
        click.echo(
            f"  guarded / plain hit rate: {guarded.hit_rate / plain.hit_rate:.3f}x "
            f"({(guarded.hit_rate - exact) / (plain.hit_rate - exact):.3f}x without the "
            f"{_pct(exact).strip()} exact-path lookups both serve)"
        )
    if guards:
        _report_defaults(embedder, curves)
    if svg_path:
        title = f"{loaded.name}: {len(loaded.pairs):,} pairs, {embedder.model_id}"
        Path(svg_path).write_text(threshold_chart(curves, chosen, title=title), "utf-8")
        click.echo(f"\nwrote {svg_path}")


def _report_defaults(embedder: Embedder, curves: dict[str, list[SimulationRow]]) -> None:
    """The embedder's default thresholds, and plain cosine tuned to the same false hits."""
    guarded = at_threshold(curves["guarded"], embedder.default_threshold)
    unguarded = getattr(embedder, "unguarded_threshold", embedder.default_threshold)
    plain = at_threshold(curves["plain cosine"], unguarded)
    same = choose_threshold(curves["plain cosine"], max_false_hit_rate=guarded.false_hit_rate)
    click.echo("at the defaults of this embedder:")
    for name, row in (("guarded", guarded), ("plain cosine", plain), ("plain, same false", same)):
        if row is not None:
            click.echo(
                f"  {name}: threshold {row.threshold:.3f}: hit rate {_pct(row.hit_rate).strip()}, "
                f"false hits {_pct(row.false_hit_rate).strip()}, precision "
                f"{_pct(row.precision).strip()}"
            )
    if same is not None and same.hit_rate > 0:
        click.echo(
            f"  guarded default / plain cosine at the same false hits: "
            f"{guarded.hit_rate / same.hit_rate:.3f}x"
        )


def _feedback_simulation(cache: SemanticCache, namespace: str | None) -> Simulation:
    rows = [r for r in cache.feedback_rows(namespace) if r.signals is not None]
    if len(rows) < 10:
        raise click.ClickException(
            f"only {len(rows)} feedback rows with a similarity"
            f"{'' if namespace is None else f' in namespace {namespace!r}'}; need at least 10"
        )
    probes = [
        Probe(r.query or "", r.matched_query, r.exact, r.correct, r.signals)
        for r in rows
        if r.signals is not None
    ]
    table = SignalTable.from_signals([p.signals for p in probes])
    return Simulation(probes, 0, sum(p.correct for p in probes), table)


@cli.command()
@click.argument("db_path", metavar="DB")
@click.argument("data", required=False)
@_data_options
@click.option("--max-false-hit-rate", type=float, default=None, help="Target (default 0.05).")
@click.option("--min-precision", type=float, default=None, help="Target instead: precision.")
@click.option("--namespace", default=None, help="Store for this namespace (default: the file).")
@click.option("--from-feedback", is_flag=True, help="Use feedback recorded in DB, not DATA.")
@click.option("--refit", is_flag=True, help="Also refit the guard weights on the data.")
@click.option("--dry-run", is_flag=True, help="Show the choice, store nothing.")
@click.option("--clear", is_flag=True, help="Remove the stored calibration and exit.")
@_embedder_options
@pass_state
def calibrate(
    state: CliState,
    db_path: str,
    data: str | None,
    limit: int | None,
    seed: int,
    guards: bool,
    embedding_cache: str,
    scoring: str,
    max_false_hit_rate: float | None,
    min_precision: float | None,
    namespace: str | None,
    from_feedback: bool,
    refit: bool,
    dry_run: bool,
    clear: bool,
    embedder_kind: str,
    model: str | None,
    base_url: str | None,
    api_key: str | None,
) -> None:
    """Choose and store the threshold of a cache file (or one namespace).

    The threshold meeting the target (--max-false-hit-rate, default 0.05, or
    --min-precision) with the highest hit rate in the cache simulation on DATA
    (labelled pairs), or on the feedback recorded with cache.feedback()
    (--from-feedback). The cache then uses it: per call > namespace > file >
    constructor > the embedder's default. Calibrate with the guards your
    application uses (--no-guards for guards=False).

    Example: semcache calibrate app.db ../shared/data/qqp_pairs_dev.jsonl.gz --namespace faq
    """
    target = _target(max_false_hit_rate, min_precision)
    embedder = _chosen_embedder(state, embedder_kind, model, base_url, api_key, db_path)
    config = GuardConfig() if guards else GuardConfig.off()
    with SemanticCache(db_path, embedder=embedder, guards=config) as cache:
        if clear:
            removed = cache.clear_calibration(namespace)
            where = "the file" if namespace is None else f"namespace {namespace!r}"
            click.echo(f"{'removed' if removed else 'no'} calibration for {where}")
            return
        if from_feedback:
            sim, source = _feedback_simulation(cache, namespace), "feedback"
            size: dict[str, int | None] = {"feedback_rows": len(sim.probes)}
        else:
            loaded = load_pairs(_data_path(data), limit, seed)
            sim, _ = _simulate(state, loaded, embedder, embedding_cache, scoring)
            source = loaded.name
            size = {"pairs": len(loaded.pairs), "limit": limit, "seed": seed}
        stored = cache.calibration(namespace)
        if stored is not None and stored.embedding_model != embedder.model_id:
            stored = None  # weights fitted on another model's similarities
        if stored is not None and stored.guards is not None and config.enabled:
            config = replace(config, weights=stored.guards.weights)
        if refit and config.enabled:
            config = replace(config, weights=fit_weights(*sim.fit_data(), config))
        rows = sim.rows(config)
        row = choose_threshold(rows, **target)
        if row is None:
            wanted = _target_text(target)
            raise click.ClickException(f"no threshold meets {wanted} on this data")
        _report_choice(row, rows, config, sim)
        if dry_run:
            click.echo("dry run: nothing stored")
            return
        calibration = Calibration(
            threshold=row.threshold,
            namespace=FILE_WIDE if namespace is None else namespace,
            guards=config,
            source=source,
            target=_target_text(target),
            figures={
                **{k: v for k, v in row.to_dict().items() if k != "threshold"},
                "lookups": len(sim.probes),
                "scoring": scoring,
                "refit": refit,
                **size,
            },
        )
        cache.set_calibration(calibration)
        where = "the whole file" if namespace is None else f"namespace {namespace!r}"
        click.echo(f"stored threshold {row.threshold:.3f} for {where} in {cache.path}")


def _report_choice(
    row: SimulationRow, rows: list[SimulationRow], config: GuardConfig, sim: Simulation
) -> None:
    rule = "guards: " + (", ".join(config.enabled) if config.enabled else "off (plain cosine)")
    click.echo(f"{len(sim.probes):,} lookups; {rule}")
    if config.weights is not None:
        weights = config.weights.to_dict()
        click.echo("weights: " + ", ".join(f"{k} {v:.3f}" for k, v in weights.items()))
    click.echo(
        f"chosen threshold {row.threshold:.3f}: hit rate {_pct(row.hit_rate).strip()}, false hits "
        f"{_pct(row.false_hit_rate).strip()}, precision {_pct(row.precision).strip()}"
    )
    near = [r for r in rows if math.isclose(r.threshold * 100, round(r.threshold * 100))]
    near = [r for r in near if abs(r.threshold - row.threshold) <= 0.03]
    for r in near:
        click.echo(
            f"  {r.threshold:.2f}: hit rate {_pct(r.hit_rate)}  false hits {_pct(r.false_hit_rate)}"
            f"  precision {_pct(r.precision)}"
        )
