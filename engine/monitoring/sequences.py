"""Anytime-valid confidence sequences for rates, and the calibration side's uncertainty.

* ``bernoulli_cs``: a confidence sequence for the rate of a Bernoulli stream from the
  beta-binomial mixture martingale (Robbins 1970; Howard, Ramdas, McAuliffe, Sekhon 2021,
  "Time-uniform, nonparametric, nonasymptotic confidence sequences", §3 and Prop. 6): for
  each candidate rate m, ``M_t(m) = B(a + S_t, b + F_t) / B(a, b) / (m^S_t (1 − m)^F_t)`` is
  a nonnegative martingale with initial value 1 when the observations have conditional
  mean m, so ``{m : M_t(m) < 1/ε}`` covers the rate at every t at once with probability
  ``>= 1 − ε`` (Ville). It depends on the counts only: O(1) state, computed when read.
* ``dkw_halfwidth``: the calibration rate's own uncertainty. The deployed thresholds were
  fitted on the same calibration items, so a binomial interval on "share of calibration
  items accepted" would ignore that the threshold was chosen from them. A bound uniform
  over all thresholds does not: the Dvoretzky–Kiefer–Wolfowitz inequality with Massart's
  constant (1990) for one score, ``P(sup |F_n − F| > x) <= 2 e^{−2 n x²}``, and Naaman's
  multivariate form (2021), ``<= d (n + 1) e^{−2 n x²}`` for the d-dimensional orthants.
  An acceptance region ``{skip score >= τ, score >= λ}`` is one orthant (coordinates
  negated), so the calibration's rate for it is within x of the population rate for every
  (τ, λ) at once.
* ``audit_upper_bound``: the audits' bound on the served quality loss. Each request s has a
  disagreement bit D_s (its kept answer differs from the last tier's; 0 when the last tier
  answered) and is audited with probability p independently of everything else; with
  ``X_s = A_s D_s / p``, ``K_t(λ) = ∏_s (1 − λ (X_s − D_s))`` is a nonnegative martingale
  for ``0 <= λ <= p / (1 − p)`` whatever the D_s (arbitrary, even adaptively chosen: the
  coin is what makes it a martingale). In counts it is ``(1 + λ)^(S_t − a_t) (1 − λ(1 − p)/p)^a_t``
  (S_t disagreements in all, a_t of them audited), increasing in S_t, so a mixture over a
  grid of λ reaching ``1/ε`` bounds S_t from above at every t at once. A quality-loss item
  is always a disagreement, so the bound covers the realized quality loss. (A betting
  confidence sequence in the sense of Waudby-Smith & Ramdas 2024, for inverse-propensity
  weighted observations.)
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import brentq
from scipy.special import betaln, xlog1py, xlogy

PRIOR = (0.5, 0.5)
"""Beta(a, b) mixing distribution of ``bernoulli_cs`` (Jeffreys)."""
AUDIT_GRID = 2.0 ** -np.arange(1, 21)
"""Bets of the audit bound as shares c of the largest one, λ = c p / (1 − p)."""


def _log_mixture(s: float, f: float, m: float, a: float, b: float) -> float:
    return float(betaln(a + s, b + f) - betaln(a, b) - xlogy(s, m) - xlog1py(f, -m))


def bernoulli_cs(successes: int, n: int, level: float, prior: tuple[float, float] = PRIOR) -> tuple[float, float]:
    """Time-uniform confidence interval ``(lower, upper)`` for a Bernoulli rate after ``n``
    observations with ``successes`` ones (beta-binomial mixture, level ``1 − level``).

    Parameters
    ----------
    successes, n : int
        Counts so far (``0 <= successes <= n``).
    level : float in (0, 1)
        ε: the sequence of intervals misses the rate at some time with probability <= ε.
    prior : (a, b)
        The Beta mixing distribution.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, {n}], got {successes}")
    a, b = prior
    s, f = float(successes), float(n - successes)
    bar = math.log(1.0 / level)

    def excess(m: float) -> float:
        return _log_mixture(s, f, m, a, b) - bar

    hat = s / n
    tiny = 1e-12
    lower = 0.0
    if s > 0 and excess(tiny) > 0:
        lower = brentq(excess, tiny, hat) if excess(hat) < 0 else hat
    upper = 1.0
    if f > 0 and excess(1.0 - tiny) > 0:
        upper = brentq(excess, hat, 1.0 - tiny) if excess(hat) < 0 else hat
    return lower, upper


def bernoulli_covers(successes: int, n: int, rate: float, level: float, prior: tuple[float, float] = PRIOR) -> bool:
    """Is ``rate`` inside ``bernoulli_cs(successes, n, level)``? (One evaluation of the mixture.)"""
    if n <= 0:
        return True
    a, b = prior
    return _log_mixture(float(successes), float(n - successes), min(max(rate, 0.0), 1.0), a, b) < math.log(1.0 / level)


def dkw_halfwidth(n: int, level: float, dims: int = 1) -> float:
    """x with ``P(sup over orthants |P_n − P| > x) <= level`` for n iid points in ``dims``
    dimensions: ``sqrt(log(C / level) / (2 n))``, C = 2 for one dimension (Massart 1990),
    ``dims (n + 1)`` otherwise (Naaman 2021). ``inf`` without items."""
    if n <= 0:
        return math.inf
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    constant = 2.0 if dims <= 1 else dims * (n + 1.0)
    return math.sqrt(math.log(constant / level) / (2.0 * n))


def audit_log_capital(total, audited_disagree, share: float, grid: np.ndarray = AUDIT_GRID) -> np.ndarray:
    """log of the audit bound's mixture martingale ``mean_j K_t(λ_j)`` if ``total``
    disagreements occurred in all, ``audited_disagree`` of them audited (arrays broadcast:
    one value per step for a whole run at once). ``S_t`` is above the bound exactly when this
    is ``>= log(1/ε)``."""
    c = np.asarray(grid, dtype=np.float64).reshape((-1,) + (1,) * np.ndim(total))
    total, a = np.asarray(total, dtype=np.float64), np.asarray(audited_disagree, dtype=np.float64)
    logs = (total - a) * np.log1p(c * share / (1.0 - share)) + a * np.log1p(-c)
    top = logs.max(axis=0)
    return top + np.log(np.exp(logs - top).mean(axis=0))


def audit_upper_bound(kept: int, audited: int, audited_disagree: int, share: float, level: float,
                      grid: np.ndarray = AUDIT_GRID) -> float:
    """Upper confidence bound on S_t, the number of disagreements among ``kept`` answers, of
    which ``audited`` were audited (each independently with probability ``share``) and
    ``audited_disagree`` of those disagreed; time-uniform at level ``1 − level``.

    Returns a count in ``[audited_disagree, audited_disagree + kept − audited]``; divide
    by the requests it covers for a rate.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if not 0 <= audited_disagree <= audited <= kept:
        raise ValueError(f"need 0 <= audited_disagree <= audited <= kept, got {audited_disagree}, {audited}, {kept}")
    a, unaudited = float(audited_disagree), float(kept - audited)
    if share >= 1.0 or unaudited == 0:
        return a
    if share <= 0.0:
        return a + unaudited
    bar = math.log(1.0 / level)

    def excess(total: float) -> float:
        return float(audit_log_capital(total, a, share, grid)) - bar

    if excess(a + unaudited) < 0:
        return a + unaudited
    return float(brentq(excess, a, a + unaudited))
