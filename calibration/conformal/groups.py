"""Per-group (Mondrian) fits: each group's risk <= α, not only the mix's.

A guarantee fitted on a mix bounds the mix's risk; a kind of request the mix under-weights
can carry several times α. Mondrian conformal prediction (Vovk, Gammerman, Shafer 2005,
ch. 4; Vovk 2003) calibrates within each group: if the items of a group are exchangeable
with that group's future requests, a fit on the group's own calibration items gives that
group the method's guarantee, P(L = 1 | group) <= α (group-conditional risk control).
The group function must be fixed before calibration (a request field, or a classifier
trained on a disjoint split).

How δ is shared (``delta_split``):

* ``"per-group"`` (default): every group is fitted at δ. For each group g separately,
  P(R_g > α) <= δ over the calibration draw; all G groups hold at once with probability
  >= 1 − G δ (union bound; >= (1 − δ)^G when the groups' items are independent).
* ``"bonferroni"``: every group at δ / G, so that with probability >= 1 − δ *every* group
  holds simultaneously.

A group too small to ever certify α at its δ (``checks.min_items_for_fit``) is refused
with a ``FitError`` naming it. Requests of a group the calibration never saw get the most
conservative group's policy (``GroupFit.conservative_group``) and no guarantee.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .checks import DEFAULT_DELTA, FitError, check_fittable, group_delta
from .fits import Fit, fit_thresholds
from .losses import CalibrationData, expected_cost, item_losses, routing
from .statement import group_guarantee


def group_labels(groups, n: int) -> np.ndarray:
    """Group labels as strings, shape (n,)."""
    labels = np.asarray(groups)
    if labels.shape != (n,):
        raise ValueError(f"groups must have shape ({n},), got {labels.shape}")
    return labels.astype(str)


@dataclass
class GroupFit:
    """Per-group fitted policies.

    ``groups`` maps each group name to its ``Fit`` (its thresholds, skip threshold, n,
    empirical risk, acceptance, cost ratio within the group, feasibility).
    ``conservative_group`` is the group whose policy escalates most on the pooled
    calibration items (ties: lower pooled risk, then name): the policy for unknown groups.
    ``pooled`` has the grouped policy's figures on all calibration items together.
    """

    target: str
    alpha: float
    delta: float | None
    delta_split: str
    delta_per_group: float | None
    n: int
    groups: dict[str, Fit]
    conservative_group: str
    pooled: dict = field(default_factory=dict)
    guarantee: dict = field(default_factory=dict)

    def fit_for(self, group: str | None) -> Fit:
        """The fit serving ``group``; an unknown or missing group gets the most conservative one."""
        return self.groups.get(str(group), self.groups[self.conservative_group]) if group is not None else \
            self.groups[self.conservative_group]

    def in_scope(self, group: str | None) -> bool:
        return group is not None and str(group) in self.groups

    def configs(self, groups) -> np.ndarray:
        """Each item's configuration under this fit, shape (n, dims), for labels (n,)."""
        labels = np.asarray(groups).astype(str)
        return np.array([self.fit_for(g).config for g in labels], dtype=np.float64).reshape(len(labels), -1)

    def summary(self) -> dict:
        """Per group: n, thresholds, skip_threshold, feasible, empirical_risk, risk_bound,
        acceptance, escalated, cost_ratio."""
        return {g: {"n": f.n, "thresholds": f.thresholds, "skip_threshold": f.skip_threshold,
                    "feasible": f.feasible, "empirical_risk": f.empirical_risk, "risk_bound": f.risk_bound,
                    "acceptance": f.acceptance, "escalated": 1 - f.acceptance[0], "cost_ratio": f.cost_ratio}
                for g, f in self.groups.items()}

    def to_dict(self) -> dict:
        return asdict(self)


def grouped_routing(data: CalibrationData, groups, fit: GroupFit) -> tuple[np.ndarray, np.ndarray]:
    """(answering tier, skipped), shapes (n,), each item routed by its group's policy
    (unknown groups by the most conservative group's)."""
    labels = group_labels(groups, data.n)
    tier = np.empty(data.n, dtype=np.int64)
    skipped = np.empty(data.n, dtype=bool)
    for g in np.unique(labels):
        idx = np.flatnonzero(labels == g)
        tier[idx], skipped[idx] = routing(data.subset(idx), fit.fit_for(g).config)
    return tier, skipped


def group_figures(data: CalibrationData, groups, policy, target: str) -> dict[str, dict]:
    """Realized figures per group of a policy on labelled items.

    Parameters
    ----------
    data : CalibrationData, n items
    groups : array (n,) of group labels
    policy : a ``GroupFit``, or one configuration (dims,) applied to every group
    target : the target whose realized ``risk`` is reported

    Returns
    -------
    dict group -> {"n", "risk", "quality_loss", "accuracy", "escalated", "skipped", "cost_ratio"}
        ``escalated`` is the share not answered by tier 0; costs are relative to always
        calling the last tier within the group.
    """
    labels = group_labels(groups, data.n)
    out = {}
    for g in np.unique(labels):
        idx = np.flatnonzero(labels == g)
        part = data.subset(idx)
        config = policy.fit_for(g).config if isinstance(policy, GroupFit) else policy
        tier, skipped = routing(part, config)
        losses, at_risk = item_losses(part, config, target)
        quality, _ = item_losses(part, config, "quality-loss")
        out[str(g)] = {"n": int(idx.size), "risk": float(losses.sum() / at_risk.sum()) if at_risk.any() else 0.0,
                       "quality_loss": float(quality.mean()),
                       "accuracy": float(part.correct[np.arange(part.n), tier].mean()),
                       "escalated": float((tier > 0).mean()), "skipped": float(skipped.mean()),
                       "cost_ratio": expected_cost(part, config) / float(part.costs[:, -1].mean())}
    return out


def _most_conservative(data: CalibrationData, fits: dict[str, Fit], target: str) -> str:
    """The group whose configuration escalates most on all items pooled (ties: lower risk, name)."""
    def key(g: str):
        config = fits[g].config
        tier, _ = routing(data, config)
        losses, at_risk = item_losses(data, config, target)
        pooled_risk = losses.sum() / at_risk.sum() if at_risk.any() else 0.0
        return (-float((tier == data.tiers - 1).mean()), float(pooled_risk), g)
    return min(fits, key=key)


def fit_groups(
    data: CalibrationData,
    groups,
    target: str,
    alpha: float,
    delta: float | None = DEFAULT_DELTA,
    *,
    delta_split: str = "per-group",
    seed: int = 0,
    p_value_kind: str = "binomial",
    grid_size: int = 40,
    grid_fraction: float = 0.3,
    correction: bool = True,
    largest: str | None = None,
) -> GroupFit:
    """Fit thresholds separately per group so that each group's risk is <= α (w.p. >= 1 − δ).

    Parameters
    ----------
    data : CalibrationData, n items (scores (n, K-1), correct (n, K), costs (n, K),
        optional skip scores (n,))
    groups : array, shape (n,), the group label of every calibration item (any values;
        used as strings)
    target, alpha, delta : as in ``fit_thresholds``; ``delta=None`` fits each group with
        conformal risk control (the marginal form, per group)
    delta_split : ``"per-group"`` (each group at δ) or ``"bonferroni"`` (each at δ/G, all
        groups simultaneously with probability >= 1 − δ)
    seed : base seed; group i (in sorted order) uses ``seed + i`` for its LTT split
    p_value_kind, grid_size, grid_fraction, correction, largest : as in ``fit_thresholds``

    Returns
    -------
    GroupFit

    Raises
    ------
    FitError
        From ``check_fittable``: an unfittable combination, or a group with fewer items
        than it needs to ever certify α at its δ (naming the group, its n, the n needed).
    """
    labels = group_labels(groups, data.n)
    names, counts = np.unique(labels, return_counts=True)
    sizes = {str(g): int(c) for g, c in zip(names, counts)}
    check_fittable(target, alpha, delta, data.tiers, data.has_skip, sizes, delta_split=delta_split,
                   p_value_kind=p_value_kind, grid_fraction=grid_fraction)
    d = group_delta(delta, len(names), delta_split)
    fits = {}
    for i, g in enumerate(names):
        part = data.subset(np.flatnonzero(labels == g))
        fits[str(g)] = fit_thresholds(part, target, alpha, d, seed=seed + i, p_value_kind=p_value_kind,
                                      grid_size=grid_size, grid_fraction=grid_fraction, correction=correction,
                                      largest=largest)
    conservative = _most_conservative(data, fits, target)
    result = GroupFit(target=target, alpha=alpha, delta=delta, delta_split=delta_split, delta_per_group=d,
                      n=data.n, groups=fits, conservative_group=conservative)
    tier, skipped = grouped_routing(data, labels, result)
    total_cost = sum(expected_cost(data.subset(np.flatnonzero(labels == g)), fits[str(g)].config) * sizes[str(g)]
                     for g in names)
    result.pooled = {"acceptance": (np.bincount(tier, minlength=data.tiers) / data.n).tolist(),
                     "skipped": float(skipped.mean()),
                     "cost_ratio": float(total_cost / data.n / data.costs[:, -1].mean()),
                     "feasible_groups": sum(f.feasible for f in fits.values()), "groups": len(fits)}
    result.guarantee = group_guarantee(target, alpha, delta, d, delta_split, {g: f.method for g, f in fits.items()},
                                       conservative, largest)
    return result


__all__ = ["GroupFit", "fit_groups", "group_figures", "group_labels", "grouped_routing", "FitError"]
