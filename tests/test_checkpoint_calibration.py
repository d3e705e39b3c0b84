"""Calibrating and evaluating the checkpointed (mid-generation) policy from cached answers.

The tiny-model cascade's identity (its tiers' cache files) with synthetic cached answers:
every answer is read from the generation cache, so no engine starts (``build_tiers`` is
patched to fail) and correctness and answer lengths are under the test's control. The
statistical validity of the fit itself is tested in ``test_checkpoints.py``.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml

from vcascade.calibration import cache
from vcascade.calibration import checkpointing as ck
from vcascade.calibration.checkpointing import (ALL, PrefixRules, deployed_configs, fit_checkpoint_policy,
                                                parse_checkpoints, train_prefix_rules)
from vcascade.calibration.conformal import FitError
from vcascade.calibration.conformal.checkpoints import CheckpointData, token_costs
from vcascade.calibration.datasets import Item, load_dataset, to_request
from vcascade.calibration.selection import three_way_split
from vcascade.engine import cli
from vcascade.engine.artifact import policy_from_artifact, read_artifact, tier_identity
from vcascade.engine.config import load_config
from tests.conftest import tiny_tier_dict
from tests.test_calibration_job import tiny_config  # noqa: F401 (the same tiny two-tier config file, as a fixture)

BUDGET = 12  # the tiny tiers' max_tokens; long items ask for 24
POLICY_KEYS = {"rules", "thresholds", "skip", "skip_threshold", "checkpoints"}
GROUP_KEYS = {"thresholds", "skip_threshold", "commit", "escalate"}


# ---------------------------------------------------------------- synthetic cached answers


def answer(rng, z: float, length: int, right: bool, budget: int) -> dict:
    """A cached result dict: chosen-token logprobs informative of the latent ``z``."""
    lp = -np.log1p(np.exp(-(z + rng.normal(0.0, 1.0, size=length))))
    return {"text": "yes" if right else "no", "token_ids": list(range(length)), "token_logprobs": lp.tolist(),
            "top_logprobs": [[[f"w{j}", float(v)], [f"alt{j}", float(v) - 1.5]] for j, v in enumerate(lp)],
            "cumulative_logprob": float(lp.sum()), "finish_reason": "stop" if length < budget else "length",
            "prompt_tokens": 10, "completion_tokens": length, "seconds": 0.01 * length,
            "tokens": [f" w{j}" for j in range(length)], "max_tokens": budget}


def world(n: int, seed: int = 0):
    """``(items, records)``: n items (every other one long, budget 24), the small tier right
    with probability sigmoid(2z), the large with 0.85; records as ``job.collect`` returns them."""
    rng = np.random.default_rng(seed)
    items, records = [], [{}, {}]
    for i in range(n):
        long = i % 2 == 1
        budget = 24 if long else BUDGET
        item = Item(id=f"q{i}", prompt=f"Question {i}: say yes.", answers=("yes",), kind="exact", source="synth",
                    max_tokens=24 if long else None)
        z = float(rng.normal())
        small_right, large_right = rng.random() < 1 / (1 + math.exp(-2 * z)), rng.random() < 0.85
        length = int(rng.integers(6 if long else 3, budget + 1))
        records[0][item.id] = {"result": answer(rng, z, length, small_right, budget), "correct": small_right}
        records[1][item.id] = {"result": answer(rng, 1.0, int(rng.integers(3, budget + 1)), large_right, budget),
                               "correct": large_right}
        items.append(item)
    return items, records


def write_dataset_and_cache(path, config_path, items, records) -> None:
    """The items as a JSONL dataset and their answers in the tiers' generation caches."""
    path.write_text("".join(json.dumps({"id": it.id, "prompt": it.prompt, "answers": list(it.answers),
                                        "kind": it.kind, **({"max_tokens": it.max_tokens} if it.max_tokens else {})})
                            + "\n" for it in items))
    config = load_config(str(config_path))
    loaded = load_dataset(str(path))
    for tier_config, per_tier in zip(config.tiers, records):
        file = cache.tier_cache_path(tier_identity(tier_config, config))
        file.parent.mkdir(parents=True, exist_ok=True)
        with open(file, "w") as fh:
            for item in loaded:
                key = cache.request_key(to_request(item))
                fh.write(json.dumps({"key": key, "id": item.id, "result": per_tier[item.id]["result"]}) + "\n")


@pytest.fixture
def cached(tmp_path, tiny_config, monkeypatch):
    """A 500-item synthetic dataset whose answers are all cached; no engine may start,
    prompt embeddings are random (seeded) and the end-rule candidates logistic only, so
    nothing heavy runs."""
    async def no_engine(*a, **k):
        pytest.fail("no engine should start: every answer is cached")

    monkeypatch.setattr("vcascade.engine.tiers.build_tiers", no_engine)
    monkeypatch.setenv("VCASCADE_CACHE", str(tmp_path / "vc"))

    def embeddings(items, root=None):
        rng = np.random.default_rng(7)
        table = {f"q{i}": v for i, v in enumerate(rng.normal(size=(600, 384)).astype(np.float32))}
        return np.stack([table[item.id] for item in items])

    monkeypatch.setattr("vcascade.calibration.cli.prompt_embeddings", embeddings)
    monkeypatch.setattr("vcascade.calibration.selection.MODELS", ("logistic",))  # boosted trees: minutes, not seconds
    items, records = world(500)
    data = tmp_path / "synth.jsonl"
    write_dataset_and_cache(data, tiny_config, items, records)
    return data


def run_cli(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def calibrate(capsys, config, data, out, *extra):
    return run_cli(capsys, "calibrate", "--config", config, "--dataset", data, "--n", "400", "--target",
                   "quality-loss", "--alpha", "0.2", "--delta", "0.2", "--checkpoints", "2,4,8", "--out", out, *extra)


# ---------------------------------------------------------------- the artifact and evaluate


def test_grouped_checkpoint_artifact_follows_the_contract_and_evaluate_reports_it(cached, tiny_config, tmp_path,
                                                                                  capsys):
    out = tmp_path / "ckpt.json"
    code, stdout, err = calibrate(capsys, tiny_config, cached, out, "--group-by", "length", "--delta-split",
                                  "bonferroni")
    assert code == 0, err
    artifact = read_artifact(out)
    policy = artifact["policy"]
    assert set(policy) == POLICY_KEYS | {"groups", "fallback_group", "group_by"} and policy["group_by"] == "length"
    block = policy["checkpoints"]
    assert set(block) == {"tokens", "rules", "commit", "escalate"}
    m = len(block["tokens"])
    assert block["tokens"] == sorted(block["tokens"]) and set(block["tokens"]) <= {2, 4, 8} and m >= 1
    assert [r["kind"] for r in block["rules"]] == ["learned"] * m
    assert [r["name"] for r in block["rules"]] == [f"prefix:{k}:logistic:gain" for k in block["tokens"]]
    assert all(r["features"]["long_form"] and not r["features"]["samples"] for r in block["rules"])
    assert set(policy["groups"]) == {"short", "long"} and policy["fallback_group"] in policy["groups"]
    for g in policy["groups"].values():
        assert set(g) == GROUP_KEYS and len(g["commit"]) == len(g["escalate"]) == m and len(g["thresholds"]) == 1
        assert (g["skip_threshold"] is None) == (policy["skip"] is None)
    fallback = policy["groups"][policy["fallback_group"]]
    assert policy["thresholds"] == fallback["thresholds"] and policy["skip_threshold"] == fallback["skip_threshold"]
    assert block["commit"] == fallback["commit"] and block["escalate"] == fallback["escalate"]
    # the fit: one per group at δ/G, each configuration what the policy deploys
    record = artifact["fit"]["checkpoints"]
    assert artifact["fit"]["deployed"] == "checkpoints" and record["delta_split"] == "bonferroni"
    assert record["delta_per_group"] == pytest.approx(0.1) and record["fallback_group"] == policy["fallback_group"]
    configs, fallback_name = deployed_configs(policy)
    for g, fit in record["groups"].items():
        assert fit["delta"] == pytest.approx(0.1) and fit["method"] == "fixed-sequence-checkpoints"
        assert fit["config"]["end"] == configs[g].end and tuple(fit["config"]["commit"]) == configs[g].commit
        assert fit["family"]["kind"] == "pareto-front" and fit["family"]["selected_by"]["split"] == "select"
        assert fit["family"]["select_risk"][0] == 0.0  # the sequence starts at always-escalate
    assert fallback_name == policy["fallback_group"]
    statement = artifact["guarantee"]
    assert statement["covers"] == "checkpointed policy" and statement["checkpoints"] == block["tokens"]
    assert "fixed-sequence Learn-then-Test" in statement["statement"] and "simultaneously for every group" in \
        statement["statement"]
    figures = artifact["figures"]["checkpoints"]
    assert set(figures["groups"]) == {"short", "long"} and figures["pooled"]["n"] == artifact["fit"]["grouped"]["n"]
    assert {"cost_ratio", "cost_ratio_end_only", "escalated_early_share", "wasted_tokens_mean", "end_only",
            "decisions"} <= set(figures["pooled"])
    assert "checkpointed policy (deployed)" in stdout and "e-o fit" in stdout
    assert "Mid-generation checkpoints (deployed)" in (tmp_path / "ckpt" / "report.md").read_text()
    # the serving side reads the same block (engine.artifact)
    served = policy_from_artifact(artifact, out)
    assert served.thresholds == tuple(fallback["thresholds"]) and set(served.by_group) == {"short", "long"}

    timing = tmp_path / "timing.json"
    timing.write_text(json.dumps({"timing": {name: {"per_item": 0.0, "per_prompt_token": p, "per_output_token": o}
                                             for name, p, o in (("tiny-a", 0.001, 0.007), ("tiny-b", 0.003, 0.015))}}))
    code, stdout, err = run_cli(capsys, "evaluate", "--artifact", out, "--config", tiny_config, "--split", "test",
                                "--json", tmp_path / "eval.json", "--timing-from", timing)
    assert code == 0, err
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["deployed"] == "checkpoints" and result["n"] == 100
    checkpointed = result["checkpoints"]
    assert checkpointed["tokens"] == block["tokens"] and set(checkpointed["groups"]) == {"short", "long"}
    assert set(checkpointed["sources"]) == {str(cached)}
    assert sum(g["n"] for g in checkpointed["groups"].values()) == 100
    for row in [checkpointed["pooled"], *checkpointed["groups"].values()]:
        assert {"risk", "quality_loss", "cost_ratio", "cost_ratio_end_only", "escalated_early_share",
                "wasted_tokens_mean", "seconds"} <= set(row)
        assert row["risk"] == row["quality_loss"] and 0 < row["seconds"]["cost_ratio"]
        assert row["end_only"]["wasted_tokens_mean"] >= 0
    assert result["risk"] == checkpointed["pooled"]["risk"] and result["groups"] == checkpointed["groups"]
    assert result["end_only"]["groups"].keys() == {"short", "long"}
    # the certified end-only fit the artifact also records, routed the same way, beside it
    fit = checkpointed["end_only_fit"]
    assert set(fit["groups"]) == {"short", "long"} and fit["pooled"]["n"] == 100
    assert fit["pooled"]["committed"] == 0 and fit["pooled"]["cost_ratio"] == fit["pooled"]["cost_ratio_end_only"]
    assert 0 <= checkpointed["pooled"]["started_escalated_early_share"] <= 1
    assert "checkpointed policy at" in stdout and "fit sec" in stdout and "fit wasted" in stdout


def test_ungrouped_artifact_has_no_groups_and_its_end_threshold_is_the_fit(cached, tiny_config, tmp_path, capsys):
    out = tmp_path / "plain.json"
    code, stdout, err = calibrate(capsys, tiny_config, cached, out, "--no-skip")
    assert code == 0, err
    artifact = read_artifact(out)
    policy, record = artifact["policy"], artifact["fit"]["checkpoints"]
    assert set(policy) == POLICY_KEYS and policy["skip"] is None and policy["skip_threshold"] is None
    assert policy["thresholds"] == [record["config"]["end"]]
    assert policy["checkpoints"]["commit"] == record["config"]["commit"]
    assert record["n"] == 160 and record["delta"] == 0.2 and artifact["figures"]["checkpoints"]["groups"] is None
    assert artifact["monitor"]["acceptance_rate"] == pytest.approx(artifact["figures"]["checkpoints"]["pooled"]["kept"])
    code, stdout, err = run_cli(capsys, "evaluate", "--artifact", out, "--config", tiny_config, "--json",
                                tmp_path / "eval.json")
    assert code == 0, err
    result = json.loads((tmp_path / "eval.json").read_text())
    assert "sources" not in result["checkpoints"] and set(result["checkpoints"]["groups"]) == {str(cached)}
    assert "seconds" not in result["checkpoints"]["pooled"]


def three_tier_config(tmp_path, tiny_models):
    tiers = [tiny_tier_dict(f"t{i}", p) for i, p in enumerate([*tiny_models.values(), tiny_models["tiny-a"]])]
    tiers[0]["threshold"] = tiers[1]["threshold"] = -1.0
    path = tmp_path / "three.yaml"
    path.write_text(yaml.safe_dump({"signal": "mean_logprob", "tiers": tiers}))
    return path


@pytest.mark.parametrize("argv, message", [
    (["--signal", "mean_logprob"], "which --signal does not make"),
    (["THREE"], "this cascade has 3 tiers"),
    (["--delta", "none", "--no-skip"], "--delta none asks for the marginal one"),
    (["--target", "selective-error"], "cannot be fitted for selective-error"),
    (["--checkpoints", "8,4"], "strictly increasing"),
])
def test_checkpoints_are_refused_before_anything_is_read_or_generated(argv, message, tiny_config, tiny_models,
                                                                       tmp_path, capsys, monkeypatch):
    def nothing(*a, **k):
        pytest.fail("refused before collecting")

    monkeypatch.setattr("vcascade.calibration.cli.collect", nothing)
    config = three_tier_config(tmp_path, tiny_models) if "THREE" in argv else tiny_config
    argv = [a for a in argv if a != "THREE"]
    options = {"--target": "quality-loss", "--delta": "0.1", "--checkpoints": "2,4"}
    flags = [a for a in argv if a == "--no-skip"]
    pairs = [a for a in argv if a not in flags]
    options.update(zip(pairs[::2], pairs[1::2]))
    code, _, err = run_cli(capsys, "calibrate", "--config", config, "--dataset", tmp_path / "none.jsonl",
                           "--alpha", "0.2", "--out", tmp_path / "a.json",
                           *[x for kv in options.items() for x in kv], *flags)
    assert code == 2 and message in err, err
    assert not (tmp_path / "a.json").exists()


# ---------------------------------------------------------------- pure numpy: what each split is used for


def test_prefix_rules_never_see_calibration_items(monkeypatch):
    """Scrambling every calibrate item's answer and labels changes no prefix rule, and the
    rules are trained and tuned on train and select items only."""
    items, records = world(300, seed=3)
    splits = three_way_split(len(items), seed=0)
    embeddings = np.random.default_rng(1).normal(size=(len(items), 384)).astype(np.float32)
    seen = []
    real = ck.train

    def spy(X_train, y_train, X_select, y_select, **kw):
        seen.append((set(kw["train_ids"]), X_train.shape[0], X_select.shape[0]))
        return real(X_train, y_train, X_select, y_select, **kw)

    monkeypatch.setattr(ck, "train", spy)
    quiet = lambda line: None  # noqa: E731
    first = train_prefix_rules(records, items, splits, embeddings, (2, 4, 8), log=quiet)
    train_ids = {items[i].id for i in splits.train}
    lengths = np.array([records[0][it.id]["result"]["completion_tokens"] for it in items])
    for (ids, n_train, n_select), k in zip(seen, (2, 4, 8)):
        assert ids <= train_ids and n_train == len(ids) == int((lengths[splits.train] >= k).sum())
        assert n_select == int((lengths[splits.select] >= k).sum())
    _, other = world(300, seed=99)  # different answers and labels for the calibrate items only
    scrambled = [dict(per_tier) for per_tier in records]
    for i in splits.calibrate:
        for t in range(2):
            scrambled[t][items[i].id] = other[t][items[i].id]
    second = train_prefix_rules(scrambled, items, splits, embeddings, (2, 4, 8), log=quiet)
    assert first.checkpoints == second.checkpoints and first.checkpoints
    def without_blob(rule):  # the frozen estimator's bytes name objects by id; compare what it computes
        return {k: v for k, v in rule.spec().items() if k != "estimator"}

    assert [without_blob(r) for r in first.rules] == [without_blob(r) for r in second.rules]
    queries = ck.queries(items, embeddings)
    answers = ck.results(records[0], items)
    np.testing.assert_array_equal(first.scores(queries, answers), second.scores(queries, answers))


def synthetic_data(rng, n: int, skip: bool = False) -> CheckpointData:
    z = rng.normal(size=n)
    correct = np.stack([rng.random(n) < 1 / (1 + np.exp(-2 * z)), rng.random(n) < 0.85], axis=1)
    lengths = rng.integers(1, 20, size=n)
    k = np.array([2, 4, 8])
    scores = np.where(lengths[:, None] >= k[None, :], z[:, None] + rng.normal(size=(n, 3)), np.nan)
    prefix, small = token_costs(np.full(n, 10), lengths, k, 1.0, 5.0)
    return CheckpointData(k, scores, z + rng.normal(0, 0.3, size=n), lengths, correct, prefix, small,
                          np.full(n, 150.0), z + rng.normal(size=n) if skip else None)


def test_the_path_is_fixed_on_the_select_split_and_groups_share_delta():
    rng = np.random.default_rng(0)
    select, calibrate = synthetic_data(rng, 400, skip=True), synthetic_data(rng, 800, skip=True)
    sel_groups, cal_groups = np.array(["a", "b"] * 200), np.array(["a", "b"] * 400)
    kw = dict(select_groups=sel_groups, calibrate_groups=cal_groups, delta_split="bonferroni")
    policy = fit_checkpoint_policy(select, calibrate, "quality-loss", 0.1, 0.1, **kw)
    assert policy.grouped and set(policy.fits) == {"a", "b"} and policy.delta_per_group == pytest.approx(0.05)
    assert all(f.delta == pytest.approx(0.05) and f.n == 400 for f in policy.fits.values())
    # another calibration draw: the same paths (fixed on the select split), other fits
    again = fit_checkpoint_policy(select, synthetic_data(rng, 800, skip=True), "quality-loss", 0.1, 0.1, **kw)
    for g in ("a", "b"):
        assert np.array_equal(policy.families[g].commit, again.families[g].commit)
        assert policy.families[g].description == again.families[g].description
    per_group = fit_checkpoint_policy(select, calibrate, "quality-loss", 0.1, 0.1, select_groups=sel_groups,
                                      calibrate_groups=cal_groups, delta_split="per-group")
    assert per_group.delta_per_group == 0.1 and "separately" in per_group.guarantee["statement"]
    # the fallback escalates most on the pooled calibrate items
    escalated = {g: float((~ck.route(calibrate, f.config).kept).mean()) for g, f in policy.fits.items()}
    assert escalated[policy.fallback_group] == max(escalated.values())
    figures = policy.figures(calibrate, cal_groups)
    assert set(figures["groups"]) == {"a", "b"} and figures["pooled"]["n"] == 800
    single = fit_checkpoint_policy(select, calibrate, "quality-loss", 0.1, 0.1)
    assert not single.grouped and single.fallback_group == ALL and single.guarantee["covers"] == "checkpointed policy"
    assert single.families[ALL].description["kind"] == "pareto-front"
    # the old single-shape quantile path stays available
    shape = fit_checkpoint_policy(select, calibrate, "quality-loss", 0.1, 0.1, family="single-shape", **kw)
    assert all(f.description["kind"] == "quantile-path" and f.description["selected_by"]["delta"] == 0.05
               for f in shape.families.values())
    with pytest.raises(ValueError, match="path family"):
        fit_checkpoint_policy(select, calibrate, "quality-loss", 0.1, 0.1, family="grid")
    with pytest.raises(FitError, match="no selection items"):
        fit_checkpoint_policy(select, calibrate, "quality-loss", 0.1, 0.1, select_groups=np.array(["a"] * 400),
                              calibrate_groups=cal_groups)


def test_policy_block_round_trips_and_checkpoints_parse():
    rng = np.random.default_rng(2)
    select, calibrate = synthetic_data(rng, 300), synthetic_data(rng, 600)
    groups = np.array(["short", "long", "long"] * 200)
    policy = fit_checkpoint_policy(select, calibrate, "quality-loss", 0.1, 0.1, select_groups=groups[:300],
                                   calibrate_groups=groups)

    class Spec:
        def __init__(self, name):
            self.name = name

        def spec(self):
            return {"kind": "signal", "name": self.name}

    prefix = PrefixRules((2, 4, 8), [Spec("mean_logprob")] * 3)
    section = ck.policy_section(policy, prefix, Spec("min_logprob"), None, "length")
    section = json.loads(json.dumps(section))  # as written: Infinity / -Infinity survive
    configs, fallback = deployed_configs(section)
    assert configs == policy.configs and fallback == policy.fallback_group
    assert section["thresholds"] == [policy.config.end] and section["skip_threshold"] is None
    assert parse_checkpoints("8,16, 32") == (8, 16, 32)
    for bad in ("", "0,8", "8,8", "a,b"):
        with pytest.raises(ValueError):
            parse_checkpoints(bad)
