"""The in-process tier backend: one model under vLLM's async engine (``AsyncLLM``).

Every request is submitted on its own and concurrently; vLLM's continuous batching
schedules them. The engine core is a child process (AsyncLLM always runs it apart): on CPU
its OpenMP threads are pinned through ``VLLM_CPU_OMP_THREADS_BIND``, set before the engine
is built, so that two tiers do not share a core; the KV cache is sized in bytes
(a fraction of RAM is unusable on CPU). On GPU the engine takes ``memory_fraction`` of
the device and vLLM's parallelism settings from the config.

Engine statistics (running / waiting requests, KV-cache use) arrive through a vLLM stat
logger and are kept in ``EngineStats`` for the server's metrics.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import importlib.metadata
import os
import time
import uuid
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

from ..config import EngineTierConfig
from ..errors import EngineDeadError, MaxTokensError, PromptTooLongError, RequestError
from ..hardware import resolve_dtype
from ..types import Request, Sample
from .base import Chunk, Decoding
from .rendering import prompt_token_ids


def prepare_environment(verbose: bool | None = None) -> None:
    """Environment that must be set before vLLM is imported and builds an engine
    (``verbose``: keep the engines' load logs on the terminal)."""
    if verbose is not None:
        os.environ["VCASCADE_VERBOSE"] = "1" if verbose else "0"
    verbose = os.environ.get("VCASCADE_VERBOSE") == "1"
    try:
        importlib.metadata.distribution("vllm-cpu")
        os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")  # CPU detection keys on the package name
    except importlib.metadata.PackageNotFoundError:
        pass
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1"
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "INFO" if verbose else "ERROR")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not verbose:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def engine_log_path(tier: str) -> Path:
    from ..model_store import cache_dir

    folder = cache_dir().parent / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"engine-{tier}-{os.getpid()}.log"


@contextlib.contextmanager
def engine_output_to(path: Path | None) -> Iterator[None]:
    """While an engine starts, point this process's stdout/stderr at ``path``: the engine core
    child process inherits them and writes its load logs and warnings there for good.
    ``None`` (verbose) leaves the terminal as it is."""
    if path is None:
        yield
        return
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


_LIVE: "weakref.WeakSet[VLLMBackend]" = weakref.WeakSet()


def _shut_down_engines() -> None:
    """Stop engine cores before the interpreter tears down (else they die mid-step, noisily).
    Registered after vLLM's own exit hooks, so it runs before them."""
    for backend in list(_LIVE):
        backend.close(release=True)


@dataclass
class EngineStats:
    """The latest scheduler figures of one engine (updated by vLLM after every step)."""

    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0


def _stat_logger_factory(stats: EngineStats):
    from vllm.v1.metrics.loggers import StatLoggerBase

    class Recorder(StatLoggerBase):
        def __init__(self, vllm_config, engine_index: int = 0):
            pass

        def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0):
            if scheduler_stats is not None:
                stats.running = scheduler_stats.num_running_reqs
                stats.waiting = scheduler_stats.num_waiting_reqs + scheduler_stats.num_skipped_waiting_reqs
                stats.kv_cache_usage = scheduler_stats.kv_cache_usage

        def log_engine_initialized(self):
            pass

    return Recorder


class VLLMBackend:
    """One ``AsyncLLM`` engine for one tier's model."""

    def __init__(self, config: EngineTierConfig, model_path: str, system_prompt: str | None,
                 cpu_bind: str | None = None):
        prepare_environment()
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM

        self.config = config
        self.name = config.name
        self.model_path = model_path
        self.system_prompt = system_prompt
        self.max_model_len = config.max_model_len
        self.stats = EngineStats()
        kwargs: dict[str, Any] = dict(
            model=model_path, dtype=resolve_dtype(config.dtype), max_model_len=config.max_model_len,
            enforce_eager=config.enforce_eager, seed=config.sampling.seed, disable_log_stats=True,
            tensor_parallel_size=config.tensor_parallel_size, pipeline_parallel_size=config.pipeline_parallel_size,
            distributed_executor_backend=config.distributed_executor_backend, use_tqdm_on_load=False,
        )
        if current_platform.is_cpu():
            kwargs["kv_cache_memory_bytes"] = config.kv_cache_mib * 2**20
            if cpu_bind:
                os.environ["VLLM_CPU_OMP_THREADS_BIND"] = cpu_bind  # read by the engine core at spawn
        else:
            kwargs["gpu_memory_utilization"] = config.memory_fraction
        self.cpu_bind = cpu_bind
        verbose = os.environ.get("VCASCADE_VERBOSE") == "1"
        self.log_path = None if verbose else engine_log_path(self.name)
        with engine_output_to(self.log_path):
            self.engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs),
                                                    stat_loggers=[_stat_logger_factory(self.stats)])
        from .processes import EngineProcesses

        self.processes = EngineProcesses(self.name, self._core_processes())  # they die together
        self.tokenizer = self.engine.get_tokenizer()
        if not _LIVE:
            atexit.register(_shut_down_engines)
        _LIVE.add(self)

    def identity(self) -> dict[str, Any]:
        return {"backend": "vllm", "model_path": self.model_path}

    def render(self, request: Request) -> list[int]:
        ids = prompt_token_ids(self.tokenizer, request, self.system_prompt, self.name)
        if not ids:  # vLLM refuses it ("decoder prompt cannot be empty")
            raise RequestError(f"tier {self.name}: the prompt is empty (0 tokens)", param="prompt")
        return ids

    def _params(self, decoding: Decoding, prompt_len: int, explicit_max_tokens: bool = False, n: int = 1,
                stream: bool = True):
        """vLLM sampling parameters; ``max_tokens`` beyond the room the prompt leaves is an error
        when the request set it, else clamped."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        room = self.max_model_len - prompt_len
        if room < 1:
            raise PromptTooLongError(f"tier {self.name}: this model's maximum context length is "
                                     f"{self.max_model_len} tokens; the prompt has {prompt_len}")
        max_tokens = decoding.max_tokens
        if max_tokens > room:
            if explicit_max_tokens:
                raise MaxTokensError(f"tier {self.name}: this model's maximum context length is "
                                     f"{self.max_model_len} tokens; you requested {prompt_len + max_tokens} "
                                     f"({prompt_len} in the prompt, {max_tokens} in the completion)")
            max_tokens = room
        try:
            return SamplingParams(
                n=n, max_tokens=max_tokens, temperature=decoding.temperature, top_p=decoding.top_p,
                logprobs=decoding.logprobs, stop=list(decoding.stop) if decoding.stop else None,
                seed=decoding.seed,
                output_kind=RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY,
            )
        except ValueError as err:  # vLLM's VLLMValidationError names the parameter
            raise RequestError(f"tier {self.name}: {err}", getattr(err, "parameter", None)) from None

    async def stream(self, request: Request, decoding: Decoding) -> AsyncIterator[Chunk]:
        """The answer's new tokens as the engine produces them (vLLM ``DELTA`` outputs).

        Closing this iterator (or cancelling its task) aborts the request in the engine.
        """
        from vllm.inputs import TokensPrompt

        started, cpu = time.perf_counter(), time.thread_time()
        ids = self.render(request)
        params = self._params(decoding, len(ids), explicit_max_tokens=request.max_tokens is not None)
        render_seconds, render_cpu = time.perf_counter() - started, time.thread_time() - cpu
        k = decoding.logprobs
        first = True
        async for out in self._generate(TokensPrompt(prompt_token_ids=ids), params):
            completion = out.outputs[0]
            positions = completion.logprobs or []
            token_ids = list(completion.token_ids)
            chunk = Chunk(
                text=completion.text,
                token_ids=token_ids,
                tokens=[_decoded(pos, tid) for pos, tid in zip(positions, token_ids)],
                token_logprobs=[float(pos[tid].logprob) for pos, tid in zip(positions, token_ids)],
                top_logprobs=[_top_k(pos, k) for pos in positions],
                finish_reason=completion.finish_reason if out.finished else None,
                prompt_tokens=len(ids) if first else None,
                render_seconds=render_seconds if first else 0.0,
                render_cpu_seconds=render_cpu if first else 0.0,
            )
            first = False
            yield chunk

    async def sample(self, request: Request, decoding: Decoding, n: int) -> list[Sample]:
        """``n`` sampled answers in one request; logprobs=0 keeps only the chosen tokens'
        logprobs, and no prompt_logprobs, so the prompt's prefix cache is reused.

        No per-request seed: on CPU, vLLM 0.32 fails on seeded requests whose prefill is
        chunked ("CPU Generator does not use offset"); randomness comes from the engine seed.
        """
        from vllm.inputs import TokensPrompt

        ids = self.render(request)
        params = self._params(Decoding(**{**decoding.__dict__, "seed": None}), len(ids), n=n, stream=False)
        final = None
        async for out in self._generate(TokensPrompt(prompt_token_ids=ids), params):
            final = out
        samples = []
        for completion in final.outputs:
            token_ids = list(completion.token_ids)
            positions = completion.logprobs or []
            lps = [float(pos[tid].logprob) for pos, tid in zip(positions, token_ids)]
            samples.append(Sample(completion.text, token_ids, lps, float(sum(lps))))
        return samples

    async def _generate(self, prompt, params) -> AsyncIterator:
        from vllm.exceptions import VLLMClientError
        from vllm.v1.engine.exceptions import EngineDeadError as VLLMEngineDead
        from vllm.v1.engine.exceptions import EngineGenerateError

        try:
            async for out in self.engine.generate(prompt, params, request_id=f"{self.name}-{uuid.uuid4().hex}"):
                yield out
        except VLLMEngineDead as err:
            raise EngineDeadError(f"tier {self.name}: the vLLM engine died") from err
        except VLLMClientError as err:
            raise RequestError(f"tier {self.name}: {err}", getattr(err, "parameter", None)) from err
        except EngineGenerateError as err:  # the input the engine refused (vLLM serve answers these with 400)
            if isinstance(err.__cause__, (ValueError, TypeError, OverflowError)):
                raise RequestError(f"tier {self.name}: the engine refused the request: {err.__cause__}") from err
            raise

    def check_health(self) -> None:
        if self.engine is None or self.engine.errored:
            where = f" (engine log: {self.log_path})" if self.log_path else ""
            raise EngineDeadError(f"tier {self.name}: the vLLM engine is dead{where}")

    def _core_processes(self) -> list:
        """The engine core processes (``multiprocessing.Process``) of this engine."""
        manager = getattr(getattr(self.engine.engine_core, "resources", None), "engine_manager", None)
        return list(getattr(manager, "processes", None) or [])

    @property
    def engine_core_pid(self) -> int | None:
        """The engine core's process id (tests check its CPU affinity)."""
        processes = self._core_processes()
        return processes[0].pid if processes else None

    def close(self, release: bool = False) -> None:
        """Shut the engine down (idempotent), from any thread; ``release`` also drops it while
        modules are alive. The output handler is stopped first, on its own loop, so it does not
        report the engine core's exit as a failure."""
        if not getattr(self, "_closed", False) and self.engine is not None:
            self._closed = True
            _LIVE.discard(self)
            handler = getattr(self.engine, "output_handler", None)
            if handler is not None and not handler.done():
                loop = handler.get_loop()
                if loop.is_running():
                    try:
                        asyncio.run_coroutine_threadsafe(_stop(handler), loop).result(timeout=10)
                    except (concurrent.futures.TimeoutError, RuntimeError):
                        pass  # the loop is going away; shutting the engine down is what matters
            self.processes.expect_exit()
            self.engine.shutdown()
            self.processes.reap()  # workers a dead (or stuck) core left behind
        if release:
            self.engine = None

    async def shutdown(self) -> None:
        """Stop the engine for good (its tier cannot generate afterwards)."""
        if not getattr(self, "_closed", False):
            handler = getattr(self.engine, "output_handler", None)
            if handler is not None and not handler.done():
                await _stop(handler)
        self.close(release=True)


async def _stop(task: asyncio.Task) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def _decoded(position: dict, token_id: int) -> str:
    entry = position.get(token_id)
    return (entry.decoded_token or "") if entry is not None else ""


def _top_k(position: dict, k: int) -> list[tuple[str, float]]:
    """The k most likely (decoded token, logprob) pairs at one position, most likely first."""
    ranked = sorted(position.items(), key=lambda item: -item[1].logprob)[:k]
    return [(entry.decoded_token if entry.decoded_token is not None else str(tid), float(entry.logprob))
            for tid, entry in ranked]
