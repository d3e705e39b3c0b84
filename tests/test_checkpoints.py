"""Mid-generation deferral (checkpoints inside the small tier's answer): routing, prefixes, validity.

Synthetic data only, no engines. The validity population: a latent difficulty z ~ N(0, 1)
per item; the small tier is right with probability sigmoid(1.6 z + 0.3), the large one
with sigmoid(z + 2) (independent given z: the errors are not nested); the prefix score at
checkpoint k_j is z plus noise that shrinks with k (an early prefix says less), the end
score z plus less noise; answer lengths are log-normal (median ~37 tokens, ~6 % end
before the first checkpoint, ~10 % reach the last). The path is built on a training
draw; calibration/test splits are drawn from a separate pool of 100k items, the test
risk is the chosen configuration's risk on the pool minus the calibration items.
"""

import math

import numpy as np
import pytest

from vcascade.calibration.conformal import CertificateError, FitError
from vcascade.calibration.conformal import checkpoints as ck
from vcascade.calibration.conformal.checkpoints import (
    COMMIT, END_KEEP, CheckpointConfig, CheckpointData, checkpoint_family, checkpoint_figures, checkpoint_losses,
    fit_checkpoints, fit_checkpoints_naive, path_costs, path_counts, path_routing, route, select_family, token_costs,
    verify_checkpoint_certificate,
)
from vcascade.engine.types import Request, Sample, TierResult
from vcascade.engine.uncertainty.prefix import prefix_result, prefix_scores
from vcascade.engine.uncertainty.rules import Query, SignalRule

INF = math.inf

# ---------------------------------------------------------------- scripted routing

K3 = (4, 8, 16)
LARGE = 100.0


def scripted():
    """One item per path; config: commit >= 0.9, escalate < 0.2 at every checkpoint, end >= 0.5, skip < 0."""
    rows = [  # (length, scores at 4 / 8 / 16, end score, skip score, what happens)
        (20, [0.1, 0.5, 0.5], 0.9, 1.0),   # 0 escalate at 4
        (20, [0.5, 0.1, 0.5], 0.9, 1.0),   # 1 escalate at 8
        (20, [0.5, 0.5, 0.1], 0.9, 1.0),   # 2 escalate at 16
        (20, [0.95, 0.1, 0.1], 0.0, 1.0),  # 3 commit at 4 (later scores and the end never read)
        (20, [0.5, 0.95, 0.1], 0.0, 1.0),  # 4 commit at 8
        (20, [0.5, 0.5, 0.95], 0.0, 1.0),  # 5 commit at 16
        (20, [0.5, 0.5, 0.5], 0.7, 1.0),   # 6 runs to the end, kept
        (20, [0.5, 0.5, 0.5], 0.3, 1.0),   # 7 runs to the end, escalated
        (6, [0.5, None, None], 0.7, 1.0),  # 8 ends before 8: skips 8 and 16, end keeps
        (3, [None, None, None], 0.3, 1.0),  # 9 ends before 4: the end rule alone, escalated
        (8, [0.5, 0.1, None], 0.9, 1.0),   # 10 exactly 8 tokens: reaches 8 and escalates there
        (20, [0.95, 0.95, 0.95], 0.9, -1.0),  # 11 skipped before generation
    ]
    lengths = np.array([r[0] for r in rows])
    scores = np.array([[np.nan if s is None else s for s in r[1]] for r in rows])
    prompt = np.full(len(rows), 10)
    prefix, small = token_costs(prompt, lengths, K3, prompt_cost=1.0, output_cost=2.0)
    correct = np.ones((len(rows), 2), dtype=bool)
    return CheckpointData(K3, scores, np.array([r[2] for r in rows]), lengths, correct, prefix, small,
                          np.full(len(rows), LARGE), np.array([r[3] for r in rows]))


SCRIPTED_CONFIG = CheckpointConfig(K3, (0.9,) * 3, (0.2,) * 3, 0.5, 0.0)


def test_every_routing_path_with_exact_costs_and_wasted_tokens():
    data = scripted()
    r = route(data, SCRIPTED_CONFIG)
    assert r.kinds.tolist() == ["escalate", "escalate", "escalate", "commit", "commit", "commit", "end-keep",
                                "end-escalate", "end-keep", "end-escalate", "escalate", "skip"]
    assert r.stage.tolist() == [1, 2, 3, 1, 2, 3, 4, 4, 4, 4, 2, 0]
    assert r.tokens.tolist() == [4, 8, 16, 4, 8, 16, 20, 20, 6, 3, 8, 0]
    assert r.kept.tolist() == [False] * 3 + [True] * 4 + [False, True, False, False, False]
    small_full = 10 + 2 * 20
    assert r.cost.tolist() == [10 + 2 * 4 + LARGE, 10 + 2 * 8 + LARGE, 10 + 2 * 16 + LARGE,
                               small_full, small_full, small_full, small_full, small_full + LARGE,
                               10 + 2 * 6, 10 + 2 * 3 + LARGE, 10 + 2 * 8 + LARGE, LARGE]
    assert r.wasted.tolist() == [4, 8, 16, 0, 0, 0, 0, 20, 0, 3, 8, 0]
    # without the skip threshold, item 11 commits at the first checkpoint
    no_skip = CheckpointConfig(K3, (0.9,) * 3, (0.2,) * 3, 0.5)
    assert route(data, no_skip).kinds[11] == "commit"
    assert route(data.without_skip(), no_skip).kinds[11] == "commit"


def test_escalate_is_checked_before_commit_and_infinite_thresholds_switch_a_checkpoint_off():
    data = scripted()
    overlap = CheckpointConfig(K3, (0.4, INF, INF), (0.6, -INF, -INF), 0.5)  # 0.5 is in both bands at 4
    r = route(data, overlap)
    assert r.kinds[6] == "escalate" and r.stage[6] == 1
    never = CheckpointConfig(K3, (INF,) * 3, (-INF,) * 3, 0.5)  # no mid-generation decision at all
    r = route(data, never)
    assert set(r.kinds.tolist()) == {"end-keep", "end-escalate"} and (r.stage == 4).all()
    assert r.kept.tolist() == (data.end_scores >= 0.5).tolist()
    everyone = route(data, CheckpointConfig.always_escalate(K3, skip=True))
    assert not everyone.kept.any() and (everyone.cost == LARGE).all() and (everyone.wasted == 0).all()
    first = route(data, CheckpointConfig.always_escalate(K3))  # no skip: escalated at the first checkpoint
    assert first.kinds.tolist()[:9] == ["escalate"] * 9 and first.kinds[9] == "end-escalate"
    assert first.wasted.tolist() == [4] * 9 + [3, 4, 4]


def test_losses_figures_and_decision_counts_of_the_scripted_case():
    data = scripted()
    correct = data.correct.copy()
    correct[[3, 6], 0] = False  # kept and small wrong; 3: large right, 6: large wrong too
    correct[6, 1] = False
    data = CheckpointData(data.checkpoints, data.scores, data.end_scores, data.lengths, correct, data.prefix_costs,
                          data.small_costs, data.large_costs, data.skip_scores)
    kept = route(data, SCRIPTED_CONFIG).kept
    assert np.flatnonzero(checkpoint_losses(data, kept, "accept-error")[0]).tolist() == [3, 6]
    assert np.flatnonzero(checkpoint_losses(data, kept, "quality-loss")[0]).tolist() == [3]
    f = checkpoint_figures(data, SCRIPTED_CONFIG, early_tokens=8)
    assert f["quality_loss"] == pytest.approx(1 / 12) and f["accept_error"] == pytest.approx(2 / 12)
    assert f["escalated"] == pytest.approx(7 / 12) and f["skipped"] == pytest.approx(1 / 12)
    assert f["escalated_early_share"] == pytest.approx(5 / 7)  # of 7 escalated: 0, 1, 10, 9 (3 tokens), the skip
    assert f["wasted_tokens_total"] == 4 + 8 + 16 + 20 + 3 + 8
    assert f["wasted_tokens_mean"] == pytest.approx(59 / 7)
    costs = route(data, SCRIPTED_CONFIG).cost
    assert f["cost_ratio"] == pytest.approx(costs.mean() / LARGE)
    assert f["decisions"] == {"skip": {"escalate": 1}, "4": {"commit": 1, "escalate": 1, "continue": 8},
                              "8": {"commit": 1, "escalate": 2, "continue": 4},
                              "16": {"commit": 1, "escalate": 1, "continue": 2},
                              "end": {"keep": 2, "escalate": 2}}


def test_early_share_counts_skips_and_checkpoints_up_to_the_token_limit():
    f = checkpoint_figures(scripted(), SCRIPTED_CONFIG, early_tokens=4)
    assert f["escalated_early_share"] == pytest.approx(3 / 7)  # item 0 (4 tokens), item 9 (3), the skip (0)
    assert checkpoint_figures(scripted(), SCRIPTED_CONFIG)["escalated_early_share"] == 1.0  # all within 32


def test_data_and_configs_are_validated():
    data = scripted()
    with pytest.raises(ValueError, match="NaN exactly"):
        scores = data.scores.copy()
        scores[9, 0] = 0.5  # item 9 never reaches 4 tokens
        CheckpointData(K3, scores, data.end_scores, data.lengths, data.correct, data.prefix_costs,
                       data.small_costs, data.large_costs)
    with pytest.raises(ValueError, match="strictly increasing"):
        CheckpointConfig((8, 4, 16), (INF,) * 3, (INF,) * 3, INF)
    with pytest.raises(ValueError, match="differ"):
        route(data, CheckpointConfig((4, 8, 32), (INF,) * 3, (INF,) * 3, INF))
    with pytest.raises(ValueError, match="skip scores"):
        route(data.without_skip(), SCRIPTED_CONFIG)
    config = CheckpointConfig.from_dict(SCRIPTED_CONFIG.to_dict())
    assert config == SCRIPTED_CONFIG


# ---------------------------------------------------------------- prefixes of a TierResult


def result(pieces=("Hel", "lo", " wor", "ld", "!"), finish="stop"):
    lps = [-0.1, -0.5, -1.0, -0.2, -2.0]
    return TierResult(text="".join(pieces), token_ids=[11, 12, 13, 14, 15], token_logprobs=lps,
                      top_logprobs=[[(p, lp), ("x", lp - 1)] for p, lp in zip(pieces, lps)],
                      cumulative_logprob=sum(lps), finish_reason=finish, prompt_tokens=7, completion_tokens=5,
                      seconds=1.0, tokens=list(pieces), samples=[Sample("Hello", [1], [-0.1], -0.1)],
                      clusters=[0], greedy_cluster=0, max_tokens=64)


def test_prefix_result_cuts_text_tokens_and_counts():
    full = result()
    p = prefix_result(full, 2)
    assert p.text == "Hello" and p.tokens == ["Hel", "lo"] and p.token_ids == [11, 12]
    assert p.token_logprobs == [-0.1, -0.5] and p.top_logprobs == full.top_logprobs[:2]
    assert p.cumulative_logprob == pytest.approx(-0.6) and p.completion_tokens == 2
    assert p.finish_reason is None and p.prompt_tokens == 7 and p.max_tokens == 64
    assert p.samples == [] and p.clusters == [] and p.greedy_cluster is None
    assert p.seconds == pytest.approx(0.4)
    assert full.completion_tokens == 5 and len(full.token_logprobs) == 5  # the full result is not changed
    empty = prefix_result(full, 0)
    assert empty.text == "" and empty.token_logprobs == [] and empty.completion_tokens == 0
    with pytest.raises(ValueError, match="6 tokens"):
        prefix_result(full, 6)


def test_a_full_length_prefix_has_the_full_answers_content():
    full = result()
    p = prefix_result(full, 5)
    for name in ("text", "token_ids", "tokens", "token_logprobs", "top_logprobs", "cumulative_logprob",
                 "finish_reason", "prompt_tokens", "completion_tokens", "max_tokens"):
        assert getattr(p, name) == getattr(full, name), name


def test_prefix_scores_score_each_checkpoint_in_one_batch_and_nan_after_the_end():
    short = result(pieces=("a", "b"), finish="stop")
    short.token_ids, short.token_logprobs = short.token_ids[:2], short.token_logprobs[:2]
    short.top_logprobs, short.completion_tokens = short.top_logprobs[:2], 2
    results = [result(), short]
    queries = [Query(Request(prompt="q1")), Query(Request(prompt="q2"))]
    scores = prefix_scores(SignalRule("mean_logprob"), queries, results, [1, 2, 4, 5])
    lps = np.array(results[0].token_logprobs)
    assert scores[0].tolist() == pytest.approx([lps[:1].mean(), lps[:2].mean(), lps[:4].mean(), lps.mean()])
    assert scores[1, :2].tolist() == pytest.approx([-0.1, -0.3]) and np.isnan(scores[1, 2:]).all()

    class Counting:
        name, needs_samples, needs_embedding = "count", False, False

        def __init__(self):
            self.calls = []

        def score_many(self, qs, rs):
            self.calls.append([r.completion_tokens for r in rs])
            return np.zeros(len(rs))

    rule = Counting()
    prefix_scores(rule, queries, results, [1, 4])
    assert rule.calls == [[1, 1], [4]]
    with pytest.raises(ValueError, match="needs samples"):
        prefix_scores(SignalRule("discrete_se"), queries, results, [1])
    with pytest.raises(ValueError, match="strictly increasing"):
        prefix_scores(rule, queries, results, [4, 2])


# ---------------------------------------------------------------- a synthetic population

K = np.array([8, 16, 32, 64, 128])
NOISE = np.array([1.6, 1.2, 0.9, 0.7, 0.5])
ALPHA, DELTA = 0.05, 0.1


def population(rng, n, skip=False):
    z = rng.normal(size=n)
    small = rng.random(n) < 1 / (1 + np.exp(-(1.6 * z + 0.3)))
    large = rng.random(n) < 1 / (1 + np.exp(-(1.0 * z + 2.0)))
    lengths = np.maximum(1, np.round(np.exp(rng.normal(3.6, 1.0, n)))).astype(int)
    scores = z[:, None] + NOISE[None, :] * rng.normal(size=(n, K.size))
    scores[lengths[:, None] < K[None, :]] = np.nan
    prompt = rng.integers(20, 200, n)
    prefix, small_costs = token_costs(prompt, lengths, K, 1.0, 5.5)
    large_costs = 4.0 * (prompt + 5.5 * lengths)
    return CheckpointData(K, scores, z + 0.4 * rng.normal(size=n), lengths, np.stack([small, large], axis=1),
                          prefix, small_costs, large_costs, z + rng.normal(size=n) if skip else None)


@pytest.fixture(scope="module")
def world():
    rng = np.random.default_rng(2025)
    return {"train": population(rng, 3000), "pool": population(rng, 100_000),
            "train_skip": population(rng, 3000, skip=True), "pool_skip": population(rng, 100_000, skip=True)}


def test_route_and_the_vectorized_path_agree_on_random_configurations(world):
    rng = np.random.default_rng(3)
    data = world["pool_skip"].subset(np.arange(2000))
    family = checkpoint_family(world["train_skip"], levels=10)
    shuffled = ck.CheckpointFamily(K, np.arange(30), rng.normal(0.5, 1, (30, 5)), rng.normal(-0.5, 1, (30, 5)),
                                   rng.normal(size=30), rng.normal(-1, 1, 30))  # overlapping bands included
    for fam in (family, shuffled):
        decision, stage = path_routing(data, fam)
        costs = path_costs(data, fam)
        for g in range(len(fam)):
            r = route(data, fam[g])
            assert (r.decision == decision[g]).all() and (r.stage == stage[g]).all()
            assert costs[g] == pytest.approx(r.cost.mean())


def test_the_quantile_path_runs_from_always_escalate_to_always_small_with_nested_kept_sets(world):
    train, data = world["train_skip"], world["pool_skip"].subset(np.arange(5000))
    family = checkpoint_family(train, levels=20)
    assert len(family) == 21 and family.levels[0] == 0 and family.levels[-1] == 1
    assert family[0] == CheckpointConfig.always_escalate(K.tolist(), skip=True)
    decision, _ = path_routing(data, family)
    kept = (decision == COMMIT) | (decision == END_KEEP)
    assert not kept[0].any() and kept[-1].all()
    assert (kept[1:] >= kept[:-1]).all()  # an item kept at a is kept at every a' > a
    losses, _ = path_counts(data, family, "quality-loss")
    assert (np.diff(losses) >= 0).all()


def _violation_shares(pool, family, target, fits, splits, n, seed=0):
    """For each fit in ``fits`` (name -> fit(data)), over the same random calibration/test
    splits: share of splits whose test risk exceeds α, mean test risk, mean cost ratio."""
    rng = np.random.default_rng(seed)
    decision, _ = path_routing(pool, family)
    losses = checkpoint_losses(pool, (decision == COMMIT) | (decision == END_KEEP), target)[0]  # (G, N)
    total = losses.sum(axis=1)
    risks, costs = np.empty((len(fits), splits)), np.empty((len(fits), splits))
    for s in range(splits):
        cal = rng.choice(pool.n, n, replace=False)
        data = pool.subset(cal)
        for i, fit in enumerate(fits.values()):
            f = fit(data)
            g = f.index
            risks[i, s] = 0.0 if g is None else (total[g] - losses[g, cal].sum()) / (pool.n - n)
            costs[i, s] = f.cost_ratio
    return {name: {"share": float((risks[i] > ALPHA).mean()), "mean_risk": float(risks[i].mean()),
                   "cost_ratio": float(costs[i].mean())} for i, name in enumerate(fits)}


# Monte-Carlo slack: over S independent splits the violation share is a binomial mean; if the
# true violation probability is <= δ, the share exceeds δ + 3 sqrt(δ(1 − δ)/S) with probability
# ~0.1 %. The test set (~99.7k items) adds a held-out SE of sqrt(α(1 − α)/99.7k) ≈ 0.0007 to each
# test risk, negligible next to the path's risk steps (~0.006 near α).
SPLITS, N_CAL = 500, 300
SLACK = 3 * math.sqrt(DELTA * (1 - DELTA) / SPLITS)


@pytest.mark.parametrize("target,skip,p_value", [
    ("quality-loss", False, "binomial"),
    ("accept-error", True, "hoeffding-bentkus"),
])
def test_fit_checkpoints_holds_with_probability_1_minus_delta_and_the_naive_fit_does_not(world, target, skip,
                                                                                         p_value):
    train, pool = (world["train_skip"], world["pool_skip"]) if skip else (world["train"], world["pool"])
    family = select_family(train, target, ALPHA, DELTA)  # the path: fixed on the training draw
    out = _violation_shares(pool, family, target, {
        "last": lambda d: fit_checkpoints(d, family, target, ALPHA, DELTA, p_value_kind=p_value),
        "cheapest": lambda d: fit_checkpoints(d, family, target, ALPHA, DELTA, p_value_kind=p_value,
                                              select="cheapest"),
        "naive": lambda d: fit_checkpoints_naive(d, family, target, ALPHA),
    }, SPLITS, N_CAL)
    for name in ("last", "cheapest"):
        assert out[name]["share"] <= DELTA + SLACK, out
        assert out[name]["cost_ratio"] < 1.0  # it certifies something cheaper than always calling the large tier
    assert out["cheapest"]["cost_ratio"] <= out["last"]["cost_ratio"] + 1e-12
    assert out["naive"]["share"] > DELTA + SLACK, ("the check must fail with the plain empirical-risk rule", out)
    assert out["naive"]["mean_risk"] > out["last"]["mean_risk"]


def test_fit_records_its_certificate_and_it_matches_the_deployed_rule(world):
    cal = world["pool"].subset(np.arange(400))
    family = checkpoint_family(world["train"], levels=30)
    fit = fit_checkpoints(cal, family, "quality-loss", ALPHA, DELTA, largest="big")
    assert fit.feasible and fit.index == fit.rejected - 1 and fit.config == family[fit.index]
    losses, at_risk = ck.item_losses(cal, fit.config, "quality-loss")
    assert fit.certificate == {"losses": int(losses.sum()), "at_risk": int(at_risk.sum()), "tested": 400}
    assert fit.empirical_risk <= fit.risk_bound and fit.guarantee["kind"] == "high-probability"
    assert "big" in fit.guarantee["statement"]
    assert fit.to_dict()["config"] == fit.config.to_dict()
    cheapest = fit_checkpoints(cal, family, "quality-loss", ALPHA, DELTA, select="cheapest")
    assert cheapest.index < cheapest.rejected and cheapest.rejected == fit.rejected
    assert cheapest.cost_ratio <= fit.cost_ratio + 1e-12


def test_tampered_counts_fail_the_certificate_recheck(world, monkeypatch):
    cal = world["pool"].subset(np.arange(400))
    family = checkpoint_family(world["train"], levels=30)
    fit = fit_checkpoints(cal, family, "quality-loss", ALPHA, DELTA)
    k, m = fit.certificate["losses"], fit.certificate["at_risk"]
    verify_checkpoint_certificate(cal, fit.config, "quality-loss", k, m)
    with pytest.raises(CertificateError, match="deployed rule gives"):
        verify_checkpoint_certificate(cal, fit.config, "quality-loss", k - 1, m)
    honest = ck.path_counts

    def tampered(data, fam, target):
        losses, at_risk = honest(data, fam, target)
        return np.maximum(losses - 2, 0), at_risk  # under-counted losses, as a buggy shortcut would

    monkeypatch.setattr(ck.fit, "path_counts", tampered)  # where fit_checkpoints looks it up
    with pytest.raises(CertificateError, match="deployed rule gives"):
        fit_checkpoints(cal, family, "quality-loss", ALPHA, DELTA)


def test_an_infeasible_target_always_escalates(world):
    family = checkpoint_family(world["train_skip"], levels=10)
    tiny = world["pool_skip"].subset(np.arange(20))  # 20 < 45 items: α = 0.05 at δ = 0.1 is out of reach
    fit = fit_checkpoints(tiny, family, "quality-loss", ALPHA, DELTA)
    assert not fit.feasible and fit.index is None and fit.rejected == 0 and "at least 45" in fit.reason
    assert fit.config == CheckpointConfig.always_escalate(K.tolist(), skip=True)
    r = route(tiny, fit.config)
    assert not r.kept.any() and fit.cost_ratio == pytest.approx(1.0)  # all skipped: only the large tier paid
    strict = fit_checkpoints(world["pool_skip"].subset(np.arange(300)), family, "accept-error", 0.001, DELTA)
    assert not strict.feasible and strict.index is None
    enough = fit_checkpoints(world["pool_skip"].subset(np.arange(300)), family, "quality-loss", 0.008, 0.1)
    assert enough.feasible and enough.index == 0  # certified, but only always-escalate passes


def test_targets_and_levels_are_checked(world):
    cal, family = world["pool"].subset(np.arange(100)), checkpoint_family(world["train"], levels=5)
    with pytest.raises(FitError, match="selective-error"):
        fit_checkpoints(cal, family, "selective-error", ALPHA, DELTA)
    with pytest.raises(FitError, match="unknown target"):
        fit_checkpoints(cal, family, "nope", ALPHA, DELTA)
    with pytest.raises(FitError, match="delta"):
        fit_checkpoints(cal, family, "quality-loss", ALPHA, 1.5)
    with pytest.raises(ValueError, match="skip"):
        fit_checkpoints(cal, checkpoint_family(world["train_skip"], levels=5), "quality-loss", ALPHA, DELTA)


# ---------------------------------------------------------------- Pareto Testing (the default family)


def test_pareto_front_keeps_the_non_dominated_candidates_by_risk_ascending():
    risk = np.array([0.0, 0.1, 0.1, 0.05, 0.2, 0.3, 0.05, 0.3])
    cost = np.array([1.0, 0.5, 0.4, 0.6, 0.45, 0.2, 0.6, 0.2])
    assert ck.pareto_front(risk, cost).tolist() == [0, 3, 2, 5]  # 6 ties 3 (first wins), 4 and 1 dominated, 7 ties 5
    front = ck.pareto_front(risk, cost)
    assert (np.diff(risk[front]) > 0).all() and (np.diff(cost[front]) < 0).all()


def test_the_pareto_family_is_built_on_the_select_split_alone_and_contains_the_end_only_grid(world):
    select = world["train_skip"].subset(np.arange(600))
    family = ck.pareto_family(select, "quality-loss", levels=10)
    assert family[0] == CheckpointConfig.always_escalate(K.tolist(), skip=True) and family.levels[0] == 0
    assert (np.diff(family.levels) >= 0).all() and family.description["kind"] == "pareto-front"
    assert len(family) == family.description["front"] + 1 == len(family.description["select_risk"])
    # the levels are the select split's risks, and the front is cheaper as it gets riskier
    losses, at_risk = path_counts(select, family, "quality-loss")
    assert np.allclose(family.levels, losses / at_risk)
    assert (np.diff(path_costs(select, family)[1:]) < 0).all()
    # every candidate (here: every end-only end × skip grid point and the old single-shape path) is dominated
    # by, or on, the front on the select split
    front_risk, front_cost = family.levels, path_costs(select, family)
    old = select_family(select, "quality-loss", ALPHA, DELTA, levels=10)
    grid = ck.CheckpointFamily(K, np.zeros(121), np.full((121, 5), INF), np.full((121, 5), -INF),
                               np.repeat(ck._quantiles(select.end_scores, np.arange(11) / 10), 11),
                               np.tile(ck._quantiles(select.skip_scores, np.arange(11) / 10), 11))
    for other in (old, grid):
        o_losses, o_at_risk = path_counts(select, other, "quality-loss")
        for r, c in zip(o_losses / o_at_risk, path_costs(select, other)):
            assert ((front_risk <= r + 1e-12) & (front_cost <= c + 1e-9)).any()
    # deterministic given the select split; the refinement round only adds candidates
    again = ck.pareto_family(select, "quality-loss", levels=10)
    assert np.array_equal(again.commit, family.commit) and np.array_equal(again.end, family.end)
    refined = ck.pareto_family(select, "quality-loss", levels=10, checkpoint_grid=(0, 0.5, 1))
    assert refined.description["refined_candidates"] > 0
    short = ck.pareto_family(select, "quality-loss", levels=10, max_front=5)
    assert len(short) == 6 and short[len(short) - 1] == family[len(family) - 1]
    with pytest.raises(ValueError, match="non-decreasing"):
        ck.CheckpointFamily(K, [0.0, 0.2, 0.1], np.zeros((3, 5)), np.zeros((3, 5)), np.zeros(3))


PARETO_SHAPES = dict(levels=10, commit_shares=(0.0, 0.5, 1.0), escalate_shares=(0.0, 0.5), skip_shares=(0.0, 1.0))


def test_pareto_testing_holds_with_probability_1_minus_delta_and_the_naive_rule_on_its_path_does_not(world):
    """Each draw: a select split and a disjoint calibrate split from the pool; the Pareto path on the
    first, fixed-sequence testing on the second; the true risk on the rest of the pool (40k items, to
    keep the test fast: a held-out SE of sqrt(α(1 − α)/39.4k) ≈ 0.0011 per test risk)."""
    pool, target, n = world["pool_skip"].subset(np.arange(40_000)), "quality-loss", N_CAL
    rng = np.random.default_rng(11)
    cache: dict = {}

    def true_risk(config, used):
        key = (config.commit, config.escalate, config.end, config.skip)
        if key not in cache:
            cache[key] = checkpoint_losses(pool, route(pool, config).kept, target)[0]
        lost = cache[key]
        return (lost.sum() - lost[used].sum()) / (pool.n - used.size)

    names = ("last", "cheapest", "naive")
    risks, costs = np.empty((3, SPLITS)), np.empty((3, SPLITS))
    for s in range(SPLITS):
        used = rng.choice(pool.n, 2 * n, replace=False)
        family = ck.pareto_family(pool.subset(used[:n]), target, **PARETO_SHAPES)
        cal = pool.subset(used[n:])
        fits = (fit_checkpoints(cal, family, target, ALPHA, DELTA),
                fit_checkpoints(cal, family, target, ALPHA, DELTA, select="cheapest"),
                fit_checkpoints_naive(cal, family, target, ALPHA))
        for i, f in enumerate(fits):
            risks[i, s], costs[i, s] = true_risk(f.config, used), f.cost_ratio
    share = dict(zip(names, (risks > ALPHA).mean(axis=1)))
    out = {"share": share, "mean_risk": dict(zip(names, risks.mean(axis=1))),
           "cost": dict(zip(names, costs.mean(axis=1)))}
    print(out)  # shown with pytest -s
    for name in ("last", "cheapest"):
        assert share[name] <= DELTA + SLACK, out
        assert out["cost"][name] < 1.0, out
    assert out["cost"]["cheapest"] <= out["cost"]["last"] + 1e-12
    assert share["naive"] > DELTA + SLACK, ("the check must fail with the plain empirical-risk rule", out)
    assert out["mean_risk"]["naive"] > out["mean_risk"]["last"]


def test_an_answer_that_can_no_longer_escalate_is_committed_at_once_with_the_same_routing():
    from vcascade.calibration.conformal.checkpoints import commit_when_decided

    rng = np.random.default_rng(3)
    n, ks = 400, (8, 16, 32)
    lengths = rng.integers(1, 60, n)
    scores = rng.normal(size=(n, 3))
    scores[lengths[:, None] < np.array(ks)[None, :]] = np.nan
    correct = rng.random((n, 2)) < [0.4, 0.6]
    prefix_costs = np.where(np.isnan(scores), np.nan, np.array(ks, dtype=float)[None, :])
    data = CheckpointData(np.array(ks), scores, rng.normal(size=n), lengths, correct, prefix_costs,
                          lengths.astype(float), np.full(n, 100.0), rng.normal(size=n))
    keeps_all = CheckpointConfig(ks, (math.inf, 1.0, math.inf), (0.5, -math.inf, -math.inf), -math.inf, -0.5)
    released = commit_when_decided(keeps_all)
    assert released.commit == (math.inf, -math.inf, math.inf)  # from 16 on nothing escalates: commit at 16
    before, after = route(data, keeps_all), route(data, released)
    assert np.array_equal(before.kept, after.kept) and np.allclose(before.cost, after.cost)
    assert (after.kinds == "commit").sum() > (before.kinds == "commit").sum()
    decided_at_end = CheckpointConfig(ks, (math.inf,) * 3, (-math.inf,) * 3, 0.0, -0.5)
    assert commit_when_decided(decided_at_end) == decided_at_end  # the end rule still decides: nothing to release
