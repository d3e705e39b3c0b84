"""Ranking metrics for confidence signals (pure numpy/scipy)."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def auroc(scores: np.ndarray, correct: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` (shape (n,)) for predicting ``correct`` (bool, (n,)).

    The Mann–Whitney U statistic over average ranks, so ties count one half:
    P(score of a correct item > score of a wrong one) + ½ P(equal). ``-inf`` scores rank
    lowest. NaN when either class is empty.
    """
    scores = np.asarray(scores, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    n_pos, n_neg = int(correct.sum()), int((~correct).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)  # average ranks for ties; -inf sorts first
    u = ranks[correct].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))
