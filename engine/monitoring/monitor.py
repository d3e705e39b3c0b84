"""The monitor: is served traffic still what the calibration certified?

A ``Monitor`` is fed one decision at a time (``observe``: the rule scores, the skip score,
which tier answered, whether the answer is in the guarantee's scope) and, when there are
any, audit results (``audit_result``) and labels (``feedback``). It keeps the state
``in_scope`` until one of its tests raises an alarm, then ``drift_detected`` for good (until
the monitor is restarted with a new calibration). Out-of-scope answers are counted and
otherwise ignored: the guarantee says nothing about them.

The tests (each anytime-valid: its false-alarm probability over the whole run is at most
its level, however often it is read) and how the false-alarm level ε is split. With m the
number of tests this monitor runs, each gets ε / m (a union bound: P(any false alarm) <= ε):

* ``skip_score`` (when the policy has a skip rule): conformal test martingale of every
  request's skip score against the calibration items' skip scores;
* ``score:<tier>`` for each non-final tier: the same for that tier's rule score, among the
  requests that reached the tier, against the calibration items that reached it;
* ``acceptance_rate`` (share answered by tier 0) and ``skip_rate``: a confidence sequence on
  the live rate (level ε/(2m)) against the calibration rate ± a DKW band uniform over
  thresholds (ε/(2m)); alarm when they are disjoint. Not run for per-group policies (their
  acceptance region differs by group; the martingales still are);
* ``audit_disagreement`` (with audits): a confidence sequence on the disagreement rate of
  audited kept answers against the calibration's rate among kept items (its upper DKW
  bound); alarm when the lower bound exceeds it;
* ``served_risk`` (with feedback): a confidence sequence on the risk of the artifact's
  target among labelled answers; alarm when its lower bound exceeds α.

With a checkpointed policy (mid-generation commits and escalations in tier 0's answer) only
``skip_score`` and ``served_risk`` run: tier 0's end rule then sees only the answers that
neither committed nor escalated early, a selected subset the calibration's end scores do
not describe, and the rates and audits of the end-only routing are not the deployed ones.

Under exchangeability of calibration items and served traffic every test but
``served_risk`` has false-alarm probability at most its share (up to one approximation: the
calibration items that reached tier k > 0, or tier 0 past a skip rule, were selected with
thresholds fitted on them; ``benchmarks/monitor.py`` measures the realized false-alarm
rate). ``served_risk`` tests "risk <= α", which the calibration promises with probability
1 − δ (or on average); its alarm means the promise failed, whatever the reason.

The audits also give ``quality_loss_bound``: an upper confidence sequence (level 1 − ε/m,
not part of the alarm) on the realized quality loss per request, from the audited
disagreements weighted by 1/p (``sequences.audit_upper_bound``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .martingales import JUMP, RankMartingale
from .reference import Reference
from .sequences import audit_upper_bound, bernoulli_covers, bernoulli_cs, dkw_halfwidth

DEFAULT_ALARM_LEVEL = 0.01
MIN_REFERENCE = 20
"""A score stream is tested only when at least this many calibration items reached its tier."""
STATES = ("in_scope", "drift_detected")


@dataclass
class Decision:
    """What the monitor reads of one answer.

    ``scores`` maps a non-final tier index to its rule score for every tier the request
    visited and scored; ``skip_score`` is the skip rule's score (``None`` without one);
    ``answered`` the answering tier's index.
    """

    in_scope: bool
    answered: int
    skipped: bool = False
    skip_score: float | None = None
    scores: dict[int, float] = field(default_factory=dict)
    group: str | None = None

    @classmethod
    def from_answer(cls, answer, tier_names: Sequence[str]) -> "Decision":
        """From an ``engine.types.Answer`` (its trace, ``skip_score`` and scope)."""
        index = {name: i for i, name in enumerate(tier_names)}
        scores, skip_score, skipped = {}, getattr(answer, "skip_score", None), False
        for step in answer.trace:
            if step.decision == "skip":
                skipped, skip_score = True, step.score
            elif step.decision in ("accept", "escalate") and step.score is not None and step.checkpoint is None:
                scores[index[step.tier]] = float(step.score)
        return cls(in_scope=answer.in_scope, answered=answer.tier_index, skipped=skipped, skip_score=skip_score,
                   scores=scores, group=answer.group)


@dataclass
class Observed:
    """``observe``'s return: the decision's sequence number, whether to audit it, and the
    alarms it raised."""

    seq: int | None
    audit: bool = False
    alarms: list[str] = field(default_factory=list)


@dataclass
class _RateTest:
    """A live Bernoulli rate against the calibration's, as a confidence sequence vs a band."""

    name: str
    level: float
    calibration: float | None
    band: tuple[float, float]
    alarm_when: str = "disjoint"  # or "above": live lower bound > band upper
    ones: int = 0
    n: int = 0
    alarm_at: int | None = None
    active: bool = True

    def interval(self) -> tuple[float, float]:
        return bernoulli_cs(self.ones, self.n, self.level / 2)

    def excludes(self, edge: float, above: bool) -> bool:
        """Does the confidence sequence lie entirely above (``above``) or below ``edge``? The
        mixture's log is convex in the rate with its minimum at the empirical rate, so that is
        one evaluation at ``edge`` (no root finding per observation)."""
        hat = self.ones / self.n
        if (above and hat <= edge) or (not above and hat >= edge):
            return False
        return not bernoulli_covers(self.ones, self.n, edge, self.level / 2)

    def add(self, one: bool) -> bool:
        self.ones += int(one)
        self.n += 1
        if not self.active or self.alarm_at is not None:
            return False
        fired = self.excludes(self.band[1], above=True) or (self.alarm_when == "disjoint"
                                                             and self.excludes(self.band[0], above=False))
        if fired:
            self.alarm_at = self.n
        return fired

    def to_dict(self) -> dict:
        lower, upper = self.interval()
        return {"kind": "confidence sequence vs calibration band", "level": self.level, "active": self.active,
                "n": self.n, "rate": self.ones / self.n if self.n else None, "lower": lower, "upper": upper,
                "calibration": self.calibration, "calibration_lower": self.band[0],
                "calibration_upper": self.band[1], "alarm": self.alarm_at is not None, "alarm_at": self.alarm_at}


def _band(rate: float, n: int, level: float, dims: int) -> tuple[float, float]:
    x = dkw_halfwidth(n, level, dims)
    return max(0.0, rate - x), min(1.0, rate + x)


class Monitor:
    """Anytime-valid monitoring of one calibration's guarantee (see the module docstring).

    Parameters
    ----------
    reference : Reference
        The calibration items, routed by the live policy.
    tier_names : names of the cascade's tiers (cost order)
    alarm_level : float
        ε, the false-alarm probability over the whole run (split evenly across the tests).
    audit_share : float
        p, the share of kept answers audited by the last tier (0: no audits).
    feedback : bool
        Whether labels may arrive (runs ``served_risk``).
    target, alpha : the artifact's target and level (for ``served_risk``)
    seed : seed of the tie-breaking uniforms and the audit lottery
    """

    def __init__(self, reference: Reference, tier_names: Sequence[str], alarm_level: float = DEFAULT_ALARM_LEVEL,
                 audit_share: float = 0.0, feedback: bool = True, target: str | None = None,
                 alpha: float | None = None, seed: int | None = None, jump: float = JUMP):
        if not 0.0 < alarm_level < 1.0:
            raise ValueError(f"alarm level must be in (0, 1), got {alarm_level}")
        if not 0.0 <= audit_share <= 1.0:
            raise ValueError(f"audit share must be in [0, 1], got {audit_share}")
        self.reference = ref = reference
        self.tier_names = list(tier_names)
        if ref.n_tiers != len(self.tier_names):
            raise ValueError(f"the reference has {ref.n_tiers} tiers, the cascade {len(self.tier_names)}")
        self.alarm_level = alarm_level
        self.audit_share = audit_share
        self.target, self.alpha = target, alpha
        self.rng = np.random.default_rng(seed)
        self.audit_rng = np.random.default_rng(None if seed is None else seed + 1)
        has_skip = ref.skip_scores is not None and ref.skip_threshold is not None
        streams: list[tuple[str, np.ndarray, Any]] = []
        if has_skip:
            streams.append(("skip_score", ref.skip_scores, None))
        for k in range(1 if ref.checkpointed else 0, ref.n_tiers - 1):
            mask = ref.reached(k)
            if mask.sum() >= MIN_REFERENCE:
                streams.append((f"score:{self.tier_names[k]}", ref.scores[mask, k], k))
        end_only = not ref.grouped and not ref.checkpointed
        rates = [("acceptance_rate", 1 + has_skip)] + ([("skip_rate", 1)] if has_skip else []) if end_only else []
        audit = audit_share > 0 and ref.disagree is not None and ref.kept.any() and end_only
        served = feedback and target is not None and alpha is not None
        self.n_tests = len(streams) + len(rates) + int(audit) + int(served)
        self.test_level = alarm_level / max(1, self.n_tests)
        lvl = self.test_level
        self.martingales = {name: (RankMartingale(values, lvl, self.rng, jump), k) for name, values, k in streams}
        self.rates: dict[str, _RateTest] = {}
        for name, dims in rates:
            observed = (ref.answered == 0) if name == "acceptance_rate" else ref.skipped
            rate = float(observed.mean()) if ref.n else 0.0
            self.rates[name] = _RateTest(name, lvl, rate, _band(rate, ref.n, lvl / 2, dims))
        self.audit_test: _RateTest | None = None
        if audit_share > 0 and ref.disagree is not None and ref.kept.any():
            kept, both = float(ref.kept.mean()), float(ref.kept_disagree.mean())
            dims = ref.n_tiers + has_skip  # scores up to the keeping tier, the skip score, the disagreement bit
            x = dkw_halfwidth(ref.n, lvl / 2, dims) * (ref.n_tiers - 1)  # a union of K-1 orthants
            upper = min(1.0, (both + x) / (kept - x)) if kept > x else 1.0
            lower = max(0.0, (both - x) / (kept + x))
            self.audit_test = _RateTest("audit_disagreement", lvl, both / kept, (lower, upper), alarm_when="above",
                                        active=audit)
        self.served: _RateTest | None = None
        self.served_upper: _RateTest | None = None
        if served:
            self.served = _RateTest("served_risk", 2 * lvl, None, (0.0, float(alpha)), alarm_when="above")
            self.served_upper = _RateTest("served_risk_upper", 2 * lvl, None, (0.0, 1.0), alarm_when="above",
                                          active=False)
        self.seen = 0
        self.out_of_scope = 0
        self.alarms: list[dict] = []
        # audits: decisions resolve in order; the bound covers the longest resolved prefix
        self._seq = 0
        self._queue: deque[list] = deque()  # [seq, kept, audited, disagree or None]
        self._pending: dict[int, list] = {}
        self.audit_open = audit_share > 0 and ref.disagree is not None
        self.audit_closed_reason: str | None = None
        self.prefix = {"requests": 0, "kept": 0, "audited": 0, "audited_disagree": 0}
        self.audits_excluded = 0
        self.audits_failed = 0

    # ----- state
    @property
    def state(self) -> str:
        return "drift_detected" if self.alarms else "in_scope"

    @property
    def in_scope(self) -> bool:
        return not self.alarms

    def _fire(self, test: str, at: int) -> str:
        self.alarms.append({"test": test, "at_request": at, "at_observation": self.seen})
        return test

    # ----- feeding
    def observe(self, decision, audit_capacity: bool = True) -> Observed:
        """One answer (a ``Decision`` or an ``engine.types.Answer``). ``audit_capacity``:
        whether an audit could start now; checked before the lottery, so a request that
        could not be audited is left out of the audited population (not of the tests)."""
        if not isinstance(decision, Decision):
            decision = Decision.from_answer(decision, self.tier_names)
        if not decision.in_scope:
            self.out_of_scope += 1
            return Observed(None)
        self.seen += 1
        fired = []
        for name, (test, k) in self.martingales.items():
            value = decision.skip_score if k is None else decision.scores.get(k)
            if value is not None and test.observe(value):
                fired.append(self._fire(name, test.n))
        for name, test in self.rates.items():
            one = decision.answered == 0 if name == "acceptance_rate" else decision.skipped
            if test.add(one):
                fired.append(self._fire(name, test.n))
        kept = decision.answered < len(self.tier_names) - 1
        audit = False
        seq = None
        if self.audit_open:
            if kept and not audit_capacity:
                self.audits_excluded += 1
            else:
                self._seq += 1
                seq = self._seq
                audit = kept and self.audit_rng.random() < self.audit_share
                entry = [seq, kept, audit, None]
                self._queue.append(entry)
                if audit:
                    self._pending[seq] = entry
                self._resolve()
        return Observed(seq, audit, fired)

    def audit_result(self, seq: int, disagree: bool | None) -> list[str]:
        """The audit of decision ``seq``: did the last tier's answer differ from the kept one?
        ``None``: the audit failed — counted as a disagreement (conservative: the bound then
        covers "disagreement or failed audit", which is at least the quality loss)."""
        entry = self._pending.pop(seq, None)
        if entry is None:
            return []
        if disagree is None:
            self.audits_failed += 1
        entry[3] = True if disagree is None else bool(disagree)
        return self._resolve()

    def close_audits(self, reason: str) -> None:
        """Stop the audit lottery (the extra-cost cap was reached); the bound keeps covering
        the requests decided until now (a stopping time keeps it valid)."""
        if self.audit_open:
            self.audit_open = False
            self.audit_closed_reason = reason

    def _resolve(self) -> list[str]:
        fired = []
        while self._queue and (not self._queue[0][2] or self._queue[0][3] is not None):
            _, kept, audited, disagree = self._queue.popleft()
            self.prefix["requests"] += 1
            self.prefix["kept"] += int(kept)
            if audited:
                self.prefix["audited"] += 1
                self.prefix["audited_disagree"] += int(disagree)
                if self.audit_test is not None and self.audit_test.add(bool(disagree)):
                    fired.append(self._fire("audit_disagreement", self.audit_test.n))
        return fired

    def feedback(self, kept_by_smaller: bool, wrong: bool, largest_right: bool | None = None) -> list[str]:
        """A label for one served answer: was it wrong? ``largest_right`` when known (the
        last tier's own answer, or an audited one scored against a reference).

        For ``quality-loss`` the loss is "wrong and the last tier right": it counts for the
        alarm only when the last tier is known right (a lower proxy), and for the upper bound
        unless it is known wrong. ``selective-error`` counts labels of kept answers only.
        """
        if self.served is None:
            return []
        if self.target == "selective-error" and not kept_by_smaller:
            return []
        if self.target == "quality-loss":
            low = kept_by_smaller and wrong and largest_right is True
            high = kept_by_smaller and wrong and largest_right is not False
        else:  # accept-error, selective-error: a wrong kept answer
            low = high = kept_by_smaller and wrong
        self.served_upper.add(high)
        if self.served.add(low):
            return [self._fire("served_risk", self.served.n)]
        return []

    # ----- reading
    def quality_loss_bound(self) -> dict:
        """Upper confidence bound on the realized quality loss per request, from the audits."""
        pre = self.prefix
        if self.audit_share <= 0 or self.reference.disagree is None:
            return {"active": False}
        level = self.test_level
        upper = audit_upper_bound(pre["kept"], pre["audited"], pre["audited_disagree"], self.audit_share, level)
        t = pre["requests"]
        return {"active": self.audit_open, "closed_reason": self.audit_closed_reason, "level": level,
                "requests": t, "kept": pre["kept"], "audited": pre["audited"],
                "audited_disagree": pre["audited_disagree"], "pending": len(self._pending),
                "excluded": self.audits_excluded, "failed": self.audits_failed,
                "estimate": (pre["audited_disagree"] / self.audit_share) / t if t else None,
                "upper": upper / t if t else 1.0}

    def snapshot(self) -> dict:
        """Everything the monitor knows, JSON-ready (``/v1/monitor``, ``/metrics``)."""
        tests = {name: test.to_dict() for name, (test, _) in self.martingales.items()}
        tests.update({name: test.to_dict() for name, test in self.rates.items()})
        if self.audit_test is not None:
            tests["audit_disagreement"] = self.audit_test.to_dict()
        out = {"state": self.state, "alarm_level": self.alarm_level, "n_tests": self.n_tests,
               "test_level": self.test_level, "observed": self.seen, "out_of_scope": self.out_of_scope,
               "alarms": list(self.alarms), "tests": tests, "quality_loss_bound": self.quality_loss_bound(),
               "reference": {"n": self.reference.n, **{k: v for k, v in self.reference.figures.items()
                                                       if k != "counts"}}}
        if self.served is not None:
            low, high = self.served.to_dict(), self.served_upper.to_dict()
            out["served_risk"] = {"target": self.target, "alpha": self.alpha, "labels": low["n"],
                                  "lower": low["lower"], "upper": high["upper"],
                                  "rate_lower_proxy": low["rate"], "rate_upper_proxy": high["rate"],
                                  "level": self.served.level / 2, "alarm": low["alarm"], "alarm_at": low["alarm_at"]}
            tests["served_risk"] = low
        return out
