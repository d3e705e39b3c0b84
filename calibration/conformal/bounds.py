"""p-values and confidence bounds for 0/1 risks (pure numpy/scipy).

For a configuration λ with m items at risk of which k count against the target, the null
hypothesis H_λ: R(λ) > α is tested with a super-uniform p-value (Learn-then-Test,
Angelopoulos, Bates, Candès, Jordan, Lei 2021, Sec. 3):

* ``binomial``          exact for 0/1 losses: p = P(Binomial(m, α) <= k)
* ``hoeffding-bentkus`` for losses in [0, 1] (LTT eq. 9–10; MAPIE's
                        ``compute_hoeffding_bentkus_p_value``)

and the marginal form (conformal risk control, Angelopoulos, Bates, Fisch, Lei, Schuster
2022, Thm. 1 with B = 1) certifies λ when (k + 1)/(n + 1) <= α.

The *smallest n* that can certify anything is the n at which zero losses already pass:
(1 − α)^n <= δ for both p-values (at k = 0 they agree), and 1/(n + 1) <= α for CRC.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

P_VALUES = ("binomial", "hoeffding-bentkus")


def binomial_p_value(wrong: int, m: int, alpha: float) -> float:
    """P(Binomial(m, α) <= wrong): exact p-value of H: risk > α for 0/1 losses (1 if m = 0)."""
    if m == 0:
        return 1.0
    return float(stats.binom.cdf(wrong, m, alpha))


def hoeffding_bentkus_p_value(risk_hat: float, m: int, alpha: float) -> float:
    """Hoeffding–Bentkus p-value of H: risk > α for losses in [0, 1] (LTT, eq. 9–10;
    as in MAPIE's ``compute_hoeffding_bentkus_p_value``)."""
    if m == 0:
        return 1.0

    def h1(y: float, mu: float) -> float:
        with np.errstate(divide="ignore", invalid="ignore"):
            return float(y * np.log(y / mu) + (1 - y) * np.log((1 - y) / (1 - mu)))

    r = min(risk_hat, alpha)
    hoeffding = math.exp(-m * h1(r, alpha)) if r > 0 else (1 - alpha) ** m
    bentkus = math.e * float(stats.binom.cdf(math.ceil(m * risk_hat), m, alpha))
    return min(hoeffding, bentkus, 1.0)


def check_p_value_kind(kind: str) -> None:
    if kind not in P_VALUES:
        from .checks import FitError  # local: checks imports this module

        raise FitError(f"unknown p-value {kind!r}; known: {', '.join(P_VALUES)}",
                       alternative=f"use one of {', '.join(P_VALUES)}")


def p_value(kind: str, wrong: int, m: int, alpha: float) -> float:
    """p-value of H: risk > α from ``wrong`` losses among ``m`` items at risk."""
    check_p_value_kind(kind)
    if kind == "binomial":
        return binomial_p_value(wrong, m, alpha)
    return hoeffding_bentkus_p_value(wrong / m if m else 0.0, m, alpha)


def p_values(kind: str, wrong: np.ndarray, m: np.ndarray, alpha: float) -> np.ndarray:
    """Vectorized ``p_value``: ``wrong`` and ``m`` shape (G,), returns shape (G,)."""
    check_p_value_kind(kind)
    wrong, m = np.asarray(wrong), np.asarray(m)
    if kind == "binomial":
        return np.where(m > 0, stats.binom.cdf(wrong, np.maximum(m, 1), alpha), 1.0)
    return np.array([p_value(kind, int(w), int(k), alpha) for w, k in zip(wrong, m)])


def binomial_upper_bound(wrong: int, m: int, delta: float) -> float:
    """Clopper–Pearson upper confidence bound at level 1 - δ for a binomial rate (1 if m = 0)."""
    if m == 0 or wrong >= m:
        return 1.0
    return float(stats.beta.ppf(1 - delta, wrong + 1, m - wrong))


def crc_budget(n: int, alpha: float) -> float:
    """Largest loss count k that conformal risk control certifies on n items:
    (k + 1)/(n + 1) <= α  ⇔  k <= α (n + 1) − 1 (Angelopoulos et al. 2022, B = 1)."""
    return alpha * (n + 1) - 1


def crc_certifies(losses, n: int, alpha: float) -> np.ndarray:
    """Does CRC certify each loss count (array of shape (P,)) on n items?"""
    return np.asarray(losses) <= crc_budget(n, alpha)


def binomial_certifies(losses, n: int, alpha: float, delta: float) -> np.ndarray:
    """Does the exact binomial test reject H: R > α at level δ for each loss count (P,) of n?"""
    return stats.binom.cdf(np.asarray(losses), n, alpha) <= delta


def min_items_to_certify(alpha: float, delta: float | None, p_value_kind: str = "binomial") -> int:
    """Smallest number of items at risk with which zero losses certify risk <= α.

    With fewer items nothing — not even "always escalate" — can be certified, whatever
    the data. ``delta=None`` is the marginal form (conformal risk control): the smallest
    n with 1/(n + 1) <= α. Otherwise the smallest n whose p-value at zero losses is <= δ;
    both p-values equal (1 − α)^n there, so n = ⌈log δ / log(1 − α)⌉.

    Parameters
    ----------
    alpha, delta : float in (0, 1); ``delta`` may be None
    p_value_kind : one of ``P_VALUES``

    Returns
    -------
    int
    """
    if delta is None:
        n = max(0, math.ceil(1 / alpha - 1))
        while n > 0 and crc_budget(n - 1, alpha) >= 0:
            n -= 1
        while crc_budget(n, alpha) < 0:
            n += 1
        return n
    check_p_value_kind(p_value_kind)
    n = max(1, math.ceil(math.log(delta) / math.log1p(-alpha)))
    while n > 1 and p_value(p_value_kind, 0, n - 1, alpha) <= delta:
        n -= 1
    while p_value(p_value_kind, 0, n, alpha) > delta:
        n += 1
    return n


def max_certified_losses(n: int, alpha: float, delta: float | None) -> int:
    """Largest loss count among n items that certifies risk <= α (−1 when none does):
    ⌊α (n + 1) − 1⌋ for CRC (``delta=None``), max{k : P(Bin(n, α) <= k) <= δ} otherwise."""
    if delta is None:
        budget = crc_budget(n, alpha)
        return int(math.floor(budget)) if budget >= 0 else -1
    k = int(stats.binom.ppf(delta, n, alpha))  # smallest k with cdf(k) >= δ
    while k >= 0 and stats.binom.cdf(k, n, alpha) > delta:
        k -= 1
    while stats.binom.cdf(k + 1, n, alpha) <= delta:
        k += 1
    return k
