"""What can be fitted, decided before any data exists (pure Python).

``check_fittable`` is the one source of truth for "can this (target, α, δ, tiers, skip,
groups, n) be fitted at all?": the calibration CLI calls it before any engine starts, and
``fit_thresholds`` / ``fit_groups`` call it again on the data they receive, so the early
refusal and the deep one cannot drift apart. Every refusal is a ``FitError`` (a
``ValueError``) carrying the reason and the alternative.

Which method a fit uses (``fit_method``):

* ``delta=None`` (marginal): conformal risk control — two tiers, ``accept-error`` or
  ``quality-loss``, no skip rule; nothing else has a marginal form here.
* two tiers, ``accept-error`` / ``quality-loss``, no skip: fixed-sequence testing along
  the threshold path, on all n items.
* everything else: Learn-then-Test; a ``grid_fraction`` of the items picks the grid and
  the testing order, the tests run on the other ``n − round(grid_fraction · n)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from .bounds import P_VALUES, check_p_value_kind, min_items_to_certify
from .losses import TARGETS, check_target

DEFAULT_DELTA = 0.1
DELTA_SPLITS = ("per-group", "bonferroni")
PATH_TARGETS = ("accept-error", "quality-loss")


class FitError(ValueError):
    """A fit that cannot be done as asked: ``reason`` says why, ``alternative`` what to do instead."""

    def __init__(self, reason: str, alternative: str | None = None):
        self.reason = reason
        self.alternative = alternative
        super().__init__(reason if not alternative else f"{reason}; {alternative}")


def check_level(name: str, value: float | None) -> None:
    """Raise ``FitError`` unless ``value`` is a level in (0, 1)."""
    if value is None or not (0.0 < value < 1.0):
        raise FitError(f"{name} must be in (0, 1), got {value}")


def fit_method(target: str, delta: float | None, n_tiers: int, has_skip: bool) -> str:
    """The method ``fit_thresholds`` uses (see the module docstring); no checks."""
    if delta is None:
        return "conformal-risk-control"
    if n_tiers == 2 and not has_skip and target in PATH_TARGETS:
        return "fixed-sequence-binomial"
    return "learn-then-test"


def grid_cut(n: int, grid_fraction: float) -> int:
    """How many of n items Learn-then-Test spends on choosing its grid and order."""
    return int(round(grid_fraction * n))


def items_tested(n: int, method: str, grid_fraction: float = 0.3) -> int:
    """How many of n calibration items the method's certificate counts."""
    return n - grid_cut(n, grid_fraction) if method == "learn-then-test" else n


def min_items_for_fit(alpha: float, delta: float | None, method: str, p_value_kind: str = "binomial",
                      grid_fraction: float = 0.3) -> int:
    """Smallest n for which ``method`` can certify anything at (α, δ): its tested items
    reach ``min_items_to_certify``. For ``selective-error`` the items at risk are only the
    accepted ones, so this is necessary, not sufficient."""
    need = min_items_to_certify(alpha, delta, "binomial" if method != "learn-then-test" else p_value_kind)
    if method != "learn-then-test":
        return need
    n = max(need, math.ceil(need / max(1e-12, 1 - grid_fraction)) - 2)
    while n > 1 and items_tested(n - 1, method, grid_fraction) >= need:
        n -= 1
    while items_tested(n, method, grid_fraction) < need:
        n += 1
    return n


def group_delta(delta: float | None, n_groups: int, delta_split: str) -> float | None:
    """The δ each group's fit runs at: δ itself (``per-group``) or δ/G (``bonferroni``)."""
    if delta_split not in DELTA_SPLITS:
        raise FitError(f"unknown delta_split {delta_split!r}; known: {', '.join(DELTA_SPLITS)}")
    if delta is None or delta_split == "per-group":
        return delta
    return delta / max(1, n_groups)


def check_fittable(target: str, alpha: float, delta: float | None, n_tiers: int, has_skip: bool,
                   group_sizes: Mapping[str, int] | None = None, *, n: int | None = None,
                   delta_split: str = "per-group", p_value_kind: str = "binomial",
                   grid_fraction: float = 0.3) -> str:
    """Refuse, before any generation, every fit that cannot be done; return its method.

    Parameters
    ----------
    target : one of ``TARGETS``
    alpha : float in (0, 1)
    delta : float in (0, 1), or None for the marginal guarantee (conformal risk control)
    n_tiers : int, K >= 2
    has_skip : bool
        Whether the fit may include a pre-generation skip rule. Before rule selection has
        run, pass True unless skipping is ruled out (``--no-skip`` or a fixed ``--signal``).
    group_sizes : mapping group name -> number of calibration items, optional
        For a per-group fit; every group must be able to certify α at its δ.
    n : int, optional
        Number of calibration items of a single (not grouped) fit.
    delta_split : ``"per-group"`` (each group at δ) or ``"bonferroni"`` (each at δ/G)
    p_value_kind : one of ``P_VALUES`` (Learn-then-Test only)
    grid_fraction : float, Learn-then-Test's share of items for choosing the grid

    Returns
    -------
    str
        The method the fit will use (``fit_method``).

    Raises
    ------
    FitError
        With ``reason`` and ``alternative``; the message names both.
    """
    check_target(target)
    check_level("alpha", alpha)
    check_p_value_kind(p_value_kind)
    if n_tiers < 2:
        raise FitError(f"a cascade needs at least 2 tiers to calibrate, got {n_tiers}")
    if delta is None:
        marginal = "the marginal guarantee (conformal risk control, --delta none)"
        if target not in PATH_TARGETS:
            raise FitError(f"{marginal} does not exist for {target} (a conditional risk)",
                           "pass a δ (e.g. --delta 0.1) for the high-probability guarantee (Learn-then-Test)")
        if n_tiers != 2:
            raise FitError(f"{marginal} calibrates one threshold, and this cascade has {n_tiers} tiers "
                           f"({n_tiers - 1} thresholds)", "pass a δ (e.g. --delta 0.1) to fit every threshold "
                           "jointly with Learn-then-Test")
        if has_skip:
            raise FitError(f"{marginal} cannot fit a skip rule (a second threshold)",
                           "pass --no-skip, or a δ (e.g. --delta 0.1)")
        if group_sizes is not None and delta_split == "bonferroni":
            raise FitError("delta_split='bonferroni' shares a δ across groups, and the marginal form has none",
                           "pass a δ, or use delta_split='per-group'")
    else:
        check_level("delta", delta)
    method = fit_method(target, delta, n_tiers, has_skip)
    if delta_split not in DELTA_SPLITS:
        raise FitError(f"unknown delta_split {delta_split!r}; known: {', '.join(DELTA_SPLITS)}")

    def at(level: float | None) -> str:
        return "marginally (CRC)" if level is None else f"at δ = {level:g}"

    if n is not None:
        need = min_items_for_fit(alpha, delta, method, p_value_kind, grid_fraction)
        if n < need:
            raise FitError(f"{n} calibration items can never certify α = {alpha:g} {at(delta)} with "
                           f"{method}: it needs at least {need} (with zero losses)",
                           "calibrate on more items, or raise α or δ")
    if group_sizes is not None:
        if not group_sizes:
            raise FitError("no groups: a per-group fit needs at least one labelled group")
        d = group_delta(delta, len(group_sizes), delta_split)
        need = min_items_for_fit(alpha, d, method, p_value_kind, grid_fraction)
        small = {g: int(size) for g, size in group_sizes.items() if size < need}
        if small:
            listed = ", ".join(f"{g!r} has {size}" for g, size in sorted(small.items()))
            split_words = "" if delta_split == "per-group" or delta is None else f" (δ/G with G = {len(group_sizes)})"
            raise FitError(f"group(s) too small to ever certify α = {alpha:g} {at(d)}{split_words} "
                           f"with {method}: {listed} calibration items; each needs at least {need}",
                           "label more items of these groups, merge them into a larger group, "
                           "or raise α or δ" + (", or use delta_split='per-group'" if delta_split == "bonferroni"
                                                else ""))
    return method


__all__ = ["DEFAULT_DELTA", "DELTA_SPLITS", "FitError", "P_VALUES", "TARGETS", "check_fittable", "check_level",
           "fit_method", "group_delta", "grid_cut", "items_tested", "min_items_for_fit"]
