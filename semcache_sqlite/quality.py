"""Hit quality: cheap local signals on top of cosine similarity, and the rule that combines them.

The cosine similarity of the nearest cached query says how alike two queries
*read* to the embedding model; small models miss differences that change the
answer ("iPhone 12" vs "iPhone 13", "Paris" vs "London", "enable" vs "disable").
These signals come from the two texts and the next neighbours of the KNN
(k=4), for a few hundredths of a millisecond per lookup:

- ``margin``: similarity of the best match minus that of the nearest *competing*
  entry in scope (one that would serve another answer: another normalised
  question and another response). A query between two different cached
  questions is ambiguous. ``None`` when nothing competes (no penalty).
- ``crowding``: the same gap to the third competing entry: a query in a crowded
  region of the cache is easier to match with the wrong neighbour.
- ``numbers``: a number in one text and not in the other.
- ``entities``: a name-like token - capitalised but not sentence-initial, an
  acronym, mixed case or letters with digits (``Paris``, ``NASA``, ``iPhone``,
  ``2FA``) - in one text and absent, in any case, from the other.
- ``negation``: a negation word (not, no, never, without, ...n't) in one text
  only; or a word whose opposite (enable/disable, buy/sell, ...) is in the
  other text only (``opposites``).
- ``swap``: content-word overlap (Jaccard, stop words removed) times
  ``1 - similarity``. Two texts that share nearly all their words yet are not
  near-identical to the model differ in a word that matters ("reset my
  password" / "reset my router"); the penalty fades as similarity nears 1.

Decision rule. Each enabled guard turns its signal into a penalty in cosine
units and ``score = similarity - penalties`` (clipped to [0, 1]); a lookup hits
iff ``score >= threshold``. With every guard off, ``score == similarity``. The
penalties are a logistic regression over the signals divided by its cosine
coefficient, so they live on the similarity's scale and the threshold keeps its
meaning. A guard never raises a score. The packaged weights
(``data/quality_weights.json``) were fitted on half of the QQP dev pairs with
the local model; ``semcache calibrate --refit`` fits them on your own data.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np

from .errors import InvalidInputError
from .validation import normalize_query

_WORD = re.compile("[^\\W_]+(?:['\u2019][^\\W_]+)*")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_SENTENCE_START = re.compile(r"(?:^|[.?!:;]\s+|[\"'(\[]\s*)([^\W_]+)")


#: Words that flip a statement. Apostrophes are dropped before matching, and any
#: word ending in "n't" counts too.
def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


NEGATION_WORDS = _words(
    "not no never none nothing nobody nowhere neither nor without cannot cant dont doesnt didnt "
    "isnt arent wasnt werent wont wouldnt shouldnt couldnt hasnt havent hadnt mustnt"
)

_OPPOSITE_PAIRS = (
    "enable disable|enabled disabled|activate deactivate|on off|add remove|"
    "install uninstall|increase decrease|open close|start stop|lock unlock|subscribe unsubscribe|"
    "buy sell|upload download|import export|encrypt decrypt|before after|max min|"
    "maximum minimum|best worst|advantages disadvantages|with without|more less|higher lower|"
    "connect disconnect|login logout|accept reject|include exclude|follow unfollow|like dislike|"
    "win lose|pros cons|male female|men women|positive negative|legal illegal|"
    "possible impossible|true false|cheap expensive|cheapest costliest|easy hard|"
    "easiest hardest|first last|input output|hot cold|increase reduce|allow block|show hide|"
    "mute unmute|public private|internal external|upgrade downgrade|online offline|"
    "encode decode|compress decompress|inbound outbound|ascending descending"
)


def _opposites() -> dict[str, frozenset[str]]:
    table: dict[str, set[str]] = {}
    for pair in _OPPOSITE_PAIRS.split("|"):
        a, b = pair.split()
        table.setdefault(a, set()).add(b)
        table.setdefault(b, set()).add(a)
    return {k: frozenset(v) for k, v in table.items()}


#: word -> its opposites (symmetric). Small and hand-made: extend per domain.
OPPOSITES = _opposites()

#: Function words left out of the word overlap used by the ``swap`` signal.
STOP_WORDS = _words(
    "a an the of to in on at for from by with about into onto over under than then so as "
    "and or but if is are was were be been being am do does did doing done have has had "
    "having can could should would will shall may might must i me my mine you your yours we "
    "us our ours they them their he him his she her it its this that these those there here "
    "what which who whom whose why how when where some any all each every much many one s "
    "get got make way ways good really"
)


@dataclass(frozen=True)
class TextFeatures:
    """What the lexical signals need from one text, computed once."""

    words: frozenset[str]  # lower-cased word tokens
    numbers: frozenset[str]
    entities: frozenset[str]  # lower-cased
    negated: bool
    content: frozenset[str]


@lru_cache(maxsize=4096)
def text_features(text: str) -> TextFeatures:
    tokens = list(_WORD.finditer(text))
    lower = [m.group(0).lower().replace("\u2019", "'") for m in tokens]
    capitalised = sum(1 for m in tokens if m.group(0)[:1].isupper())
    # Title Case or SHOUTING: capitals carry no information about names.
    capitals_mean_names = not (len(tokens) >= 4 and capitalised > 0.6 * len(tokens))
    starts = {m.start(1) for m in _SENTENCE_START.finditer(text)}
    entities: set[str] = set()
    for match, low in zip(tokens, lower, strict=True):
        token = match.group(0)
        has_alpha = any(c.isalpha() for c in token)
        mixed = any(c.isupper() for c in token[1:]) or (
            has_alpha and any(c.isdigit() for c in token)
        )
        name_like = mixed and (capitals_mean_names or any(c.isdigit() for c in token))
        capitalised_word = (
            token[:1].isupper()
            and capitals_mean_names
            and match.start() not in starts
            and token != "I"
        )
        if name_like or capitalised_word:
            entities.add(low)
    words = frozenset(lower)
    negated = any(w.replace("'", "") in NEGATION_WORDS or w.endswith("n't") for w in lower)
    numbers = frozenset(n.replace(",", "") for n in _NUMBER.findall(text))
    content = frozenset(w for w in words if w not in STOP_WORDS and not w.isdigit())
    return TextFeatures(words, numbers, frozenset(entities), negated, content)


@dataclass(frozen=True)
class Signals:
    """Everything the decision rule looks at for one (query, cached query) match."""

    similarity: float
    margin: float | None = None  # gap to the nearest competing entry; None: none in scope
    crowding: float | None = None  # gap to the third competing entry; None: fewer
    numbers: int = 0  # 1 if a number is in one text and not the other
    entities: int = 0  # 1 if a name-like token is in one text only
    negation: int = 0  # 1 if only one text is negated
    opposites: int = 0  # 1 if a word's opposite is in the other text only
    overlap: float = 0.0  # Jaccard of the content words (0 when unknown)

    def to_dict(self) -> dict[str, float | int | None]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Signals:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def lexical_signals(query: str, cached: str) -> dict[str, float]:
    """The text-only signals between the query asked and a cached query."""
    a, b = text_features(query), text_features(cached)
    only_a, only_b = a.words - b.words, b.words - a.words
    opposite = any(OPPOSITES.get(w, frozenset()) & only_b for w in only_a)
    entities = any(e not in b.words for e in a.entities) or any(
        e not in a.words for e in b.entities
    )
    union = a.content | b.content
    return {
        "numbers": int(a.numbers != b.numbers),
        "entities": int(entities),
        "negation": int(a.negated != b.negated),
        "opposites": int(opposite),
        "overlap": len(a.content & b.content) / len(union) if union else 1.0,
    }


def competitor_gaps(
    similarity: float, others: Sequence[float], same_answer: Sequence[bool]
) -> tuple[float | None, float | None]:
    """(margin, crowding): ``similarity`` minus that of the first and of the third
    neighbour that would serve another answer.

    ``others`` are the next neighbours' similarities, best first; ``same_answer``
    marks those serving the same thing as the best match (same normalised
    question or same response): they compete with nothing.
    """
    competing = [s for s, same in zip(others, same_answer, strict=True) if not same]
    margin = max(0.0, similarity - competing[0]) if competing else None
    crowding = max(0.0, similarity - competing[2]) if len(competing) >= 3 else None
    return margin, crowding


def compute_signals(
    query: str | None,
    cached: str | None,
    similarity: float,
    margin: float | None = None,
    crowding: float | None = None,
) -> Signals:
    """Signals of one match; without both texts only the neighbour gaps are known."""
    if query is None or cached is None:
        return Signals(similarity, margin, crowding)
    lexical = lexical_signals(query, cached)
    return Signals(
        similarity,
        margin,
        crowding,
        numbers=int(lexical["numbers"]),
        entities=int(lexical["entities"]),
        negation=int(lexical["negation"]),
        opposites=int(lexical["opposites"]),
        overlap=float(lexical["overlap"]),
    )


def match_signals(
    query: str | None,
    best: tuple[str, str, float],
    others: Sequence[tuple[str, str, float]],
    *,
    lexical: bool = True,
) -> Signals:
    """Signals of the best neighbour ``(cached query, response, similarity)`` given the
    next neighbours. A neighbour with the best's normalised question or response
    serves the same thing and competes with nothing."""
    best_query, best_response, similarity = best
    key = normalize_query(best_query)
    same = [normalize_query(q) == key or r == best_response for q, r, _ in others]
    margin, crowding = competitor_gaps(similarity, [s for _, _, s in others], same)
    return compute_signals(query if lexical else None, best_query, similarity, margin, crowding)


#: The guards, in the order they are documented and fitted.
GUARD_NAMES = ("margin", "crowding", "numbers", "entities", "negation", "swap")


@dataclass(frozen=True)
class GuardWeights:
    """Penalties in cosine units, subtracted from the similarity.

    ``margin`` / ``crowding`` are charged per unit of gap below ``margin_cap`` /
    ``crowding_cap``; ``swap`` per unit of ``overlap * (1 - similarity)``; the
    others once when their signal fires.
    """

    margin: float = 0.0
    crowding: float = 0.0
    numbers: float = 0.0
    entities: float = 0.0
    negation: float = 0.0
    opposites: float = 0.0
    swap: float = 0.0
    margin_cap: float = 0.2
    crowding_cap: float = 0.3

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GuardWeights:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise InvalidInputError(f"unknown guard weights: {sorted(unknown)}")
        values: dict[str, float] = {}
        for key, value in data.items():
            number = float(value)
            if not np.isfinite(number) or number < 0:
                raise InvalidInputError(f"guard weight {key} must be a finite number >= 0")
            values[key] = number
        return cls(**values)


@lru_cache(maxsize=1)
def _packaged() -> dict[str, Any]:
    text = resources.files("semcache_sqlite.data").joinpath("quality_weights.json").read_text()
    data: dict[str, Any] = json.loads(text)
    return data


def packaged_weights() -> GuardWeights:
    """The weights shipped with the package (fitted on QQP dev pairs, local model)."""
    return GuardWeights.from_dict(_packaged()["weights"])


def packaged_calibration() -> dict[str, Any]:
    """Where the packaged weights and the local model's default threshold came from."""
    return dict(_packaged())


@dataclass(frozen=True)
class GuardConfig:
    """Which signals may weaken a semantic hit (see the module docstring). All on by default.

    ``negation`` covers negation words and opposite pairs. ``weights`` None means
    the packaged weights, or those a calibration stored in the cache file. The
    exact-match path (identical normalised text) never runs guards.
    """

    margin: bool = True
    crowding: bool = True
    numbers: bool = True
    entities: bool = True
    negation: bool = True
    swap: bool = True
    weights: GuardWeights | None = None

    @classmethod
    def off(cls) -> GuardConfig:
        """Plain cosine similarity: hit iff similarity >= threshold."""
        return cls.only()

    @classmethod
    def only(cls, *names: str) -> GuardConfig:
        """Just the named guards, e.g. ``GuardConfig.only("margin", "numbers")``."""
        unknown = set(names) - set(GUARD_NAMES)
        if unknown:
            raise InvalidInputError(f"unknown guards {sorted(unknown)}; known: {GUARD_NAMES}")
        return cls._from_flags({name: name in names for name in GUARD_NAMES})

    @classmethod
    def _from_flags(
        cls, flags: Mapping[str, bool], weights: GuardWeights | None = None
    ) -> GuardConfig:
        return cls(
            margin=flags["margin"],
            crowding=flags["crowding"],
            numbers=flags["numbers"],
            entities=flags["entities"],
            negation=flags["negation"],
            swap=flags["swap"],
            weights=weights,
        )

    @property
    def enabled(self) -> tuple[str, ...]:
        return tuple(name for name in GUARD_NAMES if getattr(self, name))

    @property
    def neighbours(self) -> int:
        """How many nearest neighbours the KNN must return for these guards."""
        return 4 if self.margin or self.crowding else 1

    @property
    def is_default(self) -> bool:
        """All guards on with the packaged weights: the set the default threshold is for."""
        return self == GuardConfig()

    @property
    def lexical(self) -> bool:
        return self.numbers or self.entities or self.negation or self.swap

    def without_lexical(self) -> GuardConfig:
        """The guards that can run without the query's text (margin, crowding): what
        ``find_similar``, given only an embedding, applies."""
        return replace(self, numbers=False, entities=False, negation=False, swap=False)

    def resolved_weights(self) -> GuardWeights:
        return self.weights if self.weights is not None else packaged_weights()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: getattr(self, name) for name in GUARD_NAMES}
        if self.weights is not None:
            out["weights"] = self.weights.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GuardConfig:
        weights = data.get("weights")
        return cls._from_flags(
            {name: bool(data.get(name, False)) for name in GUARD_NAMES},
            None if weights is None else GuardWeights.from_dict(weights),
        )

    def penalties(self, signals: Signals) -> dict[str, float]:
        """The penalty each enabled guard charges for these signals (non-zero ones only)."""
        w = self.resolved_weights()
        out: dict[str, float] = {}
        if self.margin and signals.margin is not None:
            out["margin"] = w.margin * max(0.0, w.margin_cap - signals.margin)
        if self.crowding and signals.crowding is not None:
            out["crowding"] = w.crowding * max(0.0, w.crowding_cap - signals.crowding)
        if self.numbers and signals.numbers:
            out["numbers"] = w.numbers
        if self.entities and signals.entities:
            out["entities"] = w.entities
        if self.negation and signals.negation:
            out["negation"] = w.negation
        if self.negation and signals.opposites:
            out["opposites"] = w.opposites
        if self.swap:
            out["swap"] = w.swap * signals.overlap * max(0.0, 1.0 - signals.similarity)
        return {k: v for k, v in out.items() if v > 0}

    def score(self, signals: Signals) -> float:
        """similarity minus the penalties, clipped to [0, 1]: what meets the threshold."""
        value = signals.similarity - sum(self.penalties(signals).values())
        return min(1.0, max(0.0, value))


GuardsArgument = GuardConfig | bool | str | Iterable[str] | None
#: ``verify(query asked, cached query, cached response) -> serve it?``
Verifier = Callable[[str, str, str], bool]


def parse_guards(value: GuardsArgument) -> GuardConfig:
    """``None``/``True``: the defaults; ``False``: off; names (or "a,b"); or a GuardConfig."""
    if value is None or value is True:
        return GuardConfig()
    if value is False:
        return GuardConfig.off()
    if isinstance(value, GuardConfig):
        return value
    if isinstance(value, str):
        return GuardConfig.only(*[v.strip() for v in value.split(",") if v.strip()])
    return GuardConfig.only(*value)


def check_band(band: tuple[float, float] | None) -> tuple[float, float] | None:
    """A verification band ``(low, high)`` on the score, both in [0, 1], low <= high."""
    if band is None:
        return None
    try:
        low, high = (float(x) for x in band)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError("verify_band must be a (low, high) pair of numbers") from exc
    if not (0.0 <= low <= high <= 1.0):
        raise InvalidInputError(f"verify_band must satisfy 0 <= low <= high <= 1, got {band!r}")
    return low, high


def verify_hit(
    verify: Verifier | None,
    band: tuple[float, float] | None,
    score: float,
    query: str | None,
    cached_query: str,
    cached_response: str,
) -> bool:
    """Whether a semantic hit may be served: the verifier is asked only about hits
    whose score lies in ``[low, high)`` (every hit when there is no band). Without
    the query text (``find_similar``) such a hit cannot be checked and is refused;
    a verifier that raises refuses too (a miss is the safe outcome)."""
    if verify is None or (band is not None and not band[0] <= score < band[1]):
        return True
    if query is None:
        return False
    try:
        return bool(verify(query, cached_query, cached_response))
    except Exception:
        logging.getLogger("semcache_sqlite").warning(
            "verify() raised; not serving %r for %r", cached_query, query, exc_info=True
        )
        return False
