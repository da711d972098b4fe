"""Hit-quality signals, the guard rule and the combiner, without a cache file."""

from __future__ import annotations

import random

import numpy as np
import pytest

from semcache_sqlite import GuardConfig, GuardWeights, InvalidInputError, Signals
from semcache_sqlite.combiner import SignalTable, fit_weights
from semcache_sqlite.embedders import LOCAL_DEFAULT_THRESHOLD, LOCAL_UNGUARDED_THRESHOLD
from semcache_sqlite.quality import (
    GUARD_NAMES,
    check_band,
    competitor_gaps,
    lexical_signals,
    match_signals,
    packaged_calibration,
    packaged_weights,
    parse_guards,
    text_features,
)


@pytest.mark.parametrize(
    ("a", "b", "fires"),
    [
        ("What is the price of the iPhone 12?", "What is the price of the iPhone 13?", "numbers"),
        ("Best hotels in Paris?", "Best hotels in London?", "entities"),
        ("How do I enable 2FA?", "How do I disable 2FA?", "opposites"),
        ("Is it safe to eat raw eggs?", "Is it not safe to eat raw eggs?", "negation"),
        ("Why can't I log in?", "Why can I log in?", "negation"),
    ],
)
def test_each_lexical_signal_fires_on_its_case(a: str, b: str, fires: str) -> None:
    signals = lexical_signals(a, b)
    assert signals[fires] == 1
    others = {"numbers", "entities", "negation", "opposites"} - {fires}
    assert all(signals[name] == 0 for name in others), signals
    assert lexical_signals(b, a)[fires] == 1  # symmetric


def test_lexical_signals_stay_quiet_on_paraphrases() -> None:
    for a, b in [
        ("How do I reset my password?", "How can I reset my password?"),
        ("What is the capital of France?", "What's the capital city of France?"),
        ("how do I learn python?", "How do I learn Python?"),  # case only: same words
        ("What Is The Best Way To Learn Java?", "what is the best way to learn java"),
        ("Is 1,000 enough?", "Is 1000 enough?"),
    ]:
        signals = lexical_signals(a, b)
        assert not any(signals[k] for k in ("numbers", "entities", "negation", "opposites")), (
            a,
            b,
            signals,
        )


def test_name_like_tokens() -> None:
    features = text_features("Why did NASA send the iPhone 12 and 2FA codes to Mars? Because.")
    assert {"nasa", "iphone", "2fa", "mars"} <= features.entities
    assert "why" not in features.entities and "because" not in features.entities
    assert text_features("What Is The Best Way To Learn Java").entities == frozenset()
    assert lexical_signals("reset my password", "reset my router")["overlap"] == pytest.approx(
        1 / 3
    )


def test_competitor_gaps_skip_neighbours_serving_the_same_answer() -> None:
    assert competitor_gaps(0.9, [], []) == (None, None)
    margin, crowding = competitor_gaps(0.9, [0.89, 0.7, 0.6, 0.5], [True, False, False, False])
    assert margin == pytest.approx(0.2) and crowding == pytest.approx(0.4)
    signals = match_signals(
        "what is my plan?",
        ("what is my plan", "alice's plan", 0.97),
        [("What is my plan", "shared plan", 0.97), ("pricing", "Pro plan", 0.5)],
    )
    assert signals.margin == pytest.approx(0.47)  # the same question for another user competes not
    assert signals.crowding is None


def test_penalties_and_score() -> None:
    weights = GuardWeights(margin=0.5, crowding=0.4, numbers=0.07, swap=0.5, negation=0.03)
    guards = GuardConfig(weights=weights)
    quiet = Signals(0.9, margin=0.5, crowding=0.5)
    assert guards.penalties(quiet) == {} and guards.score(quiet) == pytest.approx(0.9)
    loud = Signals(0.9, margin=0.0, crowding=0.1, numbers=1, negation=1, overlap=1.0)
    penalties = guards.penalties(loud)
    assert penalties == pytest.approx(
        {"margin": 0.1, "crowding": 0.08, "numbers": 0.07, "negation": 0.03, "swap": 0.05}
    )
    assert guards.score(loud) == pytest.approx(0.9 - sum(penalties.values()))
    assert GuardConfig.off().score(loud) == 0.9
    assert GuardConfig(weights=GuardWeights(numbers=5.0)).score(loud) == 0.0  # clipped
    assert GuardConfig.only("numbers").enabled == ("numbers",)
    assert GuardConfig.only("numbers").neighbours == 1 and GuardConfig().neighbours == 4


def test_parse_guards_and_round_trip() -> None:
    assert parse_guards(None) == parse_guards(True) == GuardConfig()
    assert parse_guards(False).enabled == ()
    assert parse_guards("margin, numbers").enabled == ("margin", "numbers")
    assert parse_guards(["swap"]).enabled == ("swap",)
    with pytest.raises(InvalidInputError, match="unknown guards"):
        parse_guards("margins")
    config = GuardConfig(numbers=False, weights=GuardWeights(margin=0.3))
    assert GuardConfig.from_dict(config.to_dict()) == config
    with pytest.raises(InvalidInputError):
        GuardWeights.from_dict({"margin": -1})
    assert check_band(None) is None and check_band((0.9, 0.95)) == (0.9, 0.95)
    for bad in [(0.95, 0.9), (0.5, 1.5), (0.9,), "ab"]:
        with pytest.raises(InvalidInputError):
            check_band(bad)  # type: ignore[arg-type]


def test_vectorised_scores_equal_the_rule() -> None:
    rng = random.Random(3)
    signals = [
        Signals(
            rng.uniform(0.5, 1.0),
            margin=None if rng.random() < 0.2 else rng.uniform(0, 0.3),
            crowding=None if rng.random() < 0.3 else rng.uniform(0, 0.4),
            numbers=rng.randint(0, 1),
            entities=rng.randint(0, 1),
            negation=rng.randint(0, 1),
            opposites=rng.randint(0, 1),
            overlap=rng.random(),
        )
        for _ in range(300)
    ]
    table = SignalTable.from_signals(signals)
    for config in (GuardConfig(), GuardConfig.off(), GuardConfig.only("margin", "swap")):
        expected = [config.score(s) for s in signals]
        assert np.allclose(table.scores(config), expected)


def test_fit_weights_learns_penalties_and_never_rewards() -> None:
    rng = np.random.default_rng(0)
    n = 4000
    similarity = rng.uniform(0.75, 1.0, n)
    numbers = rng.random(n) < 0.3
    entities = rng.random(n) < 0.3  # unrelated to correctness
    logit = 30 * (similarity - 0.88) - 3.0 * numbers
    correct = rng.random(n) < 1 / (1 + np.exp(-logit))
    signals = [
        Signals(float(s), numbers=int(u), entities=int(e), overlap=0.0)
        for s, u, e in zip(similarity, numbers, entities, strict=True)
    ]
    weights = fit_weights(SignalTable.from_signals(signals), correct)
    assert weights.numbers == pytest.approx(0.1, abs=0.03)  # 3.0 / 30 cosine units
    assert weights.entities < 0.02
    assert min(weights.to_dict().values()) >= 0.0
    with pytest.raises(InvalidInputError):
        fit_weights(SignalTable.from_signals(signals[:5]), correct[:5])


def test_packaged_weights_and_default_thresholds_agree() -> None:
    shipped = packaged_calibration()
    assert shipped["default_threshold"] == LOCAL_DEFAULT_THRESHOLD
    assert shipped["static_threshold"] == LOCAL_UNGUARDED_THRESHOLD
    weights = packaged_weights()
    assert all(getattr(weights, name) > 0 for name in ("margin", "crowding", "numbers"))
    assert set(GUARD_NAMES) <= set(GuardConfig().to_dict())
