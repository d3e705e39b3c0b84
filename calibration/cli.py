"""``vcascade calibrate`` and ``vcascade evaluate`` (registered through the
``vcascade.commands`` entry points, so ``engine`` never imports ``calibration``)."""

from __future__ import annotations

import json
import os
from collections import Counter
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from vcascade.engine.artifact import (SCHEMA_VERSION, guarantee_statement, mismatch, policy_from_artifact,
                                      read_artifact, tier_identity)
from vcascade.engine.config import ConfigError, load_config
from vcascade.engine.scope import Scope
from vcascade.engine.uncertainty.rules import SignalRule
from vcascade.engine.uncertainty.signals import SAMPLING_SIGNALS, get_signal

from .conformal import (DEFAULT_DELTA, DELTA_SPLITS, P_VALUES, TARGETS, check_fittable, check_level,
                        conditional_quality_loss, fit_groups, fit_thresholds, price_of_guarantee)
from .checkpoint_report import format_calibrated, format_checkpointed
from .checkpointing import (DEFAULT_CHECKPOINTS, PrefixRules, calibrate_checkpoints, check_checkpointable,
                            parse_checkpoints, policy_section)
from .datasets import GROUP_FIELDS, dataset_fingerprint, group_of, load_dataset, split
from .embeddings import prompt_embeddings
from .evaluation import (breakdown, evaluate_deployed_checkpoints, evaluate_policy, format_evaluation, format_groups,
                         group_table, read_timing)
from .from_log import dataset_from_log
from .job import calibration_data, collect, token_costs
from .monitoring import monitor_reference
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


def calibration_scope(config, items, groups: list[str] | None, group_by: str | None = None) -> dict:
    """The request shape the calibration covers (``engine.scope.Scope``), for the artifact."""
    instructions = "items" if any(item.has_own_instructions for item in items) else "cascade"
    return Scope(instructions=instructions, system_prompt=config.system_prompt,
                 max_tokens=tuple(t.sampling.max_tokens for t in config.tiers), groups=tuple(groups or ()),
                 item_max_tokens=tuple(sorted({i.max_tokens for i in items if i.max_tokens is not None})),
                 tier_budget_calibrated=any(i.max_tokens is None for i in items),
                 group_by=group_by if groups else None).to_dict()


def check_before_generating(args, delta, config, items) -> None:
    """Refuse every fit that cannot be done before any engine starts (``check_fittable``):
    the items the fit will see are known from the split alone."""
    fit_items = items if args.signal else [items[i] for i in three_way_split(len(items), args.seed).calibrate]
    budget = config.tiers[0].sampling.max_tokens
    sizes = dict(Counter(group_of(item, args.group_by, budget) for item in fit_items)) if args.group_by else None
    check_fittable(args.target, args.alpha, delta, len(config.tiers), has_skip=not (args.signal or args.no_skip),
                   group_sizes=sizes, n=None if sizes else len(fit_items), delta_split=args.delta_split,
                   p_value_kind=args.p_value)


def cmd_calibrate(args) -> int:
    if args.target not in TARGETS:
        raise ValueError(f"unknown target {args.target!r}; known: {', '.join(TARGETS)}")
    check_level("alpha", args.alpha)
    delta = parse_delta(args.delta)
    config = load_config(args.config)
    checkpoints = parse_checkpoints(args.checkpoints) if args.checkpoints else None
    if checkpoints:
        check_checkpointable(len(config.tiers), args.target, delta, args.signal)
    if args.signal:
        get_signal(args.signal)
        if args.signal in SAMPLING_SIGNALS and any(t.samples is None for t in config.tiers[:-1]):
            raise ConfigError(f"{config.source}: signal {args.signal!r} needs a samples block on every non-final tier")
    served_labels = None  # with --from-log: how the served requests were labelled
    if args.from_log:
        path, served_labels = dataset_from_log(args.from_log, args.feedback or [], config,
                                        Path(args.out).with_suffix(".from-log.jsonl"), args.batch_size)
        args.dataset = str(path)
    elif not args.dataset:
        raise ValueError("calibrate needs --dataset (labelled items) or --from-log (a server's decision log)")
    items, _ = split(load_dataset(args.dataset), args.n, args.seed)
    check_before_generating(args, delta, config, items)
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
        budget = config.tiers[0].sampling.max_tokens
        groups = np.array([group_of(item, args.group_by, budget) for item in items]) if args.group_by else None
        selection = select_rules(config, records, items, splits, embeddings, costs, args.target, args.alpha,
                                 seed=args.seed, skip=not args.no_skip, groups=groups)
        rules, skip = selection.rules, selection.skip
        fit_index = splits.calibrate
    checkpointed = None
    if checkpoints:
        print(f"training prefix rules at {', '.join(map(str, checkpoints))} tokens (train split), fixing the "
              "checkpoint path (select split), fitting it (calibrate split)", file=sys.stderr)
        checkpointed = calibrate_checkpoints(config, records, items, splits, embeddings, costs, rules[0], skip,
                                             args.target, args.alpha, delta, groups=groups,
                                             delta_split=args.delta_split, checkpoints=checkpoints,
                                             p_value_kind=args.p_value, seed=args.seed)
    fit_items = [items[i] for i in fit_index]
    data = calibration_data(config, _subset(records, fit_items), fit_items, rules, skip,
                            None if embeddings is None else embeddings[fit_index], costs[fit_index])
    budget = config.tiers[0].sampling.max_tokens
    labels = [group_of(item, args.group_by, budget) for item in fit_items] if args.group_by else None
    if labels is not None:
        grouped = fit_groups(data, labels, args.target, args.alpha, delta, delta_split=args.delta_split,
                             seed=args.seed, p_value_kind=args.p_value, largest=names[-1])
        fit = grouped.groups[grouped.conservative_group]
        guarantee = dict(grouped.guarantee)
        fit_record = {**fit.to_dict(), "grouped": grouped.to_dict()}
        price = None
    else:
        grouped = None
        fit = fit_thresholds(data, args.target, args.alpha, delta, seed=args.seed, p_value_kind=args.p_value,
                             largest=names[-1])
        guarantee = dict(fit.guarantee)
        fit_record = fit.to_dict()
        price = price_of_guarantee(data, args.target, args.alpha, delta, seed=args.seed, p_value_kind=args.p_value)
        if delta is None and "marginal" in price:
            spread = price["marginal"]["spread"]
            guarantee["single_deployment"] = spread
            guarantee["statement"] += (f"; for this single calibration, {spread['share_above_alpha']:.0%} of "
                                       "bootstrap resamples land above α and their 90th percentile risk is "
                                       f"{spread['risk_q90']:.4f}")
    if checkpointed is not None:  # the deployed policy is the checkpointed one; the end-only fit is a comparison
        guarantee = dict(checkpointed.policy.guarantee)
        fit_record["checkpoints"] = checkpointed.policy.fit_record(checkpointed.prefix)
        fit_record["deployed"] = "checkpoints"
    guarantee["assumption"] = "calibration items and served traffic are exchangeable (within each group)" \
        if grouped else "calibration items and served traffic are exchangeable"
    guarantee["scope"] = "requests of the calibrated shape only (see the artifact's 'scope'); every answer " \
                         "says whether it is in scope"
    policy = {"rules": [r.spec() for r in rules], "thresholds": fit.thresholds,
              "skip": skip.spec() if skip else None, "skip_threshold": fit.skip_threshold if skip else None}
    if grouped:
        policy["groups"] = {g: {"thresholds": f.thresholds, "skip_threshold": f.skip_threshold if skip else None}
                            for g, f in grouped.groups.items()}
        policy["fallback_group"] = grouped.conservative_group
        if args.group_by == "length":
            policy["group_by"] = "length"
    routed = None
    if checkpointed is not None:
        policy = policy_section(checkpointed.policy, checkpointed.prefix, rules[0], skip, args.group_by)
        routed = checkpointed.served_routing()
    artifact = {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dataset": {"name": args.dataset, "fingerprint": dataset_fingerprint(args.dataset), "seed": args.seed,
                    "n_calibration": len(items), "splits": splits.sizes() if splits else {"calibrate": len(items)},
                    "group_by": args.group_by},
        "target": args.target,
        "alpha": args.alpha,
        "delta": delta,
        "guarantee": guarantee,
        "scope": calibration_scope(config, items, sorted(grouped.groups) if grouped else None, args.group_by),
        "tiers": tier_identities(config),
        "prices": {t.name: {"prompt": t.prompt_price, "output": t.output_price} for t in config.tiers},
        "policy": policy,
        "selection": None if selection is None else {"table": selection.table, "refused": selection.refused,
                                                     "skip": selection.skip_table},
        "price_of_guarantee": price,
        "fit": fit_record,
        "monitor": monitor_reference(config, _subset(records, fit_items), fit_items, data, fit, grouped, labels,
                                     routed),
        "figures": {"conditional_quality_loss": conditional_quality_loss(data, fit.config) if not grouped else None,
                    "groups": group_table(data, labels or [group_of(i) for i in fit_items], grouped or fit.config,
                                          args.target)},
    }
    if checkpointed is not None:
        artifact["figures"]["checkpoints"] = checkpointed.figures()
    if served_labels is not None:
        artifact["labels"] = served_labels
        guarantee["statement"] += f"; {served_labels['statement']}"
    out = Path(args.out)
    _write_json(out, artifact)
    header = (f"Cascade {' → '.join(names)} calibrated on {len(fit_items)} items of `{args.dataset}` "
              f"(seed {args.seed})." + (f" Served traffic: {served_labels['statement']}." if served_labels
                                            else ""))
    report = write_report(Path(args.report or out.with_suffix("")), artifact, data, names, header)
    print(f"{args.target} at α={args.alpha}" + (f", δ={delta}" if delta else " (marginal)") + ": "
          + _verdict(grouped, fit))
    print(f"guarantee: {guarantee['statement']}")
    rule_names = ", ".join(r.name for r in rules) + (f"; skip: {skip.name}" if skip else "")
    if grouped:
        print(f"rule {rule_names}; per-group thresholds:")
        print(format_groups({g: {**row, "threshold": grouped.groups[g].thresholds}
                             for g, row in artifact["figures"]["groups"].items()}, args.alpha))
        print(f"pooled: answered by {dict(zip(names, (round(a, 3) for a in grouped.pooled['acceptance'])))}, "
              f"cost vs always-{names[-1]} {grouped.pooled['cost_ratio']:.2f}")
    else:
        print(f"rule {rule_names}; thresholds {[round(t, 4) for t in fit.thresholds]}"
              + (f", skip below {fit.skip_threshold:.4f}" if skip else "") + f" ({fit.method})")
        print(f"empirical risk {fit.empirical_risk:.4f}, bound {fit.risk_bound:.4f}; answered by "
              f"{dict(zip(names, (round(a, 3) for a in fit.acceptance)))}"
              + (f", skipped {fit.skipped:.1%}" if skip else "") + f"; cost vs always-{names[-1]} {fit.cost_ratio:.2f}")
    if checkpointed is not None:
        print(format_calibrated(checkpointed, artifact["figures"], grouped, fit, args.alpha, args.target))
    print(f"artifact: {out}\nreport:   {report}")
    return 0


def _verdict(grouped, fit) -> str:
    if grouped is None:
        return "feasible" if fit.feasible else "INFEASIBLE: the policy will always escalate"
    infeasible = [g for g, f in grouped.groups.items() if not f.feasible]
    return "feasible in every group" if not infeasible else \
        f"INFEASIBLE in {', '.join(infeasible)}: those groups always escalate"


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
    prefix = PrefixRules.from_policy(artifact["policy"]) if artifact["policy"].get("checkpoints") else None
    if prefix is not None:
        check_checkpointable(len(config.tiers), artifact["target"], artifact["delta"])
    timing = read_timing(args.timing_from, [t.name for t in config.tiers]) if args.timing_from else None
    records = collect(config, items, batch_size=args.batch_size)
    needs_embedding = policy.needs_embedding or (prefix is not None and prefix.needs_embedding)
    embeddings = prompt_embeddings(items) if needs_embedding else None
    data = calibration_data(config, records, items, policy.rules, policy.skip, embeddings)
    group_by = (artifact.get("dataset") or {}).get("group_by")
    labels = [group_of(item, group_by or "group", config.tiers[0].sampling.max_tokens) for item in items]
    figures = evaluate_policy(data, policy, artifact["target"], [t.name for t in config.tiers],
                              labels if group_by else None)
    configs = figures.pop("configs")
    figures["groups"] = group_table(data, labels, configs, artifact["target"])
    if group_by and group_by != "source":  # what each source got from the groups' thresholds
        figures["sources"] = breakdown(data, [item.source for item in items], labels, configs, artifact["target"])
    figures.update(dataset=dataset, split=args.split, alpha=artifact["alpha"], delta=artifact["delta"],
                   guarantee=guarantee_statement(artifact), artifact=str(args.artifact), group_by=group_by)
    if prefix is not None:
        evaluate_deployed_checkpoints(figures, artifact, config, records, items, policy, prefix, labels, group_by,
                                      embeddings, timing)
    print(format_evaluation(figures, artifact["alpha"]))
    print(("per group (calibrated per group):" if group_by else
           "per source (one policy for the mix; no per-group guarantee):"))
    print(format_groups(figures["groups"], artifact["alpha"]))
    if "sources" in figures:
        print("per source (a figure: the guarantee is per group):")
        print(format_groups(figures["sources"], artifact["alpha"]))
    if prefix is not None:
        print(format_checkpointed(figures["checkpoints"], artifact["alpha"]))
    if args.json:
        _write_json(Path(args.json), figures)
    return 0


def register_calibrate(sub) -> None:
    p = sub.add_parser("calibrate", help="choose a deferral rule and fit its thresholds with a conformal guarantee")
    p.add_argument("--config", help="cascade YAML (default: the embedded default cascade)")
    p.add_argument("--dataset", help="built-in dataset name (or 'mixed') or a JSONL file")
    p.add_argument("--from-log", nargs="+", metavar="DECISIONS.jsonl",
                   help="calibrate on the requests a server logged (vcascade serve --decision-log; oldest file "
                        "first), labelled by feedback where given, else by agreement with the last tier's answer")
    p.add_argument("--feedback", nargs="+", metavar="FEEDBACK.jsonl",
                   help="with --from-log: the server's feedback files (<decision log>.feedback.jsonl)")
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
    p.add_argument("--group-by", choices=GROUP_FIELDS,
                   help="fit thresholds per group so that each group's risk is <= α: 'group' (the items' group "
                        "field, else their source), 'source', or 'length' (short / long answer budget: a function "
                        "of the request, so clients need not name a group)")
    p.add_argument("--delta-split", default="per-group", choices=DELTA_SPLITS,
                   help="with --group-by: each group at δ ('per-group', default) or at δ/G so that all groups "
                        "hold at once with probability >= 1 - δ ('bonferroni')")
    p.add_argument("--checkpoints", metavar="K1,K2,...",
                   help="also decide inside the small tier's answer (two-tier cascades, learned rules): train a "
                        "prefix rule per token count (e.g. " + ",".join(map(str, DEFAULT_CHECKPOINTS)) + ") and "
                        "certify commit / escalate thresholds at every checkpoint together with the end and skip "
                        "thresholds (fixed-sequence Learn-then-Test); off by default")
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
    p.add_argument("--timing-from", metavar="SUMMARY.json",
                   help="a checkpointed artifact's costs also in engine seconds, from a benchmark summary's per-tier "
                        "timing model (e.g. results/deferral-long/summary.json)")
    p.add_argument("--force-artifact", action="store_true")
    p.set_defaults(func=cmd_evaluate)
