"""Serving benchmark: ``vcascade serve`` against plain ``vllm serve`` of each tier, side by side.

One after another on the same cores, three systems serve the same real prompts (held-out
items of the calibration dataset, an equal share of each source): ``vllm serve`` of the
large tier alone, ``vllm serve`` of the small tier alone, and ``vcascade serve`` with the
calibrated artifact. Each is driven by ``vllm bench serve`` (``--backend openai-chat``,
Poisson arrivals at several request rates, then a fixed ``--max-concurrency`` at an
unlimited rate for saturation, ``--save-detailed``) and stopped before the next starts.
A lone ``vllm serve`` gets every core; the cascade's two engines split them.

Greedy decoding everywhere (``--temperature 0``, the tiers' calibrated decoding), the same
output limit, and the same system prompt: the plain servers get a chat template that adds
the cascade's system prompt to requests without one, as the cascade does.

Reported per system and rate: TTFT, TPOT, ITL and end-to-end latency (mean, p50, p99),
request and output-token throughput, failures, and accuracy of the saved generated texts
against the references — speed and quality from the same run. For the cascade also the
share escalated, latency by answering tier and the controller's own overhead as a share of
generation time, both from the server's decision log (spans measured inside the server).
Ratios cascade / always-large and cascade / always-small for every figure.

    python benchmarks/serve_load.py [--quick] [--config C] [--rates 0.25,0.5,1] [--num-prompts 64]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from vcascade.calibration.correctness import score_answers
from vcascade.calibration.datasets import SOURCES, load_dataset, split
from vcascade.calibration.longform import LONGFORM_SOURCES
from vcascade.engine.artifact import read_artifact
from vcascade.engine.config import load_config, resolve_model
from vcascade.engine.hardware import resolve_dtype

FIGURES = ("ttft", "tpot", "itl", "e2el")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{url} not healthy after {timeout} s")


def prompts_for(config, per_source: int, dataset: str | None, out: Path, output_len: int) -> tuple[Path, list]:
    """Held-out items (an equal share of each source, interleaved) as a ``vllm bench`` custom
    dataset: the item's messages (its own system turn) or prompt, and its own answer budget
    (``output_tokens``; the tiers' ``output_len`` for items without one)."""
    meta = (read_artifact(config.artifact)["dataset"] if config.artifact
            else {"name": dataset or "mixed", "n_calibration": None, "seed": 0})
    items = load_dataset(dataset or meta["name"])
    if dataset is None or dataset == meta["name"]:
        _, items = split(items, meta["n_calibration"], meta["seed"]) if meta["n_calibration"] else ([], items)
    elif meta["name"] == "mixed-long" and dataset in ("longform", *LONGFORM_SOURCES):
        # the long-form items the artifact's calibration held out
        _, held = split(load_dataset(meta["name"]), meta["n_calibration"], meta["seed"])
        held_ids = {it.id for it in held}
        items = [it for it in items if it.id in held_ids]
    by_source: dict[str, list] = {}
    for item in items:
        by_source.setdefault(item.source, []).append(item)
    chosen = []
    for i in range(per_source):
        chosen += [group[i] for group in by_source.values() if i < len(group)]
    path = out / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": list(it.messages) if it.messages else it.prompt,
                                        "output_tokens": it.max_tokens or output_len}) + "\n" for it in chosen))
    return path, chosen


def chat_template_with_system(model_dir: str, system_prompt: str | None, out: Path) -> Path | None:
    """The model's chat template, adding ``system_prompt`` when a request has no system turn."""
    if not system_prompt:
        return None
    from transformers import AutoTokenizer

    template = AutoTokenizer.from_pretrained(model_dir).chat_template
    prefix = ("{%- if messages[0]['role'] != 'system' -%}{%- set messages = [{'role': 'system', 'content': "
              + json.dumps(system_prompt) + "}] + messages -%}{%- endif -%}")
    path = out / f"chat-template-{Path(model_dir).name}.jinja"
    path.write_text(prefix + template)
    return path


def start_vllm(model_dir: str, name: str, tier, template: Path | None, port: int, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir, "--served-model-name",
           name, "--max-model-len", str(tier.max_model_len), "--dtype", resolve_dtype(tier.dtype),
           "--kv-cache-memory-bytes", str(tier.kv_cache_mib * 2**20), "--port", str(port), "--host", "127.0.0.1",
           "--generation-config", "vllm"]
    cmd += ["--enforce-eager"] if tier.enforce_eager else []
    cmd += ["--chat-template", str(template)] if template else []
    cores = sorted(os.sched_getaffinity(0))
    env = {**os.environ, "VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_OMP_THREADS_BIND": f"{cores[0]}-{cores[-1]}"}
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)


def start_cascade(config_path: str | None, artifact: str | None, port: int, decision_log: Path, log: Path):
    cmd = [sys.executable, "-m", "vcascade.engine.cli", "serve", "--port", str(port), "--decision-log",
           str(decision_log), "--warmup-batch", "8"]
    cmd += ["--config", config_path] if config_path else []
    cmd += ["--artifact", artifact] if artifact else []
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT)


BENCH_WITH_MESSAGES = """
import sys, argparse
from vllm.benchmarks.datasets import datasets as D
from vllm.benchmarks.serve import add_cli_args, main

# vllm bench's custom dataset sends a prompt that is a list of chat turns as those turns
# (endpoint_request_func._get_chat_messages) but counts its tokens as a string: count them
# through the chat template instead, so items keep their own system turn.
plain_sample = D.CustomDataset.sample

class ChatAwareTokenizer:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
    def __getattr__(self, name):
        return getattr(self.tokenizer, name)
    def __call__(self, prompt, *args, **kwargs):
        if isinstance(prompt, list):
            prompt = self.tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        return self.tokenizer(prompt, *args, **kwargs)

def sample(self, tokenizer, *args, **kwargs):
    return plain_sample(self, ChatAwareTokenizer(tokenizer) if tokenizer is not None else None, *args, **kwargs)

D.CustomDataset.sample = sample
p = argparse.ArgumentParser(); add_cli_args(p); main(p.parse_args(sys.argv[1:]))
"""


def bench(url: str, model: str, tokenizer: str, prompts: Path, n: int, rate: float,
          concurrency: int | None, result: Path) -> dict:
    """One ``vllm bench serve`` run (its module; the console script does not start with vllm-cpu);
    each request's ``max_completion_tokens`` is its item's ``output_tokens``."""
    args = ["--backend", "openai-chat", "--base-url", url, "--endpoint", "/v1/chat/completions", "--model", model,
            "--tokenizer", tokenizer, "--dataset-name", "custom", "--dataset-path", str(prompts),
            "--skip-chat-template", "--disable-shuffle", "--custom-output-len", "-1", "--num-prompts",
            str(n), "--request-rate", "inf" if rate == float("inf") else str(rate), "--temperature", "0",
            "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99", "--save-result",
            "--save-detailed", "--result-dir", str(result.parent), "--result-filename", result.name, "--seed", "0"]
    args += ["--max-concurrency", str(concurrency)] if concurrency else []
    code = BENCH_WITH_MESSAGES
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env={**os.environ, "VLLM_TARGET_DEVICE": "cpu"})
    if proc.returncode != 0:
        raise RuntimeError(f"vllm bench serve failed:\n{proc.stderr[-3000:]}")
    return json.loads(result.read_text())


def figures(result: dict, items: list) -> dict:
    """Latency percentiles (ms), throughput, failures and accuracy of one bench run."""
    out = {"completed": result["completed"], "failed": result.get("failed", 0),
           "request_throughput": result["request_throughput"], "output_throughput": result["output_throughput"],
           "duration": result["duration"]}
    for name in FIGURES:
        for stat in ("mean", "median", "p50", "p99"):
            key = f"{stat}_{name}_ms"
            if key in result:
                out[key] = result[key]
    texts, errors = result["generated_texts"], result["errors"]
    verdicts = score_answers([text or "" for text in texts], items[: len(texts)])
    right = [not err and ok for err, ok in zip(errors, verdicts)]
    out["accuracy"] = float(np.mean(right)) if right else float("nan")
    out["latencies"] = result["latencies"]
    out["ttfts"] = result["ttfts"]
    return out


def decision_figures(entries: list[dict], tiers: list[str]) -> dict:
    """From the cascade server's decision log: escalation, latency by answering tier, overhead."""
    if not entries:
        return {}
    by_tier = {t: [e["e2e_seconds"] for e in entries if e["tier"] == t] for t in tiers}
    generation = sum(e["generation_seconds"] for e in entries)
    overhead = sum(e["overhead_seconds"] for e in entries)
    cpu = sum(e["overhead_cpu_seconds"] for e in entries)
    parts: dict[str, float] = {}
    for e in entries:
        for k, v in e["overhead_cpu"].items():
            parts[k] = parts.get(k, 0.0) + v
    return {"requests": len(entries), "escalated": float(np.mean([e["escalated"] for e in entries])),
            "skipped": float(np.mean([e["skipped"] for e in entries])),
            "latency_by_tier": {t: {"share": len(v) / len(entries), "p50_s": float(np.median(v)) if v else None,
                                    "p99_s": float(np.quantile(v, 0.99)) if v else None} for t, v in by_tier.items()},
            "overhead_share_of_generation": cpu / generation if generation else float("nan"),
            "overhead_ms_per_request": 1000 * cpu / len(entries),
            "overhead_wall_share_of_generation": overhead / generation if generation else float("nan"),
            "overhead_wall_ms_per_request": 1000 * overhead / len(entries),
            "overhead_cpu_parts_ms_per_request": {k: 1000 * v / len(entries) for k, v in parts.items()}}


def ratio(a, b):
    return a / b if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else float("nan")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", help="cascade YAML (default: the embedded default and its artifact)")
    p.add_argument("--artifact")
    p.add_argument("--dataset", help="default: the artifact's calibration dataset (held-out items)")
    p.add_argument("--rates", default="0.25,0.5,1", help="Poisson request rates (req/s), comma separated")
    p.add_argument("--max-concurrency", type=int, default=32, help="the saturation run: rate inf at this concurrency")
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--quick", action="store_true", help="smoke test: 8 prompts, one rate, no saturation run")
    p.add_argument("--out", default="results/serving")
    args = p.parse_args(argv)
    if args.quick:
        args.rates, args.num_prompts, args.max_concurrency = "2", 8, 0
    out = Path(args.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    config = load_config(args.config).with_artifact(args.artifact)
    small, large = config.tiers[0], config.tiers[-1]
    dirs = {t.name: resolve_model(t, config.source) for t in (small, large)}
    output_len = max(t.sampling.max_tokens for t in config.tiers)
    sources = {"mixed": len(SOURCES), "longform": len(LONGFORM_SOURCES)}.get(args.dataset or "mixed", 1)
    per_source = -(-args.num_prompts // sources)
    prompts, items = prompts_for(config, per_source, args.dataset, out, output_len)
    items = items[: args.num_prompts]
    rates = [float(r) for r in args.rates.split(",")]
    runs = [(f"rate {r:g}", r, None) for r in rates]
    if args.max_concurrency:
        runs.append((f"saturation (concurrency {args.max_concurrency})", float("inf"), args.max_concurrency))
    systems = [("always-large", large), ("always-small", small), ("cascade", None)]
    results: dict[str, dict] = {}
    for label, tier in systems:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = out / "runs" / f"{label}.log"
        decision_log = out / "runs" / "decisions.jsonl"
        if tier is None:
            decision_log.unlink(missing_ok=True)
            proc = start_cascade(args.config, args.artifact, port, decision_log, log)
            model = "vcascade"
        else:
            template = chat_template_with_system(dirs[tier.name], config.system_prompt, out / "runs")
            proc = start_vllm(dirs[tier.name], tier.name, tier, template, port, log)
            model = tier.name
        print(f"{label}: starting on {url}", file=sys.stderr)
        try:
            wait_healthy(url, proc)
            results[label] = {}
            for run_label, rate, concurrency in runs:
                seen = len(decision_log.read_text().splitlines()) if tier is None and decision_log.exists() else 0
                result = bench(url, model, dirs[small.name], prompts, len(items), rate, concurrency,
                               out / "runs" / f"{label}-{run_label.split()[0]}-{rate:g}.json")
                row = figures(result, items)
                if tier is None:
                    entries = [json.loads(x) for x in decision_log.read_text().splitlines()[seen:]]
                    row["cascade"] = decision_figures(entries, [t.name for t in config.tiers])
                results[label][run_label] = row
                print(f"  {run_label}: {row['request_throughput']:.2f} req/s, p50 TTFT {row['median_ttft_ms']:.0f} ms, "
                      f"accuracy {row['accuracy']:.2f}", file=sys.stderr)
        finally:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
    summary = {"created": time.strftime("%Y-%m-%d"), "machine": machine(), "config": config.source,
               "artifact": config.artifact, "tiers": {"small": small.name, "large": large.name},
               "num_prompts": len(items), "output_len": output_len,
               "budgets": sorted({it.max_tokens or output_len for it in items}), "runs": [r[0] for r in runs],
               "results": {s: {r: {k: v for k, v in row.items() if k not in ("latencies", "ttfts")}
                               for r, row in rows.items()} for s, rows in results.items()},
               "ratios": ratios(results)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(render(summary))
    plot(out, results, rates, runs)
    print(render(summary))
    return 0


def machine() -> dict:
    import platform

    return {"cores": len(os.sched_getaffinity(0)), "cpu": platform.processor() or platform.machine(),
            "gpu": False, "python": platform.python_version()}


RATIO_KEYS = ("request_throughput", "output_throughput", "median_ttft_ms", "p99_ttft_ms", "median_e2el_ms",
              "p99_e2el_ms", "median_tpot_ms", "median_itl_ms", "accuracy")


def ratios(results: dict) -> dict:
    out = {}
    for run_label, row in results.get("cascade", {}).items():
        out[run_label] = {f"vs {base}": {k: ratio(row.get(k), results[base][run_label].get(k)) for k in RATIO_KEYS}
                          for base in ("always-large", "always-small") if base in results}
    return out


def _f(x, d=2):
    return "–" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{d}f}"


def render(summary: dict) -> str:
    m = summary["machine"]
    budgets = summary.get("budgets") or [summary["output_len"]]
    length = (f"up to {budgets[0]} output tokens" if len(budgets) == 1 else
              f"each with its own max_tokens ({', '.join(map(str, budgets))})")
    lines = [f"# Serving: vcascade serve vs vllm serve ({summary['created']})", "",
             f"Machine: {m['cores']} CPU cores ({m['cpu']}), no GPU; every system on the same cores, one after "
             f"another. {summary['num_prompts']} held-out prompts per run, {length}, "
             "greedy; load from `vllm bench serve` (openai-chat, Poisson arrivals).", "",
             "| system | run | req/s | out tok/s | TTFT p50 / p99 (ms) | TPOT p50 (ms) | E2E p50 / p99 (ms) | failed | "
             "accuracy |", "|---|---|---|---|---|---|---|---|---|"]
    for system, rows in summary["results"].items():
        for run_label, r in rows.items():
            lines.append(f"| {system} | {run_label} | {_f(r['request_throughput'])} | {_f(r['output_throughput'], 1)} "
                         f"| {_f(r.get('median_ttft_ms'), 0)} / {_f(r.get('p99_ttft_ms'), 0)} | "
                         f"{_f(r.get('median_tpot_ms'), 0)} | {_f(r.get('median_e2el_ms'), 0)} / "
                         f"{_f(r.get('p99_e2el_ms'), 0)} | {r['failed']} | {_f(r['accuracy'])} |")
    lines += ["", "## Cascade / always-large and cascade / always-small (same run)", "",
              "| run | vs | req/s | TTFT p50 | TTFT p99 | E2E p50 | E2E p99 | accuracy |", "|---|---|---|---|---|---|---|---|"]
    for run_label, by_base in summary["ratios"].items():
        for base, r in by_base.items():
            lines.append(f"| {run_label} | {base} | {_f(r['request_throughput'])} | {_f(r['median_ttft_ms'])} | "
                         f"{_f(r['p99_ttft_ms'])} | {_f(r['median_e2el_ms'])} | {_f(r['p99_e2el_ms'])} | "
                         f"{_f(r['accuracy'])} |")
    lines += ["", "## Inside the cascade (server decision log)", "",
              "Controller overhead: CPU time of vcascade's own code per request (rendering, embedding, scoring, "
              "response building) over the generation time of the tiers it visited; in brackets the wall time "
              "around the same code, which on a saturated CPU also includes waiting for a core.", "",
              "| run | escalated | skipped | answered by (share, p50 / p99 s) | controller overhead / generation | "
              "overhead ms per request |", "|---|---|---|---|---|---|"]
    for run_label, r in summary["results"].get("cascade", {}).items():
        c = r.get("cascade") or {}
        if not c:
            continue
        split = "; ".join(f"{t} {v['share']:.0%} ({_f(v['p50_s'])} / {_f(v['p99_s'])})"
                          for t, v in c["latency_by_tier"].items())
        lines.append(f"| {run_label} | {c['escalated']:.0%} | {c['skipped']:.0%} | {split} | "
                     f"{c['overhead_share_of_generation']:.2%} ({c['overhead_wall_share_of_generation']:.2%}) | "
                     f"{_f(c['overhead_ms_per_request'])} ({_f(c['overhead_wall_ms_per_request'])}) |")
    lines += ["", "![latency CDFs](latency_cdf.png)", "![throughput vs rate](throughput.png)",
              "![p99 TTFT vs rate](ttft_p99.png)", ""]
    return "\n".join(lines)


def plot(out: Path, results: dict, rates: list[float], runs) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = runs[0][0]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for system, rows in results.items():
        for ax, key in zip(axes, ("ttfts", "latencies")):
            values = np.sort(np.array([v for v in rows[first][key] if v]))
            ax.plot(values, np.arange(1, len(values) + 1) / max(len(values), 1), label=system)
    axes[0].set(xlabel="TTFT (s)", ylabel="share of requests", title=f"TTFT CDF ({first})")
    axes[1].set(xlabel="end-to-end latency (s)", title=f"Latency CDF ({first})")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "latency_cdf.png", dpi=110)
    plt.close(fig)
    rate_runs = [r for r in runs if r[2] is None]
    for name, key, ylabel in (("throughput.png", "request_throughput", "completed req/s"),
                              ("ttft_p99.png", "p99_ttft_ms", "p99 TTFT (ms)")):
        fig, ax = plt.subplots(figsize=(6, 4))
        for system, rows in results.items():
            ax.plot([r[1] for r in rate_runs], [rows[r[0]].get(key, np.nan) for r in rate_runs], marker="o",
                    label=system)
        ax.set(xlabel="offered request rate (req/s)", ylabel=ylabel)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
