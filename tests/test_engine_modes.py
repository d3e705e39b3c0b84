"""Multiprocess engines: each tier's engine worker is pinned to its own core."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.engine
SCRIPT = Path(__file__).parent / "scripts" / "pinned_tiers.py"


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_two_multiprocess_tiers_do_not_share_a_core(tiny_models):
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tiny_models["tiny-a"])], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    first, second = report["affinities"]
    assert len(first) == len(second) == 1 and first != second
    assert all(1 <= t <= 3 for t in report["tokens"])
