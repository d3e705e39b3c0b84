"""Deferral policy: one confidence signal and a threshold per non-final tier.

Tier i (not the last) keeps its answer when ``signal(result) >= thresholds[i]`` and
escalates to tier i + 1 otherwise; the last tier always answers. Thresholds come from the
config or, later, from a calibration artifact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .signals import Signal, get_signal
from .types import TierResult


@dataclass(frozen=True)
class Policy:
    """``thresholds`` has one entry per non-final tier, in tier order."""

    signal_name: str
    thresholds: tuple[float, ...]

    def __post_init__(self) -> None:
        get_signal(self.signal_name)  # fail early on an unknown name
        object.__setattr__(self, "thresholds", tuple(float(t) for t in self.thresholds))
        if any(math.isnan(t) for t in self.thresholds):
            raise ValueError("thresholds must not be NaN")

    @property
    def signal(self) -> Signal:
        return get_signal(self.signal_name)

    def score(self, result: TierResult) -> float:
        return self.signal(result)

    def threshold(self, tier_index: int) -> float | None:
        """The threshold of tier ``tier_index``, or ``None`` for the last tier."""
        return self.thresholds[tier_index] if tier_index < len(self.thresholds) else None

    def accepts(self, tier_index: int, score: float) -> bool:
        """Keep tier ``tier_index``'s answer? Always true for the last tier."""
        threshold = self.threshold(tier_index)
        return threshold is None or score >= threshold
