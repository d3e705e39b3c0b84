"""A tier backed by one vLLM engine: the one generation path of vcascade.

The CLI, the calibration job, the benchmarks and the server all call
``VLLMTier.generate(requests)``, which renders every request to token ids (chat template
for chat requests), submits the whole batch to ``vllm.LLM.generate`` in one call so that
vLLM's continuous batching does the scheduling, and returns plain ``TierResult``s.

Engines (DESIGN.md): by default every engine lives in the calling process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``: ~3 s start-up, one process) and the tiers of a
cascade run one after the other, each on all cores. In ``multiprocess`` mode each engine
core is a child process whose OpenMP threads are pinned through
``VLLM_CPU_OMP_THREADS_BIND`` (set per engine, before it is built), so that two tiers do
not share one core. Engines are never torn down before the process exits: on CPU,
deleting one in-process engine breaks the others.
"""

from __future__ import annotations

import copy
import importlib.metadata
import os
import time
from typing import Sequence

from .config import CascadeConfig, SamplesConfig, TierConfig, resolve_model, validate_samples
from .equivalence import get_equivalence
from .sampling import assign_clusters, is_decisive, largest_cluster_text
from .types import Request, Sample, TierResult

_LIVE_ENGINES: list = []  # keeps every engine alive until exit (see module docstring)


def _prepare_environment(engine_mode: str) -> None:
    """Environment that must be set before vLLM builds an engine."""
    try:
        importlib.metadata.distribution("vllm-cpu")
        os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")  # CPU detection keys on the package name
    except importlib.metadata.PackageNotFoundError:
        pass
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if engine_mode == "multiprocess" else "0"
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class PromptTooLongError(ValueError):
    """A prompt that does not fit the tier's ``max_model_len``."""


class VLLMTier:
    """One model under one vLLM engine, with its decoding defaults and cost."""

    def __init__(
        self,
        config: TierConfig,
        model_path: str,
        system_prompt: str | None = None,
        engine_mode: str = "inprocess",
        tier_index: int = 0,
        warmup_batch: int = 8,
    ):
        _prepare_environment(engine_mode)
        from vllm import LLM
        from vllm.platforms import current_platform

        self.config = config
        self.name = config.name
        self.cost_per_token = config.cost_per_token
        self.system_prompt = system_prompt
        self.samples = config.samples
        if self.samples is not None:
            validate_samples(self.samples)
            self.equivalence = get_equivalence(self.samples.equivalence)
        kwargs = dict(
            model=model_path,
            dtype=config.dtype,
            max_model_len=config.max_model_len,
            enforce_eager=config.enforce_eager,
            seed=config.sampling.seed,
        )
        if current_platform.is_cpu():
            # A fraction of RAM is unusable on CPU (DESIGN.md): size the KV cache in bytes.
            kwargs["kv_cache_memory_bytes"] = config.kv_cache_mib * 2**20
            if engine_mode == "multiprocess":
                cores = os.sched_getaffinity(0)
                default_core = sorted(cores)[tier_index % len(cores)]
                os.environ["VLLM_CPU_OMP_THREADS_BIND"] = config.cpu_threads_bind or str(default_core)
        else:
            kwargs["gpu_memory_utilization"] = config.memory_fraction
        self.llm = LLM(**kwargs)
        _LIVE_ENGINES.append(self.llm)
        self.tokenizer = self.llm.get_tokenizer()
        if warmup_batch:
            self.warm_up(warmup_batch)

    def with_samples(self, samples: SamplesConfig | None) -> "VLLMTier":
        """The same engine with other sampling settings (e.g. fixed-n vs adaptive in one run)."""
        twin = copy.copy(self)
        twin.samples = samples
        if samples is not None:
            validate_samples(samples)
            twin.equivalence = get_equivalence(samples.equivalence)
        return twin

    def warm_up(self, batch: int) -> None:
        """Pay the one-off logprob compile and the first-batch cost before real traffic."""
        self.generate([Request(prompt="Hello", max_tokens=4)] * batch)

    def render(self, request: Request) -> list[int]:
        """Token ids of the prompt: chat template for chat requests, plain text when raw.

        A ``prompt`` request becomes one user turn; the config's system prompt is put first
        unless the request brings its own system turn. A model without a chat template
        takes a ``prompt`` as plain text and refuses ``messages``.
        """
        has_template = getattr(self.tokenizer, "chat_template", None) is not None
        if request.raw or (request.prompt is not None and not has_template):
            return self.tokenizer.encode(request.prompt)
        if not has_template:
            raise ValueError(f"tier {self.name}: model has no chat template; send a raw prompt")
        messages = list(request.messages or ({"role": "user", "content": request.prompt},))
        if self.system_prompt and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _sampling_params(self, request: Request, prompt_len: int):
        from vllm import SamplingParams

        s = self.config.sampling
        room = self.config.max_model_len - prompt_len
        if room < 1:
            raise PromptTooLongError(
                f"tier {self.name}: prompt of {prompt_len} tokens does not fit max_model_len "
                f"{self.config.max_model_len}" + (f" (request {request.id})" if request.id else "")
            )
        return SamplingParams(
            max_tokens=min(request.max_tokens or s.max_tokens, room),
            temperature=s.temperature,
            top_p=s.top_p,
            logprobs=s.logprobs,
        )

    def _samples_params(self, greedy, count: int):
        """``count`` sampled answers in one request; logprobs=0 keeps only the chosen token's
        logprob, and no prompt_logprobs, so the prompt's prefix cache is reused.

        No per-request seed: on CPU, vLLM 0.32 fails on seeded requests whose prefill is
        chunked ("CPU Generator does not use offset"); randomness comes from the engine's
        seed (``sampling.seed``), so a run is reproducible for the same request order."""
        from vllm import SamplingParams

        s = self.samples
        return SamplingParams(
            n=count,
            temperature=s.temperature,
            top_p=s.top_p,
            max_tokens=min(s.max_tokens or greedy.max_tokens, greedy.max_tokens),
            logprobs=0,
        )

    def generate(self, requests: Sequence[Request]) -> list[TierResult]:
        """One greedy (or configured) answer per request, plus sampled answers when the tier
        samples; the whole batch goes to vLLM in one call per sampling round."""
        from vllm.inputs import TokensPrompt

        if not requests:
            return []
        prompts, params = [], []
        for request in requests:
            ids = self.render(request)
            prompts.append(TokensPrompt(prompt_token_ids=ids))
            params.append(self._sampling_params(request, len(ids)))
        k = self.config.sampling.logprobs
        start = time.perf_counter()
        if self.samples is None:
            outputs = self.llm.generate(prompts, params, use_tqdm=False)
            seconds = time.perf_counter() - start
            return [self._to_result(out, k, seconds) for out in outputs]
        s = self.samples
        first = s.initial or s.n
        outputs = self.llm.generate(
            prompts + prompts, params + [self._samples_params(p, first) for p in params], use_tqdm=False
        )
        results = [self._to_result(out, k, 0.0) for out in outputs[: len(prompts)]]
        for result, out in zip(results, outputs[len(prompts) :]):
            result.samples = [self._to_sample(c) for c in out.outputs]
        assign_clusters(results, self.equivalence)
        if first < s.n:
            undecided = [i for i, r in enumerate(results) if not is_decisive(r, s.stop_share)]
            if undecided:
                more = self.llm.generate([prompts[i] for i in undecided],
                                         [self._samples_params(params[i], s.n - first) for i in undecided],
                                         use_tqdm=False)
                for i, out in zip(undecided, more):
                    results[i].samples += [self._to_sample(c) for c in out.outputs]
                assign_clusters([results[i] for i in undecided], self.equivalence)
        seconds = time.perf_counter() - start
        for result in results:
            result.seconds = seconds
            if s.answer == "largest_cluster":
                result.text = largest_cluster_text(result)
        return results

    @staticmethod
    def _to_sample(completion) -> Sample:
        token_ids = list(completion.token_ids)
        positions = completion.logprobs or []
        token_logprobs = [float(pos[tid].logprob) for pos, tid in zip(positions, token_ids)]
        return Sample(completion.text, token_ids, token_logprobs, float(sum(token_logprobs)))

    @staticmethod
    def _to_result(out, k: int, seconds: float) -> TierResult:
        completion = out.outputs[0]
        token_ids = list(completion.token_ids)
        positions = completion.logprobs or []
        token_logprobs = [float(pos[tid].logprob) for pos, tid in zip(positions, token_ids)]
        top = [
            sorted(((int(t), float(lp.logprob)) for t, lp in pos.items()), key=lambda p: -p[1])[:k]
            for pos in positions
        ]
        return TierResult(
            text=completion.text,
            token_ids=token_ids,
            token_logprobs=token_logprobs,
            top_logprobs=top,
            cumulative_logprob=float(completion.cumulative_logprob or sum(token_logprobs)),
            finish_reason=completion.finish_reason,
            prompt_tokens=len(out.prompt_token_ids or []),
            completion_tokens=len(token_ids),
            seconds=seconds,
        )


def build_tiers(config: CascadeConfig, only: str | None = None, warmup_batch: int = 8) -> list[VLLMTier]:
    """Build the engines of ``config`` in cost order (or just the tier named ``only``).

    Model locations are resolved (and missing ones reported) before any engine starts.
    """
    chosen = [(i, t) for i, t in enumerate(config.tiers) if only is None or t.name == only]
    if not chosen:
        from .config import ConfigError

        names = ", ".join(t.name for t in config.tiers)
        raise ConfigError(f"{config.source}: no tier named {only!r}; tiers: {names}")
    paths = [resolve_model(t, config.source) for _, t in chosen]
    return [
        VLLMTier(t, path, config.system_prompt, config.engine_mode, tier_index=i, warmup_batch=warmup_batch)
        for (i, t), path in zip(chosen, paths)
    ]


def build_policy(config: CascadeConfig, force_artifact: bool = False):
    """The deferral policy: from the calibration artifact when the config names one
    (checked against the config's models), else from the config's thresholds."""
    from .artifact import load_artifact_policy
    from .policy import Policy

    if config.artifact:
        return load_artifact_policy(config.artifact, config, force=force_artifact)
    return Policy(config.signal, config.thresholds)


def build_cascade(config: CascadeConfig, only: str | None = None, warmup_batch: int = 8, force_artifact: bool = False):
    """The configured ``Cascade`` over real engines; ``only`` runs one tier alone.

    The policy is resolved (artifact read and matched) before any engine starts.
    """
    from .cascade import Cascade
    from .policy import Policy

    policy = Policy(config.signal, ()) if only else build_policy(config, force_artifact)
    tiers = build_tiers(config, only=only, warmup_batch=warmup_batch)
    return Cascade(tiers, policy)
