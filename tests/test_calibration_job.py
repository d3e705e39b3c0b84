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
    assert "accept-error" in report and "Price of the per-deployment guarantee" in report
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
                                "--target", "quality-loss", "--alpha", "0.2", "--delta", "none", "--out", str(out))
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
