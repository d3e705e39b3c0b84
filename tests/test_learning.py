"""Learned deferral rules: training, freezing into an artifact, refusals, and the guarantee
on top of a learned score (synthetic data, no engines)."""

import math

import numpy as np
import pytest

from vcascade.calibration.conformal import CalibrationData, crc_threshold, fixed_sequence_threshold
from vcascade.calibration.learning import MIN_CLASS_ITEMS, Refusal, target_labels, train
from vcascade.calibration.metrics import deferral_metrics
from vcascade.engine.artifact import ArtifactError, policy_from_artifact
from vcascade.engine.types import Request
from vcascade.engine.uncertainty.features import ANSWER_FEATURES, answer_features, feature_spec
from vcascade.engine.uncertainty.learned import LearnedRuleError, rule_from_spec
from vcascade.engine.uncertainty.rules import Query
from tests.fakes import result_with_logprobs


def test_answer_features_are_finite_for_real_and_empty_answers():
    full = answer_features(result_with_logprobs("Paris", [-0.1, -2.0, -0.5]))
    empty = answer_features(result_with_logprobs("", []))
    assert full.shape == empty.shape == (len(ANSWER_FEATURES),) and np.isfinite(full).all() and np.isfinite(empty).all()
    named = dict(zip(ANSWER_FEATURES, full))
    assert named["logprob_q0"] == pytest.approx(-2.0) and named["sum_logprob"] == pytest.approx(-2.6)
    assert named["empty"] == 0.0 and dict(zip(ANSWER_FEATURES, empty))["empty"] == 1.0


def test_target_labels():
    correct = np.array([[1, 1], [0, 1], [1, 0], [0, 0]], dtype=bool)
    assert target_labels(correct, 0, "correct").tolist() == [True, False, True, False]
    assert target_labels(correct, 0, "gain").tolist() == [False, True, False, False]


def _toy(rng, n, d=6):
    X = rng.standard_normal((n, d))
    y = rng.random(n) < 1 / (1 + np.exp(-2 * X[:, 0]))
    return X, y


def test_too_few_positives_is_refused_with_the_reason():
    rng = np.random.default_rng(0)
    X, _ = _toy(rng, 200)
    y = np.zeros(200, dtype=bool)
    y[: MIN_CLASS_ITEMS - 1] = True
    out = train(X[:150], y[:150], X[150:], y[150:], model="gbt", target="gain", features=feature_spec(True, False, False),
                name="learned:gbt:gain", train_ids=range(150))
    assert isinstance(out, Refusal) and f"at least {MIN_CLASS_ITEMS}" in out.reason and "positive" in out.reason


@pytest.mark.parametrize("model", ["logistic", "gbt"])
def test_a_trained_rule_freezes_into_its_spec_and_loads_back_identically(model, monkeypatch):
    rng = np.random.default_rng(1)
    X, y = _toy(rng, 600)
    rule = train(X[:400], y[:400], X[400:], y[400:], model=model, target="correct",
                 features=feature_spec(True, False, False), name=f"learned:{model}:correct", train_ids=range(400))
    spec = rule.spec()
    assert spec["kind"] == "learned" and spec["versions"]["scikit-learn"] and spec["training"]["n"] == 400
    assert spec["training"]["fingerprint"].startswith("sha256:")
    thawed = rule_from_spec(spec)
    assert np.allclose(thawed._score(X[400:]), rule._score(X[400:]))
    # the frozen score is informative: AUROC well above chance on held-out data
    from vcascade.calibration.metrics import auroc

    assert auroc(thawed._score(X[400:]), y[400:]) > 0.75
    monkeypatch.setattr("vcascade.engine.uncertainty.learned.library_versions",
                        lambda: {"scikit-learn": "0.0.1", "skops": "x", "numpy": "y"})
    with pytest.raises(LearnedRuleError, match="trained with scikit-learn .* this environment has 0.0.1"):
        rule_from_spec(spec)


def test_artifact_with_wrong_feature_version_or_foreign_types_is_refused():
    rng = np.random.default_rng(2)
    X, y = _toy(rng, 300)
    spec = train(X[:200], y[:200], X[200:], y[200:], model="logistic", target="gain",
                 features=feature_spec(True, False, False), name="learned:logistic:gain", train_ids=range(200)).spec()
    artifact = {"policy": {"rules": [dict(spec, features={**spec["features"], "version": 0})], "thresholds": [0.0]}}
    with pytest.raises(ArtifactError, match="feature version 0"):
        policy_from_artifact(artifact, "a.json")
    import base64
    import pickle

    evil = dict(spec, estimator=base64.b64encode(pickle.dumps(object())).decode())
    with pytest.raises(Exception):
        rule_from_spec(evil)  # not a skops blob: never unpickled
    ok = policy_from_artifact({"policy": {"rules": [spec], "thresholds": [-0.5], "skip": None}}, "a.json")
    assert ok.rules[0].target == "gain" and ok.thresholds == (-0.5,)


def test_a_learned_rule_scores_engine_results_through_features():
    rng = np.random.default_rng(3)
    results = [result_with_logprobs("x", list(-rng.exponential(size=rng.integers(1, 6)))) for _ in range(300)]
    X = np.stack([answer_features(r) for r in results])
    y = X[:, ANSWER_FEATURES.index("mean_logprob")] > -1.0
    rule = train(X[:200], y[:200], X[200:], y[200:], model="gbt", target="correct",
                 features=feature_spec(True, False, False), name="learned:gbt:correct", train_ids=range(200))
    queries = [Query(Request(prompt="q")) for _ in results[200:]]
    scores = rule.score_many(queries, results[200:])
    assert scores.shape == (100,) and np.mean((scores > 0.5) == y[200:]) > 0.9


# ----------------------------------------------------- the guarantee on top of a learned score
#
# Population: items with 40 features, of which only the first carries signal about whether
# accepting the small tier's answer costs quality. A flexible learner fitted on n items
# memorizes noise. Scored by a model trained on a DISJOINT split, conformal calibration keeps
# its guarantee; scored by a model trained on the calibration items themselves, the scores
# of those items are too optimistic and the certified threshold is too loose.

DIMS = 40


def _population(rng, n):
    X = rng.standard_normal((n, DIMS))
    p_loss = 1 / (1 + np.exp(-(1.5 * X[:, 0] - 1.0)))
    loss_if_kept = rng.random(n) < p_loss
    correct = np.stack([~loss_if_kept, np.ones(n, dtype=bool)], axis=1)  # large always right: loss = small wrong
    return X, correct


def _fit_scorer(X, correct, seed):
    from sklearn.ensemble import RandomForestClassifier

    model = RandomForestClassifier(n_estimators=15, min_samples_leaf=1, random_state=seed, n_jobs=1)
    model.fit(X, correct[:, 0])
    return lambda Z: model.predict_proba(Z)[:, 1]


@pytest.fixture(scope="module")
def pool():
    return _population(np.random.default_rng(10), 20_000)


def _population_risk(pool, scorer, threshold):
    X, correct = pool
    kept = scorer(X) >= threshold
    return float(np.mean(kept & ~correct[:, 0]))


def test_conformal_guarantee_holds_on_a_score_learned_from_a_disjoint_split_and_breaks_otherwise(pool):
    alpha, n_train, n_cal, splits = 0.1, 200, 200, 500
    rng = np.random.default_rng(11)
    risks = {"disjoint": [], "same": []}
    costs = np.ones((n_cal, 2))
    for i in range(splits):
        Xt, ct = _population(rng, n_train)
        Xc, cc = _population(rng, n_cal)
        for kind, scorer in (("disjoint", _fit_scorer(Xt, ct, i)), ("same", _fit_scorer(Xc, cc, i))):
            data = CalibrationData(scorer(Xc)[:, None], cc, costs)
            risks[kind].append(_population_risk(pool, scorer, crc_threshold(data, "accept-error", alpha)))
    disjoint, same = np.array(risks["disjoint"]), np.array(risks["same"])
    se = lambda r: r.std() / math.sqrt(splits)  # noqa: E731
    assert disjoint.mean() <= alpha + 3 * se(disjoint), disjoint.mean()  # CRC: marginal guarantee holds
    assert same.mean() > alpha + 3 * se(same), same.mean()  # trained on the calibration split: broken


def test_high_probability_guarantee_on_a_disjointly_learned_score(pool):
    alpha, delta, splits = 0.1, 0.1, 500
    rng = np.random.default_rng(12)
    above = 0
    for i in range(splits):
        Xt, ct = _population(rng, 200)
        Xc, cc = _population(rng, 300)
        scorer = _fit_scorer(Xt, ct, i)
        t = fixed_sequence_threshold(CalibrationData(scorer(Xc)[:, None], cc, np.ones((300, 2))), "accept-error",
                                     alpha, delta)
        above += _population_risk(pool, scorer, t) > alpha
    assert above / splits <= delta + 3 * math.sqrt(delta * (1 - delta) / splits)


def test_deferral_metrics_random_oracle_and_a_perfect_rule():
    rng = np.random.default_rng(4)
    n = 2000
    correct = np.stack([rng.random(n) < 0.4, rng.random(n) < 0.7], axis=1)
    costs = np.tile([1.0, 3.0], (n, 1))
    oracle = -(correct[:, 1].astype(float) - correct[:, 0].astype(float))
    perfect = deferral_metrics(oracle, correct, costs, 0.05)
    flat = deferral_metrics(np.zeros(n), correct, costs, 0.05)
    assert perfect["gain_share"] == pytest.approx(1.0) and flat["gain_share"] == pytest.approx(0.0, abs=1e-9)
    assert flat["apgr"] == pytest.approx(0.5, abs=1e-9) and perfect["apgr"] > 0.5
    assert perfect["cpt50"] < flat["cpt50"] == pytest.approx(0.5, abs=0.01)
    assert perfect["cost_at_alpha"] < flat["cost_at_alpha"]
    inverted = deferral_metrics(-oracle, correct, costs, 0.05)
    assert inverted["gain_share"] < 0


def _long_result(pieces, logprobs, max_tokens=None):
    result = result_with_logprobs("".join(pieces), logprobs)
    result.tokens, result.max_tokens = list(pieces), max_tokens
    return result


def test_long_form_features_read_the_final_answer_span_and_the_budget_share():
    from vcascade.engine.uncertainty.features import LONG_FEATURES

    # a worked solution: confident reasoning, an unsure final answer inside \boxed{}
    pieces = ["First", " add", " 3", " and", " 4", ".", " So", " \\boxed{", "7", "}"]
    logprobs = [-0.1, -0.1, -0.2, -0.1, -0.1, -0.1, -0.1, -0.3, -2.5, -0.05]
    named = dict(zip(LONG_FEATURES, answer_features(_long_result(pieces, logprobs, 40), long_form=True)[
        len(ANSWER_FEATURES):]))
    assert named["has_span"] == 1.0 and named["span_first_logprob"] == pytest.approx(-2.5)
    assert named["span_min_logprob"] == pytest.approx(-2.5) and named["budget_share"] == pytest.approx(10 / 40)
    # a code reply: the span is the fenced block's body
    code = ["Here", ":\n", "```", "python", "\n", "def", " f", "():", "\n", "  ", " return", " 1", "\n", "```"]
    lps = [-1.0, -1.0, -0.5, -0.5, -0.5, -0.01, -0.02, -0.01, -0.01, -0.01, -0.01, -0.4, -0.01, -0.3]
    named = dict(zip(LONG_FEATURES, answer_features(_long_result(code, lps), long_form=True)[len(ANSWER_FEATURES):]))
    assert named["has_span"] == 1.0 and named["span_first_logprob"] == pytest.approx(-0.01)
    assert named["span_min_logprob"] == pytest.approx(-0.4) and named["budget_share"] == 0.0  # budget unknown
    # no span: the flag is off and the features stay finite
    plain = answer_features(_long_result(["Paris"], [-0.2]), long_form=True)
    assert dict(zip(LONG_FEATURES, plain[len(ANSWER_FEATURES):]))["has_span"] == 0.0 and np.isfinite(plain).all()


def test_a_rule_without_long_form_in_its_spec_keeps_the_features_it_was_trained_on():
    from sklearn.linear_model import LogisticRegression

    from vcascade.engine.uncertainty.features import LONG_FEATURES, feature_matrix
    from vcascade.engine.uncertainty.learned import LearnedRule, freeze_estimator, library_versions

    queries = [Query(Request(prompt=p)) for p in ("a b", "c d e", "f", "g h")]
    results = [result_with_logprobs("x", [-0.1 * (i + 1), -0.2]) for i in range(4)]
    old = feature_matrix(queries, results, prompt_features="hashed")
    assert feature_matrix(queries, results, prompt_features="hashed", long_form=True).shape[1] == \
        old.shape[1] + len(LONG_FEATURES)
    model = LogisticRegression().fit(old, [True, False, True, False])
    spec = {"kind": "learned", "name": "old", "target": "gain", "model": "logistic",
            "features": {k: v for k, v in feature_spec(True, False, True, "hashed").items() if k != "long_form"},
            "estimator": freeze_estimator(model), "versions": library_versions()}
    assert LearnedRule(spec, model).score_many(queries, results).shape == (4,)  # trained without: scored without
    assert feature_spec(False, False, True, "hashed")["long_form"] is False  # a skip rule sees no answer
