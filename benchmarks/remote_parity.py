"""Is a remote tier the same tier? The large model in-process vs behind ``vllm serve``.

Serves the config's last tier with ``vllm serve`` (its module) on loopback, then runs the
same held-out items through the in-process tier and through a remote tier pointing at that
server, one after the other on the same cores. Reports accuracy of each, how often the
answers are identical, and the per-token logprob differences (both run in bf16 in separate
processes, so small differences are expected) and what they do to the default signal.

    python benchmarks/remote_parity.py [--n 200] [--out results/remote]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from vcascade.calibration.datasets import load_dataset, split, to_request
from vcascade.calibration.scoring import is_correct
from vcascade.engine.artifact import read_artifact
from vcascade.engine.config import RemoteTierConfig, load_config, resolve_model
from vcascade.engine.hardware import resolve_dtype
from vcascade.engine.runtime import run
from vcascade.engine.tiers import Tier, build_tiers, shutdown_tiers
from vcascade.engine.tiers.remote import RemoteBackend
from vcascade.engine.uncertainty.signals import get_signal

sys.path.insert(0, str(Path(__file__).parent))
from serve_load import free_port, wait_healthy  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--signal", default="min_logprob")
    p.add_argument("--out", default="results/remote")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = load_config(args.config)
    tier_config = config.tiers[-1]
    meta = read_artifact(config.artifact)["dataset"] if config.artifact else {"name": "mixed", "n_calibration": 4800,
                                                                                "seed": 0}
    _, held = split(load_dataset(meta["name"]), meta["n_calibration"], meta["seed"])
    items = held[: args.n]
    requests = [to_request(it) for it in items]

    [local] = run(build_tiers(config, only=[tier_config.name], warmup_batch=8))
    t = time.perf_counter()
    near = run(local.generate_many(requests))
    local_seconds = time.perf_counter() - t
    run(shutdown_tiers([local]))

    port = free_port()
    model_dir = resolve_model(tier_config, config.source)
    cores = sorted(os.sched_getaffinity(0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir, "--served-model-name",
         tier_config.name, "--max-model-len", str(tier_config.max_model_len), "--dtype",
         resolve_dtype(tier_config.dtype), "--kv-cache-memory-bytes", str(tier_config.kv_cache_mib * 2**20),
         "--port", str(port),
         "--generation-config", "vllm"] + (["--enforce-eager"] if tier_config.enforce_eager else []),
        stdout=open(out / "vllm-serve.log", "w"), stderr=subprocess.STDOUT,
        env={**os.environ, "VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_OMP_THREADS_BIND": f"{cores[0]}-{cores[-1]}"})
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc)
        remote_config = RemoteTierConfig(name=tier_config.name, model=tier_config.name,
                                         endpoint=f"http://127.0.0.1:{port}/v1", sampling=tier_config.sampling)
        backend = RemoteBackend(remote_config, config.system_prompt)
        run(backend.start())
        remote = Tier(remote_config, backend)
        t = time.perf_counter()
        far = run(remote.generate_many(requests))
        remote_seconds = time.perf_counter() - t
    finally:
        proc.terminate()
        proc.wait(60)

    signal = get_signal(args.signal)
    right_near = [is_correct(r.text, it.answers, it.kind, it.options) for r, it in zip(near, items)]
    right_far = [is_correct(r.text, it.answers, it.kind, it.options) for r, it in zip(far, items)]
    same_text = [a.text == b.text for a, b in zip(near, far)]
    diffs, per_item_max, signal_diffs = [], [], []
    for a, b in zip(near, far):
        k = min(len(a.token_logprobs), len(b.token_logprobs))
        same_prefix = next((i for i in range(k) if a.tokens[i] != b.tokens[i]), k) if a.tokens and b.tokens else k
        d = np.abs(np.array(a.token_logprobs[:same_prefix]) - np.array(b.token_logprobs[:same_prefix]))
        diffs += d.tolist()
        per_item_max.append(float(d.max()) if d.size else 0.0)
        if a.text == b.text:
            signal_diffs.append(abs(signal(a) - signal(b)))
    diffs, per_item_max = np.array(diffs), np.array(per_item_max)
    summary = {
        "n": len(items), "tier": tier_config.name, "model": tier_config.model, "dataset": meta["name"],
        "accuracy_in_process": float(np.mean(right_near)), "accuracy_remote": float(np.mean(right_far)),
        "identical_answers": float(np.mean(same_text)),
        "token_logprob_abs_diff": {"mean": float(diffs.mean()), "p50": float(np.median(diffs)),
                                   "p99": float(np.quantile(diffs, 0.99)), "max": float(diffs.max()),
                                   "tokens": int(diffs.size)},
        "per_item_max_abs_diff": {"p50": float(np.median(per_item_max)), "p99": float(np.quantile(per_item_max, 0.99))},
        f"{args.signal}_abs_diff_identical_answers": {"mean": float(np.mean(signal_diffs)),
                                                      "max": float(np.max(signal_diffs))},
        "seconds": {"in_process": local_seconds, "remote": remote_seconds},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [f"# Remote tier parity ({time.strftime('%Y-%m-%d')})", "",
             f"{summary['n']} held-out `{meta['name']}` items through `{tier_config.name}` "
             f"({tier_config.model}) in-process and behind `vllm serve` on loopback, same cores, one after the other.",
             "", "| | in-process | remote |", "|---|---|---|",
             f"| accuracy | {summary['accuracy_in_process']:.3f} | {summary['accuracy_remote']:.3f} |",
             f"| seconds for all items | {local_seconds:.1f} | {remote_seconds:.1f} |", "",
             f"- identical answers: {summary['identical_answers']:.1%}",
             f"- per-token |Δ logprob| over {diffs.size} tokens (up to the first differing token): mean "
             f"{diffs.mean():.4f}, median {np.median(diffs):.4f}, p99 {np.quantile(diffs, 0.99):.4f}, max {diffs.max():.4f}",
             f"- `{args.signal}` |Δ| on identical answers: mean {np.mean(signal_diffs):.4f}, max {np.max(signal_diffs):.4f}",
             ""]
    (out / "summary.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
