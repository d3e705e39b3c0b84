"""The checkpointed (mid-generation) policy, built and fitted from cached generations (issue 18).

For a two-tier cascade whose end-of-answer rule (and skip rule) ``selection.select_rules``
has chosen, on the three-way split of ``selection.three_way_split``:

1. **Prefix rules — train split.** For each checkpoint k (default 8, 16, 32, 64, 128
   completion tokens) a logistic rule with the ``gain`` target (large tier right where the
   small one is wrong; its score is −P(gain), higher = keep) over the features of the
   answer's first k tokens (``engine.uncertainty.prefix.prefix_result``) and of the request:
   the end rules' answer + request feature spec, long-form features included, without
   sample features (a prefix has no samples). It is trained on the train items whose
   answer reaches k; its regularization is chosen by log-loss on the select items that
   reach k (``learning.train``). A checkpoint too few answers reach (``learning.Refusal``)
   is dropped, and the drop is reported. With greedy decoding the first k tokens of a
   cached answer are exactly what the engine has produced at checkpoint k, so nothing is
   generated (Gupta et al., ICLR 2024; Narasimhan et al., ICLR 2025).
2. **Path — select split.** By default (``PATH_FAMILY = "pareto"``) Pareto Testing
   (Laufer-Goldshtein, Fisch, Barzilay, Jaakkola, ICLR 2023):
   ``conformal.checkpoints.pareto_family`` scores a large candidate set — the union of
   the quantile paths of every shape in ``PARETO_CANDIDATES`` (never-commit and
   never-escalate-early shapes included) and the end-only end × skip grid — by empirical
   risk and mean cost on the select items, and orders the Pareto front by select-split
   risk ascending, always-escalate first. The alternative (``path_family="single-shape"``)
   is ``conformal.checkpoints.select_family``: one quantile path, all thresholds tied to
   one aggressiveness level, its shape chosen among ``PATH_SHAPES`` on the select items.
   Either way the sequence is fixed before the calibrate split is read.
3. **Fit — calibrate split.** ``conformal.checkpoints.fit_checkpoints``: fixed-sequence
   Learn-then-Test along the path (Angelopoulos, Bates, Candès, Jordan, Lei 2021; Bauer
   1991). The calibrate split is read by nothing else, so with probability >= 1 − δ the
   deployed configuration's risk is <= α — for the whole checkpointed policy: skips,
   commits and escalations at every checkpoint, and the end rule.

Per group (Mondrian, as ``conformal.groups.fit_groups``; Vovk 2003): the prefix rules are
shared (trained on all train items), each group gets its own path from its select items
and its own fit on its calibrate items, at δ each (``per-group``) or δ/G
(``bonferroni``: all G groups hold at once with probability >= 1 − δ). Requests of an
unknown group get the most conservative group's configuration (the one that escalates
most on the pooled calibrate items) and no guarantee.

Shapes: n items, m checkpoints, K = 2 tiers.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from vcascade.engine.uncertainty.learned import rule_from_spec
from vcascade.engine.uncertainty.prefix import answer_length, prefix_result, prefix_scores
from vcascade.engine.uncertainty.rules import Rule, SkipRule

from .conformal import FitError, group_delta, group_guarantee, group_labels
from .conformal.checkpoints import (FIT_TARGETS, METHOD, SKIP, CheckpointConfig, CheckpointData, CheckpointFamily,
                                    CheckpointFit, checkpoint_figures, checkpoint_losses, fit_checkpoints,
                                    pareto_family, route, route_groups, select_family, token_costs)
from .datasets import Item
from .job import correctness, queries, results
from .learning import Refusal, answer_feature_spec, target_labels, train
from .selection import Splits

DEFAULT_CHECKPOINTS = (8, 16, 32, 64, 128)
EARLY_TOKENS = 32
"""Escalations decided with at most this many small-tier tokens count as early."""
PREFIX_MODEL = "logistic"
PREFIX_TARGET = "gain"
ALL = "all"
"""The one configuration's key when the fit is not per group."""
PATH_SHAPES = {"commit_shares": (0.1, 0.25, 0.5, 0.75, 1.0), "escalate_shares": (0.0, 0.25, 0.5, 0.75),
               "skip_shares": (0.0, 0.25, 0.5, 0.75, 0.9, 1.0)}
"""The quantile-path shapes ``select_family`` chooses among on the select split. Skip shares
reach 1 so that the path can skip as much of tier 0 as an end-only fit does (on mixed-long
the end-only fit skips 60–87 % of requests; with ``select_family``'s default shares, at most
50 %, the checkpointed fit cost 0.97 of always-large against the end-only fit's 0.89)."""
PATH_FAMILIES = ("pareto", "single-shape")
PATH_FAMILY = "pareto"
"""The default testing sequence: Pareto Testing's front. With the single quantile path the
mixed-long checkpointed fit cost 0.888 of always-large on the test split against the
certified end-only fit's 0.871, although end-only with the checkpointed fit's own end/skip
thresholds cost 0.823: tying every threshold to one level was the poor part."""
PARETO_CANDIDATES = {"commit_shares": (0.0, 0.1, 0.25, 0.5, 0.75, 1.0),
                     "escalate_shares": (0.0, 0.1, 0.25, 0.5, 0.75),
                     "skip_shares": tuple(round(0.1 * i, 1) for i in range(11)),
                     "end_skip_grid": True, "checkpoint_grid": ()}
"""``pareto_family``'s candidate set: 6 × 5 × 11 quantile-path shapes of ``levels``
configurations each, plus the end-only end × skip grid (no one-checkpoint refinement)."""


def parse_checkpoints(text: str) -> tuple[int, ...]:
    """``--checkpoints 8,16,32``: strictly increasing token counts >= 1."""
    try:
        values = tuple(int(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        raise ValueError(f"--checkpoints must be comma-separated token counts such as 8,16,32,64,128, "
                         f"got {text!r}") from None
    if not values or values[0] < 1 or any(b <= a for a, b in zip(values, values[1:])):
        raise ValueError(f"--checkpoints must be strictly increasing token counts >= 1, got {text!r}")
    return values


def check_checkpointable(n_tiers: int, target: str, delta: float | None, signal: str | None = None) -> None:
    """Refuse, before any engine starts, what a checkpointed fit cannot do.

    Raises ``FitError`` for 3+ tiers (the checkpoint path and its routing are two-tier),
    a fixed ``--signal`` (prefix rules are learned on the train split), a target the path
    cannot test (``selective-error``), or the marginal form (``--delta none``: the fit is
    fixed-sequence testing, a high-probability guarantee).
    """
    if n_tiers != 2:
        raise FitError(f"checkpoints (mid-generation deferral) are calibrated for two-tier cascades; this cascade "
                       f"has {n_tiers} tiers", "calibrate it without --checkpoints")
    if signal:
        raise FitError("--checkpoints trains prefix rules on the train split of a three-way split, which --signal "
                       "does not make", "drop --signal (the end rule is then chosen among learned rules and signals)")
    if target not in FIT_TARGETS:
        raise FitError(f"a checkpointed policy cannot be fitted for {target}: its path starts at always-escalate, "
                       "which keeps no answer", f"use one of {', '.join(FIT_TARGETS)}")
    if delta is None:
        raise FitError("a checkpointed policy is fitted by fixed-sequence Learn-then-Test, a high-probability "
                       "guarantee; --delta none asks for the marginal one", "give --delta, e.g. 0.1")


# ---------------------------------------------------------------- prefix rules (train split)


@dataclass
class PrefixRules:
    """One prefix rule per kept checkpoint; ``dropped`` lists the checkpoints not trained
    (``{"tokens", "rule", "reason"}``)."""

    checkpoints: tuple[int, ...]
    rules: list[Rule]
    dropped: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.checkpoints) != len(self.rules):
            raise ValueError(f"{len(self.rules)} prefix rules for {len(self.checkpoints)} checkpoints")

    @property
    def needs_embedding(self) -> bool:
        return any(getattr(r, "needs_embedding", False) for r in self.rules)

    def scores(self, qs, answers) -> np.ndarray:
        """Shape (n, m): rule j's score of the first k_j tokens of each answer; NaN where the
        answer has fewer than k_j tokens (``prefix_scores``)."""
        out = np.full((len(answers), len(self.checkpoints)), np.nan)
        for j, (k, rule) in enumerate(zip(self.checkpoints, self.rules)):
            out[:, j] = prefix_scores(rule, qs, answers, [k])[:, 0]
        return out

    @classmethod
    def from_policy(cls, policy: dict) -> PrefixRules:
        """The prefix rules of an artifact's ``policy["checkpoints"]`` block."""
        block = policy["checkpoints"]
        return cls(tuple(int(k) for k in block["tokens"]), [rule_from_spec(spec) for spec in block["rules"]])


def train_prefix_rules(records: list[dict], items: Sequence[Item], splits: Splits, embeddings: np.ndarray | None,
                       checkpoints: Sequence[int] = DEFAULT_CHECKPOINTS, seed: int = 0,
                       log=None) -> PrefixRules:
    """Train the prefix rule of every checkpoint on ``splits.train`` (see the module docstring).

    Parameters
    ----------
    records : per tier (small, large), ``{item id: {"result", "correct"}}`` (``job.collect``)
    items : the n calibration items (what ``splits`` indexes)
    splits : the three-way split; only ``train`` (fit) and ``select`` (regularization by
        log-loss) are read — never ``calibrate``
    embeddings : (n, 384) prompt embeddings, or None (computed when a rule needs them)
    checkpoints : strictly increasing token counts
    log : callable for progress lines (default: print to stderr)

    Returns
    -------
    PrefixRules
        The checkpoints that could be trained, their rules, and the dropped ones.
    """
    from vcascade.engine.uncertainty.features import feature_matrix

    log = log or (lambda line: print(line, file=sys.stderr))
    small = results(records[0], items)
    lengths = np.array([answer_length(r) for r in small], dtype=np.int64)
    labels = target_labels(correctness(records, items), 0, PREFIX_TARGET)
    qs = queries(items, embeddings)
    spec = answer_feature_spec(False)

    def features(index: np.ndarray, k: int) -> np.ndarray:
        return feature_matrix([qs[i] for i in index], [prefix_result(small[i], k) for i in index], samples=False,
                              long_form=bool(spec["long_form"]))

    ks = [int(k) for k in checkpoints]
    if not ks or ks[0] < 1 or any(b <= a for a, b in zip(ks, ks[1:])):
        raise ValueError(f"checkpoints must be strictly increasing token counts >= 1, got {list(checkpoints)}")
    kept, rules, dropped = [], [], []
    for k in ks:
        name = f"prefix:{k}:{PREFIX_MODEL}:{PREFIX_TARGET}"
        fit_index = splits.train[lengths[splits.train] >= k]
        choose_index = splits.select[lengths[splits.select] >= k]
        if fit_index.size == 0 or choose_index.size == 0:
            where = "train" if fit_index.size == 0 else "select"
            out = Refusal(name, f"no {where} item's answer reaches {k} tokens")
        else:
            out = train(features(fit_index, k), labels[fit_index], features(choose_index, k), labels[choose_index],
                        model=PREFIX_MODEL, target=PREFIX_TARGET, features=spec, name=name,
                        train_ids=[items[i].id for i in fit_index], seed=seed)
        if isinstance(out, Refusal):
            dropped.append({"tokens": int(k), "rule": name, "reason": out.reason})
            log(f"checkpoint {k}: dropped ({out.reason})")
            continue
        kept.append(int(k))
        rules.append(out)
        log(f"checkpoint {k}: prefix rule trained on {fit_index.size} train answers reaching {k} tokens")
    if not kept:
        raise FitError(f"no checkpoint of {list(checkpoints)} could be trained: "
                       + "; ".join(f"{d['tokens']}: {d['reason']}" for d in dropped),
                       "calibrate on more items, or without --checkpoints")
    return PrefixRules(tuple(kept), rules, dropped)


# ---------------------------------------------------------------- the data of a split


def checkpoint_data(records: list[dict], items: Sequence[Item], prefix: PrefixRules, end_rule: Rule,
                    skip_rule: SkipRule | None, costs: np.ndarray, small_price: tuple[float, float, float],
                    embeddings: np.ndarray | None = None) -> CheckpointData:
    """``CheckpointData`` of ``items`` (one split) for the checkpointed policy.

    Parameters
    ----------
    records : per tier (small, large), the job's records (``job.collect``)
    items : n items
    prefix : the prefix rules (their checkpoints k_1 < … < k_m)
    end_rule, skip_rule : the chosen end-of-answer rule and skip rule (or None)
    costs : (n, 2) — cost of the small tier's full answer and of the large tier's
        (``job.token_costs``, or engine seconds)
    small_price : (per item, per prompt token, per output token) of the small tier: the
        cost of a prefix of k tokens is ``per_item + prompt_tokens · per_prompt + k · per_output``
    embeddings : (n, 384) prompt embeddings, or None

    Returns
    -------
    CheckpointData with scores (n, m) of the prefix rules (NaN past the answer's end),
    end scores (n,), lengths (n,), correctness (n, 2), prefix costs (n, m), full costs and,
    with a skip rule, skip scores (n,).
    """
    qs = queries(items, embeddings)
    small = results(records[0], items)
    return CheckpointData(
        checkpoints=np.asarray(prefix.checkpoints), scores=prefix.scores(qs, small),
        end_scores=np.asarray(end_rule.score_many(qs, small), dtype=np.float64),
        lengths=np.array([answer_length(r) for r in small], dtype=np.int64),
        correct=correctness(records, items)[:, [0, -1]],
        skip_scores=None if skip_rule is None else np.asarray(skip_rule.score_many(qs), dtype=np.float64),
        **checkpoint_costs(small, prefix.checkpoints, costs, small_price))


def checkpoint_costs(small: Sequence, checkpoints: Sequence[int], costs: np.ndarray,
                     small_price: tuple[float, float, float]) -> dict[str, np.ndarray]:
    """The cost arrays of ``CheckpointData`` for n small-tier answers ``small``: ``prefix_costs``
    (n, m) = per item + prompt tokens · per prompt token + k_j · per output token, and
    ``small_costs``, ``large_costs`` (n,) from ``costs`` (n, 2). Pricing the same scored data
    another way (engine seconds) is ``dataclasses.replace(data, **checkpoint_costs(...))``."""
    costs = np.asarray(costs, dtype=np.float64)
    if costs.shape != (len(small), 2):
        raise ValueError(f"costs must have shape ({len(small)}, 2) (small, large), got {costs.shape}")
    per_item, per_prompt, per_output = (float(v) for v in small_price)
    lengths = np.array([answer_length(r) for r in small], dtype=np.int64)
    prompt = np.array([r.prompt_tokens for r in small], dtype=np.float64)
    prefix_costs, _ = token_costs(prompt, lengths, checkpoints, per_prompt, per_output)
    return {"prefix_costs": prefix_costs + per_item, "small_costs": costs[:, 0], "large_costs": costs[:, 1]}


# ---------------------------------------------------------------- the fit (select + calibrate splits)


@dataclass
class CheckpointPolicy:
    """The fitted checkpointed policy: one ``CheckpointFit`` per group (``{ALL: fit}`` when
    not per group), the path each was tested along, the fallback group, the guarantee."""

    target: str
    alpha: float
    delta: float
    delta_split: str | None
    delta_per_group: float
    fits: dict[str, CheckpointFit]
    families: dict[str, CheckpointFamily]
    fallback_group: str
    grouped: bool
    guarantee: dict = field(default_factory=dict)

    @property
    def configs(self) -> dict[str, CheckpointConfig]:
        return {g: f.config for g, f in self.fits.items()}

    @property
    def config(self) -> CheckpointConfig:
        """The fallback group's configuration (the only one when not per group)."""
        return self.fits[self.fallback_group].config

    def figures(self, data: CheckpointData, groups=None, early_tokens: int = EARLY_TOKENS) -> dict:
        """``checkpoint_figures`` of the policy on ``data``: ``{"pooled": …, "groups": {g: …}}``
        (``groups`` (n,) labels for a per-group policy; ``"groups"`` is None otherwise)."""
        if not self.grouped:
            return {"pooled": checkpoint_figures(data, self.config, early_tokens), "groups": None}
        labels = group_labels(groups, data.n)
        per_group = {}
        for g in np.unique(labels):
            idx = np.flatnonzero(labels == g)
            config = self.fits.get(str(g), self.fits[self.fallback_group]).config
            per_group[str(g)] = checkpoint_figures(data.subset(idx), config, early_tokens)
        return {"pooled": checkpoint_figures(data, self.configs, early_tokens, labels, self.fallback_group),
                "groups": per_group}

    def fit_record(self, prefix: PrefixRules | None = None) -> dict:
        """For the artifact's ``fit["checkpoints"]``: each fit (``CheckpointFit.to_dict``) with
        its path's description, per group when grouped."""
        def one(g: str) -> dict:
            return {**self.fits[g].to_dict(), "family": dict(self.families[g].description)}

        head = {"method": METHOD, "target": self.target, "alpha": self.alpha, "delta": self.delta,
                "tokens": None if prefix is None else list(prefix.checkpoints),
                "dropped": [] if prefix is None else list(prefix.dropped)}
        if not self.grouped:
            return {**head, **one(ALL)}
        return {**head, "delta_split": self.delta_split, "delta_per_group": self.delta_per_group,
                "fallback_group": self.fallback_group, "groups": {g: one(g) for g in self.fits}}


def _most_conservative(data: CheckpointData, fits: dict[str, CheckpointFit], target: str) -> str:
    """The group whose configuration escalates most on all items pooled (ties: lower pooled
    risk, then name) — ``conformal.groups``' rule for the fallback group."""
    def key(g: str):
        r = route(data, fits[g].config)
        losses, at_risk = checkpoint_losses(data, r.kept, target)
        return (-float((~r.kept).mean()), float(losses.sum() / at_risk.sum()) if at_risk.any() else 0.0, g)
    return min(fits, key=key)


def covers_checkpoints(statement: dict, checkpoints: Sequence[int], skip: bool, small: str | None = None) -> dict:
    """The guarantee record extended to say what it covers: the checkpointed policy."""
    tier = f"{small}'s" if small else "the small tier's"
    what = ("the pre-generation skip, " if skip else "") + \
        f"commits and escalations at {', '.join(str(k) for k in checkpoints)} tokens of {tier} answer, and the end rule"
    out = dict(statement)
    out["covers"] = "checkpointed policy"
    out["checkpoints"] = [int(k) for k in checkpoints]
    out["statement"] = (f"{statement['statement']}; this covers the checkpointed policy as served — {what} — "
                        "certified together by fixed-sequence Learn-then-Test along a path of configurations fixed "
                        "on the selection split (prefix rules trained on the train split)")
    return out


def path_family(select: CheckpointData, target: str, alpha: float, delta: float, *, levels: int = 40,
                p_value_kind: str = "binomial", kind: str = PATH_FAMILY) -> CheckpointFamily:
    """The testing sequence of one group, from its select items only: ``pareto_family``
    over ``PARETO_CANDIDATES`` (``kind="pareto"``) or ``select_family`` over ``PATH_SHAPES``
    (``kind="single-shape"``, which also reads α, δ and the p-value to pick its shape)."""
    if kind == "pareto":
        return pareto_family(select, target, levels=levels, **PARETO_CANDIDATES)
    if kind == "single-shape":
        return select_family(select, target, alpha, delta, levels=levels, p_value_kind=p_value_kind,
                             **PATH_SHAPES)
    raise ValueError(f"path family must be one of {PATH_FAMILIES}, got {kind!r}")


def fit_checkpoint_policy(select: CheckpointData, calibrate: CheckpointData, target: str, alpha: float,
                          delta: float, *, select_groups=None, calibrate_groups=None,
                          delta_split: str = "per-group", p_value_kind: str = "binomial", levels: int = 40,
                          largest: str | None = None, small: str | None = None,
                          family: str = PATH_FAMILY) -> CheckpointPolicy:
    """Choose each path on ``select`` and certify it on ``calibrate`` (never the other way).

    Parameters
    ----------
    select, calibrate : CheckpointData of the select and calibrate splits (same checkpoints)
    target : ``accept-error`` or ``quality-loss``; alpha, delta : levels in (0, 1)
    select_groups, calibrate_groups : (n_select,), (n_calibrate,) group labels, or both None
    delta_split : ``per-group`` (each group at δ) or ``bonferroni`` (each at δ/G, G the
        number of groups among the calibrate items: all hold at once w.p. >= 1 − δ)
    p_value_kind, levels : the fixed-sequence test's p-value and the quantile levels per path
    largest, small : tier names, for the guarantee's sentence
    family : ``pareto`` (Pareto Testing, the default) or ``single-shape`` (``path_family``)

    Returns
    -------
    CheckpointPolicy

    Raises
    ------
    FitError
        For an untestable target, or a group with calibrate items but no select items
        (its path could only be built from its calibration items, which breaks validity).
    """
    if (select_groups is None) != (calibrate_groups is None):
        raise ValueError("give group labels for both the select and the calibrate split, or for neither")
    if calibrate_groups is None:
        path = path_family(select, target, alpha, delta, levels=levels, p_value_kind=p_value_kind, kind=family)
        fit = fit_checkpoints(calibrate, path, target, alpha, delta, p_value_kind, largest=largest)
        statement = covers_checkpoints(fit.guarantee, calibrate.checkpoints, calibrate.has_skip, small)
        return CheckpointPolicy(target, alpha, delta, None, delta, {ALL: fit}, {ALL: path}, ALL, False, statement)
    cal_labels = group_labels(calibrate_groups, calibrate.n)
    sel_labels = group_labels(select_groups, select.n)
    names = [str(g) for g in np.unique(cal_labels)]
    d = group_delta(delta, len(names), delta_split)
    fits, families = {}, {}
    for g in names:
        chosen = np.flatnonzero(sel_labels == g)
        if chosen.size == 0:
            raise FitError(f"group {g!r} has calibration items but no selection items, so its checkpoint path "
                           "cannot be fixed before calibration", "calibrate on more items of that group")
        families[g] = path_family(select.subset(chosen), target, alpha, d, levels=levels,
                                  p_value_kind=p_value_kind, kind=family)
        fits[g] = fit_checkpoints(calibrate.subset(np.flatnonzero(cal_labels == g)), families[g], target, alpha, d,
                                  p_value_kind, largest=largest)
    fallback = _most_conservative(calibrate, fits, target)
    statement = group_guarantee(target, alpha, delta, d, delta_split, {g: METHOD for g in names}, fallback, largest)
    statement = covers_checkpoints(statement, calibrate.checkpoints, calibrate.has_skip, small)
    return CheckpointPolicy(target, alpha, delta, delta_split, d, fits, families, fallback, True, statement)


# ---------------------------------------------------------------- the artifact's policy block (the contract)


def _floats(values) -> list[float]:
    return [float(v) for v in values]


def policy_section(policy: CheckpointPolicy, prefix: PrefixRules, end_rule: Rule, skip_rule: SkipRule | None,
                   group_by: str | None = None) -> dict:
    """The artifact's ``"policy"`` for a checkpointed fit (the contract with serving)::

        {"rules": [end rule spec], "thresholds": [end], "skip": spec | null, "skip_threshold": float | null,
         "checkpoints": {"tokens": [k_1..k_m], "rules": [prefix rule spec per checkpoint],
                         "commit": [m floats], "escalate": [m floats]},
         "groups": {g: {"thresholds": [end_g], "skip_threshold": s_g | null, "commit": [m], "escalate": [m]}},
         "fallback_group": g, "group_by": "length"}

    ``groups`` / ``fallback_group`` only for a per-group fit, ``group_by`` only when it is
    ``length``; the top-level thresholds are the fallback group's. At checkpoint j: escalate
    when score < escalate[j], elif score >= commit[j] commit, else continue; the end rule
    keeps when the end score >= thresholds[0]. Floats as Python's json writes them
    (Infinity, -Infinity).
    """
    top = policy.config

    def skip_threshold(config: CheckpointConfig):
        return None if skip_rule is None else float(config.skip)

    out = {"rules": [end_rule.spec()], "thresholds": [float(top.end)],
           "skip": skip_rule.spec() if skip_rule is not None else None, "skip_threshold": skip_threshold(top),
           "checkpoints": {"tokens": list(prefix.checkpoints), "rules": [r.spec() for r in prefix.rules],
                           "commit": _floats(top.commit), "escalate": _floats(top.escalate)}}
    if policy.grouped:
        out["groups"] = {g: {"thresholds": [float(c.end)], "skip_threshold": skip_threshold(c),
                             "commit": _floats(c.commit), "escalate": _floats(c.escalate)}
                         for g, c in policy.configs.items()}
        out["fallback_group"] = policy.fallback_group
        if group_by == "length":
            out["group_by"] = "length"
    return out


def deployed_configs(policy: dict) -> tuple[dict[str, CheckpointConfig], str]:
    """The configurations an artifact's checkpointed ``policy`` deploys: ``({group: config},
    fallback group)``, or ``({ALL: config}, ALL)`` without groups (null thresholds = +inf)."""
    block = policy["checkpoints"]
    tokens = tuple(int(k) for k in block["tokens"])
    has_skip = policy.get("skip") is not None

    def inf(values) -> tuple[float, ...]:
        return tuple(math.inf if v is None else float(v) for v in values)

    def config(entry: dict, commit, escalate) -> CheckpointConfig:
        return CheckpointConfig(tokens, inf(commit), inf(escalate), inf(entry["thresholds"])[0],
                                float(entry["skip_threshold"]) if has_skip else None)

    groups = policy.get("groups")
    if not groups:
        return {ALL: config(policy, block["commit"], block["escalate"])}, ALL
    return {g: config(e, e["commit"], e["escalate"]) for g, e in groups.items()}, policy["fallback_group"]


def end_only_fit_configs(artifact: dict) -> tuple[dict[str, CheckpointConfig], str]:
    """The certified end-only fit a checkpointed artifact also records (``fit`` and
    ``fit["grouped"]``: what ``vcascade calibrate`` deploys without ``--checkpoints``), as
    end-only ``CheckpointConfig``s at the artifact's checkpoints: ``({group: config}, fallback)``."""
    tokens = tuple(int(k) for k in artifact["policy"]["checkpoints"]["tokens"])
    has_skip = artifact["policy"].get("skip") is not None

    def config(fit: dict) -> CheckpointConfig:
        end = fit["thresholds"][0]
        return CheckpointConfig.end_only(tokens, math.inf if end is None else float(end),
                                         float(fit["skip_threshold"]) if has_skip else None)

    grouped = artifact["fit"].get("grouped")
    if grouped:
        return {g: config(f) for g, f in grouped["groups"].items()}, grouped["conservative_group"]
    return {ALL: config(artifact["fit"])}, ALL


# ---------------------------------------------------------------- the whole job


@dataclass
class CheckpointCalibration:
    """What ``calibrate_checkpoints`` built: the prefix rules, the fitted policy, and the
    calibrate split's data (``data``, with group labels ``labels`` or None)."""

    prefix: PrefixRules
    policy: CheckpointPolicy
    data: CheckpointData
    labels: np.ndarray | None

    def figures(self, early_tokens: int = EARLY_TOKENS) -> dict:
        return self.policy.figures(self.data, self.labels, early_tokens)

    def served_routing(self) -> tuple[np.ndarray, np.ndarray]:
        """``(tier (n,), skipped (n,))`` of the calibrate items as the policy serves them, each
        by its group's configuration (``route_groups``; ``route`` when not per group) — the
        ``routed`` of ``monitoring.monitor_reference``."""
        cp = self.policy
        r = (route_groups(self.data, self.labels, cp.configs, cp.fallback_group) if cp.grouped
             else route(self.data, cp.config))
        return np.where(r.kept, 0, 1), r.decision == SKIP


def small_price(config) -> tuple[float, float, float]:
    """(per item, per prompt token, per output token) of tier 0 at its token prices."""
    tier = config.tiers[0]
    return 0.0, float(tier.prompt_price), float(tier.output_price)


def calibrate_checkpoints(config, records: list[dict], items: Sequence[Item], splits: Splits,
                          embeddings: np.ndarray | None, costs: np.ndarray, end_rule: Rule,
                          skip_rule: SkipRule | None, target: str, alpha: float, delta: float, *,
                          groups=None, delta_split: str = "per-group",
                          checkpoints: Sequence[int] = DEFAULT_CHECKPOINTS, p_value_kind: str = "binomial",
                          seed: int = 0, log=None, family: str = PATH_FAMILY) -> CheckpointCalibration:
    """Train the prefix rules (train split), fix each group's path (select split), fit it
    (calibrate split).

    Parameters
    ----------
    config : the two-tier cascade config (prices, tier names)
    records, items : the job's records and the n calibration items
    splits : their three-way split
    embeddings : (n, 384) prompt embeddings, or None
    costs : (n, 2) full costs at the tiers' token prices (``job.token_costs``)
    end_rule, skip_rule : the chosen end-of-answer rule and skip rule (or None)
    target, alpha, delta : the guarantee
    groups : (n,) group labels of all calibration items, or None
    delta_split, checkpoints, p_value_kind, seed : as in ``vcascade calibrate``
    family : the testing sequence, ``pareto`` (default) or ``single-shape`` (``path_family``)

    Returns
    -------
    CheckpointCalibration
    """
    names = [t.name for t in config.tiers]
    check_checkpointable(len(names), target, delta)
    prefix = train_prefix_rules(records, items, splits, embeddings, checkpoints, seed, log)

    def split_data(index: np.ndarray) -> CheckpointData:
        part = [items[i] for i in index]
        sub = [{item.id: per_tier[item.id] for item in part} for per_tier in records]
        return checkpoint_data(sub, part, prefix, end_rule, skip_rule, np.asarray(costs)[index][:, [0, -1]],
                               small_price(config), None if embeddings is None else embeddings[index])

    select, calibrate = split_data(splits.select), split_data(splits.calibrate)
    labels = None if groups is None else np.asarray(groups).astype(str)
    policy = fit_checkpoint_policy(
        select, calibrate, target, alpha, delta,
        select_groups=None if labels is None else labels[splits.select],
        calibrate_groups=None if labels is None else labels[splits.calibrate],
        delta_split=delta_split, p_value_kind=p_value_kind, largest=names[-1], small=names[0], family=family)
    return CheckpointCalibration(prefix, policy, calibrate, None if labels is None else labels[splits.calibrate])


__all__ = [
    "ALL", "DEFAULT_CHECKPOINTS", "EARLY_TOKENS", "PARETO_CANDIDATES", "PATH_FAMILIES", "PATH_FAMILY",
    "PATH_SHAPES", "CheckpointCalibration", "CheckpointPolicy",
    "PrefixRules", "calibrate_checkpoints", "check_checkpointable", "checkpoint_data", "covers_checkpoints",
    "deployed_configs", "end_only_fit_configs", "fit_checkpoint_policy", "parse_checkpoints",
    "path_family", "policy_section", "small_price", "train_prefix_rules",
]
