"""The calibration split as the monitor will compare served traffic with it: the artifact's
``"monitor"`` section (``engine.monitoring.reference.monitor_section``).

Disagreement — the kept answer is not equivalent to the last tier's — is judged from the
cached answers with the tier's own answer equivalence (the semantic-entropy equivalence of
its ``samples`` block; normalized exact match without one), the same judgment the server's
audits make.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from vcascade.engine.config import CascadeConfig
from vcascade.engine.monitoring import monitor_section
from vcascade.engine.uncertainty.equivalence import get_equivalence

from .conformal import CalibrationData, grouped_routing, routing
from .datasets import Item


def tier_equivalence(config: CascadeConfig, k: int) -> str:
    """The equivalence that judges whether tier ``k``'s answer agrees with another answer."""
    samples = config.tiers[k].samples
    return samples.equivalence if samples is not None else "normalized"


def disagreements(config: CascadeConfig, records: list[dict], items: Sequence[Item]) -> np.ndarray:
    """Shape (n, K-1): is tier k's cached answer to item i not equivalent to the last tier's?"""
    last = [records[-1][item.id]["result"]["text"] for item in items]
    out = np.zeros((len(items), len(config.tiers) - 1), dtype=bool)
    for k in range(len(config.tiers) - 1):
        equivalence = get_equivalence(tier_equivalence(config, k))
        mine = [records[k][item.id]["result"]["text"] for item in items]
        keys = equivalence.keys(mine + last)
        out[:, k] = [not equivalence.same(a, b) for a, b in zip(keys[: len(items)], keys[len(items):])]
    return out


def monitor_reference(config: CascadeConfig, records: list[dict], items: Sequence[Item], data: CalibrationData,
                      fit, grouped=None, labels: Sequence[str] | None = None,
                      routed: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """The ``"monitor"`` section for the fitted policy (``fit``; ``grouped`` with ``labels``
    for per-group thresholds) on the calibration split (``data`` of ``items``).

    ``routed`` — ``(answering tier (n,), skipped (n,))`` — overrides the routing for a policy
    that ``fit``'s thresholds alone do not describe (a checkpointed policy, whose commits and
    early escalations ``conformal.checkpoints.route`` decides)."""
    if routed is not None:
        answered, skipped = (np.asarray(a) for a in routed)
    elif grouped is not None:
        answered, skipped = grouped_routing(data, labels, grouped)
    else:
        answered, skipped = routing(data, fit.config)
    names = sorted({tier_equivalence(config, k) for k in range(len(config.tiers) - 1)})
    return monitor_section(data.scores, data.skip_scores, answered, skipped, disagreements(config, records, items),
                           groups=list(labels) if grouped is not None else None, equivalence=", ".join(names))
