"""Deferral policy: a rule and a threshold per non-final tier, and an optional skip.

Tier i (not the last) keeps its answer when ``rules[i]`` scores it ``>= thresholds[i]``
and escalates to tier i + 1 otherwise; the last tier always answers. With a skip rule, a
request whose pre-generation score is below ``skip_threshold`` does not visit tier 0 at
all (it would almost surely escalate, so tier 0's cost would be wasted). Thresholds come
from the config or from a calibration artifact.

A per-group artifact (Mondrian calibration) certifies thresholds per group of traffic:
``by_group`` maps each group to its ``(thresholds, skip_threshold)``, the same rules, and
``for_group`` picks them; a request of no known group gets the most conservative group's
(``fallback_group``: the one that escalates most on its calibration items).

Which group a request belongs to is either named by the client (``Request.group``) or,
with ``group_by == "length"``, a fixed function of the request itself (``length_group``:
"long" when it asks for a larger answer budget than the tiers' configured one, else
"short"). A group function fixed before calibration keeps Mondrian validity per group,
and clients need not name anything.

A checkpointed policy (``checkpoints``) also decides *inside* tier 0's answer, at fixed
token counts k_1 < … < k_m: at each checkpoint the answer so far is scored by that
checkpoint's prefix rule and the request escalates now (tier 0's generation is aborted),
commits (tier 0's answer is kept and streams on; it can no longer escalate) or continues;
an answer that never commits is decided by the end rule as above. The commit and escalate
thresholds, the end threshold and the skip threshold are one configuration certified
together (``calibration.conformal.checkpoints``: fixed-sequence Learn-then-Test along a
path fixed before calibration).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Mapping

from .types import Request
from .uncertainty.rules import Rule, SignalRule, SkipRule

LENGTH_GROUPS = ("short", "long")
CHECKPOINT_DECISIONS = ("escalate", "commit", "continue")


@dataclass(frozen=True)
class Checkpoints:
    """Mid-generation decisions in tier 0's answer.

    ``tokens`` (m,) strictly increasing token counts >= 1; ``rules`` (m,) the prefix rule
    scoring the first ``tokens[j]`` tokens; ``commit`` and ``escalate`` (m,) thresholds. At
    checkpoint j: escalate when ``score < escalate[j]`` (checked first, the safe side when
    the bands overlap), else commit when ``score >= commit[j]``, else continue.
    ``commit[j] = +inf`` never commits at j; ``escalate[j] = -inf`` never escalates there.
    """

    tokens: tuple[int, ...]
    rules: tuple[Rule, ...]
    commit: tuple[float, ...]
    escalate: tuple[float, ...]

    def __post_init__(self) -> None:
        tokens = tuple(int(k) for k in self.tokens)
        object.__setattr__(self, "tokens", tokens)
        object.__setattr__(self, "rules", tuple(self.rules))
        object.__setattr__(self, "commit", tuple(float(t) for t in self.commit))
        object.__setattr__(self, "escalate", tuple(float(t) for t in self.escalate))
        if not tokens or tokens[0] < 1 or any(b <= a for a, b in zip(tokens, tokens[1:])):
            raise ValueError(f"checkpoints must be strictly increasing token counts >= 1, got {list(tokens)}")
        for name, values in (("rules", self.rules), ("commit", self.commit), ("escalate", self.escalate)):
            if len(values) != len(tokens):
                raise ValueError(f"{len(values)} checkpoint {name} for {len(tokens)} checkpoints")
        if any(math.isnan(t) for t in self.commit + self.escalate):
            raise ValueError("checkpoint thresholds must not be NaN")
        if any(r.needs_samples for r in self.rules):
            raise ValueError("a prefix rule cannot read sampled answers: a prefix has none")

    def decide(self, j: int, score: float) -> str:
        """``"escalate"``, ``"commit"`` or ``"continue"`` at checkpoint ``j`` for ``score``."""
        if score < self.escalate[j]:
            return "escalate"
        if score >= self.commit[j]:
            return "commit"
        return "continue"

    def with_thresholds(self, commit, escalate) -> "Checkpoints":
        return replace(self, commit=tuple(commit), escalate=tuple(escalate))

    def describe(self) -> str:
        """One line: each checkpoint's escalate and commit bands."""
        def band(value: float, never: float, word: str) -> str:
            return "never" if value == never else ("every answer" if math.isinf(value) else f"{word} {value:.3g}")

        return "checkpoints " + "; ".join(
            f"{k} tokens: escalate {band(e, -math.inf, '<')}, commit {band(c, math.inf, '>=')}"
            for k, c, e in zip(self.tokens, self.commit, self.escalate))


def length_group(max_tokens: int | None, budget: int) -> str:
    """``"long"`` when a request asks for more than ``budget`` answer tokens (the tiers'
    configured ``max_tokens``), else ``"short"``."""
    return "long" if max_tokens is not None and max_tokens > budget else "short"


@dataclass(frozen=True)
class Policy:
    """``rules`` and ``thresholds`` have one entry per non-final tier, in tier order."""

    rules: tuple[Rule, ...]
    thresholds: tuple[float, ...]
    skip: SkipRule | None = None
    skip_threshold: float | None = None
    by_group: Mapping[str, tuple] = field(default_factory=dict)
    """group -> ``(thresholds, skip_threshold)``, with ``(commit, escalate)`` as a third entry
    when the policy has checkpoints."""
    fallback_group: str | None = None
    group_by: str | None = None
    """``"length"``: a request's group is ``length_group(request)``; otherwise the client names it."""
    checkpoints: Checkpoints | None = None
    """Mid-generation decisions in tier 0's answer (``None``: decide at the end only)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "rules", tuple(self.rules))
        object.__setattr__(self, "thresholds", tuple(float(t) for t in self.thresholds))
        if len(self.rules) != len(self.thresholds):
            raise ValueError(f"{len(self.rules)} rules for {len(self.thresholds)} thresholds")
        if any(math.isnan(t) for t in self.thresholds):
            raise ValueError("thresholds must not be NaN")
        if (self.skip is None) != (self.skip_threshold is None):
            raise ValueError("a skip rule needs a skip threshold and vice versa")
        if self.by_group and self.fallback_group not in self.by_group:
            raise ValueError(f"the fallback group {self.fallback_group!r} is not one of the policy's groups")

    def group_of(self, request: Request, budget: int) -> str | None:
        """The group whose thresholds decide ``request`` (``budget``: tier 0's configured max_tokens)."""
        return length_group(request.max_tokens, budget) if self.group_by == "length" else request.group

    def for_group(self, group: str | None) -> tuple["Policy", str | None, bool]:
        """``(policy, group used, known)``: the thresholds of ``group``, or the fallback
        group's when ``group`` is unknown (``known`` false); ``self`` without groups."""
        if not self.by_group:
            return self, None, True
        known = group in self.by_group
        name = group if known else self.fallback_group
        thresholds, skip_threshold, *checkpointed = self.by_group[name]
        checkpoints = self.checkpoints
        if checkpoints is not None and checkpointed:
            checkpoints = checkpoints.with_thresholds(*checkpointed[0])
        return replace(self, thresholds=tuple(thresholds), skip_threshold=skip_threshold, by_group={},
                       fallback_group=None, group_by=None, checkpoints=checkpoints), name, known

    @classmethod
    def from_signal(cls, signal: str, thresholds) -> "Policy":
        """The same built-in signal for every non-final tier."""
        thresholds = tuple(thresholds)
        return cls(tuple(SignalRule(signal) for _ in thresholds), thresholds)

    @property
    def needs_embedding(self) -> bool:
        rules = self.rules + (self.checkpoints.rules if self.checkpoints else ())
        return any(r.needs_embedding for r in rules) or bool(self.skip and self.skip.needs_embedding)

    def describe(self) -> str:
        """One line for people: each tier's rule and threshold, and the skip."""
        parts = [f"tier {i}: {r.name} >= {t:.4g}" for i, (r, t) in enumerate(zip(self.rules, self.thresholds))]
        if self.skip is not None:
            parts.append(f"skip tier 0 when {self.skip.name} < {self.skip_threshold:.4g}")
        if self.checkpoints is not None:
            parts.append(f"tier 0 {self.checkpoints.describe()}")
        if self.by_group:
            parts.append(f"per-group thresholds for {len(self.by_group)} groups (shown: {self.fallback_group}, "
                         "the fallback for unknown groups)")
        return "; ".join(parts) or "single tier"

    def threshold(self, tier_index: int) -> float | None:
        """The threshold of tier ``tier_index``, or ``None`` for the last tier."""
        return self.thresholds[tier_index] if tier_index < len(self.thresholds) else None

    def accepts(self, tier_index: int, score: float) -> bool:
        """Keep tier ``tier_index``'s answer? Always true for the last tier."""
        threshold = self.threshold(tier_index)
        return threshold is None or score >= threshold

    def skips(self, score: float) -> bool:
        """Send the request past tier 0 on its pre-generation ``score``?"""
        return self.skip_threshold is not None and score < self.skip_threshold
