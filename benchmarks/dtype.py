"""Dtype benchmark: raw vLLM tokens/s at batch 1 and batch 64, bf16 vs float32, per model.

What ``dtype: auto`` decides (``engine/hardware.py``): on a CPU without native bf16
(no ``avx512_bf16`` / ``amx_bf16``) vLLM emulates bf16 and float32 is faster; with it,
bf16 is. This measures both on the machine at hand, for each default model (from the
model store), with plain vLLM — no vcascade code in the timed path:

* greedy decoding, at most ``--max-tokens`` (32) output tokens, factual questions
  (held-out items of the default calibration workload, rendered with the model's chat
  template and the default cascade's system prompt);
* batch 1: ``--batch1-prompts`` prompts one ``generate`` call at a time; batch 64: 64
  prompts in one call (vLLM batches them); output tokens / wall seconds;
* one engine per (model, dtype), in its own process (in-process engine core, eager mode as
  the default config, KV cache 256 MiB, every core of this process), warmed up at both batch
  sizes before timing.

Writes ``summary.json`` and ``summary.md`` (with lscpu's model name, the CPU's bf16 flags
and what ``auto`` resolves to) into ``--out``.

    python benchmarks/dtype.py [--models qwen2.5-coder-0.5b-instruct,qwen2.5-coder-1.5b-instruct]
                               [--dtypes bfloat16,float32] [--out results/dtype] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_MODELS = "qwen2.5-coder-0.5b-instruct,qwen2.5-coder-1.5b-instruct"


def prompts_for(n: int, system_prompt: str | None) -> list[list[dict]]:
    """``n`` held-out factual questions (TriviaQA, then NQ-open) as chat turns."""
    from vcascade.calibration.datasets import load_dataset

    items = load_dataset("trivia_qa")[-n:]
    turns = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [turns + [{"role": "user", "content": it.prompt}] for it in items]


def measure(args) -> dict:
    """One (model, dtype) in this process: warm up, then time batch 1 and batch N."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
    cores = sorted(os.sched_getaffinity(0))
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"{cores[0]}-{cores[-1]}" if len(cores) > 1 else str(cores[0]))
    from vllm import LLM, SamplingParams

    from vcascade.engine.config import load_config
    from vcascade.engine.model_store import model_dir

    config = load_config()
    path = str(model_dir(args.model))
    started = time.perf_counter()
    llm = LLM(model=path, dtype=args.dtype, max_model_len=1024, kv_cache_memory_bytes=256 * 2**20,
              enforce_eager=True, seed=0, disable_log_stats=True)
    startup = time.perf_counter() - started
    tokenizer = llm.get_tokenizer()
    chats = prompts_for(max(args.batch, args.batch1_prompts), config.system_prompt)
    texts = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in chats]
    greedy = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)
    warm = SamplingParams(temperature=0.0, max_tokens=2)
    llm.generate(texts[:1], warm, use_tqdm=False)
    llm.generate(texts[: args.batch], warm, use_tqdm=False)

    def timed(batches):
        tokens, wall = 0, 0.0
        for batch in batches:
            t = time.perf_counter()
            outs = llm.generate(batch, greedy, use_tqdm=False)
            wall += time.perf_counter() - t
            tokens += sum(len(o.outputs[0].token_ids) for o in outs)
        return {"output_tokens": tokens, "seconds": wall, "tokens_per_s": tokens / wall,
                "prompts": sum(len(b) for b in batches)}

    one = timed([[t] for t in texts[: args.batch1_prompts]])
    many = timed([texts[: args.batch]])
    return {"model": args.model, "dtype": args.dtype, "startup_s": startup, "batch_1": one,
            f"batch_{args.batch}": many}


def cpu() -> dict:
    from vcascade.engine.hardware import NATIVE_BF16_FLAGS, cpu_flags, native_dtype

    model = ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "")
    except OSError:
        pass
    flags = set(cpu_flags().split())
    choice = native_dtype()
    return {"model_name": model, "cores": len(os.sched_getaffinity(0)),
            "bf16_flags": [f for f in NATIVE_BF16_FLAGS if f in flags], "avx512f": "avx512f" in flags,
            "auto": choice.dtype, "auto_reason": choice.reason, "load_average": os.getloadavg()}


def render(summary: dict) -> str:
    c, batch = summary["cpu"], summary["batch"]
    lines = [f"# Dtype benchmark: raw vLLM, bf16 vs float32 ({summary['created']})", "",
             f"CPU: {c['model_name']} ({c['cores']} cores); native bf16 flags: "
             f"{', '.join(c['bf16_flags']) or 'none'}; `dtype: auto` resolves to **{c['auto']}** ({c['auto_reason']}). "
             f"Load average at the end: {', '.join(f'{x:.1f}' for x in c['load_average'])} (a shared machine "
             "slows every figure alike: read the ratios).", "",
             f"Greedy, at most {summary['max_tokens']} output tokens, factual questions (held-out TriviaQA) "
             "through the chat template; one engine per model and dtype (vLLM in-process, eager), warmed up.", "",
             f"| model | dtype | tok/s batch 1 | tok/s batch {batch} | batch-{batch} gain | start-up s |",
             "|---|---|---|---|---|---|"]
    for r in summary["runs"]:
        b1, bn = r["batch_1"]["tokens_per_s"], r[f"batch_{batch}"]["tokens_per_s"]
        lines.append(f"| {r['model']} | {r['dtype']}{' (auto)' if r['dtype'] == c['auto'] else ''} | {b1:.2f} | "
                     f"{bn:.2f} | {bn / b1:.1f}x | {r['startup_s']:.0f} |")
    lines += ["", "| model | float32 / bf16 at batch 1 | float32 / bf16 at batch " + str(batch) + " |", "|---|---|---|"]
    for model, ratio in summary["ratios"].items():
        lines.append(f"| {model} | {ratio['batch_1']:.2f} | {ratio[f'batch_{batch}']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=DEFAULT_MODELS, help="packaged model names, comma separated")
    p.add_argument("--dtypes", default="bfloat16,float32")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--batch1-prompts", type=int, default=8, help="prompts generated one at a time")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--out", default="results/dtype")
    p.add_argument("--quick", action="store_true", help="smoke test: SmolLM2-135M, batch 4, 2 prompts, 8 tokens")
    p.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)  # internal: one (model, dtype)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--dtype", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.measure:
        Path(args.result).write_text(json.dumps(measure(args)))
        return 0
    if args.quick:
        args.models, args.batch, args.batch1_prompts, args.max_tokens = "smollm2-135m-instruct", 4, 2, 8
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    for model in args.models.split(","):
        for dtype in args.dtypes.split(","):
            result = out / f".{model}-{dtype}.json"
            cmd = [sys.executable, __file__, "--measure", "--model", model, "--dtype", dtype, "--result", str(result),
                   "--batch", str(args.batch), "--batch1-prompts", str(args.batch1_prompts),
                   "--max-tokens", str(args.max_tokens)]
            print(f"{model} {dtype}: measuring ...", file=sys.stderr)
            log = out / f".{model}-{dtype}.log"
            with open(log, "w") as fh:
                proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT)
            if proc.returncode != 0:
                raise RuntimeError(f"{model} {dtype} failed (log: {log}):\n{log.read_text()[-3000:]}")
            runs.append(json.loads(result.read_text()))
            result.unlink()
            log.unlink()
            r = runs[-1]
            print(f"  batch 1 {r['batch_1']['tokens_per_s']:.2f} tok/s, batch {args.batch} "
                  f"{r[f'batch_{args.batch}']['tokens_per_s']:.2f} tok/s", file=sys.stderr)
    ratios = {}
    for model in args.models.split(","):
        by = {r["dtype"]: r for r in runs if r["model"] == model}
        if {"bfloat16", "float32"} <= set(by):
            ratios[model] = {k: by["float32"][k]["tokens_per_s"] / by["bfloat16"][k]["tokens_per_s"]
                             for k in ("batch_1", f"batch_{args.batch}")}
    summary = {"created": time.strftime("%Y-%m-%d %H:%M"), "cpu": cpu(), "batch": args.batch,
               "batch1_prompts": args.batch1_prompts, "max_tokens": args.max_tokens, "runs": runs, "ratios": ratios}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(render(summary))
    print(render(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
