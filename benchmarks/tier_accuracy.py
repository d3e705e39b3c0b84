"""Accuracy, escalation and seconds per tier: each tier alone vs the cascade at a fixed threshold.

Runs `vcascade run` three times over the same input (the small tier alone, the large
tier alone, the cascade) on the first N validation items of each dataset, then scores the
answers with ``calibration.scoring``. Items are grouped by dataset and the batch size is
N, so every cascade batch holds one dataset and a trace's per-batch seconds are that
dataset's seconds for that tier.

    python benchmarks/tier_accuracy.py [--n 100] [--config C] [--out results/tier_accuracy]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from vcascade.calibration.datasets import load_dataset
from vcascade.calibration.scoring import is_correct
from vcascade.engine.config import load_config

DATASETS = ("trivia_qa", "arc_easy", "boolq", "sciq")


def write_input(path: Path, n: int) -> dict[str, dict]:
    """Write the run input; return the items by run id."""
    items = {}
    with open(path, "w") as fh:
        for name in DATASETS:
            for item in load_dataset(name, n):
                run_id = f"{name}:{item.id}"
                items[run_id] = {"dataset": name, "item": item}
                fh.write(json.dumps({"id": run_id, "prompt": item.prompt}) + "\n")
    return items


def run(config: str | None, tier: str | None, inp: Path, out: Path, batch: int) -> None:
    cmd = [sys.executable, "-m", "engine.cli", "run", "--input", str(inp), "--output", str(out),
           "--batch-size", str(batch)]
    cmd += ["--config", config] if config else []
    cmd += ["--tier", tier] if tier else []
    subprocess.run(cmd, check=True)


def summarize(rows: list[dict], items: dict[str, dict], costs: dict[str, float]) -> dict[str, dict]:
    """Per dataset: accuracy, share escalated, seconds per tier, relative token cost."""
    by_dataset: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_dataset[items[row["id"]]["dataset"]].append(row)
    out = {}
    for name, group in by_dataset.items():
        correct = [is_correct(r["text"], items[r["id"]]["item"].answers, items[r["id"]]["item"].kind,
                              items[r["id"]]["item"].options) for r in group]
        seconds: dict[str, float] = {}
        cost = 0.0
        for r in group:
            for step in r["trace"]:
                seconds[step["tier"]] = step["seconds"]  # one batch per dataset: same for all rows
                cost += costs[step["tier"]] * (step["prompt_tokens"] + step["completion_tokens"])
        out[name] = {
            "n": len(group),
            "accuracy": sum(correct) / len(group),
            "escalated": sum(r["tier_index"] > 0 for r in group) / len(group),
            "seconds": seconds,
            "token_cost": cost,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--config")
    parser.add_argument("--out", default="results/tier_accuracy")
    args = parser.parse_args()
    config = load_config(args.config)
    small, large = config.tiers[0].name, config.tiers[-1].name
    costs = {t.name: t.cost_per_token for t in config.tiers}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    items = write_input(out / "input.jsonl", args.n)
    variants = {f"{small} alone": small, f"{large} alone": large, "cascade": None}
    results = {}
    for label, tier in variants.items():
        path = out / f"answers-{tier or 'cascade'}.jsonl"
        run(args.config, tier, out / "input.jsonl", path, args.n)
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        results[label] = summarize(rows, items, costs)
    (out / "summary.json").write_text(json.dumps(results, indent=2))
    always_large = results[f"{large} alone"]
    lines = [f"threshold {config.thresholds} on {config.signal}; {args.n} validation items per dataset", "",
             "| dataset | variant | accuracy | escalated | seconds per tier | cost vs always-large |",
             "|---|---|---|---|---|---|"]
    for name in DATASETS:
        for label, summary in results.items():
            s = summary[name]
            secs = ", ".join(f"{t} {v:.1f}s" for t, v in s["seconds"].items())
            ratio = s["token_cost"] / always_large[name]["token_cost"]
            lines.append(f"| {name} | {label} | {s['accuracy']:.2f} | {s['escalated']:.0%} | {secs} | {ratio:.2f} |")
    report = "\n".join(lines)
    (out / "summary.md").write_text(report + "\n")
    print(report)


if __name__ == "__main__":
    main()
