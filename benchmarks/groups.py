"""Per-group guarantees on the built-in mixed workload: their validity over many random
splits of real cached generations, and their price next to one policy for the mix.

1. The first ``--n`` items of the mixed workload become a labelled JSONL file whose
   ``group`` is each item's source (the request-keyed cache means nothing is regenerated).
2. ``vcascade calibrate`` twice on the same calibration items — once with ``--group-by
   group`` (each source's quality loss <= α w.p. >= 1 − δ), once for the mix — and
   ``vcascade evaluate`` of both on the same held-out items, per source.
3. The validity experiment (``calibration.conformal.validity``) on the grouped artifact's
   rule scores of every item its rules were not trained on: ``--splits`` random
   calibration/held-out splits, per-group fit vs one fit for the mix; per source, the share
   of calibrations whose held-out risk exceeds α. The arrays are saved
   (``scores.npz``) so a test can rerun the experiment without any engine.

Writes ``results/groups/``: ``summary.json``, ``summary.md``, ``scores.npz``, both artifacts
and their reports.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TARGET, ALPHA, DELTA = "quality-loss", 0.05, 0.1


def write_items(n: int, path: Path) -> list:
    from vcascade.calibration.datasets import load_dataset

    items = load_dataset("mixed", n=n)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for item in items:
            line = {"id": item.id, "answers": list(item.answers), "kind": item.kind, "group": item.source}
            line.update({"messages": list(item.messages)} if item.messages else {"prompt": item.prompt})
            if item.options:
                line["options"] = list(item.options)
            fh.write(json.dumps(line) + "\n")
    return items


def vcascade(*argv: str) -> None:
    subprocess.run([str(Path(sys.executable).with_name("vcascade")), *argv], check=True, cwd=ROOT)


def real_arrays(artifact_path: Path, data_path: Path, n_calibration: int) -> dict:
    """Scores of the artifact's rules on every item its learned rules never trained on."""
    from vcascade.calibration.datasets import load_dataset, split
    from vcascade.calibration.embeddings import prompt_embeddings
    from vcascade.calibration.job import calibration_data, collect
    from vcascade.calibration.selection import three_way_split
    from vcascade.engine.artifact import policy_from_artifact, read_artifact
    from vcascade.engine.config import load_config

    artifact = read_artifact(artifact_path)
    config = load_config(None)
    calibration, held_out = split(load_dataset(str(data_path)), n_calibration, artifact["dataset"]["seed"])
    splits = three_way_split(len(calibration), artifact["dataset"]["seed"])
    train = set(splits.train.tolist())
    items = [item for i, item in enumerate(calibration) if i not in train] + held_out
    policy = policy_from_artifact(artifact, artifact_path)
    records = collect(config, items)
    embeddings = prompt_embeddings(items) if policy.needs_embedding else None
    data = calibration_data(config, records, items, policy.rules, policy.skip, embeddings)
    return {"scores": data.scores, "correct": data.correct, "costs": data.costs,
            "skip_scores": data.skip_scores if data.skip_scores is not None else np.array([]),
            "groups": np.array([item.group for item in items])}


def validity(arrays: dict, splits: int) -> dict:
    from vcascade.calibration.conformal import validity_experiment

    skip = arrays["skip_scores"] if arrays["skip_scores"].size else None
    out = {}
    for label, grouped in (("per-group fit", True), ("one fit for the mix", False)):
        result = validity_experiment(arrays["scores"], arrays["correct"], arrays["costs"], arrays["groups"],
                                     target=TARGET, alpha=ALPHA, delta=DELTA, skip_scores=skip,
                                     calibration_size=0.5, splits=splits, grouped=grouped)
        out[label] = result.to_dict()
    return out


def markdown(summary: dict) -> str:
    g, m = summary["evaluate"]["grouped"], summary["evaluate"]["mix"]
    lines = ["# Per-group guarantees on the mixed workload", "",
             f"{summary['n_items']} items of `mixed` (first of its seeded order), group = source; calibration "
             f"{summary['n_calibration']} items (rules trained / chosen / fitted on 40/20/40 %), held out "
             f"{g['n']}. Target {TARGET}, α = {ALPHA}, δ = {DELTA}.", "",
             f"- per-group artifact: {summary['guarantee_grouped']}",
             f"- mix artifact: {summary['guarantee_mix']}", "",
             "## Held-out figures per source", "",
             f"Each source has ~{g['n'] // max(1, len(g['groups']))} held-out items: a realized loss has a standard "
             f"error of about {summary['held_out_se']:.3f} at α.", "",
             "| source | n | quality loss (per-group) | quality loss (mix) | escalated (per-group) | escalated (mix) | "
             "cost (per-group) | cost (mix) |", "|---|---|---|---|---|---|---|---|"]
    for name in sorted(g["groups"]):
        a, b = g["groups"][name], m["groups"].get(name, {})
        lines.append(f"| {name} | {a['n']} | {a['quality_loss']:.3f} | {b.get('quality_loss', float('nan')):.3f} | "
                     f"{a['escalated']:.0%} | {b.get('escalated', float('nan')):.0%} | {a['cost_ratio']:.2f} | "
                     f"{b.get('cost_ratio', float('nan')):.2f} |")
    lines += [f"| **all** | {g['n']} | {g['quality_loss']:.3f} | {m['quality_loss']:.3f} | {g['escalated']:.0%} | "
              f"{m['escalated']:.0%} | {g['cost_ratio']:.2f} | {m['cost_ratio']:.2f} |", "",
              "Cost is tokens × price relative to always calling the largest tier (within the source).", "",
              "## Validity over random splits (real cached generations)", ""]
    for label, result in summary["validity"].items():
        lines += [f"**{label}** — {result['splits']} splits, half of each source calibrates; share of calibrations "
                  f"whose held-out source risk exceeds α (allowed: δ + 3 s.e. = {next(iter(result['per_group'].values()))['allowed']:.3f}); "
                  f"failing: {', '.join(result['failing_groups']) or 'none'}", "",
                  "| source | calibration n | share above α | mean risk | 90th pct | mean cost |", "|---|---|---|---|---|---|"]
        for name, row in result["per_group"].items():
            lines.append(f"| {name} | {row['n_calibration']} | {row['share_above_alpha']:.3f} | {row['mean_risk']:.4f} | "
                         f"{row['risk_q90']:.4f} | {row['mean_cost_ratio']:.2f} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2400, help="items of the mixed workload (first of its order)")
    parser.add_argument("--n-calibration", type=int, default=1600)
    parser.add_argument("--splits", type=int, default=500)
    parser.add_argument("--out", default=str(ROOT / "results" / "groups"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = ROOT / "results" / "tmp" / f"mixed-{args.n}.jsonl"
    items = write_items(args.n, data)
    common = ["--dataset", str(data), "--n", str(args.n_calibration), "--target", TARGET, "--alpha", str(ALPHA),
              "--delta", str(DELTA)]
    summary = {"n_items": len(items), "n_calibration": args.n_calibration, "evaluate": {}}
    for label, extra in (("grouped", ["--group-by", "group"]), ("mix", [])):
        artifact = out / f"{label}.json"
        vcascade("calibrate", *common, *extra, "--out", str(artifact), "--report", str(out / label))
        vcascade("evaluate", "--artifact", str(artifact), "--split", "test", "--json", str(out / f"{label}-test.json"))
        summary["evaluate"][label] = json.loads((out / f"{label}-test.json").read_text())
        summary[f"guarantee_{label}"] = json.loads(artifact.read_text())["guarantee"]["statement"]
    per_group = summary["evaluate"]["grouped"]["groups"]
    summary["held_out_se"] = float(np.sqrt(ALPHA * (1 - ALPHA) / (sum(g["n"] for g in per_group.values())
                                                                 / max(1, len(per_group)))))
    arrays = real_arrays(out / "grouped.json", data, args.n_calibration)
    np.savez_compressed(out / "scores.npz", **arrays)
    summary["validity"] = validity(arrays, args.splits)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(markdown(summary))
    print(markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
