"""How well does each confidence signal predict correctness, and what does it cost?

For every tier of a cascade config and one dataset: the greedy answers alone (all
logprob signals come free with them), then greedy + N samples (fixed n), then adaptive
sampling (a few samples first, the rest only where they disagree), all on the same
questions in the same process. Reported per signal: AUROC for predicting that the greedy
answer is correct, the mean number of samples drawn, and wall time relative to the
greedy-only pass (measured side by side in this run).

    python benchmarks/signals.py [--dataset trivia_qa] [--n 300] [--samples 10] [--initial 3]
                                 [--config C] [--tier NAME] [--out results/signals]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from vcascade.calibration.datasets import load_dataset
from vcascade.calibration.metrics import auroc
from vcascade.calibration.scoring import is_correct
from vcascade.engine.config import SamplesConfig, load_config
from vcascade.engine.uncertainty.equivalence import get_equivalence
from vcascade.engine.uncertainty.sampling import assign_clusters
from vcascade.engine.runtime import run
from vcascade.engine.tiers import Tier, build_tiers
from vcascade.engine.types import Request
from vcascade.engine.uncertainty.signals import SAMPLING_SIGNALS, SIGNALS, get_signal

LOGPROB_SIGNALS = [name for name in SIGNALS if name not in SAMPLING_SIGNALS] + ["quantile:0.1", "quantile:0.25"]
SE_SIGNALS = sorted(SAMPLING_SIGNALS)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def with_samples(tier: Tier, samples: SamplesConfig) -> Tier:
    """The same engine with other sampling settings (fixed-n vs adaptive in one run)."""
    return Tier(tier.config.model_copy(update={"samples": samples}), tier.backend)


def measure_tier(tier, items, requests, args) -> dict:
    run(tier.generate_many(requests[:32]))  # warm-up at a large batch size before timing
    greedy, t_greedy = timed(lambda: run(tier.generate_many(requests)))
    correct = np.array([is_correct(r.text, it.answers, it.kind, it.options) for r, it in zip(greedy, items)])
    rows = [{"signal": name, "variant": "greedy", "auroc": auroc([get_signal(name)(r) for r in greedy], correct),
             "samples": 0.0, "cost": 1.0} for name in LOGPROB_SIGNALS]
    fixed_cfg = SamplesConfig(n=args.samples, temperature=args.temperature, max_tokens=args.sample_tokens,
                              equivalence=args.equivalence)
    adaptive_cfg = SamplesConfig(n=args.samples, initial=args.initial, temperature=args.temperature,
                                 max_tokens=args.sample_tokens, equivalence=args.equivalence)
    fixed, t_fixed = timed(lambda: run(with_samples(tier, fixed_cfg).generate_many(requests)))
    adaptive, t_adaptive = timed(lambda: run(with_samples(tier, adaptive_cfg).generate_many(requests)))
    embedding = get_equivalence(args.embedding)
    embedding.keys(["warm up the sentence encoder"])
    fixed_embed = [_copy(r) for r in fixed]
    _, t_embed = timed(lambda: assign_clusters(fixed_embed, embedding))
    for variant, results, seconds in [(f"fixed n={args.samples}, {args.equivalence}", fixed, t_fixed),
                                      (f"adaptive {args.initial}->{args.samples}, {args.equivalence}", adaptive, t_adaptive),
                                      (f"fixed n={args.samples}, {embedding.name}", fixed_embed, t_fixed + t_embed)]:
        drawn = float(np.mean([len(r.samples) for r in results]))
        for name in SE_SIGNALS:
            rows.append({"signal": name, "variant": variant, "auroc": auroc([get_signal(name)(r) for r in results],
                                                                            correct),
                         "samples": drawn, "cost": seconds / t_greedy})
    return {"tier": tier.name, "n": len(items), "accuracy": float(correct.mean()), "greedy_seconds": t_greedy,
            "rows": rows}


def _copy(result):
    from dataclasses import replace

    return replace(result, samples=list(result.samples), clusters=[], greedy_cluster=None)


def table(report: dict) -> str:
    lines = [f"### {report['tier']}: {report['n']} items, greedy accuracy {report['accuracy']:.3f}", "",
             "| signal | variant | AUROC | samples drawn | cost vs greedy |", "|---|---|---|---|---|"]
    for row in sorted(report["rows"], key=lambda r: -np.nan_to_num(r["auroc"])):
        lines.append(f"| {row['signal']} | {row['variant']} | {row['auroc']:.3f} | {row['samples']:.2f} | "
                     f"{row['cost']:.2f}× |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="trivia_qa")
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--initial", type=int, default=3)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--sample-tokens", type=int, default=32)
    parser.add_argument("--equivalence", default="normalized")
    parser.add_argument("--embedding", default="embedding:0.9")
    parser.add_argument("--config")
    parser.add_argument("--tier", help="one tier (default: every tier of the config)")
    parser.add_argument("--out", default="results/signals")
    args = parser.parse_args()
    items = load_dataset(args.dataset, args.n)
    requests = [Request(prompt=it.prompt, id=it.id) for it in items]
    config = load_config(args.config)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    reports = []
    for tier in run(build_tiers(config, only=[args.tier] if args.tier else None, warmup_batch=8)):
        reports.append(measure_tier(tier, items, requests, args))
        print(table(reports[-1]), flush=True)
    (out / f"{args.dataset}.json").write_text(json.dumps({"args": vars(args), "reports": reports}, indent=2))
    header = (f"Signals on {args.dataset} (first {args.n} validation items); AUROC for predicting that the greedy "
              f"answer is correct; cost = wall time / greedy-only wall time, same run.\n\n")
    (out / f"{args.dataset}.md").write_text(header + "\n\n".join(table(r) for r in reports) + "\n")


if __name__ == "__main__":
    main()
