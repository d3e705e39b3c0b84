"""Choosing the deferral rule without spending the guarantee.

The calibration items are split three ways (``three_way_split``): learned rules are trained
on the first part, every candidate rule — built-in signals, the anchors' rules, learned
rules — is compared on the second, and only the chosen rule meets the third, where the
conformal fit happens. The calibration split is never used for training or choosing, so
the fitted thresholds keep the method's guarantee exactly as for a fixed signal.

Candidates are compared by the cost of their cheapest configuration whose empirical risk
on the selection split meets the target — per group when the fit will be per group —
(ties: the larger share of the oracle's gain). A
skip rule (pre-generation) is kept only when it lowers that cost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from vcascade.engine.config import CascadeConfig
from vcascade.engine.uncertainty.rules import Rule, SignalRule, SkipRule
from vcascade.engine.uncertainty.signals import SAMPLING_SIGNALS, SIGNALS

from .conformal import CalibrationData, _configurations, _grid_candidates, config_counts, expected_cost
from .job import correctness, queries, results, rule_scores
from .learning import MODELS, Refusal, answer_feature_spec, request_feature_spec, target_labels, train
from .metrics import deferral_metrics

SPLIT_FRACTIONS = (0.4, 0.2, 0.4)  # train, select, calibrate
LOGPROB_SIGNALS = [s for s in SIGNALS if s not in SAMPLING_SIGNALS] + ["quantile:0.1", "quantile:0.25"]
SKIP_GAIN = 0.01  # a skip rule must lower the selection cost by at least this share of always-largest


@dataclass
class Splits:
    """Indices into the calibration items: ``train`` (learned rules), ``select`` (choosing the
    rule), ``calibrate`` (the conformal fit); disjoint, seeded."""

    train: np.ndarray
    select: np.ndarray
    calibrate: np.ndarray

    def sizes(self) -> dict:
        return {"train": int(len(self.train)), "select": int(len(self.select)), "calibrate": int(len(self.calibrate))}


def three_way_split(n: int, seed: int, fractions=SPLIT_FRACTIONS) -> Splits:
    order = np.random.default_rng(seed + 1).permutation(n)
    a = int(round(fractions[0] * n))
    b = a + int(round(fractions[1] * n))
    return Splits(np.sort(order[:a]), np.sort(order[a:b]), np.sort(order[b:]))


def empirical_cheapest(data: CalibrationData, target: str, alpha: float, grid: int = 40) -> tuple[float, np.ndarray]:
    """(cost relative to always-last, configuration) of the cheapest grid configuration whose
    empirical risk on ``data`` is <= α (no guarantee: for comparing rules)."""
    configs = _configurations(_grid_candidates(data, grid))
    wrong, m = config_counts(data, configs, target)
    ok = (m == 0) | (wrong <= alpha * m) if target == "selective-error" else wrong <= alpha * data.n
    always_last = float(data.costs[:, -1].mean())
    best = min(configs[ok], key=lambda c: expected_cost(data, c))
    return expected_cost(data, best) / always_last, best


def cheapest_per_group(data: CalibrationData, groups: np.ndarray | None, target: str, alpha: float,
                       grid: int = 40) -> float:
    """``empirical_cheapest``'s cost for a per-group fit: each group (``groups`` (n,)) at its own
    cheapest configuration meeting α within the group, pooled relative to always-last. One
    group (``None``): ``empirical_cheapest``. A rule is compared under the fit it will get."""
    if groups is None:
        return empirical_cheapest(data, target, alpha, grid)[0]
    total, always_last = 0.0, float(data.costs[:, -1].sum())
    for label in np.unique(groups):
        part = data.subset(np.flatnonzero(groups == label))
        ratio, _ = empirical_cheapest(part, target, alpha, grid)
        total += ratio * float(part.costs[:, -1].sum())
    return total / always_last


@dataclass
class Selection:
    """The chosen rules and what the selection split said about every candidate."""

    rules: list[Rule]
    skip: SkipRule | None
    table: list[dict] = field(default_factory=list)
    refused: list[dict] = field(default_factory=list)
    skip_table: list[dict] = field(default_factory=list)


def _signal_candidates(config: CascadeConfig, tier: int) -> list[Rule]:
    names = LOGPROB_SIGNALS + (sorted(SAMPLING_SIGNALS) if config.tiers[tier].samples else [])
    return [SignalRule(name) for name in names]


def _learned_candidates(config, records, items, splits: Splits, tier: int, embeddings, seed: int):
    from vcascade.engine.uncertainty.features import feature_matrix

    samples = config.tiers[tier].samples is not None
    correct = correctness(records, items)
    q = queries(items, embeddings)
    X = feature_matrix(q, results(records[tier], items), samples=samples, long_form=True)
    rules, refused = [], []
    for target in ("correct", "gain"):
        y = target_labels(correct, tier, target)
        for model in MODELS:
            out = train(X[splits.train], y[splits.train], X[splits.select], y[splits.select], model=model,
                        target=target, features=answer_feature_spec(samples), name=f"learned:{model}:{target}",
                        train_ids=[items[i].id for i in splits.train], seed=seed)
            (refused if isinstance(out, Refusal) else rules).append(out)
    return rules, refused


def _skip_candidates(items, correct, splits: Splits, embeddings, seed: int):
    from vcascade.engine.uncertainty.features import feature_matrix

    X = feature_matrix(queries(items, embeddings), None, request=True)
    rules, refused = [], []
    for target in ("correct", "gain"):
        y = target_labels(correct, 0, target)
        for model in MODELS:
            out = train(X[splits.train], y[splits.train], X[splits.select], y[splits.select], model=model,
                        target=target, features=request_feature_spec(), name=f"skip:{model}:{target}",
                        train_ids=[items[i].id for i in splits.train], skip=True, seed=seed)
            (refused if isinstance(out, Refusal) else rules).append(out)
    return rules, refused


def select_rules(config: CascadeConfig, records: list[dict], items, splits: Splits, embeddings: np.ndarray,
                 costs: np.ndarray, target: str, alpha: float, seed: int = 0, skip: bool = True,
                 groups: np.ndarray | None = None) -> Selection:
    """Train candidates on ``splits.train``, compare them on ``splits.select``, return the choice.

    ``groups`` (n,), for a per-group fit: each candidate's selection cost is what it costs with
    a threshold per group (``cheapest_per_group``); a rule that is cheap for the mix by spending
    one group's whole loss budget on another is not chosen for a fit that bounds each group."""
    correct = correctness(records, items)
    sel = splits.select
    sel_groups = None if groups is None else np.asarray(groups)[sel]
    chosen: list[Rule] = []
    table, refused = [], []
    for tier in range(len(config.tiers) - 1):
        learned, no = _learned_candidates(config, records, items, splits, tier, embeddings, seed)
        refused += [{"tier": tier, "rule": r.name, "reason": r.reason} for r in no]
        rows = []
        sel_items = [items[i] for i in sel]
        pair = correct[sel][:, [tier, -1]]
        pair_costs = costs[sel][:, [tier, -1]]
        for rule in _signal_candidates(config, tier) + learned:
            scores = rule_scores(rule, records[tier], sel_items, embeddings[sel])
            data = CalibrationData(scores[:, None], pair, pair_costs)
            cost = cheapest_per_group(data, sel_groups, target, alpha)
            metrics = deferral_metrics(scores, pair, pair_costs, alpha)
            rows.append({"tier": tier, "rule": rule.name, "selection_cost": cost, "gain_share": metrics["gain_share"],
                         "apgr": metrics["apgr"], "_rule": rule})
        rows.sort(key=lambda r: (r["selection_cost"], -_finite(r["gain_share"])))
        chosen.append(rows[0]["_rule"])
        table += [{k: v for k, v in r.items() if k != "_rule"} for r in rows]
    selection = Selection(chosen, None, table, refused)
    if skip and len(config.tiers) >= 2:
        _choose_skip(selection, config, records, items, splits, embeddings, costs, target, alpha, seed, sel_groups)
    return selection


def _choose_skip(selection: Selection, config, records, items, splits, embeddings, costs, target, alpha, seed,
                 sel_groups=None):
    correct = correctness(records, items)
    sel = splits.select
    sel_items = [items[i] for i in sel]
    scores = np.stack([rule_scores(rule, records[k], sel_items, embeddings[sel])
                       for k, rule in enumerate(selection.rules)], axis=1)
    base = CalibrationData(scores, correct[sel], costs[sel])
    base_cost = cheapest_per_group(base, sel_groups, target, alpha)
    selection.skip_table.append({"skip": "none", "selection_cost": base_cost})
    candidates, refused = _skip_candidates(items, correct, splits, embeddings, seed)
    selection.refused += [{"tier": 0, "rule": r.name, "reason": r.reason} for r in refused]
    tried = []
    for rule in candidates:
        skip_scores = rule.score_many(queries(sel_items, embeddings[sel]))
        cost = cheapest_per_group(CalibrationData(scores, correct[sel], costs[sel], skip_scores), sel_groups, target,
                                  alpha, grid=25)
        selection.skip_table.append({"skip": rule.name, "selection_cost": cost})
        tried.append((cost, rule))
    if tried:
        cost, rule = min(tried, key=lambda pair: pair[0])
        selection.skip = rule if cost < base_cost - SKIP_GAIN else None


def _finite(value: float) -> float:
    return value if value is not None and math.isfinite(value) else -math.inf
