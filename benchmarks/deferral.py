"""Does deferral pay? Every deferral rule against random deferral and the oracle, per dataset.

On the mixed workload (equal shares of the built-in sets, shuffled) split as ``vcascade
calibrate`` splits it — calibration items (train / select / calibrate) and held-out items —
every rule is scored on the held-out items of each source and of the whole mixture:

* reference rules: **random** deferral and the **oracle** (escalate exactly when the small
  tier is wrong and the large one right)
* every built-in signal, and the anchors' rules: Chow-Sum / Chow-Average / Chow-Quantile
  (Gupta et al., ICLR 2024: ``sum_logprob``, ``mean_logprob``, ``quantile:q``) and vLLM
  Semantic Router's ``avg_logprob``, ``margin`` and ``hybrid`` confidence (with the
  operating point of their published default thresholds)
* learned rules (``calibration.learning``) trained on the train split

Metrics (``calibration.metrics``): share of the oracle's gain over random deferral, APGR and
CPT(50 %)/CPT(80 %) as RouteLLM defines them, and the cost at quality loss <= α — as tokens ×
cost per token and as engine seconds, from a timing pass in this run (each tier alone on
all cores, the same fixed sample of each source, fitted per tier as seconds ≈ a + b·prompt
tokens + c·output tokens). Then the calibrated cascades on held-out items: the committed
artifact's policy (learned rule + skip) and the previous default (``min_logprob``), each
fitted on the calibrate split at (α, δ), next to the oracle at the same quality loss.

    python benchmarks/deferral.py [--n-calibration 4800] [--alpha 0.05] [--out results/deferral]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
from scipy.optimize import nnls

from vcascade.calibration.conformal import CalibrationData, fit_thresholds, routing
from vcascade.calibration.datasets import load_dataset, split, to_request
from vcascade.calibration.embeddings import prompt_embeddings
from vcascade.calibration.job import calibration_data, collect, correctness, rule_scores, token_costs
from vcascade.calibration.metrics import deferral_curve, deferral_metrics, oracle_scores
from vcascade.calibration.selection import LOGPROB_SIGNALS, _learned_candidates, three_way_split
from vcascade.engine.artifact import policy_from_artifact, read_artifact
from vcascade.engine.config import load_config
from vcascade.engine.runtime import run
from vcascade.engine.uncertainty.rules import SignalRule
from vcascade.engine.uncertainty.signals import VSR_DEFAULT_THRESHOLDS

REFERENCE = "source gain rate (reference)"


def is_single_signal(rule: str) -> bool:
    """A built-in signal: not a learned rule, not the random/oracle bounds, not the reference row."""
    return not rule.startswith("learned") and rule not in ("random", "oracle", REFERENCE)
ANCHORS = {"sum_logprob": "Chow-Sum", "mean_logprob": "Chow-Average", "quantile:0.1": "Chow-Quantile 0.1",
           "quantile:0.25": "Chow-Quantile 0.25", "min_logprob": "Chow-Quantile 0 (min)",
           "vsr:avg_logprob": "vLLM-SR avg_logprob", "vsr:margin": "vLLM-SR margin", "vsr:hybrid": "vLLM-SR hybrid"}


def timing_pass(config, held_out, per_source: int, batch: int) -> dict:
    """Per tier: seconds ≈ a + b·prompt + c·output tokens per item, fitted (NNLS) on batches of
    ``per_source`` held-out items of every source, each tier alone on all cores."""
    from vcascade.engine.tiers import build_tiers, shutdown_tiers

    sample = {s: [it for it in held_out if it.source == s][:per_source] for s in dict.fromkeys(it.source for it in held_out)}
    models = {}
    for tier_config in config.tiers:
        [tier] = run(build_tiers(config, only=[tier_config.name], warmup_batch=batch))
        rows, seconds = [], []
        for source, items in sample.items():
            for start in range(0, len(items), batch):
                requests = [to_request(it) for it in items[start : start + batch]]
                t = time.perf_counter()
                results = run(tier.generate_many(requests))
                seconds.append(time.perf_counter() - t)
                rows.append([len(results), sum(r.prompt_tokens for r in results),
                             sum(r.completion_tokens for r in results)])
                print(f"  timing {tier.name} {source}: {len(results)} items {seconds[-1]:.1f}s", file=sys.stderr)
        run(shutdown_tiers([tier]))
        A, y = np.array(rows, dtype=float), np.array(seconds)
        coef, _ = nnls(A, y)
        fitted = A @ coef
        r2 = 1 - ((y - fitted) ** 2).sum() / ((y - y.mean()) ** 2).sum()
        models[tier.name] = {"per_item": coef[0], "per_prompt_token": coef[1], "per_output_token": coef[2],
                             "r2": float(r2), "batches": len(rows), "batch_size": batch}
    return models


def seconds_costs(config, records, items, models) -> np.ndarray:
    """Shape (n, K): modelled engine seconds of running tier k on item i."""
    out = np.zeros((len(items), len(config.tiers)))
    for k, tier in enumerate(config.tiers):
        m = models[tier.name]
        for i, item in enumerate(items):
            r = records[k][item.id]["result"]
            out[i, k] = m["per_item"] + m["per_prompt_token"] * r["prompt_tokens"] + \
                m["per_output_token"] * r["completion_tokens"]
    return out


def operating_point(scores, threshold, correct, costs) -> dict:
    """Escalation, accuracy, quality loss and cost of "keep when score >= threshold"."""
    keep = scores >= threshold
    answered = np.where(keep, correct[:, 0], correct[:, -1])
    paid = costs[:, 0] + np.where(keep, 0.0, costs[:, -1])
    return {"threshold": threshold, "escalated": float(1 - keep.mean()), "accuracy": float(answered.mean()),
            "quality_loss": float((~answered & correct[:, -1]).mean()),
            "cost": float(paid.sum() / costs[:, -1].sum())}


def evaluate_fit(data: CalibrationData, fit, correct, tok, sec) -> dict:
    tier, skipped = routing(data, fit.config)
    paid = (np.arange(correct.shape[1])[None, :] <= tier[:, None])
    paid[:, 0] &= ~skipped
    return operating_figures(tier, skipped, paid, correct, tok, sec)


def operating_figures(tier, skipped, paid, correct, tok, sec) -> dict:
    """Loss, accuracy, escalation, skips and cost (tokens × price, engine seconds) of a routing."""
    answered = correct[np.arange(len(tier)), tier]
    return {"quality_loss": float((~answered & correct[:, -1]).mean()), "accuracy": float(answered.mean()),
            "escalated": float((tier > 0).mean()), "skipped": float(skipped.mean()),
            "cost_tokens": float((tok * paid).sum() / tok[:, -1].sum()),
            "cost_seconds": float((sec * paid).sum() / sec[:, -1].sum())}


def oracle_cost_at(correct, costs, quality_loss: float) -> float:
    curve = deferral_curve(oracle_scores(correct), correct, costs)
    ok = curve.quality_loss <= quality_loss + 1e-12
    return float(curve.cost[ok].min())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", help="cascade YAML (default: the embedded default)")
    p.add_argument("--artifact", help="calibrated artifact to evaluate (default: the config's)")
    p.add_argument("--dataset", default="mixed")
    p.add_argument("--n-calibration", type=int, default=4800)
    p.add_argument("--limit", type=int, help="use only the first N items of the dataset (smoke tests)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--delta", type=float, default=0.1)
    p.add_argument("--timing-items", type=int, default=48, help="held-out items per source in the timing pass")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--timing-from", help="reuse the engine-seconds model of an earlier run's summary.json (same "
                                          "machine kind) instead of a timing pass")
    p.add_argument("--out", default="results/deferral")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = load_config(args.config).with_artifact(args.artifact)
    cal, held = split(load_dataset(args.dataset, args.limit), args.n_calibration, args.seed)
    items = cal + held
    records = collect(config, items, batch_size=args.batch_size)
    embeddings = prompt_embeddings(items)
    correct = correctness(records, items)
    tok = token_costs(config, records, items)
    if args.timing_from:
        timing = json.loads(Path(args.timing_from).read_text())["timing"]
        timing = {name: {**m, "from": args.timing_from} for name, m in timing.items()}
    else:
        print("timing pass (each tier alone, all cores)", file=sys.stderr)
        timing = timing_pass(config, held, args.timing_items, args.timing_items)
    sec = seconds_costs(config, records, items, timing)
    splits = three_way_split(len(cal), args.seed)
    held_idx = np.arange(len(cal), len(items))

    learned, refused = _learned_candidates(config, records, items, splits, 0, embeddings, args.seed)
    rules = [SignalRule(n) for n in LOGPROB_SIGNALS + ["quantile:0.5"]] + learned
    scores = {r.name: rule_scores(r, records[0], items, embeddings) for r in rules}
    artifact = read_artifact(config.artifact) if config.artifact else None
    artifact_policy = policy_from_artifact(artifact) if artifact else None
    chosen = artifact_policy.rules[0].name if artifact else None
    if artifact:  # the committed rule itself (frozen), not a retrained copy
        scores[chosen] = rule_scores(artifact_policy.rules[0], records[0], items, embeddings)

    # A reference, not a deployable rule: it knows which dataset each request came from and
    # defers by that dataset's gain rate on the train split (what routing by task type can do).
    sources = np.array([item.source for item in items])
    gain = correct[:, -1] & ~correct[:, 0]
    names = list(dict.fromkeys(item.source for item in items))
    rate = {s: float(gain[splits.train][sources[splits.train] == s].mean()) for s in names
            if (sources[splits.train] == s).any()}
    source_rate = -np.array([rate.get(s, 0.0) for s in sources])
    groups = {"mixed": held_idx, **{s: held_idx[[items[i].source == s for i in held_idx]] for s in names}}
    long_form = held_idx[[items[i].max_tokens is not None for i in held_idx]]  # items with their own budget
    if 0 < len(long_form) < len(held_idx):
        groups["long-form"] = long_form
    table = {}
    for group, idx in groups.items():
        pair, c_tok, c_sec = correct[idx][:, [0, -1]], tok[idx][:, [0, -1]], sec[idx][:, [0, -1]]
        rows = {"random": deferral_metrics(np.zeros(len(idx)), pair, c_tok, args.alpha, {"seconds": c_sec}),
                "oracle": deferral_metrics(oracle_scores(pair), pair, c_tok, args.alpha, {"seconds": c_sec}),
                REFERENCE: deferral_metrics(source_rate[idx], pair, c_tok, args.alpha, {"seconds": c_sec})}
        for name, s in scores.items():
            rows[name] = deferral_metrics(s[idx], pair, c_tok, args.alpha, {"seconds": c_sec})
        for name, threshold in VSR_DEFAULT_THRESHOLDS.items():
            rows[name]["published_default"] = operating_point(scores[name][idx], threshold, pair, c_tok)
        table[group] = {"n": int(len(idx)), "small_accuracy": float(pair[:, 0].mean()),
                        "large_accuracy": float(pair[:, 1].mean()), "rules": rows}

    # the calibrated cascades on held-out items: the artifact's policy, and the previous default
    cascades = {}
    cal_idx = splits.calibrate
    for label, rule_name, use_skip in _policies(artifact):
        rule = artifact_policy.rules[0] if artifact and rule_name == chosen else SignalRule(rule_name)
        skip = artifact_policy.skip if use_skip else None

        def data_for(idx):
            return calibration_data(config, records, [items[i] for i in idx], [rule], skip, embeddings[idx], tok[idx])

        fit = fit_thresholds(data_for(cal_idx), "quality-loss", args.alpha, args.delta, seed=args.seed)
        figures = evaluate_fit(data_for(held_idx), fit, correct[held_idx], tok[held_idx], sec[held_idx])
        for unit, costs in (("tokens", tok), ("seconds", sec)):
            figures[f"oracle_cost_{unit}_at_same_quality_loss"] = oracle_cost_at(correct[held_idx], costs[held_idx],
                                                                                 figures["quality_loss"])
        figures.update(rule=rule.name, skip=skip.name if skip else None, thresholds=fit.thresholds,
                       skip_threshold=fit.skip_threshold, guarantee=fit.guarantee["statement"])
        figures["groups"] = {}
        for group, idx in groups.items():  # the same thresholds, read on each set's held-out items
            if group == "mixed":
                continue
            part = evaluate_fit(data_for(idx), fit, correct[idx], tok[idx], sec[idx])
            part["oracle_cost_seconds_at_same_quality_loss"] = oracle_cost_at(correct[idx], sec[idx],
                                                                              part["quality_loss"])
            part.update(n=int(len(idx)), small_accuracy=float(correct[idx, 0].mean()),
                        large_accuracy=float(correct[idx, -1].mean()))
            figures["groups"][group] = part
        cascades[label] = figures

    if artifact and artifact["policy"].get("groups"):
        cascades["artifact as deployed (its own per-group thresholds)"] = deployed(
            config, records, items, held_idx, groups, artifact_policy, embeddings, correct, tok, sec)

    summary = {"dataset": args.dataset, "n_calibration": len(cal), "n_held_out": len(held), "splits": splits.sizes(),
               "alpha": args.alpha, "delta": args.delta, "chosen_rule": chosen, "timing": timing, "table": table,
               "refused": [r.__dict__ for r in refused], "calibrated": cascades,
               "tiers": [t.name for t in config.tiers], "created": time.strftime("%Y-%m-%d")}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=_json) + "\n")
    (out / "summary.md").write_text(render(summary))
    plot(out, items, held_idx, correct, tok, scores, chosen, args.alpha)
    print(render(summary))
    return 0


def deployed(config, records, items, held_idx, groups, policy, embeddings, correct, tok, sec) -> dict:
    """The committed per-group policy with its own thresholds on the held-out items, overall
    and per set (each item routed by its own group's thresholds, as the server routes it)."""
    from vcascade.calibration.datasets import group_of
    from vcascade.calibration.evaluation import policy_config, route_items

    budget = config.tiers[0].sampling.max_tokens
    group_by = policy.group_by or "group"
    labels = np.array([group_of(item, group_by, budget) for item in items])
    configs = {g: policy_config(policy, g) for g in np.unique(labels)}

    def figures(idx):
        data = calibration_data(config, records, [items[i] for i in idx], list(policy.rules), policy.skip,
                                embeddings[idx], tok[idx])
        tier, skipped, paid = route_items(data, configs, labels[idx])
        out = operating_figures(tier, skipped, paid, correct[idx], tok[idx], sec[idx])
        for unit, costs in (("tokens", tok), ("seconds", sec)):
            out[f"oracle_cost_{unit}_at_same_quality_loss"] = oracle_cost_at(correct[idx], costs[idx],
                                                                             out["quality_loss"])
        out.update(n=int(len(idx)), small_accuracy=float(correct[idx, 0].mean()),
                   large_accuracy=float(correct[idx, -1].mean()))
        return out

    result = figures(held_idx)
    result.update(rule=policy.rules[0].name, skip=policy.skip.name if policy.skip else None,
                  thresholds={g: c for g, c in configs.items()}, skip_threshold=None, guarantee="per group",
                  groups={g: figures(idx) for g, idx in groups.items() if g != "mixed"})
    return result


def _policies(artifact):
    """(label, rule name, use the artifact's skip) for every calibrated cascade to compare."""
    out = []
    if artifact:
        label = "artifact rule, refitted for the mix" if artifact["policy"].get("groups") else "artifact policy"
        out.append((label, artifact["policy"]["rules"][0]["name"], bool(artifact["policy"]["skip"])))
        if artifact["policy"]["skip"]:
            out.append(("artifact rule without skip", artifact["policy"]["rules"][0]["name"], False))
    out.append(("previous default (min_logprob)", "min_logprob", False))
    return out


def _json(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(type(value))


def _f(x, digits=2, pct=False):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.0%}" if pct else f"{x:.{digits}f}"


def render(summary: dict) -> str:
    alpha = summary["alpha"]
    lines = [f"# Deferral: every rule against random and the oracle ({summary['created']})", "",
             f"Cascade {' → '.join(summary['tiers'])}; `{summary['dataset']}` workload, {summary['n_held_out']} "
             f"held-out items (learned rules trained on the {summary['splits']['train']}-item train split, chosen on "
             f"{summary['splits']['select']}); cost at quality loss ≤ α = {alpha}, relative to always calling the "
             f"large tier, in tokens × cost per token and in engine seconds (timing pass in this run).", ""]
    mixed = summary["table"]["mixed"]["rules"]
    names = [n for n in mixed if n not in ("random", "oracle")]
    lines += ["## Mixed workload", "",
              "| rule | gain share | APGR | CPT50 | CPT80 | cost @α (tokens) | cost @α (seconds) | deferred @α |",
              "|---|---|---|---|---|---|---|---|"]
    names = [n for n in names if n != REFERENCE]
    for name in ["oracle", REFERENCE, "random"] + sorted(names, key=lambda n: -_nz(mixed[n]["gain_share"])):
        m = mixed[name]
        label = f"**{name}** (chosen)" if name == summary["chosen_rule"] else ANCHORS.get(name, name)
        label = f"{label} (`{name}`)" if name in ANCHORS else label
        lines.append(f"| {label} | {_f(m['gain_share'])} | {_f(m['apgr'])} | {_f(m['cpt50'], pct=True)} | "
                     f"{_f(m['cpt80'], pct=True)} | {_f(m['cost_at_alpha'])} | {_f(m['cost_at_alpha_seconds'])} | "
                     f"{_f(m['deferred_at_alpha'], pct=True)} |")
    lines += ["", "## Per dataset (held-out items of each source)", "",
              "Share of the oracle's gain; best single signal vs the chosen learned rule; cost at quality loss ≤ α.",
              "", "| dataset | n | small acc | large acc | best signal | its gain share | chosen rule gain share | "
              "best learned | cost @α signal | cost @α chosen | oracle cost @α |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    wins = 0
    for group, entry in summary["table"].items():
        rules = entry["rules"]
        signals = {n: m for n, m in rules.items() if is_single_signal(n)}
        best = max(signals, key=lambda n: _nz(signals[n]["gain_share"]))
        chosen = rules.get(summary["chosen_rule"], {})
        learned = {n: m for n, m in rules.items() if n.startswith("learned")}
        best_learned = max(learned, key=lambda n: _nz(learned[n]["gain_share"])) if learned else None
        if group != "mixed" and chosen and _nz(chosen["gain_share"]) > _nz(signals[best]["gain_share"]):
            wins += 1
        lines.append(f"| {group} | {entry['n']} | {_f(entry['small_accuracy'])} | {_f(entry['large_accuracy'])} | "
                     f"`{best}` | {_f(signals[best]['gain_share'])} | {_f(chosen.get('gain_share'))} | "
                     f"`{best_learned}` {_f(learned[best_learned]['gain_share']) if best_learned else ''} | "
                     f"{_f(signals[best]['cost_at_alpha'])} | {_f(chosen.get('cost_at_alpha'))} | "
                     f"{_f(rules['oracle']['cost_at_alpha'])} |")
    lines += ["", f"The chosen rule beats the best single signal on {wins} of {len(summary['table']) - 1} sets "
              "(the best signal is picked per set in hindsight, on these held-out items).", "",
              f"`{REFERENCE}` knows which dataset each request came from (real traffic does not say) and defers by "
              "that dataset's gain rate on the train split: how much of the oracle's gain routing by task type "
              "alone would capture.", ""]
    lines += ["## Anchors at their published default thresholds (mixed)", "",
              "| rule | default threshold | escalated | accuracy | quality loss | cost (tokens) |", "|---|---|---|---|---|---|"]
    for name in VSR_DEFAULT_THRESHOLDS:
        op = mixed[name]["published_default"]
        lines.append(f"| {ANCHORS[name]} | {op['threshold']} | {_f(op['escalated'], pct=True)} | {_f(op['accuracy'])} "
                     f"| {_f(op['quality_loss'], 3)} | {_f(op['cost'])} |")
    lines += ["", f"## Calibrated cascades on held-out items (quality-loss, α = {alpha}, δ = {summary['delta']})", "",
              "| policy | realized quality loss | accuracy | escalated | skipped | cost (tokens) | cost (seconds) | "
              "oracle cost at same loss (tokens / seconds) |", "|---|---|---|---|---|---|---|---|"]
    for label, c in summary["calibrated"].items():
        lines.append(f"| {label}: `{c['rule']}`{' + skip `' + c['skip'] + '`' if c['skip'] else ''} | "
                     f"{_f(c['quality_loss'], 4)} | {_f(c['accuracy'])} | {_f(c['escalated'], pct=True)} | "
                     f"{_f(c['skipped'], pct=True)} | {_f(c['cost_tokens'])} | {_f(c['cost_seconds'])} | "
                     f"{_f(c['oracle_cost_tokens_at_same_quality_loss'])} / "
                     f"{_f(c['oracle_cost_seconds_at_same_quality_loss'])} |")
    for label, c in summary["calibrated"].items():
        if not c.get("groups"):
            continue
        lines += ["", f"### {label}: per set (the same thresholds, held-out items of each set)", "",
                  "| set | n | small acc | large acc | cascade acc | quality loss | escalated | skipped | "
                  "cost (tokens) | cost (seconds) | oracle cost at same loss (seconds) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for group, g in c["groups"].items():
            mark = " ⚠" if g["quality_loss"] > alpha else ""
            lines.append(f"| {group} | {g['n']} | {_f(g['small_accuracy'])} | {_f(g['large_accuracy'])} | "
                         f"{_f(g['accuracy'])} | {_f(g['quality_loss'], 3)}{mark} | {_f(g['escalated'], pct=True)} | "
                         f"{_f(g['skipped'], pct=True)} | {_f(g['cost_tokens'])} | {_f(g['cost_seconds'])} | "
                         f"{_f(g['oracle_cost_seconds_at_same_quality_loss'])} |")
        lines.append("\n⚠: above α on that set — the guarantee covers the mix, not each set "
                     "(`vcascade calibrate --group-by` fits each set its own thresholds).")
    timing_note = " (reused from an earlier run)" if any("from" in m for m in summary["timing"].values()) else ""
    lines += ["", f"## Engine-seconds model (timing pass, each tier alone on all cores){timing_note}", "",
              "| tier | s per item | s per prompt token | s per output token | R² |", "|---|---|---|---|---|"]
    for name, m in summary["timing"].items():
        lines.append(f"| {name} | {m['per_item']:.4f} | {m['per_prompt_token']:.6f} | {m['per_output_token']:.5f} | "
                     f"{m['r2']:.2f} |")
    for refusal in summary["refused"]:
        lines.append(f"\n- not trained: `{refusal['name']}`: {refusal['reason']}")
    lines += ["", "![deferral curves](deferral_curves.png)", "![gain share per dataset](gain_share.png)", ""]
    return "\n".join(lines)


def _nz(x) -> float:
    return -math.inf if x is None or (isinstance(x, float) and math.isnan(x)) else x


def plot(out: Path, items, held_idx, correct, tok, scores, chosen, alpha) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pair, costs = correct[held_idx][:, [0, -1]], tok[held_idx][:, [0, -1]]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    shown = ["min_logprob", "mean_logprob", "quantile:0.1", "vsr:margin", "neg_topk_entropy"]
    shown += [n for n in scores if n.startswith("learned")]
    for name in shown:
        c = deferral_curve(scores[name][held_idx], pair, costs)
        lw = 2.5 if name == chosen else 1.2
        axes[0].plot(c.share, c.accuracy, label=name, lw=lw)
        axes[1].plot(c.cost, c.quality_loss, label=name, lw=lw)
    o = deferral_curve(oracle_scores(pair), pair, costs)
    r = deferral_curve(np.zeros(len(held_idx)), pair, costs)
    for ax, (x, y) in zip(axes, ((o.share, o.accuracy), (o.cost, o.quality_loss))):
        ax.plot(x, y, "k--", lw=1, label="oracle")
    axes[0].plot(r.share, r.accuracy, color="grey", ls=":", label="random")
    axes[1].plot(r.cost, r.quality_loss, color="grey", ls=":", label="random")
    axes[1].axhline(alpha, color="red", lw=0.8, ls="--")
    axes[0].set(xlabel="share escalated", ylabel="accuracy", title="Deferral curves (mixed, held-out)")
    axes[1].set(xlabel="cost vs always-large (tokens)", ylabel="quality loss", title="Quality loss vs cost")
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "deferral_curves.png", dpi=110)
    plt.close(fig)
    summary = json.loads((out / "summary.json").read_text())
    groups = [g for g in summary["table"] if g != "mixed"] + ["mixed"]
    best_signal = [max((m["gain_share"] for n, m in summary["table"][g]["rules"].items() if is_single_signal(n)),
                       key=_nz)
                   for g in groups]
    chosen_share = [summary["table"][g]["rules"].get(chosen, {}).get("gain_share", float("nan")) for g in groups]
    fig, ax = plt.subplots(figsize=(10, 4))
    x = np.arange(len(groups))
    ax.bar(x - 0.2, best_signal, 0.4, label="best single signal (chosen per set, in hindsight)")
    ax.bar(x + 0.2, chosen_share, 0.4, label=f"chosen rule ({chosen})")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(x, groups, rotation=30, ha="right")
    ax.set(ylabel="share of the oracle's gain", title="Gain over random deferral, as a share of the oracle's")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "gain_share.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
