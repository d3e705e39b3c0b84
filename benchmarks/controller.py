"""Controller benchmark: vcascade's own work per request, over instant tiers.

The real server stack — uvicorn, FastAPI, request parsing, rendering and tokenization with
each tier's tokenizer, the policy, metrics, response building — with every tier replaced
by an instant one (``benchmarks/instant.py``: it renders the prompt as the vLLM backend
does, then returns a canned answer with realistic logprobs at once). Two servers run side
by side in the same run, on the same prompts:

* ``floor``   — the same server over a one-tier cascade (no rule, no skip): HTTP, parsing,
  rendering, response. What any OpenAI-compatible front end pays.
* ``default`` — the default cascade's policy from its artifact (learned rule + skip, with
  their prompt features — static MiniLM token vectors since 2026-12-02), over the default tiers.
* ``minilm`` — the previous default's artifact (``--minilm-artifact``; the same calibration
  with all-MiniLM-L6-v2 sentence embeddings as prompt features, run in the server process):
  what the feature change bought, side by side.

Each is driven at concurrency 1, 16, 64 and 256 (no rate limit) by ``vllm bench serve``
(``--client vllm``, its module in a subprocess) or by a lighter aiohttp loop sending the
same streamed chat requests (``--client aiohttp``). Reported per server and concurrency:
decisions (requests answered) per second, the server process's CPU ms per request (from
/proc), the ``Overhead`` spans' CPU ms per request by part (rendering, embedding, scoring,
response; from the server's /metrics), end-to-end latency p50 / p99, and the client's CPU
per request (a client that needs a core of its own caps what can be measured). "Added" is
default minus floor within the same run; the machine may be shared, so read ratios.

    python benchmarks/controller.py [--quick] [--client vllm|aiohttp] [--concurrency 1,16,64,256]
                                    [--requests 512] [--config C] [--artifact A] [--out results/controller]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import wait_healthy  # noqa: E402  (the serving benchmark's readiness check)

POLICIES = ("floor", "default", "minilm")
MINILM_ARTIFACT = "results/calibration/minilm_features.artifact.json"
PARTS = ("rendering", "embedding", "scoring", "response")


# --------------------------------------------------------------------------- the server


def serve(args) -> int:
    """One server over instant tiers (runs in a child process)."""
    import uvicorn

    from vcascade.engine.artifact import policy_from_artifact, read_artifact
    from vcascade.engine.cascade import Cascade
    from vcascade.engine.config import load_config, resolve_model
    from vcascade.engine.policy import Policy
    from vcascade.engine.runtime import runtime
    from vcascade.engine.tiers.vllm_tier import prepare_environment
    from vcascade.server.app import Settings, create_app

    from instant import InstantBackend

    prepare_environment()
    from vllm.tokenizers.registry import get_tokenizer
    from vcascade.engine.tiers.base import Tier

    config = load_config(args.config).with_artifact(args.artifact)
    tokenizers = {}
    tiers = []
    for tier_config in config.tiers:
        path = resolve_model(tier_config, config.source)
        tokenizers.setdefault(path, get_tokenizer(path))  # vLLM's tokenizer, as the engine's renderer has it
        tiers.append(Tier(tier_config, InstantBackend(tier_config.name, tokenizers[path], config.system_prompt,
                                                      tier_config.max_model_len)))
    if args.serve == "floor":
        cascade = Cascade(tiers[:1], Policy((), ()))
    else:
        path = args.minilm_artifact if args.serve == "minilm" else config.artifact
        cascade = _cascade(tiers, policy_from_artifact(read_artifact(path), path), config)
    app = create_app(cascade, Settings())
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=args.port, loop="none", lifespan="off",
                                           log_level="warning", access_log=False))
    print(f"controller bench: {args.serve} server on port {args.port}; policy: {cascade.policy.describe()}",
          file=sys.stderr)
    runtime().run(server.serve())
    return 0


def _cascade(tiers, policy, config):
    """The cascade as ``vcascade serve`` builds it (with the artifact's scope where this
    vcascade checks one), over ``tiers``."""
    from vcascade.engine import factory
    from vcascade.engine.cascade import Cascade

    if hasattr(factory, "build_scope"):
        return Cascade(tiers, policy, factory.build_scope(config, force_artifact=True))
    return Cascade(tiers, policy)


def _request(prompt: str):
    from vcascade.engine.types import Request

    return Request(messages=({"role": "user", "content": prompt},))


# --------------------------------------------------------------------------- measuring


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def overhead_cpu(url: str) -> dict[str, tuple[float, float]]:
    """Per part: (sum of CPU seconds, count) of the server's ``vcascade:controller_cpu_seconds``."""
    import httpx

    text = httpx.get(f"{url}/metrics", timeout=30).text
    out: dict[str, list[float]] = {}
    for kind in ("sum", "count"):
        for part, value in re.findall(rf'^vcascade:controller_cpu_seconds_{kind}{{part="([^"]+)"}} (\S+)$', text,
                                      flags=re.M):
            out.setdefault(part, [0.0, 0.0])[kind == "count"] = float(value)
    return {k: (v[0], v[1]) for k, v in out.items()}


def payload(prompt: str, output_len: int) -> dict:
    """The body ``vllm bench serve --backend openai-chat`` sends (streamed, usage included)."""
    return {"model": "vcascade", "messages": [{"role": "user", "content": prompt}], "max_completion_tokens": output_len,
            "stream": True, "stream_options": {"include_usage": True}, "temperature": 0.0}


async def _aiohttp_run(url: str, prompts: list[str], concurrency: int, output_len: int) -> dict:
    """Closed loop: ``concurrency`` workers, each sending its next request when one ends."""
    import aiohttp

    latencies: list[float] = []
    failed = 0
    queue = iter(prompts)
    connector = aiohttp.TCPConnector(limit=concurrency, keepalive_timeout=60)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=600)) as session:

        async def worker():
            nonlocal failed
            for prompt in queue:
                started = time.perf_counter()
                try:
                    async with session.post(f"{url}/v1/chat/completions", json=payload(prompt, output_len)) as r:
                        body = await r.read()
                        ok = r.status == 200 and body.rstrip().endswith(b"[DONE]")
                except aiohttp.ClientError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - started)
                else:
                    failed += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        duration = time.perf_counter() - started
    return {"completed": len(latencies), "failed": failed, "duration": duration, "latencies": latencies}


def client_aiohttp(url: str, prompts: list[str], concurrency: int, output_len: int, tokenizer: str, work: Path,
                   server_pid: int | None = None):
    cpu = time.process_time()
    result = asyncio.run(_aiohttp_run(url, prompts, concurrency, output_len))
    result["client_cpu_seconds"] = time.process_time() - cpu
    return result


VLLM_BENCH = ("import sys, argparse\nfrom vllm.benchmarks.serve import add_cli_args, main\n"
              "p = argparse.ArgumentParser(); add_cli_args(p); main(p.parse_args(sys.argv[1:]))")


class CpuSampler:
    """Samples two processes' CPU seconds every ``interval`` s in a thread, to read the
    client's CPU over the window in which the server was busy (the client's start-up,
    dataset preparation and report are outside it)."""

    def __init__(self, server_pid: int, client_pid: int, interval: float = 0.02):
        import threading

        self.pids, self.interval, self.samples = (server_pid, client_pid), interval, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                self.samples.append((time.perf_counter(), *(cpu_seconds(p) for p in self.pids)))
            except (OSError, IndexError):  # the client exited
                return
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def client_cpu_while_serving(self, duration: float) -> float:
        """Client CPU seconds over the ``duration`` seconds of traffic (the client's own figure)
        that end when the server was last busy (>= a quarter core over 0.1 s)."""
        t, server, client = (np.array(column) for column in zip(*self.samples)) if self.samples else ([], [], [])
        if len(t) < 2:
            return 0.0
        ahead = np.searchsorted(t, t + 0.1)
        ok = ahead < len(t)
        i = np.nonzero(ok)[0]
        rate = (server[ahead[i]] - server[i]) / (t[ahead[i]] - t[i])
        busy = i[rate >= 0.25]
        if not len(busy):
            return 0.0
        end = t[ahead[busy[-1]]]
        return float(np.interp(end, t, client) - np.interp(end - duration, t, client))


def _vllm_bench(url, prompts_path: Path, n: int, concurrency: int, output_len: int, tokenizer: str, result: Path,
                server_pid: int):
    args = ["--backend", "openai-chat", "--base-url", url, "--endpoint", "/v1/chat/completions", "--model", "vcascade",
            "--tokenizer", tokenizer, "--dataset-name", "custom", "--dataset-path", str(prompts_path),
            "--skip-chat-template", "--disable-shuffle", "--custom-output-len", str(output_len), "--num-prompts",
            str(n), "--request-rate", "inf", "--max-concurrency", str(concurrency), "--temperature", "0",
            "--percentile-metrics", "e2el", "--metric-percentiles", "50,99", "--num-warmups", "0",
            "--save-result", "--save-detailed", "--result-dir", str(result.parent), "--result-filename", result.name,
            "--seed", "0", "--disable-tqdm"]
    proc = subprocess.Popen([sys.executable, "-c", VLLM_BENCH, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "VLLM_TARGET_DEVICE": "cpu"})
    sampler = CpuSampler(server_pid, proc.pid)
    _, stderr = proc.communicate()
    sampler.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"vllm bench serve failed:\n{stderr[-3000:]}")
    data = json.loads(result.read_text())
    return data, sampler.client_cpu_while_serving(data["duration"])


def client_vllm(url: str, prompts: list[str], concurrency: int, output_len: int, tokenizer: str, work: Path,
                server_pid: int):
    """``vllm bench serve`` (its module, in a subprocess); its CPU counted while the server was busy."""
    path = work / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    data, cpu = _vllm_bench(url, path, len(prompts), concurrency, output_len, tokenizer, work / "run.json",
                            server_pid)
    latencies = [x for x, err in zip(data["latencies"], data["errors"]) if not err]
    return {"completed": data["completed"], "failed": data.get("failed", 0), "duration": data["duration"],
            "latencies": latencies, "client_cpu_seconds": cpu}


CLIENTS = {"aiohttp": client_aiohttp, "vllm": client_vllm}


def measure(server: dict, client, prompts: list[str], concurrency: int, output_len: int, tokenizer: str,
            work: Path) -> dict:
    """One run against one server: throughput, latency, server and client CPU, spans by part."""
    url, pid = server["url"], server["proc"].pid
    spans0, cpu0 = overhead_cpu(url), cpu_seconds(pid)
    result = client(url, prompts, concurrency, output_len, tokenizer, work, pid)
    cpu1, spans1 = cpu_seconds(pid), overhead_cpu(url)
    n = max(result["completed"], 1)
    lat = np.array(result["latencies"] or [np.nan]) * 1000
    parts = {}
    for part, (total, count) in spans1.items():
        before, _ = spans0.get(part, (0.0, 0.0))
        parts[part] = 1000 * (total - before) / n
    server_ms = 1000 * (cpu1 - cpu0) / n
    return {"completed": result["completed"], "failed": result["failed"], "duration_s": result["duration"],
            "decisions_per_s": result["completed"] / result["duration"], "server_cpu_ms": server_ms,
            "server_cores": (cpu1 - cpu0) / result["duration"], "parts_cpu_ms": parts,
            "other_cpu_ms": server_ms - sum(parts.values()),
            "client_cpu_ms": 1000 * result["client_cpu_seconds"] / n,
            "client_cores": result["client_cpu_seconds"] / result["duration"],
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
            "mean_ms": float(np.mean(lat))}


def load_prompts(config, n: int, split: str = "held-out") -> list[str]:
    """Prompts of the artifact's calibration workload (the mixed built-in sets), held-out (or
    calibration) items, shuffled and repeated to ``n``."""
    from vcascade.calibration.datasets import load_dataset, to_request
    from vcascade.calibration.datasets import split as split_items
    from vcascade.engine.artifact import read_artifact

    meta = read_artifact(config.artifact)["dataset"] if config.artifact else {"name": "mixed", "n_calibration": None}
    items = load_dataset(meta["name"])
    if meta.get("n_calibration"):
        calibration, held_out = split_items(items, meta["n_calibration"], meta.get("seed", 0))
        items = calibration if split == "calibration" else held_out
    prompts = [to_request(it).text for it in items]  # the user turns (long-form items carry messages)
    rng = np.random.default_rng(0)
    prompts = [prompts[i] for i in rng.permutation(len(prompts))]
    return (prompts * (n // len(prompts) + 1))[:n]


def start_server(policy: str, args, log: Path) -> dict:
    port = free_port()
    cmd = [sys.executable, __file__, "--serve", policy, "--port", str(port)]
    cmd += ["--config", args.config] if args.config else []
    cmd += ["--artifact", args.artifact] if args.artifact else []
    cmd += ["--minilm-artifact", args.minilm_artifact]
    env = {**os.environ, "VLLM_TARGET_DEVICE": "cpu"}
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)
    return {"policy": policy, "url": f"http://127.0.0.1:{port}", "proc": proc}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--serve", choices=POLICIES, help=argparse.SUPPRESS)  # internal: run one server
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--config", help="cascade YAML (default: the embedded default and its artifact)")
    p.add_argument("--artifact")
    p.add_argument("--minilm-artifact", default=MINILM_ARTIFACT,
                   help="the `minilm` server's artifact (default: the previous default, MiniLM prompt features)")
    p.add_argument("--client", choices=sorted(CLIENTS), default="aiohttp")
    p.add_argument("--concurrency", default="1,16,64,256")
    p.add_argument("--policies", default=",".join(POLICIES), help="servers to run (the floor always runs)")
    p.add_argument("--requests", type=int, default=512, help="requests per run (at least 4 x concurrency)")
    p.add_argument("--requests-c1", type=int, default=200, help="requests of the concurrency-1 runs")
    p.add_argument("--quick", action="store_true", help="smoke test: concurrency 1 and 8, a few requests")
    p.add_argument("--out", default="results/controller")
    args = p.parse_args(argv)
    if args.serve:
        return serve(args)
    if args.quick:
        args.concurrency, args.requests, args.requests_c1 = "1,8", 32, 12
    from vcascade.engine.config import load_config, resolve_model

    config = load_config(args.config).with_artifact(args.artifact)
    tokenizer = resolve_model(config.tiers[0], config.source)
    output_len = config.tiers[0].sampling.max_tokens
    levels = [int(c) for c in args.concurrency.split(",")]
    out = Path(args.out)
    work = out / "runs"
    work.mkdir(parents=True, exist_ok=True)
    client = CLIENTS[args.client]
    chosen = ["floor"] + [p for p in args.policies.split(",") if p in POLICIES and p != "floor"]
    servers = [start_server(policy, args, work / f"{policy}.log") for policy in chosen]
    results: dict[str, dict] = {s["policy"]: {} for s in servers}
    try:
        for server in servers:
            wait_healthy(server["url"], server["proc"], timeout=180)
        warm = load_prompts(config, 64)
        for server in servers:  # load the features' models, fill caches, first-request costs
            client_aiohttp(server["url"], warm, 8, output_len, tokenizer, work)
        for c in levels:
            n = args.requests_c1 if c == 1 else max(args.requests, 4 * c)
            prompts = load_prompts(config, n)
            for server in servers:  # the two servers alternate: same machine state for both
                row = measure(server, client, prompts, c, output_len, tokenizer, work)
                results[server["policy"]][str(c)] = row
                print(f"{server['policy']:>7} c={c:<4} {row['decisions_per_s']:7.1f} decisions/s  server "
                      f"{row['server_cpu_ms']:6.2f} ms CPU/req  p50 {row['p50_ms']:7.1f} ms  p99 {row['p99_ms']:7.1f} ms"
                      f"  client {row['client_cpu_ms']:5.2f} ms CPU/req ({row['client_cores']:.2f} cores)"
                      f"  failed {row['failed']}", file=sys.stderr)
    finally:
        for server in servers:
            server["proc"].terminate()
        for server in servers:
            try:
                server["proc"].wait(20)
            except subprocess.TimeoutExpired:
                server["proc"].kill()
    summary = {"created": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "client": args.client,
               "config": config.source, "artifact": config.artifact, "output_len": output_len,
               "concurrency": levels, "results": results, "added": added(results, levels)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(render(summary))
    plot(out, summary)
    print(render(summary))
    return 0


def added(results: dict, levels: list[int]) -> dict:
    """Each policy − floor at each concurrency: CPU per request, latency."""
    out: dict[str, dict] = {}
    for policy in results:
        if policy == "floor":
            continue
        for c in map(str, levels):
            d, f = results[policy][c], results["floor"][c]
            out.setdefault(policy, {})[c] = {
                "server_cpu_ms": d["server_cpu_ms"] - f["server_cpu_ms"], "p50_ms": d["p50_ms"] - f["p50_ms"],
                "p99_ms": d["p99_ms"] - f["p99_ms"],
                "decisions_ratio": d["decisions_per_s"] / f["decisions_per_s"] if f["decisions_per_s"] else None}
    return out


def machine() -> dict:
    import platform

    name = ""
    try:
        name = next((line.split(":", 1)[1].strip() for line in subprocess.run(
            ["lscpu"], capture_output=True, text=True).stdout.splitlines() if line.startswith("Model name")), "")
    except OSError:
        pass
    from vcascade.engine.hardware import NATIVE_BF16_FLAGS, cpu_flags

    flags = set(cpu_flags().split())
    return {"cores": len(os.sched_getaffinity(0)), "cpu": name or platform.processor(),
            "bf16_flags": [f for f in NATIVE_BF16_FLAGS if f in flags], "load_average": os.getloadavg(),
            "python": platform.python_version()}


def _f(x, d=2):
    return "–" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{d}f}"


def render(summary: dict) -> str:
    m = summary["machine"]
    levels = [str(c) for c in summary["concurrency"]]
    lines = [f"# Controller benchmark: vcascade's own work over instant tiers ({summary['created']})", "",
             f"Machine: {m['cores']} cores ({m['cpu']}), load average at the end {', '.join(f'{x:.1f}' for x in m['load_average'])} "
             "(shared machine: compare within this run). Client: "
             + ("`vllm bench serve` (openai-chat, streamed)" if summary["client"] == "vllm"
                else "an aiohttp loop sending the same streamed chat requests as `vllm bench serve`")
             + ", closed loop at each concurrency, no rate limit. `floor`: the same server over one instant tier, "
             "no rule (HTTP, parsing, rendering, response); `default`: the default artifact's policy "
             "(learned rule + skip with their static MiniLM prompt features) over the default tiers; `minilm`: "
             "the previous default's artifact, the same calibration with MiniLM sentence embeddings as prompt "
             "features.", "",
             "| server | concurrency | decisions/s | server CPU ms/req | rendering | embedding | scoring | response "
             "| other (HTTP, parsing, asyncio, metrics) | p50 ms | p99 ms | client CPU ms/req | failed |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for policy, rows in summary["results"].items():
        for c in levels:
            r = rows[c]
            parts = r["parts_cpu_ms"]
            lines.append(f"| {policy} | {c} | {_f(r['decisions_per_s'], 1)} | {_f(r['server_cpu_ms'])} | "
                         + " | ".join(_f(parts.get(k, 0.0)) for k in PARTS)
                         + f" | {_f(r['other_cpu_ms'])} | {_f(r['p50_ms'])} | {_f(r['p99_ms'])} | "
                           f"{_f(r['client_cpu_ms'])} | {r['failed']} |")
    lines += ["", "## Added over the floor (same run)", "",
              "| policy | concurrency | CPU ms/req added | p50 ms added | p99 ms added | decisions/s policy / floor |",
              "|---|---|---|---|---|---|"]
    for policy, by_level in summary["added"].items():
        for c in levels:
            a = by_level[c]
            lines.append(f"| {policy} | {c} | {_f(a['server_cpu_ms'])} | {_f(a['p50_ms'])} | {_f(a['p99_ms'])} | "
                         f"{_f(a['decisions_ratio'])} |")
    lines += ["", "Server CPU is the server process's CPU time (all threads, /proc) over the requests answered; "
              "the parts are the controller's `Overhead` spans (CPU of the thread doing the work, from "
              "`vcascade:controller_cpu_seconds`); `other` is the rest of the server's CPU.", "",
              "![decisions per second and CPU per request](controller.png)", ""]
    return "\n".join(lines)


def plot(out: Path, summary: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = [str(c) for c in summary["concurrency"]]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for i, (policy, rows) in enumerate(summary["results"].items()):
        color = f"C{i}"
        axes[0].plot(levels, [rows[c]["decisions_per_s"] for c in levels], marker="o", color=color, label=policy)
        axes[2].plot(levels, [rows[c]["p50_ms"] for c in levels], marker="o", color=color, label=f"{policy} p50")
        axes[2].plot(levels, [rows[c]["p99_ms"] for c in levels], marker="x", linestyle="--", color=color,
                     label=f"{policy} p99")
    axes[0].set(xlabel="concurrency", ylabel="decisions / s", title="Throughput")
    axes[2].set(xlabel="concurrency", ylabel="ms", yscale="log", title="End-to-end latency")
    policies = list(summary["results"])
    width = 0.8 / len(policies)
    x = np.arange(len(levels))
    for j, policy in enumerate(policies):
        bottom = np.zeros(len(levels))
        rows = summary["results"][policy]
        for k, part in enumerate((*PARTS, "other")):
            values = np.array([rows[c]["other_cpu_ms"] if part == "other" else rows[c]["parts_cpu_ms"].get(part, 0.0)
                               for c in levels])
            axes[1].bar(x + (j - (len(policies) - 1) / 2) * width, values, width, bottom=bottom, color=f"C{k}",
                        label=part if j == 0 else None, edgecolor="black", linewidth=0.5 * j)
            bottom += values
    axes[1].set_xticks(x, levels)
    axes[1].set(xlabel=f"concurrency (bars: {', '.join(policies)})", ylabel="server CPU ms / request",
                title="CPU per request by part")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "controller.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
