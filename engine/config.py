"""The cascade config: a YAML file of tiers in cost order, a signal and thresholds.

Example (the embedded default is ``engine/default_cascade.yaml``)::

    signal: min_logprob
    system_prompt: Answer with a short phrase only.
    artifact: default_cascade.artifact.json    # thresholds (and learned rules) from a calibration
    tiers:
      - name: small
        model: qwen2.5-coder-0.5b-instruct     # packaged name, local path, or hub id
        cost_per_token: 1.0
        sampling: {max_tokens: 32}
      - name: large                            # a remote tier: any OpenAI-compatible vLLM server
        model: Qwen/Qwen2.5-7B-Instruct
        endpoint: http://gpu-box:8000/v1
        cost_per_token: 3.0

The schema is a set of pydantic models (strict types, unknown fields refused); cascade-level
rules (thresholds on every tier but the last, unique names, signals that need samples) are
checked after. Every error is a ``ConfigError`` naming the file and the field path
(``c.yaml: tiers[0].threshold: ...``).
"""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (BaseModel, ConfigDict, Discriminator, Field, PrivateAttr, Tag, ValidationError,
                      field_validator, model_validator)

from . import model_store

DEFAULT_CONFIG_NAME = "default_cascade.yaml"


class ConfigError(ValueError):
    """An invalid cascade config; the message names the file and the field."""


class _Strict(BaseModel):
    """Frozen, strict (no str → number coercion), unknown fields refused."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class SamplingConfig(_Strict):
    """Default decoding of a tier: greedy unless temperature > 0; ``logprobs`` = top-k kept."""

    max_tokens: int = Field(64, gt=0)
    temperature: float = Field(0.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    logprobs: int = Field(5, gt=0)
    seed: int = 0


ANSWER_SOURCES = ("greedy", "largest_cluster")


class SamplesConfig(_Strict):
    """Sampled answers for semantic entropy, drawn next to the greedy answer.

    Adaptive sampling: with ``initial`` < ``n``, draw ``initial`` samples first and stop
    when they agree decisively — the largest cluster holds at least ``stop_share`` of them
    and the greedy answer belongs to it — otherwise draw the remaining ``n - initial``.
    ``initial: null`` always draws ``n``. ``max_n`` caps ``n`` (cost guard). ``answer``
    picks the returned text: the greedy answer, or the first sample of the largest cluster.
    """

    n: int = Field(10, ge=1)
    initial: int | None = None
    stop_share: float = Field(1.0, gt=0, le=1)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int | None = Field(None, gt=0)
    equivalence: str = "normalized"
    max_n: int = Field(32, gt=0)
    answer: Literal["greedy", "largest_cluster"] = "greedy"

    @field_validator("equivalence")
    @classmethod
    def _known_equivalence(cls, value: str) -> str:
        from .uncertainty.equivalence import get_equivalence

        get_equivalence(value)
        return value

    @model_validator(mode="after")
    def _counts(self) -> "SamplesConfig":
        if self.n > self.max_n:
            raise ValueError(f"n = {self.n} is above the configured cap max_n = {self.max_n}")
        if self.initial is not None and not 1 <= self.initial <= self.n:
            raise ValueError(f"initial must be in [1, n = {self.n}], got {self.initial}")
        return self


class _TierBase(_Strict):
    """What every tier has, wherever its model runs."""

    name: str = Field(min_length=1)
    model: str = Field(min_length=1)
    cost_per_token: float = Field(1.0, gt=0)
    """The price of one token, prompt or output, unless one of the next two is set."""
    cost_per_prompt_token: float | None = Field(None, gt=0)
    """The price of one prompt token (default: ``cost_per_token``)."""
    cost_per_output_token: float | None = Field(None, gt=0)
    """The price of one generated token, greedy answer or sample (default: ``cost_per_token``).
    Decoding dominates long answers: price it apart from the prompt."""
    threshold: float | None = None
    sampling: SamplingConfig = SamplingConfig()
    samples: SamplesConfig | None = None
    on_error: Literal["fail", "previous_answer"] = "fail"
    """When this tier fails (after its retries): fail the request, or answer with the last
    tier that did answer (the trace marks the failure)."""

    @field_validator("threshold")
    @classmethod
    def _not_nan(cls, value: float | None) -> float | None:
        if value is not None and math.isnan(value):
            raise ValueError("must not be NaN")
        return value

    @property
    def is_remote(self) -> bool:
        return isinstance(self, RemoteTierConfig)

    @property
    def prompt_price(self) -> float:
        return self.cost_per_token if self.cost_per_prompt_token is None else self.cost_per_prompt_token

    @property
    def output_price(self) -> float:
        return self.cost_per_token if self.cost_per_output_token is None else self.cost_per_output_token

    def price(self, prompt_tokens: int, output_tokens: int) -> float:
        """What one request costs at this tier: prompt and output tokens at their prices."""
        return self.prompt_price * prompt_tokens + self.output_price * output_tokens


class EngineTierConfig(_TierBase):
    """A tier whose model runs in a vLLM engine owned by this process.

    ``memory_fraction`` is the GPU memory share of this engine; ``kv_cache_mib`` sizes its
    KV cache on CPU (where a fraction of RAM is unusable); ``cpu_threads_bind`` pins its
    engine core's OpenMP threads (e.g. ``"1"``, ``"0-1"``; ``None`` splits the available
    cores among the engines started together). The parallelism settings go straight to vLLM.
    """

    dtype: Literal["bfloat16", "float16", "float32", "auto"] = "auto"
    """``auto``: bf16 where the CPU (or GPU) computes it natively, else float32 (float16 on a GPU
    without bf16); see ``engine.hardware``. The resolved value is part of the tier's identity."""
    max_model_len: int = Field(2048, gt=0)
    memory_fraction: float = Field(0.4, gt=0, le=1)
    kv_cache_mib: int = Field(256, gt=0)
    cpu_threads_bind: str | None = None
    enforce_eager: bool = False
    tensor_parallel_size: int = Field(1, gt=0)
    pipeline_parallel_size: int = Field(1, gt=0)
    distributed_executor_backend: Literal["mp", "ray", "uni", "external_launcher"] | None = None


class RemoteTierConfig(_TierBase):
    """A tier served by an OpenAI-compatible vLLM server (``vllm serve``), e.g. a large model
    on its own GPUs with tensor/pipeline parallelism.

    ``model`` is the server's model id; ``api_key_env`` names the environment variable that
    holds its API key; requests retry connection errors, timeouts, 429 and 5xx up to
    ``max_retries`` times with capped exponential backoff; at most ``max_concurrency`` are
    in flight. ``model_revision`` states the served weights (a revision or content hash):
    it becomes part of the tier's identity for calibration artifacts.
    """

    endpoint: str = Field(pattern=r"^https?://")
    api_key_env: str | None = None
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(3, ge=0)
    max_concurrency: int = Field(64, gt=0)
    model_revision: str | None = None


def _tier_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "remote" if "endpoint" in value else "engine"
    return "remote" if isinstance(value, RemoteTierConfig) else "engine"


TierConfig = Annotated[
    Union[Annotated[EngineTierConfig, Tag("engine")], Annotated[RemoteTierConfig, Tag("remote")]],
    Discriminator(_tier_kind),
]


class CascadeConfig(_Strict):
    """Tiers in cost order, the confidence signal for hand-set thresholds, and optionally the
    calibration artifact that supplies thresholds (and learned rules) instead."""

    tiers: tuple[TierConfig, ...] = Field(min_length=1, strict=False)  # YAML gives a list
    signal: str = "min_logprob"
    system_prompt: str | None = None
    artifact: str | None = None
    _source: str = PrivateAttr("<memory>")

    @field_validator("signal")
    @classmethod
    def _known_signal(cls, value: str) -> str:
        from .uncertainty.signals import get_signal

        get_signal(value)
        return value

    @property
    def source(self) -> str:
        """Where the config came from (a file path, or ``<embedded ...>`` / ``<memory>``)."""
        return self._source

    @property
    def thresholds(self) -> tuple[float | None, ...]:
        """Per non-final tier, from the config (``None`` when an artifact supplies them)."""
        return tuple(t.threshold for t in self.tiers[:-1])

    def tier(self, name: str) -> EngineTierConfig | RemoteTierConfig:
        for tier in self.tiers:
            if tier.name == name:
                return tier
        raise ConfigError(f"{self.source}: no tier named {name!r}; tiers: {', '.join(t.name for t in self.tiers)}")

    def with_artifact(self, path: str | None) -> "CascadeConfig":
        """This config with its thresholds taken from ``path`` (``None``: unchanged)."""
        if path is None:
            return self
        tiers = tuple(t.model_copy(update={"threshold": None}) for t in self.tiers)
        return self.model_copy(update={"tiers": tiers, "artifact": str(path)})


def _where(loc: tuple) -> str:
    """``('tiers', 0, 'engine', 'threshold')`` → ``tiers[0].threshold`` (union tags dropped)."""
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif i == 2 and loc[0] == "tiers" and part in ("engine", "remote"):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out


def _message(error: dict) -> str:
    kind, message = error["type"], error["msg"]
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "model_type" or kind == "dict_type":
        return f"expected a mapping, got {type(error['input']).__name__}"
    message = message.removeprefix("Value error, ")
    if kind.endswith("_type") or kind.endswith("_parsing"):
        value = error["input"]
        message += f" (got {type(value).__name__} {value!r})"
    return message


def _fail(source: str, where: str, message: str) -> ConfigError:
    return ConfigError(f"{source}: {where}: {message}")


def _check_cascade(config: CascadeConfig, source: str) -> None:
    """Rules that span tiers: names, thresholds, signals that need samples."""
    from .uncertainty.signals import SAMPLING_SIGNALS

    last = len(config.tiers) - 1
    names = [t.name for t in config.tiers]
    if len(set(names)) != len(names):
        raise _fail(source, "tiers", f"tier names must be unique, got {names}")
    for i, tier in enumerate(config.tiers):
        if i == last and tier.threshold is not None:
            raise _fail(source, f"tiers[{i}].threshold", "the last tier always answers; remove its threshold")
        if i < last and config.artifact is None and tier.threshold is None:
            raise _fail(source, f"tiers[{i}].threshold", "required for every tier but the last (or set 'artifact')")
        if config.artifact is not None and tier.threshold is not None:
            raise _fail(source, f"tiers[{i}].threshold", "thresholds come from the artifact; remove it or the artifact")
    if config.signal in SAMPLING_SIGNALS:
        for i, tier in enumerate(config.tiers[:-1]):
            if tier.samples is None:
                raise _fail(source, f"tiers[{i}].samples",
                            f"signal {config.signal!r} needs sampled answers; add a samples block")


def parse_config(data: Any, source: str = "<memory>") -> CascadeConfig:
    """Validate a parsed YAML document into a ``CascadeConfig``; errors name ``source``."""
    if not isinstance(data, dict):
        raise _fail(source, "(top level)", f"expected a mapping, got {type(data).__name__}")
    data = dict(data)
    artifact = data.get("artifact")
    if isinstance(artifact, str) and not source.startswith("<") and not Path(artifact).is_absolute():
        data["artifact"] = str(Path(source).parent / artifact)  # relative to the config file
    try:
        config = CascadeConfig.model_validate(data)
    except ValidationError as err:
        lines = [f"{source}: {_where(e['loc']) or '(top level)'}: {_message(e)}" for e in err.errors()]
        raise ConfigError("\n".join(lines)) from None
    config._source = source
    _check_cascade(config, source)
    return config


def load_config(path: str | Path | None = None) -> CascadeConfig:
    """Load and validate a YAML config; ``None`` loads the embedded default cascade."""
    if path is None:
        text = resources.files(__package__).joinpath(DEFAULT_CONFIG_NAME).read_text()
        source = str(resources.files(__package__).joinpath(DEFAULT_CONFIG_NAME))
        return parse_config(yaml.safe_load(text), source=source)
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: malformed YAML: {err}") from None
    return parse_config(data, source=str(path))


def resolve_model(tier: EngineTierConfig, source: str = "<memory>") -> str:
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
