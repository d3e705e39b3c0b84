"""Config validation: every error names the file and the field."""

import math

import pytest
import yaml

from vcascade.engine.config import ConfigError, load_config, parse_config, resolve_model

TWO_TIERS = """
signal: min_logprob
tiers:
  - {name: small, model: /models/small, threshold: -0.4, cost_per_token: 1}
  - {name: large, model: /models/large, cost_per_token: 4.5, sampling: {max_tokens: 16, temperature: 0.7}}
"""


def write(tmp_path, text, name="c.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_valid_config_parses_with_defaults(tmp_path):
    config = load_config(write(tmp_path, TWO_TIERS))
    small, large = config.tiers
    assert config.signal == "min_logprob" and config.thresholds == (-0.4,)
    assert small.cost_per_token == 1.0 and isinstance(small.cost_per_token, float)
    assert large.sampling.max_tokens == 16 and large.sampling.temperature == 0.7 and large.sampling.logprobs == 5
    assert large.threshold is None and not large.is_remote and config.artifact is None


def test_embedded_default_is_the_qwen_cascade_with_its_artifact():
    config = load_config()
    assert [t.model for t in config.tiers] == ["qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct"]
    small, large = config.tiers
    assert small.output_price < large.output_price and small.prompt_price < large.prompt_price
    assert small.prompt_price < small.output_price  # decoding is priced above prefill
    assert config.thresholds == (None,) and config.artifact.endswith("engine/default_cascade.artifact.json")
    from pathlib import Path

    assert Path(config.artifact).is_file()  # the default ships with its calibration


@pytest.mark.parametrize(
    "mutate, field, message",
    [
        (lambda d: d["tiers"][0].update(threshold="high"), "tiers[0].threshold", "valid number (got str 'high')"),
        (lambda d: d["tiers"][0].update(threshold=True), "tiers[0].threshold", "valid number (got bool True)"),
        (lambda d: d["tiers"][1].update(threshold=0.1), "tiers[1].threshold", "last tier always answers"),
        (lambda d: d["tiers"][0].pop("threshold"), "tiers[0].threshold", "required"),
        (lambda d: d["tiers"][0].pop("model"), "tiers[0].model", "required"),
        (lambda d: d["tiers"][0].update(cost_per_token=-1), "tiers[0].cost_per_token", "greater than 0"),
        (lambda d: d["tiers"][0].update(max_model_len="big"), "tiers[0].max_model_len", "valid integer"),
        (lambda d: d["tiers"][0].update(memory_fraction=1.5), "tiers[0].memory_fraction", "less than or equal to 1"),
        (lambda d: d["tiers"][0].update(dtype="int3"), "tiers[0].dtype", "'bfloat16', 'float16', 'float32' or 'auto'"),
        (lambda d: d["tiers"][0].update(temprature=0.5), "tiers[0].temprature", "unknown field"),
        (lambda d: d["tiers"][1]["sampling"].update(top_p=0), "tiers[1].sampling.top_p", "greater than 0"),
        (lambda d: d["tiers"][1]["sampling"].update(max_tokens=0), "tiers[1].sampling.max_tokens", "greater than 0"),
        (lambda d: d.update(signal="vibes"), "signal", "unknown signal"),
        (lambda d: d.update(engine_mode="threads"), "engine_mode", "unknown field"),
        (lambda d: d.update(tiers=[]), "tiers", "at least 1 item"),
        (lambda d: d["tiers"][1].update(endpoint="ftp://x"), "tiers[1].endpoint", "should match pattern"),
        (lambda d: d["tiers"][1].update(endpoint="http://h:8000/v1", kv_cache_mib=3), "tiers[1].kv_cache_mib",
         "unknown field"),
        (lambda d: d["tiers"][0].update(samples={"n": 40}), "tiers[0].samples", "above the configured cap"),
        (lambda d: d["tiers"][0].update(samples={"equivalence": "vibes"}), "tiers[0].samples.equivalence",
         "unknown equivalence"),
        (lambda d: d["tiers"][1].update(name="small"), "tiers", "unique"),
    ],
)
def test_errors_name_file_and_field(tmp_path, mutate, field, message):
    data = yaml.safe_load(TWO_TIERS)
    mutate(data)
    path = write(tmp_path, yaml.safe_dump(data))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}: {field}:"), str(err.value)
    assert message in str(err.value)


def test_malformed_yaml_names_the_file(tmp_path):
    path = write(tmp_path, "tiers: [ {name: a, model: b\n  - oops: :")
    with pytest.raises(ConfigError, match=f"{path}: malformed YAML"):
        load_config(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")


def test_top_level_must_be_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="expected a mapping, got list"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_remote_tier_form_and_parallelism_settings():
    data = yaml.safe_load(TWO_TIERS)
    data["tiers"][0].update(tensor_parallel_size=2, distributed_executor_backend="ray")
    data["tiers"][1].update(endpoint="http://gpu-box:8000/v1", api_key_env="GPU_KEY", max_retries=5,
                            model_revision="sha256:abc", on_error="previous_answer")
    small, large = parse_config(data).tiers
    assert not small.is_remote and small.tensor_parallel_size == 2 and small.distributed_executor_backend == "ray"
    assert large.is_remote and large.endpoint == "http://gpu-box:8000/v1" and large.max_retries == 5
    assert large.timeout_s == 60.0 and large.max_concurrency == 64 and large.on_error == "previous_answer"


def test_every_error_is_reported_at_once(tmp_path):
    data = yaml.safe_load(TWO_TIERS)
    data["tiers"][0].update(threshold="x", cost_per_token=0)
    path = write(tmp_path, yaml.safe_dump(data))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    lines = str(err.value).splitlines()
    assert len(lines) == 2 and all(line.startswith(f"{path}: tiers[0].") for line in lines)


def test_infinite_threshold_is_allowed():
    data = yaml.safe_load(TWO_TIERS)
    data["tiers"][0]["threshold"] = float("inf")
    assert parse_config(data).thresholds == (math.inf,)


def test_missing_model_path_is_reported(tmp_path):
    config = load_config(write(tmp_path, TWO_TIERS))
    with pytest.raises(ConfigError, match="tier 'small': model path '/models/small' does not exist"):
        resolve_model(config.tiers[0], config.source)


def test_model_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("VCASCADE_CACHE", str(tmp_path / "cache"))
    data = yaml.safe_load(TWO_TIERS)
    data["tiers"][0]["model"] = "smollm2-135m-instruct"
    data["tiers"][1]["model"] = str(tmp_path)
    config = parse_config(data, "cfg.yaml")
    with pytest.raises(ConfigError, match="not fetched; run `vcascade models fetch smollm2-135m-instruct`"):
        resolve_model(config.tiers[0], config.source)
    assert resolve_model(config.tiers[1]) == str(tmp_path)
    data["tiers"][1]["model"] = "Qwen/Qwen2.5-7B-Instruct"  # a hub id is passed through
    assert resolve_model(parse_config(data).tiers[1]) == "Qwen/Qwen2.5-7B-Instruct"


def test_prompt_and_output_tokens_are_priced_apart_and_default_to_cost_per_token(tmp_path):
    data = yaml.safe_load(TWO_TIERS)
    data["tiers"][0].update(cost_per_prompt_token=0.25)
    data["tiers"][1].update(cost_per_output_token=9.0)
    small, large = load_config(write(tmp_path, yaml.safe_dump(data))).tiers
    assert small.price(100, 10) == 0.25 * 100 + 1.0 * 10
    assert large.price(100, 10) == 4.5 * 100 + 9.0 * 10
