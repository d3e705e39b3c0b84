"""Per-group validity on real cached generations of the built-in mixed workload.

``results/groups/scores.npz`` holds, for the mixed-workload items the per-group artifact's
learned rules never trained on (``benchmarks/groups.py``), the rule's score of the
0.5B's answer, the skip rule's score, both tiers' correctness and costs, and each item's
source. Over 500 random calibration / held-out splits: fitting per source keeps every
source's held-out quality loss above α in at most δ (+ noise) of the calibrations; one fit
for the mix does not — the sources it under-serves fail. No engine runs: the arrays are
real generations, the splits are the experiment.
"""

from pathlib import Path

import numpy as np
import pytest

from vcascade.calibration.conformal import validity_experiment

ARRAYS = Path(__file__).resolve().parents[1] / "results" / "groups" / "scores.npz"


@pytest.fixture(scope="module")
def real():
    data = np.load(ARRAYS)
    return {k: data[k] for k in data.files}


def run(real, grouped):
    skip = real["skip_scores"] if real["skip_scores"].size else None
    return validity_experiment(real["scores"], real["correct"], real["costs"], real["groups"], target="quality-loss",
                               alpha=0.05, delta=0.1, skip_scores=skip, calibration_size=0.5, splits=500,
                               grouped=grouped, seed=7)


def test_the_arrays_are_the_mixed_workload(real):
    assert len(set(real["groups"].tolist())) == 8 and real["correct"].shape == (len(real["groups"]), 2)
    assert 0.2 < real["correct"][:, 0].mean() < real["correct"][:, 1].mean() < 0.6


def test_per_group_fits_hold_in_every_source_over_500_real_splits(real):
    result = run(real, grouped=True)
    assert result.all_pass, {g: r["share_above_alpha"] for g, r in result.per_group.items()}
    assert max(r["share_above_alpha"] for r in result.per_group.values()) <= 0.1 + 3 * (0.1 * 0.9 / 500) ** 0.5


def test_one_fit_for_the_mix_fails_some_source_over_the_same_splits(real):
    result = run(real, grouped=False)
    assert result.failing_groups, {g: r["share_above_alpha"] for g, r in result.per_group.items()}
    assert max(r["share_above_alpha"] for r in result.per_group.values()) > 0.5
