"""Write the README's Results section from the committed result files.

Reads ``results/calibration/default_mixed_long-test.json`` (``make calibrate``; the
short-answer ``default_mixed-test.json`` of earlier defaults when absent),
``results/deferral-long/summary.json`` and ``results/serving-long/summary.json`` (the long-form
runs of ``make bench-deferral`` / ``make bench-serve``), the default
artifact's price of the guarantee, ``results/deferral/summary.json`` (``make
bench-deferral``), ``results/serving/summary.json`` (``make bench-serve``) and
``results/remote/summary.json`` (``benchmarks/remote_parity.py``), ``results/controller/summary.json``
(``make bench-controller``) and ``results/dtype/summary.json`` (``make bench-dtype``; left out
until it has been run on an idle machine), and replaces what stands
between ``<!-- results:start -->`` and ``<!-- results:end -->`` in README.md. A missing file
leaves its part out and says which command makes it. Run by ``make bench-deferral`` and
``make bench-serve``; by hand: ``python benchmarks/readme_results.py``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from deferral import is_single_signal  # the benchmark's own notion of a single signal

from vcascade.engine.artifact import guarantee_statement

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- results:start -->", "<!-- results:end -->"


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _pct(x: float) -> str:
    return f"{100 * x:.0f} %"


def _share(x: float) -> str:
    """A percentage with the digits a small share needs (0.03 %, 4 %)."""
    return f"{100 * x:.2f} %" if x < 0.01 else _pct(x)


def calibrated_section(test: dict, artifact: dict) -> list[str]:
    """The default cascade on held-out items, and the price of the per-deployment guarantee."""
    alone = test["tiers_alone"]
    small, large = list(alone)
    lines = [f"**The default cascade on {test['n']} held-out `{test['dataset']}` items** "
             f"(`make calibrate`; guarantee: *{guarantee_statement(artifact)}*; the loss column is that joint "
             f"probability, realized; among the items the large tier gets right the cascade loses "
             f"{test['quality_loss'] / alone[large]['accuracy']:.1%} — a figure, not a guarantee):", "",
             "| | accuracy | quality loss vs always-large | escalated | skipped tier 0 | cost (tokens × price) vs always-large |",
             "|---|---|---|---|---|---|",
             f"| cascade | {test['accuracy']:.3f} | {test['quality_loss']:.4f} | {_pct(test['escalated'])} | "
             f"{_pct(test['skipped'])} | {test['cost_ratio']:.2f} |"]
    for name in (small, large):
        lines.append(f"| {name} alone | {alone[name]['accuracy']:.3f} | | | | {alone[name]['cost_ratio']:.2f} |")
    price = artifact.get("price_of_guarantee")
    if price:
        deployed = "no-guarantee" in price  # priced as deployed (skip rule included) since the scope work
        lines += ["", "Price of the guarantee on the calibration split (same rule, same data"
                  + ("; the deployed form, skip rule included" if deployed else
                     "; **priced without the skip rule**: the committed artifact predates pricing the deployed "
                     "policy, `make calibrate` reprices it") + "). The bootstrap spread — the share of "
                  "resampled calibrations above α — is shown for the marginal form only: for a δ-fit it is ≤ δ "
                  "by construction.", "",
                  "| fit | threshold | escalated | cost vs always-large | resampled fits above α | 90th pct. risk |",
                  "|---|---|---|---|---|---|"]
        for kind, fit in price.items():
            if kind == "no-guarantee":
                label = "no guarantee (empirical risk ≤ α)"
            else:
                label = "marginal (CRC, `--delta none`)" if fit["delta"] is None else f"(α, δ = {fit['delta']})"
            spread = fit.get("spread") if fit["delta"] is None and kind != "no-guarantee" else None
            above = f"{_pct(spread['share_above_alpha'])} | {spread['risk_q90']:.4f}" if spread else "- | -"
            lines.append(f"| {label} | {fit['threshold']:.4f} | {_pct(fit['escalated'])} | {fit['cost_ratio']:.3f} | "
                         f"{above} |")
    return lines


def deferral_section(summary: dict, artifact: dict | None = None) -> list[str]:
    """Every rule against random and the oracle on the mixed workload (the headline rows)."""
    mixed = summary["table"][summary["dataset"]]["rules"]
    chosen = summary["chosen_rule"]
    current = artifact["policy"]["rules"][0]["name"] if artifact else chosen
    chosen_note = "(chosen by `make calibrate`)" if current == chosen else \
        f"(the rule of the default this run was made with; today's default uses `{current}`)"
    best_signal = max(filter(is_single_signal, mixed), key=lambda name: mixed[name]["gain_share"])
    rows = ["oracle", "random", *[n for n in mixed if "reference" in n], chosen, best_signal, "min_logprob",
            *[n for n in mixed if "vsr:" in n]]
    notes = {chosen: chosen_note, best_signal: "(best single signal)",
             "min_logprob": "(the previous default)"}
    lines = [f"**Deferral rules** (`make bench-deferral`; {summary['n_held_out']} held-out `{summary['dataset']}` "
             f"items; cost relative to always-large at quality loss ≤ {summary['alpha']}):", "",
             "| rule | share of the oracle's gain | APGR | CPT(50 %) | cost @α (tokens) | cost @α (engine seconds) |",
             "|---|---|---|---|---|---|"]
    for name in dict.fromkeys(name for name in rows if name in mixed):
        row = mixed[name]
        label = f"`{name}` {notes.get(name, '')}".strip() if name not in ("oracle", "random") else name
        lines.append(f"| {label} | {row['gain_share']:.2f} | {row['apgr']:.2f} | {_pct(row['cpt50'])} | "
                     f"{row['cost_at_alpha']:.2f} | {row['cost_at_alpha_seconds']:.2f} |")
    wins = sum(1 for name, table in summary["table"].items() if name != summary["dataset"]
               and table["rules"][chosen]["gain_share"] > max(
                   row["gain_share"] for rule, row in table["rules"].items() if is_single_signal(rule)))
    lines += ["", f"The chosen learned rule beats the best single signal (picked per set in hindsight) on {wins} of "
              f"{len(summary['table']) - 1} built-in sets; per-set tables in "
              "[results/deferral/summary.md](results/deferral/summary.md)."]
    return lines


def serving_section(summary: dict) -> list[str]:
    """Cascade / always-large ratios per load, accuracy of each system, controller overhead."""
    machine = summary["machine"]
    results, ratios = summary["results"], summary["ratios"]
    lines = [f"**Serving** (`make bench-serve`, {summary['created']}: {machine['cores']} CPU cores "
             f"({machine['cpu']}), no GPU; `vllm bench serve`, {summary['num_prompts']} held-out prompts per run, "
             "each system alone on the same cores). Ratios cascade / always-large:", "",
             "| load | req/s | TTFT p50 | TTFT p99 | E2E p50 | E2E p99 | accuracy large / small / cascade | escalated | controller CPU / generation | controller CPU ms/req |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for run in summary["runs"]:
        ratio = ratios[run]["vs always-large"]
        cascade = results["cascade"][run]
        inside = cascade.get("cascade", {})
        lines.append(
            f"| {run} | {ratio['request_throughput']:.2f} | {ratio['median_ttft_ms']:.2f} | {ratio['p99_ttft_ms']:.2f} | "
            f"{ratio['median_e2el_ms']:.2f} | {ratio['p99_e2el_ms']:.2f} | "
            f"{results['always-large'][run]['accuracy']:.2f} / {results['always-small'][run]['accuracy']:.2f} / "
            f"{cascade['accuracy']:.2f} | {_pct(inside.get('escalated', float('nan')))} | "
            f"{_share(inside.get('overhead_share_of_generation', float('nan')))} | "
            f"{inside.get('overhead_ms_per_request', float('nan')):.1f} |")
    lines += ["", "Full figures, TPOT/ITL, ratios vs always-small and plots in "
              "[results/serving/summary.md](results/serving/summary.md)."]
    return lines


def groups_section(summary: dict) -> list[str]:
    """Per-group guarantees: held-out loss per source, price next to the mix's policy, validity."""
    g, m = summary["evaluate"]["grouped"], summary["evaluate"]["mix"]
    valid = summary["validity"]
    grouped_fail = valid["per-group fit"]["failing_groups"]
    mix_fail = valid["one fit for the mix"]["failing_groups"]
    worst = max(g["groups"].items(), key=lambda kv: kv[1]["quality_loss"])
    worst_mix = max(m["groups"].items(), key=lambda kv: kv[1]["quality_loss"])
    lines = [f"**Per-group guarantees** (`python benchmarks/groups.py`; {summary['n_items']} `mixed` items, group = "
             f"source, calibrated on {summary['n_calibration']}, {g['n']} held out — about "
             f"{g['n'] // len(g['groups'])} per source, so a realized loss carries a standard error of about "
             f"{summary['held_out_se']:.3f}):", "",
             "| policy | held-out quality loss (all) | worst source | escalated | cost vs always-large |",
             "|---|---|---|---|---|",
             f"| `--group-by group` (each source ≤ α w.p. ≥ 90 %) | {g['quality_loss']:.4f} | "
             f"{worst[0]} {worst[1]['quality_loss']:.4f} | {_pct(g['escalated'])} | {g['cost_ratio']:.2f} |",
             f"| one policy for the mix | {m['quality_loss']:.4f} | {worst_mix[0]} {worst_mix[1]['quality_loss']:.4f} | "
             f"{_pct(m['escalated'])} | {m['cost_ratio']:.2f} |", "",
             f"Validity over {valid['per-group fit']['splits']} random splits of the real cached generations: "
             f"per-group fits exceed α in more than δ (+ noise) of the calibrations for "
             f"{', '.join(grouped_fail) or 'no source'}; one fit for the mix does for {', '.join(mix_fail) or 'no source'}. "
             "Per-source tables in [results/groups/summary.md](results/groups/summary.md)."]
    return lines


def remote_section(summary: dict) -> list[str]:
    diff = summary["token_logprob_abs_diff"]
    return [f"**Remote tier parity** (`benchmarks/remote_parity.py`): {summary['n']} held-out `{summary['dataset']}` "
            f"items through `{summary['tier']}` in-process and behind `vllm serve`: accuracy "
            f"{summary['accuracy_in_process']:.3f} vs {summary['accuracy_remote']:.3f}, identical answers "
            f"{_pct(summary['identical_answers'])}, per-token |Δ logprob| mean {diff['mean']:.4f}, "
            f"p99 {diff['p99']:.4f}, max {diff['max']:.4f} (bf16 kernels batch differently)."]


def controller_section(summary: dict) -> list[str]:
    """The controller's own work over instant tiers: decisions/s and added CPU per policy."""
    m, results, added = summary["machine"], summary["results"], summary["added"]
    levels = [str(c) for c in summary["concurrency"]]
    lines = [f"**Controller** (`make bench-controller`, {summary['created']}: {m['cores']} cores ({m['cpu']}), shared "
             f"machine; instant tiers, so only vcascade's own work is measured; client: {summary['client']}). "
             "Decisions/s and server CPU ms per request; added = policy − the no-scoring floor, same run:", "",
             "| policy | " + " | ".join(f"decisions/s @{c}" for c in levels) + " | CPU ms/req added @1 / @64 "
             "| p50 ms added @1 |", "|---|" + "---|" * len(levels) + "---|---|"]
    for policy, rows in results.items():
        figures = " | ".join(f"{rows[c]['decisions_per_s']:.0f}" for c in levels)
        if policy == "floor":
            lines.append(f"| floor (HTTP + rendering) | {figures} | ({rows[levels[0]]['server_cpu_ms']:.2f} ms/req) | |")
            continue
        a = added[policy]
        mid = "64" if "64" in a else levels[-1]
        lines.append(f"| {policy} | {figures} | {a[levels[0]]['server_cpu_ms']:.2f} / {a[mid]['server_cpu_ms']:.2f} | "
                     f"{a[levels[0]]['p50_ms']:.2f} |")
    lines += ["", "`default` reads each prompt's static MiniLM token vectors (Model2Vec; what the committed "
              "artifact was trained on); `minilm` is the previous default, the same calibration over MiniLM sentence "
              "embeddings run in the server process. "
              "CPU by part in [results/controller/summary.md](results/controller/summary.md)."]
    return lines


def features_section(summary: dict) -> list[str]:
    """Held-out quality of the default calibration per prompt-feature option, over split seeds."""
    seeds = summary["seeds"]
    lines = [f"**Prompt features** (`python benchmarks/prompt_features.py`, {summary['created']}): the `make calibrate` "
             f"job per prompt-feature option and split seed ({len(seeds)} seeds), each scored on its held-out items; "
             "cost vs always-1.5B:", "",
             "| option | mean held-out loss | mean cost | long / short loss | groups above α | cost − minilm (paired) |",
             "|---|---|---|---|---|---|"]
    for option, t in summary["options"].items():
        m, d = t["mean"], t.get("cost_minus_minilm")
        diff = f"{d['mean']:+.3f} ± {d['stderr']:.3f}" if d and d.get("stderr") is not None else "–"
        lines.append(f"| `{option}` | {m['loss']:.3f} | {m['cost']:.3f} | {m['long_loss']:.3f} / {m['short_loss']:.3f} | "
                     f"{t['groups_above_alpha']} of {t['group_draws']} | {diff} |")
    lines += ["", "Per seed in [results/prompt-features/summary.md](results/prompt-features/summary.md)."]
    return lines


def dtype_section(summary: dict) -> list[str]:
    """Raw vLLM tokens/s, bf16 vs float32, per default model."""
    c, batch = summary["cpu"], summary["batch"]
    lines = [f"**Engine dtype** (`make bench-dtype`, {summary['created']}: {c['model_name']}, native bf16 flags: "
             f"{', '.join(c['bf16_flags']) or 'none'}; `dtype: auto` → {c['auto']}). Raw vLLM output tokens/s, greedy, "
             f"≤ {summary['max_tokens']} tokens, factual questions:", "",
             f"| model | bf16 batch 1 | bf16 batch {batch} | float32 batch 1 | float32 batch {batch} |", "|---|---|---|---|---|"]
    by = {}
    for r in summary["runs"]:
        by.setdefault(r["model"], {})[r["dtype"]] = r
    for model, runs in by.items():
        cells = []
        for dtype in ("bfloat16", "float32"):
            r = runs.get(dtype)
            cells += ([f"{r['batch_1']['tokens_per_s']:.1f}", f"{r[f'batch_{batch}']['tokens_per_s']:.1f}"] if r
                      else ["–", "–"])
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return lines


LONG_SETS = ("gsm8k_cot", "math500", "mbpp", "humaneval", "long-form")


def long_form_section(deferral: dict, serving: dict | None) -> list[str]:
    """The default on held-out long-form items, per set: accuracy, loss, escalation, cost in
    tokens and engine seconds next to the oracle; deferral rules on the long-form items; the
    long-form serving run."""
    deployed = next((c for label, c in deferral["calibrated"].items() if label.startswith("artifact as deployed")),
                    None)
    alpha = deferral["alpha"]
    lines = [f"**Long-form requests** (worked reasoning and code, each item with its own system turn and "
             f"`max_tokens`; held-out items of `{deferral['dataset']}`, from `make bench-deferral` of "
             f"{deferral.get('created', 'an earlier day')}, which routes by the end-only per-length-group "
             f"thresholds of the default it ran with (the checkpointed default's per-set figures are in the table "
             f"above); cost relative to always-large, in tokens × price and in engine seconds). The guarantee "
             f"bounds the quality loss by α = {alpha} in each answer-length group — **long-form** is the long "
             "group's held-out items, the last row all of them; every other row is one set's figure, which "
             "a guarantee per length group does not bound:", "",
             "| set | n | accuracy small / large / cascade | quality loss | escalated | skipped | cost (tokens) | "
             "cost (engine s) | oracle at the same loss (engine s) |", "|---|---|---|---|---|---|---|---|---|"]
    if deployed:
        rows = [(g, deployed["groups"][g]) for g in LONG_SETS if g in deployed["groups"]]
        rows += [(g, deployed["groups"][g]) for g in deployed["groups"] if g not in LONG_SETS and g != "long-form"]
        rows.append(("all held-out (short + long)", deployed))
        for name, g in rows:
            bold = "**" if name == "long-form" else ""
            lines.append(f"| {bold}{name}{bold} | {g['n']} | {g['small_accuracy']:.2f} / {g['large_accuracy']:.2f} / "
                         f"{g['accuracy']:.2f} | {g['quality_loss']:.3f} | {_pct(g['escalated'])} | "
                         f"{_pct(g['skipped'])} | {g['cost_tokens']:.2f} | {g['cost_seconds']:.2f} | "
                         f"{g['oracle_cost_seconds_at_same_quality_loss']:.2f} |")
    table = deferral["table"].get("long-form")
    if table:
        rules = table["rules"]
        chosen = deferral["chosen_rule"]
        best_signal = max(filter(is_single_signal, rules), key=lambda name: rules[name]["gain_share"])
        lines += ["", f"Deferral rules on the {table['n']} held-out long-form items (share of the oracle's gain over "
                  "random deferral; cost at quality loss ≤ α):", "",
                  "| rule | gain share | APGR | cost @α (tokens) | cost @α (engine s) |", "|---|---|---|---|---|"]
        for name, note in ((chosen, " (the default's)"), (best_signal, " (best single signal)"), ("oracle", ""),
                           ("random", "")):
            row = rules[name]
            lines.append(f"| `{name}`{note} | {row['gain_share']:.2f} | {row['apgr']:.2f} | {row['cost_at_alpha']:.2f} "
                         f"| {row['cost_at_alpha_seconds']:.2f} |")
    if serving:
        lines += ["", f"Serving the long-form requests (`make bench-serve`, {serving['created']}; "
                  f"{serving['num_prompts']} held-out long-form prompts per run, each with its own `max_tokens`):", "",
                  "| load | vs | req/s | TTFT p50 | TTFT p99 | E2E p50 | E2E p99 | accuracy of the cascade / that tier |",
                  "|---|---|---|---|---|---|---|---|"]
        for run in serving["runs"]:
            for other in ("always-large", "always-small"):
                ratio = serving["ratios"][run][f"vs {other}"]
                lines.append(f"| {run} | {other} | {ratio['request_throughput']:.2f} | {ratio['median_ttft_ms']:.2f} | "
                             f"{ratio['p99_ttft_ms']:.2f} | {ratio['median_e2el_ms']:.2f} | {ratio['p99_e2el_ms']:.2f} | "
                             f"{serving['results']['cascade'][run]['accuracy']:.2f} / "
                             f"{serving['results'][other][run]['accuracy']:.2f} |")
        lines += ["", "Ratios cascade / that system; full figures in "
                  "[results/serving-long/summary.md](results/serving-long/summary.md)."]
    return lines


def checkpoint_section(test: dict) -> list[str]:
    """The checkpointed default against the certified end-only fit on the same held-out items."""
    ck = test["checkpoints"]
    fit = ck["end_only_fit"]
    early = ck["early_tokens"]
    lines = [f"**Deciding mid-generation** (the default's checkpoints at {', '.join(map(str, ck['tokens']))} tokens of "
             f"the small tier's answer; {test['n']} held-out items, per answer-length group and all together). "
             "*end-only* is the certified end-only fit on the same calibration split (skip + end rule, no "
             "checkpoints); cost relative to always-large in tokens × price; *early* is the share of escalations "
             f"decided within {early} small-tier tokens among the requests that started the small tier (– when "
             "none of them escalated; a skip decides at 0); *wasted* is small-tier tokens generated per escalated "
             "request:", "",
             "| traffic | n | quality loss (checkpointed / end-only) | cost (checkpointed / end-only) | "
             "committed mid-generation | skipped | early (checkpointed / end-only) | wasted (checkpointed / end-only) |",
             "|---|---|---|---|---|---|---|---|"]

    def early_share(figures: dict) -> str:
        started = figures["escalated"] - figures["skipped"]
        return _pct(figures["started_escalated_early_share"]) if started * figures["n"] >= 0.5 else "–"

    rows = [(g, ck["groups"][g], fit["groups"][g]) for g in sorted(ck["groups"])] + [("all", ck["pooled"], fit["pooled"])]
    rows += [(f"{g} (a set of the long group)", ck["sources"][g], fit["sources"][g])
             for g in LONG_SETS if g in ck.get("sources", {}) and g in fit.get("sources", {})]
    for name, c, e in rows:
        lines.append(f"| {name} | {c['n']} | {c['quality_loss']:.3f} / {e['quality_loss']:.3f} | "
                     f"{c['cost_ratio']:.3f} / {e['cost_ratio']:.3f} | {_pct(c['committed'])} | "
                     f"{_pct(c['skipped'])} | {early_share(c)} / {early_share(e)} | {c['wasted_tokens_mean']:.1f} / "
                     f"{e['wasted_tokens_mean']:.1f} |")
    return lines


def render(root: Path = ROOT) -> str:
    """The Results section's markdown."""
    test = _load(root / "results/calibration/default_mixed_long-test.json") or \
        _load(root / "results/calibration/default_mixed-test.json")
    artifact = _load(root / "engine/default_cascade.artifact.json")
    deferral = _load(root / "results/deferral/summary.json")
    serving = _load(root / "results/serving/summary.json")
    remote = _load(root / "results/remote/summary.json")
    controller = _load(root / "results/controller/summary.json")
    dtype = _load(root / "results/dtype/summary.json")
    features = _load(root / "results/prompt-features/summary.json")
    groups = _load(root / "results/groups/summary.json")
    deferral_long = _load(root / "results/deferral-long/summary.json")
    serving_long = _load(root / "results/serving-long/summary.json")
    parts = [
        calibrated_section(test, artifact) if test and artifact else _missing("make calibrate"),
        *([checkpoint_section(test)] if test and test.get("checkpoints") else []),
        long_form_section(deferral_long, serving_long) if deferral_long else _missing("make bench-deferral"),
        deferral_section(deferral, artifact) if deferral else _missing("make bench-deferral"),
        serving_section(serving) if serving else _missing("make bench-serve"),
        groups_section(groups) if groups else _missing("python benchmarks/groups.py"),
        remote_section(remote) if remote else _missing("python benchmarks/remote_parity.py"),
        controller_section(controller) if controller else _missing("make bench-controller"),
        *([features_section(features)] if features else []),
    ]
    if dtype:
        parts.append(dtype_section(dtype))
    body = "\n\n".join("\n".join(part) for part in parts)
    return f"## Results\n\n{body}\n"


def _missing(command: str) -> list[str]:
    return [f"*(no results yet: run `{command}`)*"]


def update_readme(readme: Path = ROOT / "README.md") -> None:
    text = readme.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{readme}: the markers {START} / {END} are missing")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{render(readme.parent)}{END}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = parser.parse_args()
    update_readme(args.readme)
    print(f"updated the Results section of {args.readme}")


if __name__ == "__main__":
    main()
