"""Cheap, batched decisions: the scoring batcher, the compiled forest, hashed and static prompt features."""

import asyncio
import json
import threading

import numpy as np
import pytest

from vcascade.engine.uncertainty import features
from vcascade.engine.uncertainty.batching import ScoringBatcher
from vcascade.engine.uncertainty.embedding import length_batches
from vcascade.engine.uncertainty.learned import Forest, LearnedRule, LearnedRuleError, LearnedSkipRule, rule_from_spec
from vcascade.engine.uncertainty.rules import Query, SignalRule
from vcascade.engine.types import Request
from tests.fakes import result_with_logprobs

PROMPTS = ["What is the capital of Australia?", "Which planet is closest to the Sun? A. Venus B. Mercury",
           "Is the sky blue? Answer yes or no.", "Natalia sold clips to 48 of her friends in April. How many?",
           "Who wrote Hamlet?", "What gas do plants absorb?"] * 8


def queries():
    return [Query(Request(prompt=p)) for p in PROMPTS]


def results():
    rng = np.random.default_rng(0)
    return [result_with_logprobs("x", list(-rng.exponential(0.5, size=1 + i % 4))) for i in range(len(PROMPTS))]


def hashed_rules(seed=0, prompt_features="hashed"):
    from sklearn.ensemble import HistGradientBoostingClassifier

    from vcascade.engine.uncertainty.learned import freeze_estimator, library_versions

    qs, rs = queries(), results()
    y = np.random.default_rng(seed).random(len(qs)) < 0.4
    made = []
    for answer in (True, False):
        X = features.feature_matrix(qs, rs if answer else None, prompt_features=prompt_features)
        model = HistGradientBoostingClassifier(max_iter=30, max_leaf_nodes=8, min_samples_leaf=2).fit(X, y)
        spec = {"kind": "learned", "name": "learned:test" if answer else "skip:test", "target": "gain", "model": "gbt",
                "features": features.feature_spec(answer, False, True, prompt_features),
                "estimator": freeze_estimator(model), "versions": library_versions()}
        made.append((LearnedRule if answer else LearnedSkipRule)(spec, model))
    return made


def test_batched_scores_equal_one_at_a_time_and_batch_together():
    rule, skip = hashed_rules()
    qs, rs = queries(), results()
    alone = [float(rule.score_many([q], [r])[0]) for q, r in zip(qs, rs)]
    alone_skip = [float(skip.score_many([q])[0]) for q in qs]
    batcher = ScoringBatcher()
    calls = []
    for r in (rule, skip):
        original = r.score_many
        r.score_many = lambda *a, _o=original: calls.append(len(a[0])) or _o(*a)

    async def go():
        fresh = queries()
        return await asyncio.gather(*(batcher.score(rule, q, r) for q, r in zip(fresh, rs)),
                                    *(batcher.score(skip, q, None) for q in fresh))

    out = asyncio.run(go())
    assert [o.score for o in out] == pytest.approx(alone + alone_skip, abs=1e-12)
    assert calls == [len(qs), len(qs)]  # one call per rule for all waiting requests
    assert all(o.scoring_cpu >= 0 and o.wait >= 0 for o in out)
    assert sum(o.featurized for o in out) == len(qs)  # each prompt hashed once


def test_a_failing_rule_fails_its_jobs_only():
    class Broken:
        name, needs_embedding, needs_samples = "broken", False, False

        def score_many(self, queries, results):
            raise RuntimeError("no")

    batcher, good = ScoringBatcher(), SignalRule("mean_logprob")

    async def go():
        q, r = Query(Request(prompt="a")), result_with_logprobs("x", [-0.5])
        return await asyncio.gather(batcher.score(Broken(), q, r), batcher.score(good, q, r), return_exceptions=True)

    bad, fine = asyncio.run(go())
    assert isinstance(bad, RuntimeError) and fine.score == pytest.approx(-0.5)


def test_compiled_forest_matches_predict_proba():
    from sklearn.ensemble import HistGradientBoostingClassifier

    rng = np.random.default_rng(1)
    X = rng.normal(size=(400, 20))
    X[rng.random(X.shape) < 0.05] = np.nan
    y = (np.nan_to_num(X[:, 0]) + rng.normal(size=400)) > 0
    model = HistGradientBoostingClassifier(max_iter=60, max_leaf_nodes=8).fit(X, y)
    forest = Forest.compile(model)
    assert forest is not None
    test = rng.normal(size=(300, 20))
    test[rng.random(test.shape) < 0.1] = np.nan
    assert np.abs(forest.proba(test) - model.predict_proba(test)[:, 1]).max() < 1e-12
    assert Forest.compile(object()) is None


def test_hashed_features_are_cheap_stable_and_normalized():
    v = features.hashed_vector("Which planet is closest to the Sun?")
    assert v.shape == (features.HASHED_DIMENSIONS,) and float(v @ v) == pytest.approx(1.0)
    assert np.array_equal(v, features.hashed_vector("which planet is closest to the sun?"))  # lower-cased
    assert not np.any(features.hashed_vector(""))
    X = features.feature_matrix(queries()[:3], None, prompt_features="hashed")
    assert X.shape == (3, len(features.feature_names(False, False, True, "hashed")))


def test_hashed_option_is_recorded_and_checked():
    rule, _ = hashed_rules()
    spec = json.loads(json.dumps(rule.spec()))
    assert spec["features"]["prompt_features"] == "hashed" and spec["features"]["embedding_model"] is None
    loaded = rule_from_spec(spec)
    assert loaded.prompt_features == "hashed" and not loaded.needs_embedding
    spec["features"]["hashing"] = {**spec["features"]["hashing"], "dimensions": 1024}
    with pytest.raises(LearnedRuleError, match="hashes prompts as"):
        rule_from_spec(spec)
    spec["features"]["prompt_features"] = "bow"
    with pytest.raises(LearnedRuleError, match="prompt features 'bow'"):
        rule_from_spec(spec)


def test_static_features_are_unit_norm_deterministic_and_semantic():
    from vcascade.engine.uncertainty.static_embedding import STATIC_DIMENSIONS, static_vectors

    texts = ["What is the capital of Australia?", "Which city is the capital of Australia?",
             "Write a Python function that sorts a list of integers.", "Implement a Python function to sort a list."]
    V = static_vectors(texts)
    assert V.shape == (4, STATIC_DIMENSIONS) and np.allclose(np.linalg.norm(V, axis=1), 1.0, atol=1e-3)
    assert np.array_equal(V, static_vectors(texts))
    cos = V @ V.T
    # paraphrases are nearer each other than either is to the other topic (what the rule reads)
    assert cos[0, 1] > max(cos[0, 2], cos[0, 3]) + 0.2 and cos[2, 3] > max(cos[2, 0], cos[2, 1]) + 0.2
    X = features.feature_matrix(queries()[:3], None, prompt_features="static")
    assert X.shape == (3, STATIC_DIMENSIONS + 1) == (3, len(features.feature_names(False, False, True, "static")))


def test_static_option_is_recorded_and_checked():
    rule, skip = hashed_rules(prompt_features="static")
    spec = json.loads(json.dumps(rule.spec()))
    static = spec["features"]["static_model"]
    assert spec["features"]["prompt_features"] == "static" and static["teacher"] == "all-MiniLM-L6-v2"
    assert len(static["probe"]) == 16
    loaded = rule_from_spec(spec)
    assert loaded.prompt_features == "static" and not loaded.needs_embedding
    qs, rs = queries(), results()
    assert np.allclose(loaded.score_many(qs, rs), rule.score_many(qs, rs))
    moved = json.loads(json.dumps(spec))
    moved["features"]["static_model"]["probe"][0] += 0.1  # another distillation: refused, with the reason
    with pytest.raises(LearnedRuleError, match="does not reproduce"):
        rule_from_spec(moved)
    other = json.loads(json.dumps(spec))
    other["features"]["static_model"]["pca_dims"] = 128
    with pytest.raises(LearnedRuleError, match="distills"):
        rule_from_spec(other)


def test_static_features_are_computed_inline_in_one_batch(monkeypatch):
    from vcascade.engine.uncertainty import static_embedding

    rule, skip = hashed_rules(prompt_features="static")
    seen = []
    original = static_embedding.static_vectors
    monkeypatch.setattr(static_embedding, "static_vectors",
                        lambda texts: seen.append((len(texts), threading.get_ident())) or original(texts))
    qs = queries()[:12]

    async def go():
        batcher = ScoringBatcher()
        return await asyncio.gather(*(batcher.score(skip, q, None) for q in qs))

    scored = asyncio.run(go())
    assert seen == [(12, threading.get_ident())]  # one batch for the 12 waiting requests, in the loop's thread
    assert all(q.static is not None for q in qs) and sum(s.featurized for s in scored) == 12
    assert np.allclose([s.score for s in scored], skip.score_many([Query(q.request) for q in qs]))


def test_rules_made_before_the_option_still_mean_minilm():
    from vcascade.engine.artifact import policy_from_artifact, read_artifact
    from vcascade.engine.config import load_config

    artifact = read_artifact(load_config().artifact)
    for spec in (*artifact["policy"]["rules"], artifact["policy"]["skip"]):  # as rules made before the option
        spec["features"].pop("prompt_features", None)
    policy = policy_from_artifact(artifact)
    assert "prompt_features" not in policy.rules[0].spec()["features"]
    assert policy.rules[0].prompt_features == "minilm" and policy.rules[0].needs_embedding
    assert policy.skip.prompt_features == "minilm"


def test_default_prompt_features_follow_the_environment(monkeypatch):
    monkeypatch.delenv("VCASCADE_PROMPT_FEATURES", raising=False)
    assert features.feature_spec(True, False, True)["prompt_features"] == "static"
    monkeypatch.setenv("VCASCADE_PROMPT_FEATURES", "hashed")
    assert features.feature_spec(True, False, True)["prompt_features"] == "hashed"
    monkeypatch.setenv("VCASCADE_PROMPT_FEATURES", "nope")
    with pytest.raises(ValueError, match="VCASCADE_PROMPT_FEATURES"):
        features.default_prompt_features()


def test_length_batches_group_similar_lengths():
    lengths = [10, 200, 11, 12, 190, 50]
    batches = length_batches(lengths, batch_size=2)
    assert sorted(i for b in batches for i in b) == list(range(6))
    assert all(len(b) <= 2 and max(lengths[i] for i in b) <= 1.25 * min(lengths[i] for i in b) for b in batches)


def test_fast_encoding_gives_the_tokenizers_ids():
    from transformers import AutoTokenizer

    from vcascade.calibration.datasets import load_dataset
    from vcascade.engine import model_store
    from vcascade.engine.tiers.rendering import encode

    texts = [it.prompt for it in load_dataset("mixed")[:200]] + ["<|im_start|>user\nHi<|im_end|>\n", "", " é 中文 🙂"]
    for name in ("qwen2.5-coder-0.5b-instruct", "smollm2-135m-instruct"):
        if not model_store.is_fetched(name):
            pytest.fail(f"{name} is not fetched; run `make setup`")
        tokenizer = AutoTokenizer.from_pretrained(model_store.model_dir(name))
        assert [encode(tokenizer, t) for t in texts] == [list(tokenizer.encode(t, add_special_tokens=False))
                                                          for t in texts]
