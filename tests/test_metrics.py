import math

import numpy as np
import pytest

from vcascade.calibration.metrics import auroc


def test_auroc_hand_computed():
    assert auroc([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0]) == 1.0
    assert auroc([0.1, 0.2, 0.9, 0.8], [1, 1, 0, 0]) == 0.0
    # pairs (pos, neg): (0.5 vs 0.5 tie = 1/2), (0.5 vs 0.1 = 1), (0.3 vs 0.5 = 0), (0.3 vs 0.1 = 1) -> 2.5 / 4
    assert auroc([0.5, 0.3, 0.5, 0.1], [1, 1, 0, 0]) == pytest.approx(0.625)
    assert auroc([-math.inf, 0.0], [0, 1]) == 1.0


def test_auroc_degenerate_and_random():
    assert math.isnan(auroc([0.1, 0.2], [1, 1]))
    rng = np.random.default_rng(0)
    labels = rng.random(4000) < 0.5
    assert auroc(rng.random(4000), labels) == pytest.approx(0.5, abs=0.03)
