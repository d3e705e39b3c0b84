"""Validity over many random calibration splits, per group (pure numpy/scipy).

The experiment behind "each group's risk <= α with probability >= 1 − δ": split a pool
of labelled items at random many times; fit on the calibration part (per group, or once
on the pooled mix); measure each group's risk of the deployed policy on the held-out
part; count, per group, the share of splits whose held-out group risk exceeds α. A valid
high-probability fit keeps that share <= δ (up to binomial noise over the splits,
``noise_sigmas · sqrt(δ(1 − δ)/splits)``); a marginal (``delta=None``) fit keeps the
*mean* held-out risk <= α (up to its standard error).

Splits are stratified by group (each split takes the same number of calibration items
from each group), so every split fits groups of fixed size. On a finite pool the held-out
group risk is itself an estimate: ``held_out_se`` reports its binomial standard error at
α, which inflates the violation share for fits whose true risk sits right at α. Use a
pool much larger than the calibration part when that noise matters.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from .checks import DEFAULT_DELTA, group_delta
from .fits import fit_thresholds
from .groups import fit_groups, group_labels
from .losses import CalibrationData, config_counts, expected_cost


@dataclass
class ValidityResult:
    """Per group (``per_group[name]``): ``n_calibration``, ``n_held_out``, ``delta`` (the
    group's level), ``share_above_alpha``, ``allowed`` (δ + noise, or α + noise for the
    marginal form, against ``mean_risk``), ``passes``, ``mean_risk``, ``risk_q90``,
    ``held_out_se``, ``infeasible_share``, ``mean_cost_ratio`` (of the group's policy,
    on its calibration items). ``share_any_above_alpha``: splits where some group exceeds α."""

    grouped: bool
    target: str
    alpha: float
    delta: float | None
    delta_split: str
    splits: int
    per_group: dict[str, dict] = field(default_factory=dict)
    share_any_above_alpha: float = 0.0

    @property
    def failing_groups(self) -> list[str]:
        return [g for g, row in self.per_group.items() if not row["passes"]]

    @property
    def all_pass(self) -> bool:
        return not self.failing_groups

    def to_dict(self) -> dict:
        return {**asdict(self), "failing_groups": self.failing_groups, "all_pass": self.all_pass}


def _calibration_counts(sizes: dict[str, int], calibration_size: int | float) -> dict[str, int]:
    total = sum(sizes.values())
    if isinstance(calibration_size, float):
        if not 0.0 < calibration_size < 1.0:
            raise ValueError(f"calibration_size as a fraction must be in (0, 1), got {calibration_size}")
        fraction = calibration_size
    else:
        if not 0 < calibration_size < total:
            raise ValueError(f"calibration_size must be in (0, {total}), got {calibration_size}")
        fraction = calibration_size / total
    counts = {g: int(round(fraction * s)) for g, s in sizes.items()}
    bad = [g for g, c in counts.items() if c < 1 or c >= sizes[g]]
    if bad:
        raise ValueError(f"groups {bad} leave no calibration or no held-out items at this calibration_size")
    return counts


def validity_experiment(
    scores: np.ndarray,
    correct: np.ndarray,
    costs: np.ndarray,
    groups: np.ndarray,
    *,
    target: str,
    alpha: float,
    delta: float | None = DEFAULT_DELTA,
    skip_scores: np.ndarray | None = None,
    calibration_size: int | float = 0.4,
    splits: int = 500,
    grouped: bool = True,
    delta_split: str = "per-group",
    seed: int = 0,
    p_value_kind: str = "binomial",
    grid_size: int = 20,
    grid_fraction: float = 0.3,
    noise_sigmas: float = 3.0,
) -> ValidityResult:
    """Run the many-split validity experiment on a pool of labelled items.

    Parameters
    ----------
    scores : array, shape (N, K-1), every non-final tier's score of its answer
    correct : bool array, shape (N, K)
    costs : array, shape (N, K)
    groups : array, shape (N,), each item's group (e.g. its source)
    target, alpha, delta : what is fitted (``delta=None``: the marginal form, CRC)
    skip_scores : array, shape (N,), optional pre-generation scores (then LTT is used)
    calibration_size : int (total calibration items per split, allocated to groups in
        proportion to their sizes) or float in (0, 1) (the share of each group)
    splits : number of random splits (>= 500 for the per-group claim)
    grouped : True fits per group (``fit_groups``); False fits once on the pooled
        calibration items (``fit_thresholds``) and applies that policy to every group
    delta_split : how ``fit_groups`` shares δ (``"per-group"`` or ``"bonferroni"``)
    seed : seed of the splits (and of LTT's grid splits)
    p_value_kind, grid_size, grid_fraction : Learn-then-Test settings
    noise_sigmas : allowed excess over δ (or α), in binomial standard errors

    Returns
    -------
    ValidityResult

    Raises
    ------
    FitError
        When a group's calibration part is too small to ever certify α at its δ.
    """
    pool = CalibrationData(scores, correct, costs, skip_scores)
    labels = group_labels(groups, pool.n)
    names = [str(g) for g in np.unique(labels)]
    index = {g: np.flatnonzero(labels == g) for g in names}
    sizes = {g: idx.size for g, idx in index.items()}
    cal_counts = _calibration_counts(sizes, calibration_size)
    pools = {g: pool.subset(idx) for g, idx in index.items()}
    rng = np.random.default_rng(seed)
    risks = np.empty((splits, len(names)))
    infeasible = np.zeros((splits, len(names)), dtype=bool)
    cost_ratio = np.empty((splits, len(names)))
    for s in range(splits):
        picks = {g: rng.choice(sizes[g], cal_counts[g], replace=False) for g in names}
        cal_index = np.concatenate([index[g][picks[g]] for g in names])
        cal = pool.subset(cal_index)
        if grouped:
            fit = fit_groups(cal, labels[cal_index], target, alpha, delta, delta_split=delta_split, seed=seed + s,
                             p_value_kind=p_value_kind, grid_size=grid_size, grid_fraction=grid_fraction)
            per = {g: fit.groups[g] for g in names}
        else:
            single = fit_thresholds(cal, target, alpha, delta, seed=seed + s, p_value_kind=p_value_kind,
                                    grid_size=grid_size, grid_fraction=grid_fraction)
            per = {g: single for g in names}
        for j, g in enumerate(names):
            config = np.asarray([per[g].config])
            all_losses, all_at_risk = config_counts(pools[g], config, target)
            cal_part = pools[g].subset(picks[g])
            cal_losses, cal_at_risk = config_counts(cal_part, config, target)
            held_at_risk = int(all_at_risk[0] - cal_at_risk[0])
            risks[s, j] = (all_losses[0] - cal_losses[0]) / held_at_risk if held_at_risk else 0.0
            infeasible[s, j] = not per[g].feasible
            cost_ratio[s, j] = per[g].cost_ratio if grouped else _cost_ratio(cal_part, per[g].config)
    level = group_delta(delta, len(names), delta_split) if grouped else delta
    result = ValidityResult(grouped=grouped, target=target, alpha=alpha, delta=delta, delta_split=delta_split,
                            splits=splits, share_any_above_alpha=float((risks > alpha).any(axis=1).mean()))
    for j, g in enumerate(names):
        share = float((risks[:, j] > alpha).mean())
        mean = float(risks[:, j].mean())
        if delta is None:
            allowed = alpha + noise_sigmas * float(risks[:, j].std()) / math.sqrt(splits)
            passes = mean <= allowed
        else:
            allowed = level + noise_sigmas * math.sqrt(level * (1 - level) / splits)
            passes = share <= allowed
        held = sizes[g] - cal_counts[g]
        result.per_group[g] = {"n_calibration": cal_counts[g], "n_held_out": held, "delta": level,
                               "share_above_alpha": share, "allowed": allowed, "passes": bool(passes),
                               "mean_risk": mean, "risk_q90": float(np.quantile(risks[:, j], 0.9)),
                               "held_out_se": math.sqrt(alpha * (1 - alpha) / held),
                               "infeasible_share": float(infeasible[:, j].mean()),
                               "mean_cost_ratio": float(cost_ratio[:, j].mean())}
    return result


def _cost_ratio(data: CalibrationData, config) -> float:
    return expected_cost(data, config) / float(data.costs[:, -1].mean())


__all__ = ["ValidityResult", "validity_experiment"]
