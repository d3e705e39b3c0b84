"""Tiers: the in-process vLLM backend, the remote (OpenAI-compatible) backend, and the
``Tier`` that drives either with one generation path.

``build_tiers`` resolves every model location (and reports a missing one) before any
engine starts, splits the machine's cores among the CPU engines it starts together, and
checks remote endpoints.
"""

from __future__ import annotations

import os
import sys
from typing import Sequence

from ..config import CascadeConfig, ConfigError, EngineTierConfig, RemoteTierConfig, resolve_model
from .base import BusyClock, Chunk, Decoding, Tier, assemble

__all__ = ["BusyClock", "Chunk", "Decoding", "Tier", "assemble", "build_tiers", "core_bindings", "shutdown_tiers"]


def core_bindings(count: int, cores: Sequence[int] | None = None) -> list[str]:
    """``VLLM_CPU_OMP_THREADS_BIND`` values that split ``cores`` (default: this process's
    affinity) into ``count`` contiguous groups, e.g. 2 engines on cores {0, 1} → ["0", "1"],
    1 engine → ["0-1"]; with more engines than cores, engines share cores in turn."""
    cores = sorted(cores if cores is not None else os.sched_getaffinity(0))
    if count >= len(cores):
        return [str(cores[i % len(cores)]) for i in range(count)]
    size, extra = divmod(len(cores), count)
    out, start = [], 0
    for i in range(count):
        group = cores[start : start + size + (i < extra)]
        start += len(group)
        out.append(",".join(str(c) for c in group) if group != list(range(group[0], group[-1] + 1))
                   else (f"{group[0]}-{group[-1]}" if len(group) > 1 else str(group[0])))
    return out


async def build_tiers(config: CascadeConfig, only: Sequence[str] | None = None, warmup_batch: int = 8) -> list[Tier]:
    """Start the tiers of ``config`` in cost order (or just those named in ``only``).

    Engines are built one after another (each start blocks for its engine core's start-up)
    and warmed up with ``warmup_batch`` concurrent requests; remote tiers are checked.
    """
    from .remote import RemoteBackend
    from .vllm_tier import VLLMBackend

    chosen = [t for t in config.tiers if only is None or t.name in only]
    if only is not None:
        for name in only:
            config.tier(name)  # names an unknown tier → ConfigError
    paths = {t.name: resolve_model(t, config.source) for t in chosen if isinstance(t, EngineTierConfig)}
    if paths:
        print(dtype_statement([t for t in chosen if isinstance(t, EngineTierConfig)]), file=sys.stderr)
    binds = iter(core_bindings(len(paths)) if paths else [])
    tiers = []
    for tier_config in chosen:
        if isinstance(tier_config, RemoteTierConfig):
            backend = RemoteBackend(tier_config, config.system_prompt)
            await backend.start()
        else:
            bind = next(binds)
            backend = VLLMBackend(tier_config, paths[tier_config.name], config.system_prompt,
                                  cpu_bind=tier_config.cpu_threads_bind or bind)
        tier = Tier(tier_config, backend)
        await tier.warm_up(warmup_batch)
        tier.busy.reset()
        tiers.append(tier)
    return tiers


def dtype_statement(tiers: Sequence[EngineTierConfig]) -> str:
    """One line for start-up: the dtype each engine runs with, and why ``auto`` chose it."""
    from ..hardware import native_dtype, resolve_dtype

    parts = [f"{t.name} {resolve_dtype(t.dtype)}" + ("" if t.dtype == "auto" else " (set in the config)")
             for t in tiers]
    auto = any(t.dtype == "auto" for t in tiers)
    return f"engine dtype: {', '.join(parts)}" + (f" [auto: {native_dtype().reason}]" if auto else "")


async def shutdown_tiers(tiers: Sequence[Tier]) -> None:
    for tier in tiers:
        await tier.backend.shutdown()


def engine_tier(config: CascadeConfig, name: str) -> EngineTierConfig:
    tier = config.tier(name)
    if not isinstance(tier, EngineTierConfig):
        raise ConfigError(f"{config.source}: tier {name!r} is remote; it has no local engine")
    return tier
