"""``vcascade calibrate`` and ``vcascade evaluate`` (registered through the
``vcascade.commands`` entry points, so ``engine`` never imports ``calibration``)."""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

from engine.artifact import SCHEMA_VERSION, mismatch, read_artifact, tier_identity
from engine.config import ConfigError, load_config
from engine.signals import SAMPLING_SIGNALS, SIGNALS, get_signal

from .conformal import P_VALUES, TARGETS, check_level, fit_thresholds
from .datasets import load_dataset, split
from .evaluation import evaluate_thresholds, format_evaluation
from .job import calibration_data, collect, dataset_fingerprint
from .report import write_report

REPORT_SIGNALS = ["mean_logprob", "min_logprob", "quantile:0.25", "neg_topk_entropy", "mean_margin"]


def _write_json(path: Path, data: dict) -> None:
    """Write atomically: a reader never sees a half-written artifact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def cmd_calibrate(args) -> int:
    if args.target not in TARGETS:
        raise ValueError(f"unknown target {args.target!r}; known: {', '.join(TARGETS)}")
    check_level("alpha", args.alpha)
    if args.delta is not None or args.target == "selective-error":
        check_level("delta", args.delta)
    config = load_config(args.config)
    signal = args.signal or config.signal
    get_signal(signal)
    if signal in SAMPLING_SIGNALS and any(t.samples is None for t in config.tiers[:-1]):
        raise ConfigError(f"{config.source}: signal {signal!r} needs a samples block on every non-final tier")
    items, _ = split(load_dataset(args.dataset), args.n, args.seed)
    records = collect(config, args.dataset, items, batch_size=args.batch_size)
    ids = [item.id for item in items]
    data = calibration_data(config, records, ids, signal)
    fit = fit_thresholds(data, args.target, args.alpha, args.delta, seed=args.seed, p_value_kind=args.p_value)
    names = [t.name for t in config.tiers]
    artifact = {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dataset": {"name": args.dataset, "fingerprint": dataset_fingerprint(args.dataset), "seed": args.seed,
                    "n_calibration": len(items)},
        "signal": signal,
        "target": args.target,
        "alpha": args.alpha,
        "delta": args.delta,
        "n": len(items),
        "tiers": [tier_identity(t, config) for t in config.tiers],
        "fit": fit.to_dict(),
    }
    out = Path(args.out)
    _write_json(out, artifact)
    others = [s for s in REPORT_SIGNALS if s != signal] + ([s for s in SIGNALS if s in SAMPLING_SIGNALS]
                                                           if config.tiers[0].samples else [])
    by_signal = {signal: data, **{s: calibration_data(config, records, ids, s) for s in others}}
    header = f"Cascade {' → '.join(names)} calibrated on {len(items)} items of `{args.dataset}` (seed {args.seed})."
    report = write_report(Path(args.report or out.with_suffix("")), fit, by_signal, signal, names, header)
    verdict = "feasible" if fit.feasible else "INFEASIBLE: the policy will always escalate"
    print(f"{args.target} at α={args.alpha}" + (f", δ={args.delta}" if args.delta else "") + f": {verdict}")
    print(f"thresholds {fit.thresholds} on {signal} ({fit.method}); empirical risk {fit.empirical_risk:.4f}, "
          f"bound {fit.risk_bound:.4f}; answered by {dict(zip(names, (round(a, 3) for a in fit.acceptance)))}; "
          f"cost vs always-{names[-1]} {fit.cost_ratio:.2f}")
    print(f"artifact: {out}\nreport:   {report}")
    return 0


def cmd_evaluate(args) -> int:
    artifact = read_artifact(args.artifact)
    config = load_config(args.config)
    problem = mismatch(artifact, config)
    if problem and not args.force_artifact:
        raise ConfigError(f"{args.artifact} does not match {config.source}: {problem}. "
                          "Evaluate with the config it was calibrated for, or pass --force-artifact.")
    meta = artifact["dataset"]
    dataset = args.dataset or meta["name"]
    items = load_dataset(dataset)
    if dataset == meta["name"]:
        calibration_items, held_out = split(items, meta["n_calibration"], meta["seed"])
        items = {"test": held_out, "calibration": calibration_items, "all": items}[args.split]
    elif args.split != "all":
        print(f"note: {dataset} is not the calibration dataset; evaluating all of it", file=sys.stderr)
    if args.n is not None:
        items = items[: args.n]
    if not items:
        raise ValueError(f"no items to evaluate in split {args.split!r}")
    records = collect(config, dataset, items, batch_size=args.batch_size)
    ids = [item.id for item in items]
    data = calibration_data(config, records, ids, artifact["signal"])
    figures = evaluate_thresholds(data, [float(t) for t in artifact["fit"]["thresholds"]], artifact["target"],
                                  [t.name for t in config.tiers])
    figures.update(dataset=dataset, split=args.split, alpha=artifact["alpha"], delta=artifact["delta"],
                   artifact=str(args.artifact))
    print(format_evaluation(figures, artifact["alpha"]))
    if args.json:
        _write_json(Path(args.json), figures)
    return 0


def register_calibrate(sub) -> None:
    p = sub.add_parser("calibrate", help="fit deferral thresholds with a conformal guarantee")
    p.add_argument("--config", help="cascade YAML (default: the embedded default cascade)")
    p.add_argument("--dataset", required=True, help="built-in dataset name or a JSONL file")
    p.add_argument("--n", type=int, help="calibration items (default: all)")
    p.add_argument("--target", required=True, help=f"one of {', '.join(TARGETS)}")
    p.add_argument("--alpha", type=float, required=True, help="risk level α in (0, 1)")
    p.add_argument("--delta", type=float, help="failure probability δ in (0, 1) (Learn-then-Test)")
    p.add_argument("--signal", help="confidence signal (default: the config's)")
    p.add_argument("--p-value", default="binomial", choices=P_VALUES, help="Learn-then-Test p-value")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration/test split")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", required=True, help="artifact JSON to write")
    p.add_argument("--report", help="report folder (default: next to the artifact)")
    p.set_defaults(func=cmd_calibrate)


def register_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="realized risk, accuracy and cost of an artifact on held-out data")
    p.add_argument("--artifact", required=True)
    p.add_argument("--config", help="cascade YAML the artifact was calibrated for (default: embedded)")
    p.add_argument("--dataset", help="default: the artifact's calibration dataset")
    p.add_argument("--split", default="test", choices=["test", "calibration", "all"])
    p.add_argument("--n", type=int, help="evaluate only the first N items of the split")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--json", help="write the figures to this JSON file")
    p.add_argument("--force-artifact", action="store_true")
    p.set_defaults(func=cmd_evaluate)
