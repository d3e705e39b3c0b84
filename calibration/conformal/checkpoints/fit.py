"""Fixed-sequence testing along a checkpoint family: the certified policy (numpy/scipy).

Learn-then-Test's fixed-sequence procedure (Angelopoulos, Bates, Candès, Jordan, Lei 2021;
Bauer 1991): for g = 0, 1, … of a ``CheckpointFamily`` fixed before the calibration split
is seen, test H_g: R(g) > α with the exact binomial p-value P(Bin(n, α) <= k_g) (or
Hoeffding–Bentkus) at level δ and stop at the first H_g not rejected; with probability
>= 1 − δ every rejected configuration has R <= α (the package docstring says what breaks
it). ``fit_checkpoints`` deploys the last or the cheapest rejected one and re-derives its
counts through ``routing.route``; ``fit_checkpoints_naive`` walks the same path with the
plain empirical rule k_g <= α n (no guarantee: the validity experiment's contrast).

Shapes: losses / at-risk counts (G,) along the path; the calibration split has n items.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..bounds import binomial_upper_bound, check_p_value_kind, min_items_to_certify, p_values
from ..checks import DEFAULT_DELTA, FitError, check_level
from ..fits import CertificateError
from ..losses import check_target
from ..statement import guarantee
from .data import CheckpointConfig, CheckpointData, CheckpointFamily, _check_family, commit_when_decided
from .routing import _verified_routing, checkpoint_losses, path_costs, path_counts, route

FIT_TARGETS = ("accept-error", "quality-loss")
METHOD = "fixed-sequence-checkpoints"


@dataclass
class CheckpointFit:
    """A fitted mid-generation policy and what the calibration split says about it.

    ``index`` / ``level`` locate the chosen configuration on the path (None when nothing
    was certified and the policy always escalates); ``rejected`` is the number of path
    configurations certified (the rejected prefix). ``risk_bound`` is the Clopper–Pearson
    1 − δ upper bound on the chosen configuration's risk (None for the naive fit).
    ``certificate`` holds the tested counts (losses, at_risk, tested). ``cost_ratio`` is
    the mean calibration cost relative to always calling the large tier.
    """

    target: str
    method: str
    alpha: float
    delta: float | None
    n: int
    feasible: bool
    config: CheckpointConfig
    index: int | None
    level: float | None
    rejected: int
    path_length: int
    selection: str
    empirical_risk: float
    risk_bound: float | None
    cost_ratio: float
    p_value: str | None
    certificate: dict = field(default_factory=dict)
    guarantee: dict = field(default_factory=dict)
    reason: str | None = None

    def to_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != "config"}
        return {**out, "config": self.config.to_dict()}


SELECTIONS = ("last", "cheapest")


def _rejected_prefix(losses: np.ndarray, at_risk: np.ndarray, alpha: float, delta: float | None,
                     p_value_kind: str, correction: bool) -> int:
    """Fixed-sequence testing along the path: the number of leading configurations whose
    H_g: R(g) > α is rejected (p <= δ; ``correction=False``: k <= α m) before the first failure."""
    if not correction:
        passes = losses <= alpha * at_risk
    elif p_value_kind == "binomial":
        passes = p_values("binomial", losses, at_risk, alpha) <= delta
    else:  # one p-value at a time (Hoeffding–Bentkus is not vectorized), up to the first failure
        for g, (k, m) in enumerate(zip(losses, at_risk)):
            if p_values(p_value_kind, np.array([k]), np.array([m]), alpha)[0] > delta:
                return g
        return len(losses)
    return int(np.argmin(passes)) if not passes.all() else len(passes)


def _fit(data: CheckpointData, family: CheckpointFamily, target: str, alpha: float, delta: float | None,
         p_value_kind: str, select: str, correction: bool, largest: str | None) -> CheckpointFit:
    check_target(target)
    if target not in FIT_TARGETS:
        raise FitError(f"the checkpoint path starts at always-escalate, which keeps no answer, so the conditional "
                       f"{target} cannot be tested along it", f"use one of {', '.join(FIT_TARGETS)}")
    check_level("alpha", alpha)
    if correction:
        check_level("delta", delta)
        check_p_value_kind(p_value_kind)
    if select not in SELECTIONS:
        raise ValueError(f"select must be one of {SELECTIONS}, got {select!r}")
    if data.n == 0:
        raise FitError("no calibration items")
    _check_family(data, family)
    losses, at_risk = path_counts(data, family, target)
    rejected = _rejected_prefix(losses, at_risk, alpha, delta, p_value_kind, correction)
    reason = None
    if rejected == 0:
        index = None
        config = CheckpointConfig.always_escalate(family.checkpoints.tolist(), skip=data.has_skip)
        routed = route(data, config)
        if routed.kept.any():
            raise CertificateError("an infeasible checkpoint fit must always escalate")
        real, risky = checkpoint_losses(data, routed.kept, target)
        k, m_risk = int(real.sum()), int(risky.sum())
        need = min_items_to_certify(alpha, delta, p_value_kind) if correction else 1
        reason = (f"{data.n} items can never certify α = {alpha:g} at δ = {delta:g} (it needs at least {need})"
                  if correction and data.n < need else "the path's first configuration failed its test")
    else:
        if select == "last":
            index = rejected - 1
        else:
            index = int(np.argmin(path_costs(data, family)[:rejected]))
        config = commit_when_decided(family[index])  # the same routing, released sooner
        k, m_risk = int(losses[index]), int(at_risk[index])
        routed = _verified_routing(data, config, target, k, m_risk)
    if correction:
        statement = guarantee(target, alpha, delta, METHOD, largest)
    else:
        statement = {"kind": "none", "method": "empirical-risk",
                     "statement": "no guarantee: empirical calibration risk <= α, no finite-sample correction"}
    return CheckpointFit(
        target=target, method=METHOD if correction else "naive-empirical", alpha=alpha,
        delta=delta if correction else None, n=data.n, feasible=index is not None, config=config, index=index,
        level=None if index is None else float(family.levels[index]), rejected=rejected, path_length=len(family),
        selection=select, empirical_risk=k / m_risk if m_risk else 0.0,
        risk_bound=binomial_upper_bound(k, m_risk, delta) if correction else None,
        cost_ratio=float(routed.cost.mean() / data.large_costs.mean()),
        p_value=p_value_kind if correction else None,
        certificate={"losses": k, "at_risk": m_risk, "tested": data.n}, guarantee=statement, reason=reason)


def fit_checkpoints(data: CheckpointData, family: CheckpointFamily, target: str, alpha: float,
                    delta: float = DEFAULT_DELTA, p_value_kind: str = "binomial", select: str = "last",
                    largest: str | None = None) -> CheckpointFit:
    """Fixed-sequence testing along ``family``: the certified mid-generation policy.

    Tests H_g: R(g) > α for g = 0, 1, … in path order with the p-value ``p_value_kind``
    on the n calibration items, rejecting while p <= δ and stopping at the first failure
    (see the package docstring). With probability >= 1 − δ over the calibration draw,
    every rejected configuration — hence the returned one — has risk <= α.

    Parameters
    ----------
    data : CheckpointData — the calibration split (disjoint from the family's training split)
    family : CheckpointFamily — the path, fixed before ``data`` was seen
    target : ``accept-error`` or ``quality-loss``
    alpha, delta : floats in (0, 1)
    p_value_kind : ``binomial`` (exact for 0/1 losses) or ``hoeffding-bentkus``
    select : ``last`` (least conservative rejected) or ``cheapest`` (lowest mean
        calibration cost among the rejected); both keep the guarantee
    largest : the large tier's name, for the guarantee's sentence

    Returns
    -------
    CheckpointFit
        Always escalate (``feasible=False``, ``index=None``) when nothing is rejected.

    Raises
    ------
    FitError
        For an unknown or untestable target, or levels outside (0, 1).
    CertificateError
        If the chosen configuration routed by ``route`` does not lose what was tested.
    """
    return _fit(data, family, target, alpha, delta, p_value_kind, select, True, largest)


def fit_checkpoints_naive(data: CheckpointData, family: CheckpointFamily, target: str, alpha: float,
                          select: str = "last") -> CheckpointFit:
    """The same walk along the path with the plain empirical rule k_g <= α n (no
    finite-sample correction, no δ). No guarantee: it exists to show that the validity
    test catches its absence (its share of calibration draws above α is far above δ)."""
    return _fit(data, family, target, alpha, None, "binomial", select, False, None)
