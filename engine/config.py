"""The cascade config: a YAML file of tiers in cost order, a signal and thresholds.

Example (the embedded default is ``engine/default_cascade.yaml``)::

    signal: mean_logprob
    system_prompt: Answer with a short phrase only.
    tiers:
      - name: small
        model: qwen2.5-coder-0.5b-instruct   # packaged name, local path, or hub id
        cost_per_token: 1.0
        threshold: -0.3                      # every tier but the last
        sampling: {max_tokens: 32}
      - name: large
        model: qwen2.5-coder-1.5b-instruct
        cost_per_token: 3.0

Every validation error is a ``ConfigError`` naming the file and the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from . import model_store
from .signals import get_signal

DEFAULT_CONFIG_NAME = "default_cascade.yaml"


class ConfigError(ValueError):
    """An invalid cascade config; the message names the file and the field."""


@dataclass(frozen=True)
class SamplingConfig:
    """Default decoding of a tier: greedy unless temperature > 0; ``logprobs`` = top-k kept."""

    max_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    logprobs: int = 5
    seed: int = 0


ANSWER_SOURCES = ("greedy", "largest_cluster")


@dataclass(frozen=True)
class SamplesConfig:
    """Sampled answers for semantic entropy, drawn in the same vLLM call as the greedy answer.

    Adaptive sampling: with ``initial`` < ``n``, draw ``initial`` samples first and stop
    when they agree decisively — the largest cluster holds at least ``stop_share`` of them
    and the greedy answer belongs to it — otherwise draw the remaining ``n - initial``.
    ``initial: null`` always draws ``n``. ``max_n`` caps ``n`` (cost guard). ``answer``
    picks the returned text: the greedy answer, or the first sample of the largest cluster.
    """

    n: int = 10
    initial: int | None = None
    stop_share: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int | None = None
    equivalence: str = "normalized"
    max_n: int = 32
    answer: str = "greedy"


def validate_samples(samples: SamplesConfig) -> None:
    """Raise ``ValueError`` for an unusable sampling setup (n < 1, n over the cap, ...)."""
    from .equivalence import get_equivalence

    if samples.n < 1:
        raise ValueError(f"n must be >= 1, got {samples.n}")
    if samples.n > samples.max_n:
        raise ValueError(f"n = {samples.n} is above the configured cap max_n = {samples.max_n}")
    if samples.initial is not None and not 1 <= samples.initial <= samples.n:
        raise ValueError(f"initial must be in [1, n = {samples.n}], got {samples.initial}")
    if not 0 < samples.stop_share <= 1:
        raise ValueError(f"stop_share must be in (0, 1], got {samples.stop_share}")
    if samples.temperature <= 0:
        raise ValueError(f"temperature must be > 0 for sampling, got {samples.temperature}")
    if samples.answer not in ANSWER_SOURCES:
        raise ValueError(f"answer must be one of {', '.join(ANSWER_SOURCES)}, got {samples.answer!r}")
    try:
        get_equivalence(samples.equivalence)
    except KeyError as err:
        raise ValueError(err.args[0]) from None


@dataclass(frozen=True)
class TierConfig:
    """One tier. ``memory_fraction`` is the GPU memory share of this engine;
    ``kv_cache_mib`` sizes its KV cache on CPU (where a fraction of RAM is unusable);
    ``cpu_threads_bind`` pins a multiprocess engine's OpenMP threads (e.g. ``"1"``,
    ``"0-1"``; ``None`` gives each tier its own core in turn)."""

    name: str
    model: str
    dtype: str = "bfloat16"
    max_model_len: int = 2048
    memory_fraction: float = 0.4
    kv_cache_mib: int = 256
    cost_per_token: float = 1.0
    cpu_threads_bind: str | None = None
    enforce_eager: bool = False
    threshold: float | None = None
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    samples: SamplesConfig | None = None


@dataclass(frozen=True)
class CascadeConfig:
    tiers: tuple[TierConfig, ...]
    signal: str = "mean_logprob"
    system_prompt: str | None = None
    engine_mode: str = "inprocess"
    artifact: str | None = None
    source: str = "<memory>"

    @property
    def thresholds(self) -> tuple[float, ...]:
        """Per non-final tier, from the config (empty entries when an artifact supplies them)."""
        return tuple(t.threshold for t in self.tiers[:-1])  # type: ignore[misc]

    def with_artifact(self, path: str | None) -> "CascadeConfig":
        """This config with its thresholds taken from ``path`` (``None``: unchanged)."""
        if path is None:
            return self
        tiers = tuple(replace(t, threshold=None) for t in self.tiers)
        return replace(self, tiers=tiers, artifact=path)


ENGINE_MODES = ("inprocess", "multiprocess")
DTYPES = ("bfloat16", "float16", "float32", "auto")


class _Checker:
    """Type checks that name ``file: path.to.field`` in every error."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, where: str, message: str) -> ConfigError:
        return ConfigError(f"{self.source}: {where}: {message}")

    def mapping(self, value: Any, where: str, allowed: set[str]) -> dict:
        if not isinstance(value, dict):
            raise self.fail(where, f"expected a mapping, got {type(value).__name__}")
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise self.fail(f"{where}.{unknown[0]}" if where else unknown[0],
                            f"unknown field; allowed: {', '.join(sorted(allowed))}")
        return value

    def typed(self, value: Any, where: str, kind: type) -> Any:
        ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not ok:
            raise self.fail(where, f"expected {kind.__name__}, got {type(value).__name__} {value!r}")
        return value

    def positive(self, value: Any, where: str, kind: type) -> Any:
        value = self.typed(value, where, kind)
        if value <= 0:
            raise self.fail(where, f"must be > 0, got {value}")
        return value


def _field_names(cls) -> set[str]:
    return {f.name for f in fields(cls)}


def _parse_sampling(raw: Any, where: str, check: _Checker) -> SamplingConfig:
    raw = check.mapping(raw, where, _field_names(SamplingConfig))
    out = {}
    for key, value in raw.items():
        at = f"{where}.{key}"
        if key in ("max_tokens", "logprobs"):
            out[key] = check.positive(value, at, int)
        elif key == "seed":
            out[key] = check.typed(value, at, int)
        elif key == "temperature":
            out[key] = check.typed(value, at, float)
            if out[key] < 0:
                raise check.fail(at, f"must be >= 0, got {value}")
        elif key == "top_p":
            out[key] = check.typed(value, at, float)
            if not 0 < out[key] <= 1:
                raise check.fail(at, f"must be in (0, 1], got {value}")
    return SamplingConfig(**out)


def _parse_samples(raw: Any, where: str, check: _Checker) -> SamplesConfig:
    raw = check.mapping(raw, where, _field_names(SamplesConfig))
    out: dict[str, Any] = {}
    for key, value in raw.items():
        at = f"{where}.{key}"
        if key in ("n", "max_n"):
            out[key] = check.typed(value, at, int)
        elif key in ("initial", "max_tokens"):
            out[key] = None if value is None else check.typed(value, at, int)
        elif key in ("stop_share", "temperature", "top_p"):
            out[key] = check.typed(value, at, float)
        elif key in ("equivalence", "answer"):
            out[key] = check.typed(value, at, str)
    samples = SamplesConfig(**out)
    try:
        validate_samples(samples)
    except ValueError as err:
        raise check.fail(where, str(err)) from None
    return samples


def _parse_tier(raw: Any, where: str, check: _Checker, is_last: bool, needs_threshold: bool) -> TierConfig:
    raw = check.mapping(raw, where, _field_names(TierConfig))
    for required in ("name", "model"):
        if required not in raw:
            raise check.fail(f"{where}.{required}", "required field is missing")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        at = f"{where}.{key}"
        if key in ("name", "model"):
            out[key] = check.typed(value, at, str)
            if not value.strip():
                raise check.fail(at, "must not be empty")
        elif key == "dtype":
            if value not in DTYPES:
                raise check.fail(at, f"expected one of {', '.join(DTYPES)}, got {value!r}")
            out[key] = value
        elif key in ("max_model_len", "kv_cache_mib"):
            out[key] = check.positive(value, at, int)
        elif key == "cost_per_token":
            out[key] = check.positive(value, at, float)
        elif key == "memory_fraction":
            out[key] = check.positive(value, at, float)
            if out[key] > 1:
                raise check.fail(at, f"must be in (0, 1], got {value}")
        elif key == "cpu_threads_bind":
            out[key] = None if value is None else check.typed(value, at, str)
        elif key == "enforce_eager":
            out[key] = check.typed(value, at, bool)
        elif key == "threshold":
            if is_last:
                raise check.fail(at, "the last tier always answers; remove its threshold")
            out[key] = check.typed(value, at, float)
            if math.isnan(out[key]):
                raise check.fail(at, "must not be NaN")
        elif key == "sampling":
            out[key] = _parse_sampling(value, at, check)
        elif key == "samples":
            out[key] = None if value is None else _parse_samples(value, at, check)
    if needs_threshold and not is_last and "threshold" not in out:
        raise check.fail(f"{where}.threshold", "required for every tier but the last (or set 'artifact')")
    if not needs_threshold and "threshold" in out:
        raise check.fail(f"{where}.threshold", "thresholds come from the artifact; remove it or the artifact")
    return TierConfig(**out)


def parse_config(data: Any, source: str = "<memory>") -> CascadeConfig:
    """Validate a parsed YAML document into a ``CascadeConfig``."""
    check = _Checker(source)
    top = _field_names(CascadeConfig) - {"source"}
    data = check.mapping(data, "", top)
    if "tiers" not in data:
        raise check.fail("tiers", "required field is missing")
    tiers_raw = data["tiers"]
    if not isinstance(tiers_raw, list) or not tiers_raw:
        raise check.fail("tiers", "expected a non-empty list of tiers")
    artifact = data.get("artifact")
    if artifact is not None:
        check.typed(artifact, "artifact", str)
        if not source.startswith("<") and not Path(artifact).is_absolute():
            artifact = str(Path(source).parent / artifact)  # relative to the config file
    tiers = tuple(
        _parse_tier(t, f"tiers[{i}]", check, is_last=i == len(tiers_raw) - 1, needs_threshold=artifact is None)
        for i, t in enumerate(tiers_raw)
    )
    names = [t.name for t in tiers]
    if len(set(names)) != len(names):
        raise check.fail("tiers", f"tier names must be unique, got {names}")
    signal = check.typed(data.get("signal", "mean_logprob"), "signal", str)
    try:
        get_signal(signal)
    except KeyError as err:
        raise check.fail("signal", str(err.args[0])) from None
    system_prompt = data.get("system_prompt")
    if system_prompt is not None:
        check.typed(system_prompt, "system_prompt", str)
    mode = data.get("engine_mode", "inprocess")
    if mode not in ENGINE_MODES:
        raise check.fail("engine_mode", f"expected one of {', '.join(ENGINE_MODES)}, got {mode!r}")
    from .signals import SAMPLING_SIGNALS

    if signal in SAMPLING_SIGNALS:
        for i, tier in enumerate(tiers[:-1]):
            if tier.samples is None:
                raise check.fail(f"tiers[{i}].samples", f"signal {signal!r} needs sampled answers; add a samples block")
    return CascadeConfig(tiers=tiers, signal=signal, system_prompt=system_prompt, engine_mode=mode,
                         artifact=artifact, source=source)


def load_config(path: str | Path | None = None) -> CascadeConfig:
    """Load and validate a YAML config; ``None`` loads the embedded default cascade."""
    if path is None:
        text = resources.files("engine").joinpath(DEFAULT_CONFIG_NAME).read_text()
        return parse_config(yaml.safe_load(text), source=f"<embedded {DEFAULT_CONFIG_NAME}>")
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: malformed YAML: {err}") from None
    return parse_config(data, source=str(path))


def resolve_model(tier: TierConfig, source: str = "<memory>") -> str:
    """Where vLLM loads ``tier.model`` from.

    A packaged model name resolves to its fetched folder (error if not fetched yet); a
    value that looks like a path must exist; anything else is passed on as a hub id.
    """
    name = tier.model
    if name in model_store.CATALOG:
        if not model_store.is_fetched(name):
            raise ConfigError(
                f"{source}: tier {tier.name!r}: packaged model {name!r} is not fetched; "
                f"run `vcascade models fetch {name}`"
            )
        return str(model_store.model_dir(name))
    looks_like_path = name.startswith(("/", "./", "../", "~")) or Path(name).expanduser().exists()
    if looks_like_path:
        path = Path(name).expanduser()
        if not path.is_dir():
            raise ConfigError(f"{source}: tier {tier.name!r}: model path {name!r} does not exist")
        return str(path)
    return name
