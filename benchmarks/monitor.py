"""Monitoring the guarantee offline: the server's ``Monitor`` replayed on cached generations.

Hardware-free: the arrays of the mixed workload that ``benchmarks/groups.py`` saves
(``results/groups/scores.npz``: each item's rule score, skip score, correctness of both
tiers, source); before that file exists, the committed default artifact's own rules
scored on the cached generations of the mixed workload; with ``--synthetic`` (or without
either), a synthetic workload of 8 sources shaped like it. Every run draws a fresh calibration:

1. a random permutation of all items; the first half calibrates — thresholds fitted there
   (``quality-loss`` at α, δ, as ``vcascade calibrate`` fits them, skip rule included) and
   the monitor's reference built from the same items — the rest is the live pool;
2. **in distribution**: the live pool in its permuted order (calibration and live items
   are then exactly exchangeable) through a ``Monitor`` at level ε: a false alarm is any
   alarm at any step;
3. **shifts**, from the live pool with replacement: only one source's items ("only <src>"),
   and half of the traffic from one source ("half <src>"); the number of requests until the
   alarm, per shift;
4. **audits**: each kept answer audited with probability p; at every step the monitor's
   audit bound is compared with the realized quality loss so far (kept, wrong, last tier
   right). Disagreement is the cached answers' normalized mismatch when the cached texts
   can be matched to the arrays' rows (checked against the arrays' correctness), else
   "exactly one tier right" (a lower bound of disagreement that still contains every
   quality-loss item: the bound's guarantee is unchanged, its width optimistic).

Writes ``results/monitor/summary.json`` and ``summary.md``.

    python benchmarks/monitor.py [--runs 200] [--alarm-level 0.01] [--audit-share 0.05] [--synthetic]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from vcascade.calibration.conformal import CalibrationData, fit_thresholds
from vcascade.engine.monitoring import Decision, Monitor, Reference, route
from vcascade.engine.monitoring.reference import reached
from vcascade.engine.monitoring.sequences import audit_log_capital

ROOT = Path(__file__).resolve().parents[1]
ARRAYS = ROOT / "results" / "groups" / "scores.npz"
TARGET, ALPHA, DELTA = "quality-loss", 0.05, 0.1


# ---------------------------------------------------------------- data

def synthetic_arrays(n: int = 1760, seed: int = 0) -> dict:
    """8 sources with their own prompt (skip) score, answer score and correctness rates."""
    rng = np.random.default_rng(seed)
    sources = [f"source{g}" for g in range(8)]
    groups = rng.choice(len(sources), size=n)
    loc = np.linspace(-1.0, 1.0, 8)[groups]
    skip = rng.normal(loc, 0.6)
    score = 0.5 * skip + rng.normal(0.0, 0.7, n)
    right_small = rng.random(n) < 1 / (1 + np.exp(-(1.5 * score)))
    right_large = rng.random(n) < np.where(right_small, 0.9, 0.45)
    return {"scores": score[:, None], "correct": np.stack([right_small, right_large], 1), "costs": np.tile([1.0, 3.0],
            (n, 1)), "skip_scores": skip, "groups": np.array(sources)[groups], "source": "synthetic"}


def real_disagreement(arrays: dict, n_items: int = 2400, n_calibration: int = 1600, seed: int = 0):
    """Per row, is the 0.5B's cached answer not normalized-equal to the 1.5B's? Rebuilds the
    rows of ``benchmarks/groups.py`` (calibration items not used to train, then held-out
    ones) and reads the request-keyed cache; ``None`` when the rows cannot be matched."""
    try:
        from vcascade.calibration import cache
        from vcascade.calibration.datasets import load_dataset, split, to_request
        from vcascade.calibration.scoring import is_correct
        from vcascade.calibration.selection import three_way_split
        from vcascade.engine.artifact import tier_identity
        from vcascade.engine.config import load_config
        from vcascade.engine.uncertainty.answers import normalize

        items = load_dataset("mixed", n=n_items)
        calibration, held_out = split(items, n_calibration, seed)
        train = set(three_way_split(len(calibration), seed).train.tolist())
        rows = [item for i, item in enumerate(calibration) if i not in train] + held_out
        if len(rows) != len(arrays["groups"]):
            return None, f"{len(rows)} rebuilt rows for {len(arrays['groups'])} arrays"
        config = load_config(None)
        texts = []
        for tier in config.tiers:
            cached = cache.read(cache.tier_cache_path(tier_identity(tier, config)))
            texts.append([cached[cache.request_key(to_request(item))]["text"] for item in rows])
        correct = np.array([[is_correct(texts[k][i], item.answers, item.kind, item.options) for k in (0, -1)]
                            for i, item in enumerate(rows)])
        if not np.array_equal(correct, arrays["correct"][:, [0, -1]]):
            return None, "the cached answers' correctness differs from the arrays'"
        return np.array([normalize(a) != normalize(b) for a, b in zip(texts[0], texts[-1])]), None
    except Exception as err:  # noqa: BLE001 - any failure means: use the proxy, and say why
        return None, f"{type(err).__name__}: {err}"


def default_artifact_arrays(n_items: int = 2400) -> dict | None:
    """Arrays of the committed default artifact's own rules (learned deferral rule + skip
    rule) on the first ``n_items`` of the mixed workload whose generations are cached, less
    the items its learned rules were trained on; ``None`` when the cache lacks them."""
    from vcascade.calibration import cache
    from vcascade.calibration.datasets import load_dataset, split, to_request
    from vcascade.calibration.embeddings import prompt_embeddings
    from vcascade.calibration.job import calibration_data
    from vcascade.calibration.selection import three_way_split
    from vcascade.calibration.scoring import is_correct
    from vcascade.engine.artifact import policy_from_artifact, read_artifact, tier_identity
    from vcascade.engine.config import load_config
    from vcascade.engine.uncertainty.answers import normalize

    config = load_config(None)
    artifact = read_artifact(config.artifact)
    meta = artifact["dataset"]
    every = load_dataset(meta["name"])
    calibration, _ = split(every, meta["n_calibration"], meta["seed"])
    trained = {calibration[i].id for i in three_way_split(len(calibration), meta["seed"]).train}
    caches = [cache.read(cache.tier_cache_path(tier_identity(t, config))) for t in config.tiers]
    items = [item for item in every[:n_items] if item.id not in trained
             and all(cache.request_key(to_request(item)) in c for c in caches)]
    if len(items) < 200:
        return None
    records = [{item.id: {"result": c[cache.request_key(to_request(item))],
                          "correct": is_correct(c[cache.request_key(to_request(item))]["text"], item.answers,
                                                item.kind, item.options)} for item in items} for c in caches]
    policy = policy_from_artifact(artifact, config.artifact)
    embeddings = prompt_embeddings(items) if policy.needs_embedding else None
    data = calibration_data(config, records, items, policy.rules, policy.skip, embeddings)
    texts = [[r[item.id]["result"]["text"] for item in items] for r in records]
    return {"scores": data.scores, "correct": data.correct, "costs": data.costs,
            "skip_scores": data.skip_scores, "groups": np.array([item.source for item in items]),
            "disagree": np.array([normalize(a) != normalize(b) for a, b in zip(texts[0], texts[-1])]),
            "disagreement_source": "cached answers, normalized mismatch",
            "source": f"the committed default artifact's rules on {len(items)} cached `mixed` items (first "
                      f"{n_items} of the workload, less those its learned rules were trained on)"}


def load_arrays(path: Path, synthetic: bool) -> dict:
    if not synthetic and not path.is_file():
        arrays = default_artifact_arrays()
        if arrays is not None:
            return arrays
    if synthetic or not path.is_file():
        arrays = synthetic_arrays()
        arrays["disagree"] = arrays["correct"][:, 0] != arrays["correct"][:, -1]
        arrays["disagreement_source"] = "exactly one tier right (synthetic workload)"
        return arrays
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["source"] = str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    if arrays["skip_scores"].size == 0:
        arrays["skip_scores"] = None
    arrays["groups"] = arrays["groups"].astype(str)
    sizes = {}
    summary = path.with_name("summary.json")  # benchmarks/groups.py records the sizes it used
    if summary.is_file():
        recorded = json.loads(summary.read_text())
        sizes = {"n_items": recorded.get("n_items", 2400), "n_calibration": recorded.get("n_calibration", 1600)}
    disagree, why = real_disagreement(arrays, **sizes)
    if disagree is None:
        arrays["disagree"] = arrays["correct"][:, 0] != arrays["correct"][:, -1]
        arrays["disagreement_source"] = f"exactly one tier right (cached texts not matched: {why})"
    else:
        arrays["disagree"] = disagree
        arrays["disagreement_source"] = "cached answers, normalized mismatch"
    return arrays


# ---------------------------------------------------------------- one run

def fit_policy(arrays: dict, idx: np.ndarray, seed: int):
    skip = arrays["skip_scores"]
    data = CalibrationData(arrays["scores"][idx], arrays["correct"][idx], arrays["costs"][idx],
                           None if skip is None else skip[idx])
    fit = fit_thresholds(data, TARGET, ALPHA, DELTA, seed=seed)
    thresholds = tuple(math.inf if t is None else float(t) for t in fit.thresholds)
    has_skip = skip is not None
    return SimpleNamespace(thresholds=thresholds, skip=object() if has_skip else None,
                           skip_threshold=float(fit.skip_threshold) if has_skip else None, by_group={})


def replay(arrays: dict, reference: Reference, policy, live: np.ndarray, level: float, share: float, seed: int,
           stop_at_alarm: bool) -> dict:
    """Feed ``live`` rows through a fresh Monitor; returns the first alarm and the audit check."""
    k_tiers = arrays["correct"].shape[1]
    skip = arrays["skip_scores"]
    scores = arrays["scores"][live]
    answered, skipped = route(scores, None if skip is None else skip[live], policy.thresholds, policy.skip_threshold)
    monitor = Monitor(reference, [f"t{k}" for k in range(k_tiers)], alarm_level=level, audit_share=share,
                      feedback=False, seed=seed)
    correct = arrays["correct"][live]
    disagree = arrays["disagree"][live]
    kept = answered < k_tiers - 1
    loss = kept & ~correct[np.arange(live.size), np.minimum(answered, k_tiers - 1)] & correct[:, -1]
    audited = np.zeros(live.size, dtype=bool)
    first = None
    steps = live.size
    for i in range(live.size):
        scored = {k: float(scores[i, k]) for k in range(k_tiers - 1)
                  if reached(answered[i:i + 1], skipped[i:i + 1], k)[0]}
        seen = monitor.observe(Decision(True, int(answered[i]), bool(skipped[i]),
                                        None if skip is None else float(skip[live[i]]), scored))
        if seen.audit:
            audited[i] = True
            monitor.audit_result(seen.seq, bool(disagree[i]))
        if first is None and monitor.alarms:
            first = dict(monitor.alarms[0])
            if stop_at_alarm:
                steps = i + 1
                break
    n = steps
    # the audit bound U_t at every step (a count of disagreements, >= the audited ones): it covers the realized
    # loss L_t when L_t <= a_t, or else when its mixture martingale at S = L_t is still below 1/level
    total_loss = np.cumsum(loss[:n])
    audited_dis = np.cumsum((audited & disagree & kept)[:n])
    covered = True
    if share > 0:
        log_k = audit_log_capital(total_loss, audited_dis, share)
        covered = bool(((total_loss <= audited_dis) | (log_k < math.log(1.0 / monitor.test_level))).all())
    bound = monitor.quality_loss_bound()
    return {"alarm": first, "steps": n, "audit_covered": covered, "realized_loss": float(total_loss[-1] / n),
            "bound": bound.get("upper"), "audited": int(audited[:n].sum()), "first_test": first and first["test"],
            "tests": sorted(monitor.snapshot()["tests"]), "n_tests": monitor.n_tests}


# ---------------------------------------------------------------- the experiment

def experiment(arrays: dict, runs: int, level: float, share: float, shift_steps: int, seed: int,
               extra_levels: tuple[float, ...] = ()) -> dict:
    rng = np.random.default_rng(seed)
    extra_null: dict[float, list[bool]] = {}
    n = len(arrays["groups"])
    sources = sorted(set(arrays["groups"].tolist()))
    null, shifts = [], {f"{kind} {g}": [] for g in sources for kind in ("only", "half")}
    fits = []
    for r in range(runs):
        perm = rng.permutation(n)
        cal, pool = perm[: n // 2], perm[n // 2:]
        policy = fit_policy(arrays, cal, seed=r)
        fits.append([*policy.thresholds, policy.skip_threshold])
        skip = arrays["skip_scores"]
        reference = Reference.build(arrays["scores"][cal], None if skip is None else skip[cal], policy,
                                    disagree=arrays["disagree"][cal][:, None])
        null.append(replay(arrays, reference, policy, pool, level, share, seed=10 * r, stop_at_alarm=False))
        for extra in extra_levels:  # the same in-distribution run at a larger ε: is the level nearly spent?
            extra_null.setdefault(extra, []).append(
                replay(arrays, reference, policy, pool, extra, share, seed=10 * r, stop_at_alarm=True)["alarm"]
                is not None)
        for g in sources:
            own = pool[arrays["groups"][pool] == g]
            if own.size == 0:
                continue
            only = rng.choice(own, size=shift_steps)
            half = np.where(rng.random(shift_steps) < 0.5, rng.choice(own, size=shift_steps),
                            rng.choice(pool, size=shift_steps))
            for kind, live in (("only", only), ("half", half)):
                shifts[f"{kind} {g}"].append(replay(arrays, reference, policy, live, level, share,
                                                    seed=10 * r + 1, stop_at_alarm=True))
        if (r + 1) % 20 == 0:
            print(f"  run {r + 1}/{runs}", file=sys.stderr)
    return {"null": null, "shifts": shifts, "fits": fits, "sources": sources, "n_items": n,
            "extra_null": {str(k): float(np.mean(v)) for k, v in extra_null.items()}}


def summarize(result: dict, runs: int, level: float, share: float, shift_steps: int) -> dict:
    null = result["null"]
    false = [r for r in null if r["alarm"] is not None]
    summary = {"runs": runs, "alarm_level": level, "audit_share": share, "n_items": result["n_items"],
               "n_calibration": result["n_items"] // 2, "live_steps_in_distribution": null[0]["steps"],
               "false_alarm_share": len(false) / runs,
               "false_alarms_by_test": _count(r["first_test"] for r in false),
               "audit_coverage_in_distribution": float(np.mean([r["audit_covered"] for r in null])),
               "audit_bound_median": float(np.median([r["bound"] for r in null])) if share else None,
               "realized_loss_median": float(np.median([r["realized_loss"] for r in null])),
               "audits_median": float(np.median([r["audited"] for r in null])),
               "thresholds_median": np.median(np.array(result["fits"], dtype=float), axis=0).tolist(),
               "false_alarm_share_at": result["extra_null"], "shift_steps": shift_steps, "shifts": {}}
    for name, rows in result["shifts"].items():
        if not rows:
            continue
        fired = [r["alarm"]["at_observation"] for r in rows if r["alarm"] is not None]
        summary["shifts"][name] = {
            "runs": len(rows), "detected_share": len(fired) / len(rows),
            "median_requests_to_alarm": float(np.median(fired)) if fired else None,
            "p90_requests_to_alarm": float(np.quantile(fired, 0.9)) if fired else None,
            "first_test": _count(r["first_test"] for r in rows if r["alarm"] is not None),
            "audit_coverage": float(np.mean([r["audit_covered"] for r in rows])),
        }
    return summary


def _count(values) -> dict:
    out: dict = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def markdown(s: dict) -> str:
    lines = ["# Monitoring the guarantee: offline replay", "",
             f"Data: {s['data']} (disagreement: {s['disagreement_source']}). "
             f"{s['runs']} runs, each a fresh random calibration half ({s['n_calibration']} items; thresholds fitted "
             f"for {TARGET} at α = {ALPHA}, δ = {DELTA}) and the other half as live traffic. Monitor level "
             f"ε = {s['alarm_level']} over the whole run, {s['n_tests']} tests ({', '.join(s['tests'])}) at "
             f"ε/{s['n_tests']} each; audit share "
             f"p = {s['audit_share']}. Wall time {s['seconds']:.0f} s.", "",
             "## In distribution (calibration and live items exchangeable)", "",
             f"- false alarms: **{s['false_alarm_share']:.3f}** of runs (allowed: ε = {s['alarm_level']}) over "
             f"{s['live_steps_in_distribution']} live requests each"
             + (f"; first tests to fire: {s['false_alarms_by_test']}" if s["false_alarms_by_test"] else ""),
             *(["- the same runs at larger ε: false alarms in "
                + ", ".join(f"{v:.3f} of runs at ε = {k}" for k, v in s["false_alarm_share_at"].items())]
               if s["false_alarm_share_at"] else []),
             f"- audit bound covers the realized quality loss at every step in **{s['audit_coverage_in_distribution']:.3f}**"
             f" of runs (required: >= 1 − ε); median final bound {_fmt(s['audit_bound_median'])} vs median realized "
             f"loss {s['realized_loss_median']:.4f} ({s['audits_median']:.0f} audits)", "",
             f"## Shifts (live traffic drawn with replacement from the held-out pool, up to {s['shift_steps']} requests)",
             "", "| shift | detected | median requests to alarm | 90th pct | first test to fire | audit coverage |",
             "|---|---|---|---|---|---|"]
    for name, row in sorted(s["shifts"].items(), key=lambda kv: (kv[0].split()[0] != "only", kv[0])):
        first = ", ".join(f"{k} {v}" for k, v in row["first_test"].items())
        lines.append(f"| {name} | {row['detected_share']:.0%} | {_fmt(row['median_requests_to_alarm'], 0)} | "
                     f"{_fmt(row['p90_requests_to_alarm'], 0)} | {first} | {row['audit_coverage']:.3f} |")
    lines += ["", "A shift that leaves the scores' distribution unchanged is not detectable without labels or audits "
              "(the guarantee may still hold there); audits cover the quality loss under any shift."]
    return "\n".join(lines) + "\n"


def _fmt(value, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arrays", default=str(ARRAYS))
    parser.add_argument("--synthetic", action="store_true", help="the synthetic workload even if the arrays exist")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--alarm-level", type=float, default=0.01)
    parser.add_argument("--audit-share", type=float, default=0.05)
    parser.add_argument("--shift-steps", type=int, default=1500)
    parser.add_argument("--extra-levels", default="0.1", help="comma-separated larger ε for the in-distribution runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "results" / "monitor"))
    args = parser.parse_args(argv)
    started = time.perf_counter()
    arrays = load_arrays(Path(args.arrays), args.synthetic)
    print(f"data: {arrays['source']}, {len(arrays['groups'])} items; disagreement: {arrays['disagreement_source']}",
          file=sys.stderr)
    extra = tuple(float(v) for v in args.extra_levels.split(",") if v.strip())
    result = experiment(arrays, args.runs, args.alarm_level, args.audit_share, args.shift_steps, args.seed, extra)
    summary = summarize(result, args.runs, args.alarm_level, args.audit_share, args.shift_steps)
    summary.update(data=arrays["source"], disagreement_source=arrays["disagreement_source"],
                   n_tests=result["null"][0]["n_tests"], tests=result["null"][0]["tests"],
                   seconds=time.perf_counter() - started)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(markdown(summary))
    print(markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
