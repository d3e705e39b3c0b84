"""``vcascade calibrate`` and ``vcascade evaluate`` (registered through the
``vcascade.commands`` entry points, so ``engine`` never imports ``calibration``)."""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from vcascade.engine.artifact import (SCHEMA_VERSION, guarantee_statement, mismatch, policy_from_artifact,
                                      read_artifact, tier_identity)
from vcascade.engine.config import ConfigError, load_config
from vcascade.engine.uncertainty.rules import SignalRule
from vcascade.engine.uncertainty.signals import SAMPLING_SIGNALS, get_signal

from .conformal import (DEFAULT_DELTA, P_VALUES, TARGETS, check_level, fit_thresholds, realized_risk_spread,
                        uses_threshold_path)
from .datasets import dataset_fingerprint, load_dataset, split
from .embeddings import prompt_embeddings
from .evaluation import evaluate_policy, format_evaluation
from .job import calibration_data, collect, token_costs
from .report import write_report
from .selection import select_rules, three_way_split


def _write_json(path: Path, data: dict) -> None:
    """Write atomically: a reader never sees a half-written artifact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def parse_delta(value: str) -> float | None:
    """``--delta``: a level in (0, 1), or ``none`` for the marginal guarantee."""
    if value.strip().lower() == "none":
        return None
    try:
        delta = float(value)
    except ValueError:
        raise ValueError(f"--delta must be a number in (0, 1) or 'none', got {value!r}") from None
    check_level("delta", delta)
    return delta


def tier_identities(config) -> list[dict]:
    """Each tier's identity for the artifact; a remote tier also records what its server
    reports now (its context length), so a server configured differently is refused later."""
    from vcascade.engine.runtime import run
    from vcascade.engine.tiers.remote import RemoteBackend

    out = []
    for tier in config.tiers:
        identity = tier_identity(tier, config)
        if tier.is_remote:
            backend = RemoteBackend(tier, config.system_prompt)
            run(backend.start())
            identity["served"] = {"max_model_len": backend.max_model_len}
            run(backend.shutdown())
        out.append(identity)
    return out


def _subset(records: list[dict], items) -> list[dict]:
    return [{item.id: per_tier[item.id] for item in items} for per_tier in records]


def price_of_guarantee(data, target: str, alpha: float, delta: float | None) -> dict | None:
    """Escalation and cost of the marginal (CRC) and the (α, δ) fit on the same data, and the
    share of resampled calibrations above α for each (two tiers, one threshold only)."""
    plain = data.without_skip()
    if not uses_threshold_path(plain, target):
        return None
    out = {}
    for label, level in (("marginal", None), ("high-probability", delta or DEFAULT_DELTA)):
        fit = fit_thresholds(plain, target, alpha, level)
        out[label] = {"delta": level, "threshold": fit.thresholds[0], "escalated": 1 - fit.acceptance[0],
                      "cost_ratio": fit.cost_ratio, "empirical_risk": fit.empirical_risk,
                      "spread": realized_risk_spread(plain, target, alpha, level, resamples=300)}
    return out


def cmd_calibrate(args) -> int:
    if args.target not in TARGETS:
        raise ValueError(f"unknown target {args.target!r}; known: {', '.join(TARGETS)}")
    check_level("alpha", args.alpha)
    delta = parse_delta(args.delta)
    config = load_config(args.config)
    if args.signal:
        get_signal(args.signal)
        if args.signal in SAMPLING_SIGNALS and any(t.samples is None for t in config.tiers[:-1]):
            raise ConfigError(f"{config.source}: signal {args.signal!r} needs a samples block on every non-final tier")
    items, _ = split(load_dataset(args.dataset), args.n, args.seed)
    records = collect(config, items, batch_size=args.batch_size)
    costs = token_costs(config, records, items)
    names = [t.name for t in config.tiers]
    if args.signal:
        rules, skip, selection, splits = [SignalRule(args.signal)] * (len(names) - 1), None, None, None
        fit_index = np.arange(len(items))
        embeddings = None
    else:
        splits = three_way_split(len(items), args.seed)
        embeddings = prompt_embeddings(items)
        print(f"choosing the deferral rule: train {len(splits.train)}, select {len(splits.select)}, "
              f"calibrate {len(splits.calibrate)} items", file=sys.stderr)
        selection = select_rules(config, records, items, splits, embeddings, costs, args.target, args.alpha,
                                 seed=args.seed, skip=not args.no_skip)
        rules, skip = selection.rules, selection.skip
        fit_index = splits.calibrate
    fit_items = [items[i] for i in fit_index]
    data = calibration_data(config, _subset(records, fit_items), fit_items, rules, skip,
                            None if embeddings is None else embeddings[fit_index], costs[fit_index])
    fit = fit_thresholds(data, args.target, args.alpha, delta, seed=args.seed, p_value_kind=args.p_value)
    price = price_of_guarantee(data, args.target, args.alpha, delta)
    guarantee = {**fit.guarantee, "assumption": "calibration items and served traffic are exchangeable"}
    if delta is None and price:
        spread = price["marginal"]["spread"]
        guarantee["single_deployment"] = spread
        guarantee["statement"] += (f"; for this single calibration, {spread['share_above_alpha']:.0%} of bootstrap "
                                   f"resamples land above α and their 90th percentile risk is {spread['risk_q90']:.4f}")
    artifact = {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dataset": {"name": args.dataset, "fingerprint": dataset_fingerprint(args.dataset), "seed": args.seed,
                    "n_calibration": len(items), "splits": splits.sizes() if splits else {"calibrate": len(items)}},
        "target": args.target,
        "alpha": args.alpha,
        "delta": delta,
        "guarantee": guarantee,
        "tiers": tier_identities(config),
        "policy": {"rules": [r.spec() for r in rules], "thresholds": fit.thresholds,
                   "skip": skip.spec() if skip else None, "skip_threshold": fit.skip_threshold if skip else None},
        "selection": None if selection is None else {"table": selection.table, "refused": selection.refused,
                                                     "skip": selection.skip_table},
        "price_of_guarantee": price,
        "fit": fit.to_dict(),
    }
    out = Path(args.out)
    _write_json(out, artifact)
    header = (f"Cascade {' → '.join(names)} calibrated on {len(fit_items)} items of `{args.dataset}` "
              f"(seed {args.seed}).")
    report = write_report(Path(args.report or out.with_suffix("")), artifact, data, names, header)
    verdict = "feasible" if fit.feasible else "INFEASIBLE: the policy will always escalate"
    print(f"{args.target} at α={args.alpha}" + (f", δ={delta}" if delta else " (marginal)") + f": {verdict}")
    print(f"guarantee: {guarantee['statement']}")
    rule_names = ", ".join(r.name for r in rules) + (f"; skip: {skip.name}" if skip else "")
    print(f"rule {rule_names}; thresholds {[round(t, 4) for t in fit.thresholds]}"
          + (f", skip below {fit.skip_threshold:.4f}" if skip else "") + f" ({fit.method})")
    print(f"empirical risk {fit.empirical_risk:.4f}, bound {fit.risk_bound:.4f}; answered by "
          f"{dict(zip(names, (round(a, 3) for a in fit.acceptance)))}"
          + (f", skipped {fit.skipped:.1%}" if skip else "") + f"; cost vs always-{names[-1]} {fit.cost_ratio:.2f}")
    print(f"artifact: {out}\nreport:   {report}")
    return 0


def cmd_evaluate(args) -> int:
    artifact = read_artifact(args.artifact)
    config = load_config(args.config)
    problem = mismatch(artifact, config)
    if problem and not args.force_artifact:
        raise ConfigError(f"{args.artifact} does not match {config.source}: {problem}. "
                          "Evaluate with the config it was calibrated for, or pass --force-artifact.")
    policy = policy_from_artifact(artifact, args.artifact)
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
    records = collect(config, items, batch_size=args.batch_size)
    embeddings = prompt_embeddings(items) if policy.needs_embedding else None
    data = calibration_data(config, records, items, policy.rules, policy.skip, embeddings)
    fit = artifact["fit"]
    figures = evaluate_policy(data, fit["thresholds"], fit.get("skip_threshold"), artifact["target"],
                              [t.name for t in config.tiers])
    figures.update(dataset=dataset, split=args.split, alpha=artifact["alpha"], delta=artifact["delta"],
                   guarantee=guarantee_statement(artifact), artifact=str(args.artifact))
    print(format_evaluation(figures, artifact["alpha"]))
    if args.json:
        _write_json(Path(args.json), figures)
    return 0


def register_calibrate(sub) -> None:
    p = sub.add_parser("calibrate", help="choose a deferral rule and fit its thresholds with a conformal guarantee")
    p.add_argument("--config", help="cascade YAML (default: the embedded default cascade)")
    p.add_argument("--dataset", required=True, help="built-in dataset name (or 'mixed') or a JSONL file")
    p.add_argument("--n", type=int, help="calibration items (default: all); the rest are held out")
    p.add_argument("--target", required=True, help=f"one of {', '.join(TARGETS)}")
    p.add_argument("--alpha", type=float, required=True, help="risk level α in (0, 1)")
    p.add_argument("--delta", default=str(DEFAULT_DELTA),
                   help="failure probability δ in (0, 1) for the high-probability guarantee (default 0.1), "
                        "or 'none' for the marginal one (conformal risk control)")
    p.add_argument("--signal", help="use this built-in signal on all items (default: train and choose a rule "
                                    "on a three-way split of the calibration items)")
    p.add_argument("--no-skip", action="store_true", help="do not consider a pre-generation skip rule")
    p.add_argument("--p-value", default="binomial", choices=P_VALUES, help="Learn-then-Test p-value")
    p.add_argument("--seed", type=int, default=0, help="seed of the splits")
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
