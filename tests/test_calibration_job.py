"""The calibration job and artifacts: resumable generation, fit, artifact matching, evaluate."""

import json
import math

import pytest
import yaml

from calibration import job
from calibration.datasets import load_dataset
from engine import cli
from engine.artifact import ArtifactError, load_artifact_policy, read_artifact
from engine.config import load_config


def run_cli(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def dataset(tmp_path):
    path = tmp_path / "qa.jsonl"
    lines = [{"id": f"q{i}", "prompt": f"Question {i}: say {w}.", "answers": [w], "kind": "exact"}
             for i, w in enumerate(["yes", "no", "cat", "dog", "sun", "moon", "red", "blue", "one", "two", "up", "down"])]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


@pytest.fixture
def tiny_config(tmp_path, tiny_models):
    tiers = [{"name": n, "model": str(p), "max_model_len": 512, "kv_cache_mib": 32, "enforce_eager": True,
              "sampling": {"max_tokens": 12, "logprobs": 5}} for n, p in tiny_models.items()]
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

        def generate(self, requests):
            counts[self.name] += len(requests)
            return self.tier.generate(requests)

    by_name = {t.name: Counted(t) for t in tiny_tiers}
    monkeypatch.setattr("engine.vllm_tier.build_tiers", lambda config, only=None, **kw: [by_name[only]])
    monkeypatch.setenv("VCASCADE_CACHE_CALIBRATION", "unused")
    return counts


pytestmark = pytest.mark.engine


def test_interrupted_job_resumes_without_regenerating(tiny_config, dataset, counted_tiers, tiny_tiers, tmp_path,
                                                      monkeypatch):
    config = load_config(tiny_config)
    items = load_dataset(str(dataset))
    root = tmp_path / "cache"
    calls = {"n": 0}
    real_generate = type(tiny_tiers[0]).generate

    def flaky(self, requests):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the third batch of tier 0 never finishes
        return real_generate(self, requests)

    monkeypatch.setattr(type(tiny_tiers[0]), "generate", flaky)
    with pytest.raises(KeyboardInterrupt):
        job.collect(config, str(dataset), items, batch_size=4, cache_root=root, progress=False)
    first_pass = dict(counted_tiers)
    assert first_pass == {"tiny-a": 12, "tiny-b": 0}  # 3 batches of 4 asked, the third died
    monkeypatch.setattr(type(tiny_tiers[0]), "generate", real_generate)
    records = job.collect(config, str(dataset), items, batch_size=4, cache_root=root, progress=False)
    assert counted_tiers["tiny-a"] - first_pass["tiny-a"] == 4  # only the lost batch is regenerated
    assert counted_tiers["tiny-b"] == 12
    assert [len(r) for r in records] == [12, 12]
    again = job.collect(config, str(dataset), items, batch_size=4, cache_root=root, progress=False)
    assert counted_tiers == {"tiny-a": 16, "tiny-b": 12} and again == records  # a rerun generates nothing


def test_calibrate_writes_artifact_and_report_then_evaluate(tiny_config, dataset, counted_tiers, tmp_path, capsys,
                                                            monkeypatch):
    monkeypatch.setenv("VCASCADE_CACHE", str(tmp_path / "vc"))
    out = tmp_path / "art.json"
    code, stdout, err = run_cli(capsys, "calibrate", "--config", str(tiny_config), "--dataset", str(dataset), "--n",
                                "8", "--target", "accept-error", "--alpha", "0.3", "--out", str(out))
    assert code == 0, err
    artifact = read_artifact(out)
    assert artifact["schema_version"] == 1 and artifact["n"] == 8 and artifact["target"] == "accept-error"
    assert [t["model_hash"].startswith("sha256:") for t in artifact["tiers"]] == [True, True]
    fit = artifact["fit"]
    assert fit["method"] == "conformal-risk-control" and len(fit["thresholds"]) == 1
    assert {"empirical_risk", "risk_bound", "acceptance", "cost_ratio", "feasible"} <= set(fit)
    report = tmp_path / "art" / "report.md"
    assert report.is_file() and (tmp_path / "art" / "deferral_curves.png").stat().st_size > 1000
    assert "accept-error" in report.read_text()
    # the tiny models are always wrong, so accept-error <= 0.3 forces escalation of (almost) everything
    policy = load_artifact_policy(out, load_config(tiny_config))
    assert policy.signal_name == "mean_logprob" and policy.thresholds == tuple(fit["thresholds"])

    figures_path = tmp_path / "eval.json"
    code, stdout, err = run_cli(capsys, "evaluate", "--artifact", str(out), "--config", str(tiny_config),
                                "--json", str(figures_path))
    assert code == 0, err
    figures = json.loads(figures_path.read_text())
    assert figures["n"] == 4 and figures["split"] == "test"  # the 4 held-out items
    assert set(figures["tiers_alone"]) == {"tiny-a", "tiny-b"} and "quality_loss" in figures
    assert counted_tiers["tiny-a"] == 12  # calibration + test items, each generated once


def test_artifact_for_other_models_or_schema_is_refused(tiny_config, tmp_path, tiny_models):
    config = load_config(tiny_config)
    from engine.artifact import tier_identity

    artifact = {"schema_version": 1, "signal": "mean_logprob", "target": "quality-loss", "alpha": 0.1,
                "tiers": [tier_identity(t, config) for t in config.tiers], "fit": {"thresholds": [-0.5]}}
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
    path.write_text(json.dumps(dict(artifact, schema_version=2)))
    with pytest.raises(ArtifactError, match="schema version 2; this vcascade reads version 1"):
        load_artifact_policy(path, config)
    infeasible = dict(artifact, tiers=[tier_identity(t, config) for t in config.tiers],
                      fit={"thresholds": [math.inf]})
    path.write_text(json.dumps(infeasible))
    assert load_artifact_policy(path, config).thresholds == (math.inf,)


@pytest.mark.parametrize("argv, message", [
    (["--alpha", "1.5"], "alpha must be in (0, 1)"),
    (["--alpha", "0"], "alpha must be in (0, 1)"),
    (["--alpha", "0.1", "--target", "selective-error", "--delta", "-1"], "delta must be in (0, 1)"),
    (["--alpha", "0.1", "--target", "accuracy"], "unknown target 'accuracy'"),
    (["--alpha", "0.1", "--dataset", "nope"], "unknown dataset 'nope'"),
    (["--alpha", "0.1", "--signal", "vibes"], "unknown signal 'vibes'"),
])
def test_calibrate_bad_input_fails_before_any_engine(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("engine.vllm_tier.build_tiers", lambda *a, **k: pytest.fail("no engine should start"))
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
