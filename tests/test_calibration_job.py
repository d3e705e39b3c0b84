"""The calibration job and artifacts on real tiny engines: resumable generation, calibrate
(fixed signal and rule selection), artifact matching, evaluate."""

import json
import math

import pytest
import yaml

from vcascade.calibration import job
from vcascade.calibration.datasets import load_dataset
from vcascade.engine import cli
from vcascade.engine.artifact import ArtifactError, load_artifact_policy, read_artifact, tier_identity
from vcascade.engine.config import load_config
from vcascade.engine.sandbox import REASONS
from tests.conftest import tiny_tier_dict

WORDS = ["yes", "no", "cat", "dog", "sun", "moon", "red", "blue", "one", "two", "up", "down"]


def run_cli(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def dataset(tmp_path):
    path = tmp_path / "qa.jsonl"
    lines = [{"id": f"q{i}", "prompt": f"Question {i}: say {w}.", "answers": [w], "kind": "exact"}
             for i, w in enumerate(WORDS)]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


@pytest.fixture
def tiny_config(tmp_path, tiny_models):
    tiers = [tiny_tier_dict(n, p) for n, p in tiny_models.items()]
    tiers[0]["threshold"] = -1.0
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({"signal": "mean_logprob", "tiers": tiers}))
    return path


@pytest.fixture
def counted_tiers(tiny_tiers, monkeypatch):
    """The session's tiny engines, counting generated items, injected where the job builds tiers."""
    counts = {t.name: 0 for t in tiny_tiers}

    class Counted:
        def __init__(self, tier):
            self.tier, self.name = tier, tier.name

        async def generate_many(self, requests):
            counts[self.name] += len(requests)
            return await self.tier.generate_many(requests)

    by_name = {t.name: Counted(t) for t in tiny_tiers}

    async def build(config, only=None, **kw):
        return [by_name[only[0]]]

    async def keep(tiers):  # the session's engines outlive this test
        return None

    monkeypatch.setattr("vcascade.engine.tiers.build_tiers", build)
    monkeypatch.setattr("vcascade.engine.tiers.shutdown_tiers", keep)
    return counts


pytestmark = pytest.mark.engine


def test_interrupted_job_resumes_without_regenerating(tiny_config, dataset, counted_tiers, tiny_tiers, tmp_path,
                                                      monkeypatch):
    config = load_config(tiny_config)
    items = load_dataset(str(dataset))
    root = tmp_path / "cache"
    calls = {"n": 0}
    real = type(tiny_tiers[0]).generate_many

    async def flaky(self, requests):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the third batch of tier 0 never finishes
        return await real(self, requests)

    monkeypatch.setattr(type(tiny_tiers[0]), "generate_many", flaky)
    with pytest.raises(KeyboardInterrupt):
        job.collect(config, items, batch_size=4, cache_root=root, progress=False)
    first_pass = dict(counted_tiers)
    assert first_pass == {"tiny-a": 12, "tiny-b": 0}  # 3 batches of 4 asked, the third died
    monkeypatch.setattr(type(tiny_tiers[0]), "generate_many", real)
    records = job.collect(config, items, batch_size=4, cache_root=root, progress=False)
    assert counted_tiers["tiny-a"] - first_pass["tiny-a"] == 4  # only the lost batch is regenerated
    assert counted_tiers["tiny-b"] == 12
    assert [len(r) for r in records] == [12, 12]
    again = job.collect(config, items, batch_size=4, cache_root=root, progress=False)
    assert counted_tiers == {"tiny-a": 16, "tiny-b": 12} and again == records  # a rerun generates nothing


def test_calibrate_with_a_signal_writes_artifact_and_report_then_evaluate(tiny_config, dataset, counted_tiers,
                                                                          tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VCASCADE_CACHE", str(tmp_path / "vc"))
    out = tmp_path / "art.json"
    code, stdout, err = run_cli(capsys, "calibrate", "--config", str(tiny_config), "--dataset", str(dataset), "--n",
                                "8", "--target", "accept-error", "--alpha", "0.3", "--signal", "mean_logprob",
                                "--out", str(out))
    assert code == 0, err
    artifact = read_artifact(out)
    assert artifact["schema_version"] == 2 and artifact["dataset"]["n_calibration"] == 8
    assert [t["model_hash"].startswith("sha256:") for t in artifact["tiers"]] == [True, True]
    fit = artifact["fit"]
    assert fit["method"] == "fixed-sequence-binomial" and fit["delta"] == 0.1 and len(fit["thresholds"]) == 1
    assert artifact["guarantee"]["kind"] == "high-probability" and "with probability >= 90%" in stdout
    assert artifact["policy"]["rules"] == [{"kind": "signal", "name": "mean_logprob"}]
    report = (tmp_path / "art" / "report.md").read_text()
    assert "accept-error" in report and "Price of the guarantee" in report and "Per group" in report
    assert artifact["scope"] == {"endpoint": "chat", "instructions": "cascade", "system_prompt": None,
                                 "max_tokens": [12, 12], "groups": [], "item_max_tokens": [],
                                 "tier_budget_calibrated": True, "group_by": None}
    assert (tmp_path / "art" / "deferral_curve.png").stat().st_size > 1000
    policy = load_artifact_policy(out, load_config(tiny_config))
    assert policy.rules[0].name == "mean_logprob" and policy.thresholds == tuple(fit["thresholds"])

    figures_path = tmp_path / "eval.json"
    code, stdout, err = run_cli(capsys, "evaluate", "--artifact", str(out), "--config", str(tiny_config),
                                "--json", str(figures_path))
    assert code == 0, err
    figures = json.loads(figures_path.read_text())
    assert figures["n"] == 4 and figures["split"] == "test"  # the 4 held-out items
    assert set(figures["tiers_alone"]) == {"tiny-a", "tiny-b"} and "quality_loss" in figures
    assert "with probability >= 90%" in figures["guarantee"]
    assert counted_tiers["tiny-a"] == 12  # calibration + test items, each generated once


def test_calibrate_without_a_signal_splits_three_ways_and_reports_untrainable_rules(tiny_config, tmp_path, capsys,
                                                                                   counted_tiers, monkeypatch):
    monkeypatch.setenv("VCASCADE_CACHE", str(tmp_path / "vc"))
    data = tmp_path / "more.jsonl"
    data.write_text("".join(json.dumps({"id": f"m{i}", "prompt": f"Item {i}: say {w}.", "answers": [w]}) + "\n"
                            for i, w in enumerate(WORDS * 4)))
    out = tmp_path / "sel.json"
    code, stdout, err = run_cli(capsys, "calibrate", "--config", str(tiny_config), "--dataset", str(data), "--n", "40",
                                "--target", "quality-loss", "--alpha", "0.2", "--delta", "none", "--no-skip", "--out", str(out))
    assert code == 0, err
    artifact = read_artifact(out)
    assert artifact["dataset"]["splits"] == {"train": 16, "select": 8, "calibrate": 16}
    assert artifact["fit"]["n"] == 16 and artifact["fit"]["method"] == "conformal-risk-control"
    assert artifact["guarantee"]["kind"] == "marginal" and "on average over calibration draws" in stdout
    # the tiny models are never right: no learned rule has enough positives, and the report says so
    refused = {r["rule"] for r in artifact["selection"]["refused"]}
    assert {"learned:logistic:correct", "learned:gbt:gain"} <= refused
    assert all("positive" in r["reason"] for r in artifact["selection"]["refused"])
    assert artifact["policy"]["rules"][0]["kind"] == "signal"
    assert "not trained: `learned:gbt:correct`" in (tmp_path / "sel" / "report.md").read_text()


def test_artifact_for_other_models_or_schema_is_refused(tiny_config, tmp_path):
    config = load_config(tiny_config)
    artifact = {"schema_version": 2, "target": "quality-loss", "alpha": 0.1, "fit": {},
                "tiers": [tier_identity(t, config) for t in config.tiers],
                "policy": {"rules": [{"kind": "signal", "name": "mean_logprob"}], "thresholds": [-0.5]}}
    path = tmp_path / "a.json"
    path.write_text(json.dumps(artifact))
    assert load_artifact_policy(path, config).thresholds == (-0.5,)
    swapped = dict(artifact, tiers=list(reversed(artifact["tiers"])))
    path.write_text(json.dumps(swapped))
    with pytest.raises(ArtifactError, match="does not match .*tier 0 \\(tiny-a\\): calibrated for model"):
        load_artifact_policy(path, config)
    assert load_artifact_policy(path, config, force=True).thresholds == (-0.5,)
    artifact["tiers"][0]["decoding"]["sampling"]["max_tokens"] = 99
    path.write_text(json.dumps(artifact))
    with pytest.raises(ArtifactError, match="decoding settings differ \\(sampling\\)"):
        load_artifact_policy(path, config)
    path.write_text(json.dumps(dict(artifact, schema_version=1)))
    with pytest.raises(ArtifactError, match="schema version 1; this vcascade reads version 2"):
        load_artifact_policy(path, config)
    infeasible = dict(artifact, tiers=[tier_identity(t, config) for t in config.tiers],
                      policy={**artifact["policy"], "thresholds": [None]})
    path.write_text(json.dumps(infeasible))
    assert load_artifact_policy(path, config).thresholds == (math.inf,)


@pytest.mark.parametrize("argv, message", [
    (["--alpha", "1.5"], "alpha must be in (0, 1)"),
    (["--alpha", "0"], "alpha must be in (0, 1)"),
    (["--alpha", "0.1", "--target", "selective-error", "--delta", "-1"], "delta must be in (0, 1)"),
    (["--alpha", "0.1", "--delta", "often"], "--delta must be a number in (0, 1) or 'none'"),
    (["--alpha", "0.1", "--target", "accuracy"], "unknown target 'accuracy'"),
    (["--alpha", "0.1", "--dataset", "nope"], "unknown dataset 'nope'"),
    (["--alpha", "0.1", "--signal", "vibes"], "unknown signal 'vibes'"),
])
def test_calibrate_bad_input_fails_before_any_engine(argv, message, tmp_path, capsys, monkeypatch):
    async def no_engine(*a, **k):
        pytest.fail("no engine should start")

    monkeypatch.setattr("vcascade.engine.tiers.build_tiers", no_engine)
    base = {"--dataset": "trivia_qa", "--target": "quality-loss", "--out": str(tmp_path / "a.json")}
    for flag, value in zip(argv[::2], argv[1::2]):
        base[flag] = value
    code, _, err = run_cli(capsys, "calibrate", *[x for kv in base.items() for x in kv])
    assert code == 2 and message in err, err


def test_evaluate_refuses_other_schema(tmp_path, capsys):
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"schema_version": 0}))
    code, _, err = run_cli(capsys, "evaluate", "--artifact", str(path))
    assert code == 2 and "schema version 0" in err


def test_the_cache_is_keyed_by_request_not_by_file(tiny_config, dataset, counted_tiers, tmp_path):
    config = load_config(tiny_config)
    root = tmp_path / "cache"
    first = job.collect(config, load_dataset(str(dataset)), batch_size=4, cache_root=root, progress=False)
    assert counted_tiers == {"tiny-a": 12, "tiny-b": 12}
    # the same requests in another file, reordered, renamed and with a group field: nothing is regenerated
    lines = [json.loads(line) for line in dataset.read_text().splitlines()][::-1]
    regrouped = tmp_path / "regrouped.jsonl"
    regrouped.write_text("".join(json.dumps({**line, "id": "new-" + line["id"], "group": "g"}) + "\n"
                                 for line in lines))
    again = job.collect(config, load_dataset(str(regrouped)), batch_size=4, cache_root=root, progress=False)
    assert counted_tiers == {"tiny-a": 12, "tiny-b": 12}
    assert again[0]["new-q0"]["result"]["text"] == first[0]["q0"]["result"]["text"]
    # a request that differs in what the tier sees (its own system turn) is generated
    changed = tmp_path / "changed.jsonl"
    changed.write_text(json.dumps({"id": "s", "answers": ["yes"], "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Question 0: say yes."}]}) + "\n")
    job.collect(config, load_dataset(str(changed)), batch_size=4, cache_root=root, progress=False)
    assert counted_tiers == {"tiny-a": 13, "tiny-b": 13}


def grouped_dataset(path, per_group: int):
    lines = [{"id": f"{g}{i}", "prompt": f"{g} question {i}: say {w}.", "answers": [w], "group": g}
             for g in ("alpha", "beta") for i, w in enumerate((WORDS * 8)[:per_group])]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_calibrate_per_group_writes_group_thresholds_and_evaluate_reports_each_group(
        tiny_config, counted_tiers, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VCASCADE_CACHE", str(tmp_path / "vc"))
    data = grouped_dataset(tmp_path / "groups.jsonl", 30)
    out = tmp_path / "grouped.json"
    code, stdout, err = run_cli(capsys, "calibrate", "--config", str(tiny_config), "--dataset", str(data), "--n", "48",
                                "--target", "accept-error", "--alpha", "0.2", "--signal", "mean_logprob",
                                "--group-by", "group", "--out", str(out))
    assert code == 0, err
    artifact = read_artifact(out)
    policy = artifact["policy"]
    assert set(policy["groups"]) == {"alpha", "beta"} and policy["fallback_group"] in policy["groups"]
    assert artifact["scope"]["groups"] == ["alpha", "beta"] and artifact["dataset"]["group_by"] == "group"
    assert artifact["guarantee"]["conditional_on"] == "group" and "for each group" in artifact["guarantee"]["statement"]
    assert set(artifact["figures"]["groups"]) == {"alpha", "beta"}
    loaded = load_artifact_policy(out, load_config(tiny_config))
    assert set(loaded.by_group) == {"alpha", "beta"}
    figures_path = tmp_path / "eval.json"
    code, stdout, err = run_cli(capsys, "evaluate", "--artifact", str(out), "--config", str(tiny_config),
                                "--json", str(figures_path))
    assert code == 0, err
    figures = json.loads(figures_path.read_text())
    assert figures["n"] == 12 and set(figures["groups"]) <= {"alpha", "beta"}
    assert sum(g["n"] for g in figures["groups"].values()) == 12
    for g in figures["groups"].values():
        assert set(g) >= {"n", "risk", "quality_loss", "accuracy", "escalated", "cost_ratio"}
    assert "per group (calibrated per group)" in stdout


def three_tier_config(tmp_path, tiny_models):
    tiers = [tiny_tier_dict(f"t{i}", p) for i, p in enumerate([*tiny_models.values(), tiny_models["tiny-a"]])]
    tiers[0]["threshold"] = tiers[1]["threshold"] = -1.0
    path = tmp_path / "three.yaml"
    path.write_text(yaml.safe_dump({"signal": "mean_logprob", "tiers": tiers}))
    return path


@pytest.mark.parametrize("case, argv, message", [
    ("skip rule with --delta none", ["--delta", "none"], "cannot fit a skip rule"),
    ("selective-error with --delta none", ["--target", "selective-error", "--delta", "none", "--no-skip"],
     "does not exist for selective-error"),
    ("three tiers with --delta none", ["--delta", "none", "--no-skip", "THREE"], "this cascade has 3 tiers"),
    ("a group too small", ["--signal", "mean_logprob", "--group-by", "group", "--alpha", "0.1"],
     "'alpha' has"),
    ("an alpha n items can never certify", ["--signal", "mean_logprob", "--alpha", "0.01"], "can never certify"),
])
def test_unfittable_combinations_are_refused_before_any_engine_starts(case, argv, message, tiny_config, tiny_models,
                                                                      tmp_path, capsys, monkeypatch):
    async def no_engine(*a, **k):
        pytest.fail("no engine should start")

    monkeypatch.setattr("vcascade.engine.tiers.build_tiers", no_engine)
    monkeypatch.setenv("VCASCADE_CACHE", str(tmp_path / "vc"))
    config = three_tier_config(tmp_path, tiny_models) if "THREE" in argv else tiny_config
    argv = [a for a in argv if a != "THREE"]
    base = {"--config": str(config), "--dataset": str(grouped_dataset(tmp_path / "g.jsonl", 12)),
            "--target": "quality-loss", "--alpha": "0.2", "--out": str(tmp_path / "a.json")}
    flags = [a for a in argv if a in ("--no-skip",)]
    pairs = [a for a in argv if a not in flags]
    for flag, value in zip(pairs[::2], pairs[1::2]):
        base[flag] = value
    code, _, err = run_cli(capsys, "calibrate", *[x for kv in base.items() for x in kv], *flags)
    assert code == 2 and message in err, (case, err)
    assert not (tmp_path / "a.json").exists()


def test_a_job_whose_engine_is_killed_restarts_it_and_writes_the_same_artifact(tiny_config, dataset, tmp_path, capsys,
                                                                               monkeypatch):
    """The engine core of tier 0 is killed after the first batch: the job logs it, starts the
    engine again, resumes from the cache and writes the artifact an uninterrupted run writes."""
    import psutil

    from vcascade.engine.tiers.base import Tier

    real = Tier.generate_many
    state = {"calls": 0, "killed": []}

    async def kill_after_first_batch(self, requests):
        out = await real(self, requests)
        state["calls"] += 1
        if state["calls"] == 1:
            cores = [p for p in psutil.Process().children(recursive=True) if "EngineCore" in " ".join(p.cmdline())
                     or p.name().startswith("VLLM::EngineCor")]
            newest = max(cores, key=lambda p: p.create_time())
            newest.kill()
            state["killed"].append(newest.pid)
        return out

    def calibrate(cache, out):
        monkeypatch.setenv("VCASCADE_CACHE", str(tmp_path / cache))
        code, stdout, err = run_cli(capsys, "calibrate", "--config", str(tiny_config), "--dataset", str(dataset),
                                    "--n", "12", "--target", "accept-error", "--alpha", "0.3", "--signal",
                                    "mean_logprob", "--batch-size", "4", "--out", str(tmp_path / out))
        assert code == 0, err
        return read_artifact(tmp_path / out), err

    monkeypatch.setattr(Tier, "generate_many", kill_after_first_batch)
    interrupted, err = calibrate("killed", "killed.json")
    assert state["killed"] and "the vLLM engine died" in err and "restarting it (1 of at most 3)" in err
    monkeypatch.setattr(Tier, "generate_many", real)
    uninterrupted, _ = calibrate("clean", "clean.json")
    for key in ("policy", "fit", "scope", "target", "alpha", "delta"):
        a, b = interrupted[key], uninterrupted[key]
        assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True) or key in ("policy", "fit") and \
            a["thresholds"] == pytest.approx(b["thresholds"], rel=1e-4), key
    killed_cache = next((tmp_path / "killed").rglob("*.jsonl"))
    assert len(killed_cache.read_text().splitlines()) == 12  # every request once: the lost batch was not duplicated


def test_long_items_keep_their_budget_code_is_executed_and_length_groups_are_certified(
        tiny_config, tmp_path, capsys, counted_tiers, monkeypatch):
    """A slice of short and long traffic on the tiny engines: each long item runs under its own
    system turn and max_tokens, its code is executed (verdicts cached), and the artifact is
    fitted per answer-length group, a function of the request that serving reproduces."""
    monkeypatch.setenv("VCASCADE_CACHE", str(tmp_path / "vc"))
    lines = [{"id": f"s{i}", "prompt": f"Question {i}: say {w}.", "answers": [w]} for i, w in enumerate(WORDS * 2)]
    lines += [{"id": f"c{i}", "messages": [{"role": "system", "content": "Reply with one python code block."},
                                           {"role": "user", "content": f"Write f() returning {i}."}],
               "answers": [f"assert f() == {i}"], "kind": "code", "max_tokens": 20} for i in range(24)]
    data = tmp_path / "mixed.jsonl"
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    items = load_dataset(str(data))
    records = job.collect(load_config(tiny_config), items, batch_size=16, progress=False)
    for item in items:
        result = records[0][item.id]["result"]
        assert result["max_tokens"] == (item.max_tokens or 12) and result["completion_tokens"] <= result["max_tokens"]
    verdicts = (tmp_path / "vc" / "execution" / "verdicts.jsonl").read_text().splitlines()
    assert 0 < len(verdicts) <= 48 and all(json.loads(v)["reason"] in REASONS for v in verdicts)
    out = tmp_path / "len.json"
    code, stdout, err = run_cli(capsys, "calibrate", "--config", str(tiny_config), "--dataset", str(data),
                                "--signal", "mean_logprob", "--target", "quality-loss", "--alpha", "0.2", "--delta",
                                "0.2", "--group-by", "length", "--delta-split", "bonferroni", "--out", str(out))
    assert code == 0, err
    artifact = read_artifact(out)
    assert artifact["policy"]["group_by"] == "length" and set(artifact["policy"]["groups"]) == {"short", "long"}
    assert artifact["scope"]["item_max_tokens"] == [20] and artifact["scope"]["tier_budget_calibrated"]
    assert artifact["prices"]["tiny-a"] == {"prompt": 1.0, "output": 1.0}
    assert len(verdicts) == len((tmp_path / "vc" / "execution" / "verdicts.jsonl").read_text().splitlines())
    policy = load_artifact_policy(out, load_config(tiny_config))
    assert policy.group_by == "length" and policy.group_of(job.queries(items)[-1].request, 12) == "long"
    code, stdout, err = run_cli(capsys, "evaluate", "--artifact", str(out), "--config", str(tiny_config),
                                "--split", "all", "--json", str(tmp_path / "eval.json"))
    assert code == 0, err
    figures = json.loads((tmp_path / "eval.json").read_text())
    assert set(figures["groups"]) == {"short", "long"} and figures["groups"]["long"]["n"] == 24
    assert figures["sources"] and "per source (a figure: the guarantee is per group)" in stdout
