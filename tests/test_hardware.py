"""dtype auto: native bf16 detected from CPU flags, and the resolved dtype in a tier's identity."""

import json

import pytest

from vcascade.engine import hardware
from vcascade.engine.artifact import (ArtifactError, decoding_settings, dtype_departure, load_artifact_policy,
                                      tier_identity)
from vcascade.engine.scope import REASONS
from vcascade.engine.config import parse_config

# Real flag lines (abridged): an Intel Xeon with AMX, an AMD EPYC with AVX2 only.
XEON_AMX = ("fpu vme de pse tsc msr pae mce cx8 apic sep mtrr sse sse2 ht syscall nx avx2 avx512f avx512dq "
            "avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8 avx_vnni")
XEON_AVX512_BF16 = "fpu sse sse2 avx avx2 avx512f avx512bw avx512_vnni avx512_bf16"
EPYC_AVX2 = "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr sse sse2 ht syscall nx avx avx2 fma bmi2 sha_ni"


@pytest.mark.parametrize("flags, dtype", [(XEON_AMX, "bfloat16"), (XEON_AVX512_BF16, "bfloat16"),
                                          (EPYC_AVX2, "float32"), ("", "float32"),
                                          ("avx512f avx512_bf16x", "float32")])  # whole flags only
def test_dtype_from_cpu_flags(flags, dtype):
    choice = hardware.dtype_for_cpu_flags(flags)
    assert choice.dtype == dtype
    assert ("natively" in choice.reason) == (dtype == "bfloat16")


def test_cpu_flags_reads_the_flags_line(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: {EPYC_AVX2}\n\nprocessor\t: 1\n")
    assert hardware.cpu_flags(info) == EPYC_AVX2
    assert hardware.cpu_flags(tmp_path / "missing") == ""


def test_this_machine_resolves_to_a_concrete_dtype():
    assert hardware.resolve_dtype("auto") in ("bfloat16", "float32", "float16")
    assert hardware.resolve_dtype("float32") == "float32"


@pytest.fixture
def machine(monkeypatch):
    """Pretend to run on a CPU with the given flags."""

    def use(flags: str):
        monkeypatch.setattr(hardware, "native_dtype", lambda: hardware.dtype_for_cpu_flags(flags))

    return use


def two_tier_config(tmp_path, dtype="auto"):
    tiers = []
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir(exist_ok=True)
        (folder / "weights.bin").write_bytes(name.encode())
        tiers.append({"name": name, "model": str(folder), "dtype": dtype})
    tiers[0]["threshold"] = -1.0
    return parse_config({"tiers": tiers})


def test_identity_holds_the_resolved_dtype(tmp_path, machine):
    config = two_tier_config(tmp_path)
    assert config.tiers[0].dtype == "auto"  # the default
    machine(XEON_AMX)
    assert decoding_settings(config.tiers[0], None)["dtype"] == "bfloat16"
    machine(EPYC_AVX2)
    assert decoding_settings(config.tiers[0], None)["dtype"] == "float32"


def test_bf16_artifact_runs_under_auto_everywhere_but_guarantees_only_where_the_dtype_matches(tmp_path, machine):
    from vcascade.engine.factory import build_scope

    calibrated = two_tier_config(tmp_path, dtype="bfloat16")
    artifact = {"schema_version": 2, "target": "quality-loss", "alpha": 0.1, "fit": {},
                "tiers": [tier_identity(t, calibrated) for t in calibrated.tiers],
                "policy": {"rules": [{"kind": "signal", "name": "mean_logprob"}], "thresholds": [-0.5]}}
    path = tmp_path / "artifact.json"
    path.write_text(json.dumps(artifact))
    auto = two_tier_config(tmp_path).with_artifact(str(path))
    machine(XEON_AMX)
    assert load_artifact_policy(path, auto).thresholds == (-0.5,) and not build_scope(auto).dtype_departs
    machine(EPYC_AVX2)  # auto picks float32 here: the policy runs, outside the guarantee
    assert load_artifact_policy(path, auto).thresholds == (-0.5,)
    scope = build_scope(auto)
    assert scope.dtype_departs and "dtype" in REASONS
    assert dtype_departure(artifact, auto).startswith("tier 0 (a): calibrated in bfloat16, runs in float32 here")
    pinned = two_tier_config(tmp_path, dtype="bfloat16").with_artifact(str(path))
    assert load_artifact_policy(path, pinned).thresholds == (-0.5,)  # explicit bf16 still runs as calibrated
    assert not build_scope(pinned).dtype_departs
    other = two_tier_config(tmp_path, dtype="float32").with_artifact(str(path))  # a config that names another dtype
    with pytest.raises(ArtifactError, match=r"tier 0 \(a\): calibrated with dtype bfloat16, the config runs it "
                                            r"in float32"):
        load_artifact_policy(path, other)


def test_start_up_states_the_dtype(tmp_path, machine):
    from vcascade.engine.tiers import dtype_statement

    machine(EPYC_AVX2)
    line = dtype_statement(two_tier_config(tmp_path).tiers)
    assert line.startswith("engine dtype: a float32, b float32 [auto: CPU has no native bf16") and "\n" not in line
