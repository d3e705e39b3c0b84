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
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Mapping

from .types import Request
from .uncertainty.rules import Rule, SignalRule, SkipRule

LENGTH_GROUPS = ("short", "long")


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
    by_group: Mapping[str, tuple[tuple[float, ...], float | None]] = field(default_factory=dict)
    fallback_group: str | None = None
    group_by: str | None = None
    """``"length"``: a request's group is ``length_group(request)``; otherwise the client names it."""

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
        thresholds, skip_threshold = self.by_group[name]
        return replace(self, thresholds=tuple(thresholds), skip_threshold=skip_threshold, by_group={},
                       fallback_group=None, group_by=None), name, known

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
