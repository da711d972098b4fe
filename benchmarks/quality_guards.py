"""Fit the hit-quality guards on half of the QQP pairs and measure them on the other half.

Run from the repository root (the data set is read from ../shared/data unless --data):

    python benchmarks/quality_guards.py [--data PATH] [--seed 0] [--write-weights]

1. Split the pairs by pair (seeded) into a fit half and a held-apart half. Each half
   is simulated as a cache (cache every text_a, ask every text_b) at its full size
   and as smaller caches (random samples of 1,000, 3,000 and 10,000 pairs, several
   each): how much the neighbour signals say depends on how full the cache is.
2. Fit the penalties (logistic regression, numpy) on the full fit half.
3. Choose the default threshold on the fit half: for each cache size, the threshold
   with the highest hit rate whose false hits stay <= 5% of lookups; the default is
   the highest of these (so the target holds at every size), rounded up to 0.01. The
   plain-cosine default fits nothing, so the whole file votes for it as well.
4. Report on the held-apart half, per cache size: the default operating point and
   the static threshold tuned to the same false-hit rate; hit rate at equal false-hit
   rate (5%, 2%, 1%; each rule at its best threshold); each guard alone and left
   out; the cost per lookup.
5. The DESIGN.md baseline on the whole file (static threshold).

``--write-weights`` stores the weights, the default threshold and these figures in
``semcache_sqlite/data/quality_weights.json`` (shipped with the package).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from semcache_sqlite.combiner import fit_weights
from semcache_sqlite.embedders import LocalEmbedder
from semcache_sqlite.evaluation import (
    DEFAULT_EMBEDDING_CACHE,
    EmbeddedTexts,
    LabelledPair,
    Simulation,
    SimulationRow,
    at_threshold,
    choose_threshold,
    embed_texts,
    load_pairs,
    simulate,
    split_pairs,
)
from semcache_sqlite.quality import GUARD_NAMES, GuardConfig, compute_signals, text_features

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO_ROOT / ".." / "shared" / "data" / "qqp_pairs_dev.jsonl.gz"
WEIGHTS_FILE = REPO_ROOT / "semcache_sqlite" / "data" / "quality_weights.json"
TARGETS = (0.05, 0.02, 0.01)
#: cache size (pairs sampled) -> how many samples
SIZES = {1000: 6, 3000: 4, 10000: 2}
DESIGN_FIGURES = {0.80: (0.56, 0.20), 0.90: (0.31, 0.079), 0.95: (0.16, 0.027)}
OFF = GuardConfig.off()


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def describe(row: SimulationRow | None) -> str:
    if row is None:
        return "no threshold meets the target"
    return (
        f"t={row.threshold:.3f} hit {pct(row.hit_rate)} false {pct(row.false_hit_rate)} "
        f"precision {pct(row.precision)}"
    )


def best_at(sim: Simulation, guards: GuardConfig, target: float) -> SimulationRow | None:
    return choose_threshold(sim.rows(guards), max_false_hit_rate=target)


def by_size(pairs: list[LabelledPair], embedded: EmbeddedTexts, seed: int) -> dict[str, Simulation]:
    """The full part and pooled samples of smaller caches, keyed by a label."""
    out: dict[str, Simulation] = {}
    for size, repeats in SIZES.items():
        samples = [
            simulate(random.Random(seed * 7919 + size * 31 + r).sample(pairs, size), embedded)
            for r in range(repeats)
        ]
        out[f"{size:,} pairs x{repeats}"] = Simulation.concat(samples)
    out[f"{len(pairs):,} pairs (all)"] = simulate(pairs, embedded)
    return out


def ratio_at(sim: Simulation, guards: GuardConfig, target: float) -> dict[str, Any]:
    static, guarded = best_at(sim, OFF, target), best_at(sim, guards, target)
    ratio = guarded.hit_rate / static.hit_rate if static and guarded else math.nan
    exact = float(sim.exact.mean())
    semantic = (
        (guarded.hit_rate - exact) / (static.hit_rate - exact)
        if static and guarded and static.hit_rate > exact
        else math.nan
    )
    return {
        "static": None if static is None else static.to_dict(),
        "guarded": None if guarded is None else guarded.to_dict(),
        "ratio": ratio,
        "ratio_semantic_hits": semantic,
    }


def lookup_cost_ms(sim: Simulation, guards: GuardConfig, n: int = 3000) -> float:
    """Signals + score per lookup, on texts not seen before (cold feature cache)."""
    probes = [p for p in sim.probes if not p.exact][:n]
    text_features.cache_clear()
    start = time.perf_counter()
    for p in probes:
        s = p.signals
        guards.score(compute_signals(p.query, p.matched, s.similarity, s.margin, s.crowding))
    return (time.perf_counter() - start) * 1000 / max(1, len(probes))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and samples")
    parser.add_argument("--fit-fraction", type=float, default=0.5)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_EMBEDDING_CACHE)
    parser.add_argument("--max-false-hit-rate", type=float, default=0.05)
    parser.add_argument("--write-weights", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="write all figures here")
    args = parser.parse_args(argv)
    target = args.max_false_hit_rate

    loaded = load_pairs(args.data.resolve())
    embedder = LocalEmbedder()
    embedded = embed_texts(
        loaded.all_texts,
        embedder,
        args.cache_dir,
        progress=lambda done, total: print(f"\rembedding {done}/{total}", end="", file=sys.stderr),
    )
    fit_pairs, test_pairs = split_pairs(loaded.pairs, args.fit_fraction, args.seed)
    started = time.perf_counter()
    fit_sims, test_sims = (
        by_size(fit_pairs, embedded, args.seed),
        by_size(test_pairs, embedded, args.seed + 1),
    )
    print(f"simulations: {time.perf_counter() - started:.0f}s", file=sys.stderr)
    fit_full, test_full = list(fit_sims.values())[-1], list(test_sims.values())[-1]
    print(
        f"pairs: {len(loaded.pairs):,} = {len(fit_pairs):,} fit + {len(test_pairs):,} held apart "
        f"(split by pair, seed {args.seed}); exact-path lookups in the held-apart half: "
        f"{pct(float(test_full.exact.mean()))}"
    )

    weights = fit_weights(*fit_full.fit_data())
    guards = GuardConfig(weights=weights)
    print("\nfitted penalties (cosine units):")
    print("  " + ", ".join(f"{k} {v:.3f}" for k, v in weights.to_dict().items()))

    def default_for(config: GuardConfig) -> tuple[float, dict[str, float]]:
        per_size = {}
        for label, sim in fit_sims.items():
            row = best_at(sim, config, target)
            per_size[label] = 1.0 if row is None else row.threshold
        # rounded up to 0.01: per-size estimates move by about +-0.005 between samples
        return math.ceil(max(per_size.values()) * 100 - 1e-9) / 100, per_size

    default_threshold, fit_per_size = default_for(guards)
    static_threshold, static_per_size = default_for(OFF)
    # Plain cosine fits nothing, so the whole file (the densest cache) may vote too.
    whole = simulate(loaded.pairs, embedded)
    whole_row = best_at(whole, OFF, target)
    static_per_size[f"{len(loaded.pairs):,} pairs (whole file)"] = (
        1.0 if whole_row is None else whole_row.threshold
    )
    static_threshold = math.ceil(max(static_per_size.values()) * 100 - 1e-9) / 100
    print(f"\nthreshold for false hits <= {pct(target)} on the fit half, per cache size:")
    for label, value in static_per_size.items():
        guarded_value = f"{fit_per_size[label]:.3f}" if label in fit_per_size else "  -  "
        print(f"  {label:>29s}: guarded {guarded_value}   static {value:.3f}")
    print(f"default threshold with the guards: {default_threshold:.3f} (highest, rounded up)")
    print(f"default threshold without guards:  {static_threshold:.3f}")

    print("\nHeld-apart half at the defaults vs the static threshold tuned to the same false hits:")
    held: dict[str, Any] = {}
    for label, sim in test_sims.items():
        row = at_threshold(sim.rows(guards), default_threshold)
        same = choose_threshold(sim.rows(OFF), max_false_hit_rate=row.false_hit_rate)
        static_default = at_threshold(sim.rows(OFF), static_threshold)
        ratio = row.hit_rate / same.hit_rate if same else math.nan
        held[label] = {
            "default": row.to_dict(),
            "static_same_false_hits": None if same is None else same.to_dict(),
            "ratio": ratio,
            "static_default": static_default.to_dict(),
            "equal_false_hits": {f"{t:.2f}": ratio_at(sim, guards, t) for t in TARGETS},
        }
        print(f"  {label:>22s}: {describe(row)}")
        print(f"  {'':>22s}  static {describe(same)}  -> {ratio:.3f}x")
        print(f"  {'':>22s}  guards off at {static_threshold:.3f}: {describe(static_default)}")
        print(
            f"  {'':>22s}  at equal false hits (best threshold each): "
            + ", ".join(
                f"{pct(float(t))}: {v['ratio']:.3f}x"
                for t, v in held[label]["equal_false_hits"].items()
            )
        )

    print("\nEach guard alone / all but it (all held-apart pairs, equal false hits 5% | 2%):")
    ablation: dict[str, dict[str, float]] = {}
    for name in GUARD_NAMES:
        alone = replace(GuardConfig.only(name), weights=weights)
        without = replace(GuardConfig.only(*[n for n in GUARD_NAMES if n != name]), weights=weights)
        ratios = {
            f"{label}_{int(t * 100)}": ratio_at(test_full, config, t)["ratio"]
            for label, config in (("alone", alone), ("without", without))
            for t in (0.05, 0.02)
        }
        ablation[name] = ratios
        print(
            f"  {name:9s} alone {ratios['alone_5']:.3f}x | {ratios['alone_2']:.3f}x   "
            f"all but it {ratios['without_5']:.3f}x | {ratios['without_2']:.3f}x"
        )
    cost = lookup_cost_ms(test_full, guards)
    print(f"\ncost of the signals + score: {cost:.3f} ms per lookup (texts not seen before)")

    print("\nWhole file, static threshold (DESIGN.md baseline):")
    whole_static, whole_guarded = whole.rows(OFF), whole.rows(guards)
    baseline = {}
    for t, (hr, fh) in DESIGN_FIGURES.items():
        row = at_threshold(whole_static, t)
        baseline[f"{t:.2f}"] = row.to_dict()
        print(
            f"  {t:.2f}: hit {pct(row.hit_rate)} false {pct(row.false_hit_rate)}   "
            f"(DESIGN.md: {pct(hr)} / {pct(fh)})"
        )
    whole_default = at_threshold(whole_guarded, default_threshold)
    print(f"  guards on, default threshold: {describe(whole_default)}")
    whole_off = at_threshold(whole_static, static_threshold)
    print(f"  guards off, {static_threshold:.3f}: {describe(whole_off)}")

    figures: dict[str, Any] = {
        "data": loaded.name,
        "pairs": len(loaded.pairs),
        "seed": args.seed,
        "fit_fraction": args.fit_fraction,
        "model_id": embedder.model_id,
        "target_false_hit_rate": target,
        "default_threshold": default_threshold,
        "static_threshold": static_threshold,
        "fit_thresholds_per_size": {"guarded": fit_per_size, "static": static_per_size},
        "held_apart": held,
        "ablation": ablation,
        "whole_file_static": baseline,
        "whole_file_guarded_default": whole_default.to_dict(),
        "ms_per_lookup": cost,
    }
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    if args.write_weights:
        summary = {
            "weights": weights.to_dict(),
            "default_threshold": default_threshold,
            "static_threshold": static_threshold,
            "fitted_on": (
                f"{loaded.name}: {len(fit_pairs)} of {len(loaded.pairs)} pairs (split by pair, "
                f"seed {args.seed}), model {embedder.model_id}"
            ),
            "target_false_hit_rate": target,
            "held_apart": {
                label: {k: v for k, v in item.items() if k != "equal_false_hits"}
                for label, item in held.items()
            },
            "produced_by": "python benchmarks/quality_guards.py --write-weights",
        }
        WEIGHTS_FILE.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {WEIGHTS_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
