"""The monitor's statistics (``engine.monitoring``): each test is valid — under
exchangeability its false-alarm rate over many simulated runs stays below its level at
every step — and powerful — it detects a shift. No engines; seconds."""

import math

import numpy as np
import pytest
from scipy import stats
from scipy.special import betaln, xlog1py, xlogy

from vcascade.engine.monitoring import (Decision, Monitor, RankMartingale, Reference, SimpleJumper, audit_upper_bound,
                                        bernoulli_cs, conformal_p_value, dkw_halfwidth, monitor_section, route,
                                        simple_mixture_log, subsample)
from vcascade.engine.monitoring.sequences import AUDIT_GRID, PRIOR
from vcascade.engine.policy import Policy
from vcascade.engine.types import Answer, TraceStep
from vcascade.engine.uncertainty.rules import SignalRule

RUNS = 400


def allowed(level: float, runs: int) -> float:
    """The false-alarm share a valid test may show over ``runs`` runs (level + 3 s.e.)."""
    return level + 3 * math.sqrt(level * (1 - level) / runs)


# ---------------------------------------------------------------- conformal p-values

def test_online_p_values_are_uniform_and_independent_with_ties():
    rng = np.random.default_rng(0)
    ps = []
    for _ in range(200):
        test = RankMartingale(rng.integers(0, 4, size=30).astype(float), 0.5, rng, epoch=None)
        for x in rng.integers(0, 4, size=20).astype(float):  # heavy ties
            test.observe(x)
            ps.append(test.last_p)
    ps = np.array(ps)
    assert stats.kstest(ps, "uniform").pvalue > 0.01
    pairs = ps.reshape(200, 20)
    assert abs(np.corrcoef(pairs[:, 3], pairs[:, 4])[0, 1]) < 0.2


def test_p_value_counts_from_the_top():
    bag = [0.0, 1.0, 1.0, 2.0]
    assert conformal_p_value(bag, 3.0, 0.5) == pytest.approx(0.5 / 5)
    assert conformal_p_value(bag, -1.0, 0.5) == pytest.approx((4 + 0.5) / 5)
    assert conformal_p_value(bag, 1.0, 0.0) == pytest.approx(1 / 5)
    assert conformal_p_value(bag, -math.inf, 1.0) == pytest.approx(1.0)


# ---------------------------------------------------------------- martingales

def test_simple_jumper_is_a_martingale_and_mixture_closed_form():
    rng = np.random.default_rng(1)
    finals = []
    for _ in range(2000):
        m = SimpleJumper(0.1)
        for p in rng.random(10):
            m.update(p)
        finals.append(math.exp(m.log_value))
    assert np.mean(finals) == pytest.approx(1.0, abs=0.03)
    p = rng.random(6)
    grid = np.linspace(1e-6, 1, 200001)
    direct = np.log(np.trapezoid(np.prod(grid[:, None] * p[None, :] ** (grid[:, None] - 1), axis=1), grid))
    assert simple_mixture_log(p)[-1] == pytest.approx(direct, abs=1e-3)
    assert simple_mixture_log(np.ones(3))[-1] == pytest.approx(-math.log(4))


@pytest.mark.parametrize("discrete", [False, True])
def test_rank_martingale_false_alarms_at_most_its_level_at_every_step(discrete):
    rng = np.random.default_rng(2 + discrete)
    level, steps = 0.1, 400
    alarm_at = []
    for _ in range(RUNS):
        draw = (lambda k: rng.integers(0, 5, size=k).astype(float)) if discrete else (lambda k: rng.normal(size=k))
        test = RankMartingale(draw(300), level, rng, jump=0.01, epoch=150)  # epochs exercised too
        for x in draw(steps):
            test.observe(x)
        alarm_at.append(test.alarm_at or math.inf)
    alarm_at = np.array(alarm_at)
    shares = [(alarm_at <= t).mean() for t in range(1, steps + 1)]
    assert max(shares) <= allowed(level, RUNS), max(shares)


@pytest.mark.parametrize("shift", ["mean", "spread", "late"])
def test_rank_martingale_detects_a_shift(shift):
    rng = np.random.default_rng(4)
    detected, delays = 0, []
    for _ in range(100):
        test = RankMartingale(rng.normal(size=1000), 0.01, rng)
        if shift == "late":
            for x in rng.normal(size=3000):
                test.observe(x)
            pass  # (a false alarm in the long null stretch would fail the test below)
        start = test.n
        live = rng.normal(0.5, 1.0, size=1500) if shift != "spread" else rng.normal(0, 2.0, size=1500)
        for x in live:
            if test.observe(x):
                break
        if test.alarm and test.alarm_at > start:
            detected += 1
            delays.append(test.alarm_at - start)
    assert detected >= 95
    assert np.median(delays) < 300


# ---------------------------------------------------------------- confidence sequences

def _log_mixture_path(x: np.ndarray, m: float) -> np.ndarray:
    s = np.cumsum(x)
    f = np.arange(1, x.size + 1) - s
    a, b = PRIOR
    return betaln(a + s, b + f) - betaln(a, b) - xlogy(s, m) - xlog1py(f, -m)


@pytest.mark.parametrize("rate", [0.02, 0.3, 0.5])
def test_bernoulli_cs_covers_the_rate_at_every_step(rate):
    rng = np.random.default_rng(5)
    level, steps = 0.1, 3000
    misses = 0
    for _ in range(RUNS):
        x = rng.random(steps) < rate
        misses += bool((_log_mixture_path(x, rate) >= math.log(1 / level)).any())  # outside the CS at some t
    assert misses / RUNS <= allowed(level, RUNS)
    lower, upper = bernoulli_cs(int(0.3 * 2000), 2000, 0.01)
    assert lower < 0.3 < upper and upper - lower < 0.1
    assert bernoulli_cs(0, 100, 0.01)[0] == 0.0 and bernoulli_cs(100, 100, 0.01)[1] == 1.0


def test_dkw_band_holds_uniformly_over_data_chosen_thresholds():
    rng = np.random.default_rng(6)
    level, n = 0.1, 400
    x = dkw_halfwidth(n, level, dims=2)
    misses = 0
    for _ in range(RUNS):
        pts = rng.random((n, 2))
        # a threshold chosen from the data: the worst of many quadrants for this sample
        grid = np.quantile(pts, np.linspace(0.05, 0.95, 19), axis=0)
        worst = max(abs(np.mean((pts[:, 0] >= a) & (pts[:, 1] >= b)) - (1 - a) * (1 - b))
                    for a in grid[:, 0] for b in grid[:, 1])
        misses += worst > x
    assert misses / RUNS <= level
    assert dkw_halfwidth(0, 0.1) == math.inf and dkw_halfwidth(1000, 0.05, 1) == pytest.approx(
        math.sqrt(math.log(40) / 2000))


def _audit_excess(kept_dis_unaudited: np.ndarray, audited_dis: np.ndarray, share: float, level: float) -> np.ndarray:
    """Per step: is S_t above the audit bound (the mixture at S_t reached 1/level)?"""
    c = AUDIT_GRID[:, None]
    a = np.cumsum(audited_dis)[None, :]
    s = a + np.cumsum(kept_dis_unaudited)[None, :]
    logs = (s - a) * np.log1p(c * share / (1 - share)) + a * np.log1p(-c)
    top = logs.max(axis=0)
    return top + np.log(np.exp(logs - top).mean(axis=0)) > math.log(1 / level)


@pytest.mark.parametrize("pattern", ["iid", "bursts"])
def test_audit_bound_covers_the_disagreements_at_every_step(pattern):
    rng = np.random.default_rng(7)
    share, level, steps = 0.05, 0.1, 4000
    misses, widths = 0, []
    for _ in range(RUNS):
        if pattern == "iid":
            d = rng.random(steps) < 0.05
        else:  # adversarial-looking: disagreements come in bursts; the coin alone makes it valid
            d = (np.arange(steps) // 200) % 4 == 1
        audited = rng.random(steps) < share
        misses += bool(_audit_excess(d & ~audited, d & audited, share, level).any())
        u = audit_upper_bound(steps, int(audited.sum()), int((d & audited).sum()), share, level)
        assert u >= (d & audited).sum()
        widths.append(u / steps - d.mean())
    assert misses / RUNS <= allowed(level, RUNS)
    assert np.median(widths) < (0.08 if pattern == "iid" else 0.2)  # informative: 4000 requests, 200 audits
    assert audit_upper_bound(100, 100, 7, 1.0, 0.01) == 7
    assert audit_upper_bound(100, 0, 0, 0.1, 0.01) <= 100


# ---------------------------------------------------------------- reference and routing

def test_route_matches_the_controller_semantics():
    scores = np.array([[0.9], [0.1], [0.9], [0.5]])
    skip = np.array([1.0, 1.0, -1.0, 0.0])
    tier, skipped = route(scores, skip, [0.5], 0.0)
    assert tier.tolist() == [0, 1, 1, 0] and skipped.tolist() == [False, False, True, False]
    assert subsample(10, 20).tolist() == list(range(10))
    idx = subsample(10000, 5000, seed=3)
    assert idx.size == 5000 and np.array_equal(idx, subsample(10000, 5000, seed=3)) and np.all(np.diff(idx) > 0)


def synthetic(n: int, rng, shift: float = 0.0):
    """(scores (n,1), skip scores (n,), disagree (n,1)) of a synthetic two-tier workload."""
    skip = rng.normal(shift, 1.0, n)
    score = 0.6 * skip + rng.normal(0, 0.8, n)
    disagree = rng.random(n) < 1 / (1 + np.exp(2 * score))
    return score[:, None], skip, disagree[:, None]


def synthetic_policy():
    return Policy((SignalRule("mean_logprob"),), (0.0,), skip=_Skip(), skip_threshold=-0.5)


class _Skip:
    name = "skip:test"
    needs_embedding = False


def synthetic_artifact(rng, n=2000):
    scores, skip, disagree = synthetic(n, rng)
    tier, skipped = route(scores, skip, [0.0], -0.5)
    return {"monitor": monitor_section(scores, skip, tier, skipped, disagree)}


def test_monitor_section_and_reference_round_trip():
    rng = np.random.default_rng(8)
    artifact = synthetic_artifact(rng, n=6000)
    section = artifact["monitor"]
    assert section["n"] == 6000 and section["n_stored"] == 5000 and len(section["scores"][0]) == 5000
    assert 0 < section["acceptance_rate"] < 1 and 0 < section["skip_rate"] < 1 and 0 < section["disagreement_rate"] < 1
    ref = Reference.from_artifact(artifact, synthetic_policy())
    assert ref.n == 5000 and ref.n_tiers == 2
    assert abs(float((ref.answered == 0).mean()) - section["acceptance_rate"]) < 0.03
    with pytest.raises(ValueError, match="no 'monitor' section"):
        Reference.from_artifact({}, synthetic_policy())


def decisions(rng, n, shift=0.0, disagree_boost=0.0):
    scores, skip, disagree = synthetic(n, rng, shift)
    tier, skipped = route(scores, skip, [0.0], -0.5)
    for i in range(n):
        yield (Decision(in_scope=True, answered=int(tier[i]), skipped=bool(skipped[i]), skip_score=float(skip[i]),
                        scores={} if skipped[i] else {0: float(scores[i, 0])}),
               bool(disagree[i, 0]) or rng.random() < disagree_boost)


def run_monitor(rng, artifact, steps, level, shift=0.0, audit_share=0.0, disagree_boost=0.0):
    monitor = Monitor(Reference.from_artifact(artifact, synthetic_policy()), ["small", "large"], alarm_level=level,
                      audit_share=audit_share, feedback=False, seed=int(rng.integers(1 << 30)))
    for decision, disagree in decisions(rng, steps, shift, disagree_boost):
        seen = monitor.observe(decision)
        if seen.audit:
            monitor.audit_result(seen.seq, disagree)
        if monitor.alarms:
            break
    return monitor


def test_monitor_false_alarms_at_most_epsilon_and_detects_shifts():
    rng = np.random.default_rng(9)
    level, runs = 0.1, 200
    artifact = synthetic_artifact(rng)
    false = sum(bool(run_monitor(rng, synthetic_artifact(rng), 300, level, audit_share=0.2).alarms)
                for _ in range(runs))
    assert false / runs <= allowed(level, runs)
    shifted = [run_monitor(rng, artifact, 1500, 0.01, shift=0.6) for _ in range(20)]
    assert all(m.alarms for m in shifted)
    assert np.median([m.alarms[0]["at_observation"] for m in shifted]) < 300
    audited = [run_monitor(rng, artifact, 3000, 0.01, audit_share=0.5, disagree_boost=0.4) for _ in range(10)]
    assert sum(any(a["test"] == "audit_disagreement" for a in m.alarms) for m in audited) >= 8


def test_monitor_split_of_epsilon_state_and_snapshot():
    rng = np.random.default_rng(10)
    monitor = Monitor(Reference.from_artifact(synthetic_artifact(rng), synthetic_policy()), ["small", "large"],
                      alarm_level=0.01, audit_share=0.1, feedback=True, target="accept-error", alpha=0.1, seed=0)
    # skip-score and tier-0 martingales, acceptance and skip rates, audits, served risk
    assert monitor.n_tests == 6 and monitor.test_level == pytest.approx(0.01 / 6)
    assert monitor.state == "in_scope"
    monitor.observe(Decision(in_scope=False, answered=0))
    assert monitor.out_of_scope == 1 and monitor.seen == 0
    snap = monitor.snapshot()
    assert set(snap["tests"]) == {"skip_score", "score:small", "acceptance_rate", "skip_rate", "audit_disagreement",
                                  "served_risk"}
    for _ in range(60):
        monitor.feedback(kept_by_smaller=True, wrong=True)
    assert monitor.state == "drift_detected" and monitor.alarms[0]["test"] == "served_risk"
    assert monitor.snapshot()["served_risk"]["lower"] > 0.1


def test_audits_resolve_in_decision_order():
    rng = np.random.default_rng(11)
    monitor = Monitor(Reference.from_artifact(synthetic_artifact(rng), synthetic_policy()), ["small", "large"],
                      audit_share=1.0, feedback=False, seed=0)
    kept = Decision(in_scope=True, answered=0, skip_score=1.0, scores={0: 1.0})
    first, second = monitor.observe(kept), monitor.observe(kept)
    assert first.audit and second.audit
    monitor.observe(Decision(in_scope=True, answered=1, skip_score=1.0, scores={0: -1.0}))
    monitor.audit_result(second.seq, True)
    assert monitor.prefix["requests"] == 0  # the first audit is pending: nothing after it counts yet
    monitor.audit_result(first.seq, None)   # a failed audit counts as a disagreement
    assert monitor.prefix == {"requests": 3, "kept": 2, "audited": 2, "audited_disagree": 2}
    assert monitor.audits_failed == 1
    bound = monitor.quality_loss_bound()
    assert bound["upper"] == pytest.approx(2 / 3)
    excluded = monitor.observe(kept, audit_capacity=False)
    assert excluded.seq is None and monitor.audits_excluded == 1
    monitor.close_audits("cost cap")
    assert monitor.observe(kept).seq is None and monitor.quality_loss_bound()["active"] is False


def test_decision_from_an_answer():
    trace = [TraceStep("small", -0.2, 0.1, "skip", 0, 0, 0.0, detail="skip:x"),
             TraceStep("large", None, None, "final", 5, 3, 0.1)]
    answer = Answer(text="x", tier="large", tier_index=1, score=None, finish_reason="stop", trace=trace)
    d = Decision.from_answer(answer, ["small", "large"])
    assert d.skipped and d.skip_score == -0.2 and d.scores == {} and d.answered == 1 and d.in_scope
    trace = [TraceStep("small", 0.4, 0.1, "accept", 5, 3, 0.1)]
    answer = Answer(text="x", tier="small", tier_index=0, score=0.4, finish_reason="stop", trace=trace,
                    out_of_scope=["decoding"])
    d = Decision.from_answer(answer, ["small", "large"])
    assert not d.in_scope and d.scores == {0: 0.4} and not d.skipped


# ---------------------------------------------------------------- the artifact's monitor section

def test_calibration_monitor_reference_from_cached_answers():
    from vcascade.calibration.conformal import CalibrationData
    from vcascade.calibration.datasets import Item
    from vcascade.calibration.monitoring import disagreements, monitor_reference
    from vcascade.engine.config import parse_config

    config = parse_config({"tiers": [{"name": "a", "model": "/m/a", "threshold": 0.0}, {"name": "b", "model": "/m/b"}]})
    items = [Item(id=f"q{i}", prompt=f"q{i}", answers=("x",), kind="exact") for i in range(4)]
    texts = [("Paris.", "paris"), ("Lyon", "Paris"), ("the Cat", "cat"), ("", "dog")]
    records = [{it.id: {"result": {"text": t[k]}, "correct": True} for it, t in zip(items, texts)} for k in (0, 1)]
    assert disagreements(config, records, items)[:, 0].tolist() == [False, True, False, True]
    data = CalibrationData(np.array([[1.0], [2.0], [-1.0], [-math.inf]]), np.ones((4, 2), dtype=bool),
                           np.ones((4, 2)), None)

    class Fit:
        config = [0.5]

    section = monitor_reference(config, records, items, data, Fit())
    assert section["acceptance_rate"] == 0.5 and section["skip_rate"] is None and section["skip_scores"] is None
    assert section["disagreement_rate"] == 0.5  # kept: q0 (agrees), q1 (disagrees)
    assert section["scores"] == [[1.0, 2.0, -1.0, -math.inf]] and section["equivalence"] == "normalized"
    assert section["counts"]["kept_disagree"] == 1


def test_the_committed_default_artifact_carries_a_monitor_reference():
    """`make serve` is monitored: the default artifact's monitor section (written by `make
    calibrate` from its calibration-split items) loads under its own policy."""
    from pathlib import Path

    from vcascade.engine.artifact import load_artifact_policy, read_artifact
    from vcascade.engine.config import load_config
    from vcascade.engine.monitoring import Monitor
    from vcascade.engine.monitoring.reference import Reference

    config = load_config(None)
    path = Path(config.artifact)
    artifact = read_artifact(path)
    policy = load_artifact_policy(path, config)
    reference = Reference.from_artifact(artifact, policy)
    assert reference.n >= 500 and artifact["monitor"]["n"] == artifact["dataset"]["splits"]["calibrate"]
    # the stored routing agrees with the rates the section states
    assert abs(float((reference.answered == 0).mean()) - artifact["monitor"]["acceptance_rate"]) < 0.05
    Monitor(reference, [t.name for t in config.tiers])
