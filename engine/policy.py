"""Deferral policy: a rule and a threshold per non-final tier, and an optional skip.

Tier i (not the last) keeps its answer when ``rules[i]`` scores it ``>= thresholds[i]``
and escalates to tier i + 1 otherwise; the last tier always answers. With a skip rule, a
request whose pre-generation score is below ``skip_threshold`` does not visit tier 0 at
all (it would almost surely escalate, so tier 0's cost would be wasted). Thresholds come
from the config or from a calibration artifact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .uncertainty.rules import Rule, SignalRule, SkipRule


@dataclass(frozen=True)
class Policy:
    """``rules`` and ``thresholds`` have one entry per non-final tier, in tier order."""

    rules: tuple[Rule, ...]
    thresholds: tuple[float, ...]
    skip: SkipRule | None = None
    skip_threshold: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "rules", tuple(self.rules))
        object.__setattr__(self, "thresholds", tuple(float(t) for t in self.thresholds))
        if len(self.rules) != len(self.thresholds):
            raise ValueError(f"{len(self.rules)} rules for {len(self.thresholds)} thresholds")
        if any(math.isnan(t) for t in self.thresholds):
            raise ValueError("thresholds must not be NaN")
        if (self.skip is None) != (self.skip_threshold is None):
            raise ValueError("a skip rule needs a skip threshold and vice versa")

    @classmethod
    def from_signal(cls, signal: str, thresholds) -> "Policy":
        """The same built-in signal for every non-final tier."""
        thresholds = tuple(thresholds)
        return cls(tuple(SignalRule(signal) for _ in thresholds), thresholds)

    @property
    def needs_embedding(self) -> bool:
        return any(r.needs_embedding for r in self.rules) or bool(self.skip and self.skip.needs_embedding)

    def describe(self) -> str:
        """One line for people: each tier's rule and threshold, and the skip."""
        parts = [f"tier {i}: {r.name} >= {t:.4g}" for i, (r, t) in enumerate(zip(self.rules, self.thresholds))]
        if self.skip is not None:
            parts.append(f"skip tier 0 when {self.skip.name} < {self.skip_threshold:.4g}")
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
