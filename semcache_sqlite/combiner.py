"""Fit the guard penalties: a logistic regression over the signals, in numpy.

``fit_weights`` takes labelled matches (the signals of a lookup and whether
serving its nearest entry was right), fits ``P(correct)`` as a logistic
function of the similarity and the enabled signals, and divides each signal's
coefficient by the similarity's: the penalty that signal is worth in cosine
units (see ``quality.py``). A coefficient with the wrong sign (the signal made
a correct match *more* likely) becomes 0, so guards only ever lower a score.

``SignalTable`` holds the signals of many lookups as arrays and scores them
all at once with exactly the rule ``GuardConfig.score`` applies to one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from .errors import InvalidInputError
from .quality import GuardConfig, GuardWeights, Signals, packaged_weights

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

#: The fitted weights (caps are not fitted).
PENALTIES = ("margin", "crowding", "numbers", "entities", "negation", "opposites", "swap")


@dataclass(frozen=True)
class SignalTable:
    """The signals of many lookups, one array per signal (NaN: gap unknown)."""

    similarity: FloatArray
    margin: FloatArray
    crowding: FloatArray
    numbers: FloatArray
    entities: FloatArray
    negation: FloatArray
    opposites: FloatArray
    overlap: FloatArray

    @classmethod
    def from_signals(cls, signals: Sequence[Signals]) -> SignalTable:
        def column(name: str) -> FloatArray:
            values = (getattr(s, name) for s in signals)
            return np.fromiter(
                (np.nan if v is None else float(v) for v in values),
                dtype=np.float64,
                count=len(signals),
            )

        return cls(
            *(column(n) for n in ("similarity", "margin", "crowding", "numbers", "entities")),
            *(column(n) for n in ("negation", "opposites", "overlap")),
        )

    @staticmethod
    def fields() -> tuple[str, ...]:
        return tuple(SignalTable.__dataclass_fields__)

    def __len__(self) -> int:
        return len(self.similarity)

    def subset(self, mask: BoolArray) -> SignalTable:
        return SignalTable(*(getattr(self, f)[mask] for f in self.fields()))

    def features(self, config: GuardConfig, w: GuardWeights) -> tuple[FloatArray, list[str]]:
        """One column per enabled penalty (the amount charged per unit of weight)."""
        columns: list[FloatArray] = []
        names: list[str] = []

        def add(name: str, values: FloatArray) -> None:
            names.append(name)
            columns.append(values)

        if config.margin:
            add("margin", np.nan_to_num(np.maximum(0.0, w.margin_cap - self.margin), nan=0.0))
        if config.crowding:
            shortfall = np.maximum(0.0, w.crowding_cap - self.crowding)
            add("crowding", np.nan_to_num(shortfall, nan=0.0))
        if config.numbers:
            add("numbers", self.numbers)
        if config.entities:
            add("entities", self.entities)
        if config.negation:
            add("negation", self.negation)
            add("opposites", self.opposites)
        if config.swap:
            add("swap", self.overlap * np.maximum(0.0, 1.0 - self.similarity))
        if not columns:
            return np.zeros((len(self), 0)), names
        return np.stack(columns, axis=1), names

    def scores(self, config: GuardConfig) -> FloatArray:
        """``GuardConfig.score`` of every row."""
        if not config.enabled:
            same: FloatArray = self.similarity.copy()
            return same
        w = config.resolved_weights()
        x, names = self.features(config, w)
        charged = np.array([getattr(w, n) for n in names], dtype=np.float64)
        scores: FloatArray = np.clip(self.similarity - x @ charged, 0.0, 1.0)
        return scores


def fit_logistic(
    x: FloatArray, y: BoolArray, l2: float = 1e-3, iterations: int = 100
) -> FloatArray:
    """Coefficients (last = intercept) of an L2-regularised logistic regression (Newton)."""
    design = np.c_[x, np.ones(len(x))]
    target = y.astype(np.float64)
    w = np.zeros(design.shape[1])
    ridge = l2 * np.eye(len(w))
    ridge[-1, -1] = 0.0
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(design @ w, -40.0, 40.0)))
        gradient = design.T @ (p - target) + ridge @ w
        hessian = (design * (p * (1.0 - p))[:, None]).T @ design + ridge
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if float(np.max(np.abs(step))) < 1e-9:
            break
    return w


def fit_weights(
    table: SignalTable,
    correct: BoolArray,
    config: GuardConfig | None = None,
    *,
    min_similarity: float = 0.7,
    base: GuardWeights | None = None,
) -> GuardWeights:
    """Fit the penalties of ``config``'s guards on labelled semantic matches.

    Leave out lookups served by the exact path (they never see the guards).
    Only matches with similarity >= ``min_similarity`` are used: far below any
    sensible threshold the regression would learn about hopeless matches only.
    Guards that are off get weight 0; caps come from ``base`` (default: packaged).
    """
    config = config or GuardConfig()
    base = base or packaged_weights()
    keep = table.similarity >= min_similarity
    labels = np.asarray(correct, dtype=bool)[keep]
    if int(keep.sum()) < 20:
        raise InvalidInputError(
            f"need at least 20 labelled matches with similarity >= {min_similarity} to fit "
            f"the guard weights, got {int(keep.sum())}"
        )
    if labels.all() or not labels.any():
        raise InvalidInputError("need both correct and wrong matches to fit the guard weights")
    sub = table.subset(keep)
    x, names = sub.features(config, base)
    # logit = a * similarity - sum(b_i * x_i) + c  ->  penalty_i = b_i / a
    w = fit_logistic(np.c_[sub.similarity, -x], labels)
    if w[0] <= 0:
        raise InvalidInputError("similarity does not predict correct matches in this data")
    fitted = {name: max(0.0, float(w[1 + i] / w[0])) for i, name in enumerate(names)}
    return replace(base, **{name: fitted.get(name, 0.0) for name in PENALTIES})
