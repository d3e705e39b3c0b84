"""The guarantee in production: the server's monitor, audits and feedback.

``Guard`` holds the ``engine.monitoring.Monitor`` of the live artifact and is fed every
decision the server records (``Guard.record``). Around it:

* **audits** (``audit_share`` p > 0): a share p of the answers a smaller tier kept is
  answered again by the last tier in the background, after the client has its response —
  at most ``audit_concurrency`` at once, at most ``audit_max_pending`` waiting (a request
  decided while the queue is full stays out of the audit lottery: the bound then covers the
  requests that were in it), and no new audits once ``audit_max_tokens`` tokens were spent
  (the bound keeps covering the requests decided before); an audit that fails or takes
  longer than ``audit_timeout_s`` counts as a disagreement. The two answers are compared
  with the kept tier's answer equivalence (the registry semantic entropy uses); each audit
  is a line ``{"type": "audit", ...}`` in the decision log;
* **feedback** (``POST /v1/feedback``): a label for a recent response — ``correct`` or a
  reference answer scored like the calibration job scores its items — appended to
  ``<decision log stem>.feedback.jsonl`` and counted in the served-risk confidence sequence;
* **metrics**: ``GuardCollector`` renders the monitor at scrape time
  (``vcascade:guarantee_state``, the tests' statistics, the rates with their bounds, the
  audit bound, the served risk, the live artifact's hash and creation time).

The guard logs one line when the state changes (in scope → drift detected).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from pydantic import BaseModel, ConfigDict, Field

from vcascade.engine.monitoring import DEFAULT_ALARM_LEVEL, Monitor, Reference
from vcascade.engine.scoring import KINDS, is_correct
from vcascade.engine.uncertainty.equivalence import get_equivalence

from .errors import APIError

log = logging.getLogger("vcascade.server")

RECENT = 100_000
"""Responses remembered for feedback (older ids get 404)."""


@dataclass(frozen=True)
class LiveArtifact:
    """The artifact a server runs: its content, where it came from, its sha256 and creation time."""

    data: dict
    path: str | None
    sha256: str
    created: str | None

    @classmethod
    def read(cls, path: str | Path) -> "LiveArtifact":
        """One read of the file: its content and its hash describe the same bytes."""
        from vcascade.engine.artifact import ArtifactError, parse_artifact

        try:
            raw = Path(path).read_bytes()
        except OSError as err:
            raise ArtifactError(f"{path}: artifact not readable ({err.strerror or err})") from None
        data = parse_artifact(raw.decode("utf-8", errors="replace"), path)
        return cls(data, str(path), hashlib.sha256(raw).hexdigest(), data.get("created"))

    def info(self) -> dict:
        return {"sha256": self.sha256, "created": self.created, "path": self.path}


@dataclass
class GuardSettings:
    """``vcascade serve`` options of the guard."""

    alarm_level: float = DEFAULT_ALARM_LEVEL
    audit_share: float = 0.0
    audit_concurrency: int = 2
    audit_max_pending: int = 64
    audit_max_tokens: int | None = 1_000_000
    audit_timeout_s: float = 300.0
    seed: int | None = None


class Feedback(BaseModel):
    """``POST /v1/feedback``: a label for one response, by its id. Either ``correct`` or a
    ``reference`` answer (scored as ``kind``: exact, numeric or choice, with ``options``)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=200)
    correct: bool | None = None
    reference: str | list[str] | None = Field(None, description="reference answer(s)")
    kind: Literal["exact", "numeric", "choice"] = "exact"
    options: list[str] = Field(default_factory=list, max_length=26)


def _tier_equivalence(tier) -> str:
    return tier.samples.equivalence if getattr(tier, "samples", None) is not None else "normalized"


class Guard:
    """The monitor of one live artifact over one cascade, with audits and feedback."""

    def __init__(self, cascade, artifact: LiveArtifact, settings: GuardSettings, decision_log=None,
                 feedback_path: Path | None = None):
        self.cascade = cascade
        self.artifact = artifact
        self.settings = settings
        reference = Reference.from_artifact(artifact.data, cascade.policy)
        self.monitor = Monitor(reference, [t.name for t in cascade.tiers], alarm_level=settings.alarm_level,
                               audit_share=settings.audit_share, feedback=True, target=artifact.data.get("target"),
                               alpha=artifact.data.get("alpha"), seed=settings.seed)
        self.decision_log = decision_log  # a writable text file (shared with the server's decision log) or None
        self.feedback_path = feedback_path
        self.recent: OrderedDict[str, dict] = OrderedDict()
        self.tasks: set[asyncio.Task] = set()
        self.semaphore = asyncio.Semaphore(max(1, settings.audit_concurrency))
        self.audit_tokens = 0
        self.audits = {"started": 0, "agreed": 0, "disagreed": 0, "failed": 0}
        self.labels = {"received": 0, "counted": 0}
        self.state = self.monitor.state

    # ----- decisions
    def record(self, request_id: str, request, answer) -> None:
        """Feed one recorded answer to the monitor; start its audit if it drew one."""
        capacity = len(self.tasks) < self.settings.audit_max_pending
        observed = self.monitor.observe(answer, audit_capacity=capacity)
        last = len(self.cascade.tiers) - 1
        self.recent[request_id] = {"tier_index": answer.tier_index, "kept": answer.tier_index < last,
                                   "in_scope": answer.in_scope, "text": answer.text, "audit_text": None,
                                   "labelled": False}
        while len(self.recent) > RECENT:
            self.recent.popitem(last=False)
        self._state_changed(observed.alarms, request_id)
        if observed.audit:
            task = asyncio.get_running_loop().create_task(self._audit(observed.seq, request_id, request, answer))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    def _state_changed(self, alarms: list[str], request_id: str) -> None:
        if self.monitor.state != self.state:
            first = self.monitor.alarms[0]
            log.warning("guarantee state: %s -> %s (test %s alarmed after %d observations; request %s). The "
                        "served traffic no longer looks like the calibration items: the artifact's guarantee "
                        "may not hold; see /v1/monitor", self.state, self.monitor.state, first["test"],
                        first["at_observation"], request_id)
            self.state = self.monitor.state
        elif alarms:
            log.info("monitor: test(s) %s also alarmed (request %s)", ", ".join(alarms), request_id)

    # ----- audits
    async def _audit(self, seq: int, request_id: str, request, answer) -> None:
        last = self.cascade.tiers[-1]
        kept_tier = self.cascade.tiers[answer.tier_index]
        async with self.semaphore:
            self.audits["started"] += 1
            disagree, audit_text, error = None, None, None
            try:
                result = await asyncio.wait_for(last.generate(request), self.settings.audit_timeout_s)
                audit_text = result.text
                self.audit_tokens += result.prompt_tokens + result.completion_tokens
                equivalence = get_equivalence(_tier_equivalence(kept_tier.config))
                a, b = equivalence.keys([answer.text, result.text])
                disagree = not equivalence.same(a, b)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # any failure of the audit counts as a disagreement (conservative)
                error = f"{type(err).__name__}: {err}"
                log.info("audit of %s failed: %s", request_id, error)
        self.audits["failed" if disagree is None else "disagreed" if disagree else "agreed"] += 1
        fired = self.monitor.audit_result(seq, disagree)
        self._state_changed(fired, request_id)
        if request_id in self.recent:
            self.recent[request_id]["audit_text"] = audit_text
        cap = self.settings.audit_max_tokens
        if cap is not None and self.audit_tokens >= cap:
            self.monitor.close_audits(f"the audits spent {self.audit_tokens} tokens (--audit-max-tokens {cap})")
        if self.decision_log is not None:
            entry = {"type": "audit", "id": request_id, "time": time.time(), "kept_tier": kept_tier.name,
                     "kept_text": answer.text, "audit_tier": last.name, "audit_text": audit_text,
                     "disagree": disagree, "equivalence": _tier_equivalence(kept_tier.config), "error": error}
            self.decision_log.write(json.dumps(entry) + "\n")
            self.decision_log.flush()

    async def close(self) -> None:
        """Cancel the audits still running (shutdown, or a swapped artifact)."""
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=5)

    # ----- feedback
    def feedback(self, body: Feedback) -> dict:
        """Count a label; raises ``APIError`` 404 (unknown id), 400 (no label), 409 (labelled twice)."""
        if (body.correct is None) == (body.reference is None):
            raise APIError(400, "feedback needs exactly one of 'correct' (true/false) and 'reference'", "correct")
        record = self.recent.get(body.id)
        if record is None:
            raise APIError(404, f"no recent response with id {body.id!r} (this server remembers the last {RECENT} "
                                "responses since it started or swapped its artifact)", "id")
        if record["labelled"]:
            raise APIError(409, f"response {body.id!r} already has feedback; each response is counted once", "id")
        references = None
        if body.reference is not None:
            references = [body.reference] if isinstance(body.reference, str) else list(body.reference)
            if not references or not all(r.strip() for r in references):
                raise APIError(400, "'reference' must be a non-empty answer (or list of answers)", "reference")
            correct = is_correct(record["text"], references, body.kind, body.options)
        else:
            correct = bool(body.correct)
        record["labelled"] = True
        largest_right = None
        if not record["kept"]:
            largest_right = correct
        elif references is not None and record["audit_text"] is not None:
            largest_right = is_correct(record["audit_text"], references, body.kind, body.options)
        self.labels["received"] += 1
        counted = bool(record["in_scope"])
        if counted:
            self.labels["counted"] += 1
            fired = self.monitor.feedback(record["kept"], not correct, largest_right)
            self._state_changed(fired, body.id)
        entry = {"id": body.id, "time": time.time(), "correct": correct, "reference": references,
                 "kind": body.kind if references is not None else None, "tier_index": record["tier_index"],
                 "kept_by_smaller": record["kept"], "largest_right": largest_right, "in_scope": record["in_scope"],
                 "counted": counted}
        if self.feedback_path is not None:
            with open(self.feedback_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(entry) + "\n")
        return {"id": body.id, "correct": correct, "counted": counted,
                "served_risk": self.monitor.snapshot().get("served_risk")}

    # ----- reading
    def snapshot(self) -> dict:
        out = self.monitor.snapshot()
        out["artifact"] = self.artifact.info()
        out["audits"] = {**self.audits, "tokens": self.audit_tokens, "running": len(self.tasks),
                         "share": self.settings.audit_share}
        out["feedback"] = dict(self.labels)
        return out


class GuardCollector:
    """The guard's figures for ``/metrics``, read at scrape time (``service.guard`` may be
    swapped; ``None``: no monitor configured, nothing but the artifact's identity)."""

    def __init__(self, service):
        self.service = service

    def collect(self):
        guard = getattr(self.service, "guard", None)
        artifact = getattr(self.service, "artifact", None)
        info = GaugeMetricFamily("vcascade:artifact_info", "The live calibration artifact (value 1)",
                                 labels=["sha256", "created"])
        if artifact is not None:
            info.add_metric([artifact.sha256, str(artifact.created)], 1.0)
        yield info
        if guard is None:
            return
        snap = guard.snapshot()
        state = GaugeMetricFamily("vcascade:guarantee_state",
                                  "1 while served traffic is in the calibrated scope, 0 once a drift test alarmed")
        state.add_metric([], 1.0 if snap["state"] == "in_scope" else 0.0)
        yield state
        alarm = GaugeMetricFamily("vcascade:monitor_alarm", "1 when this test has alarmed", labels=["test"])
        statistic = GaugeMetricFamily("vcascade:monitor_statistic",
                                      "Test martingale value (alarm at monitor_alarm_threshold)", labels=["test"])
        threshold = GaugeMetricFamily("vcascade:monitor_alarm_threshold", "1 / the test's level", labels=["test"])
        observations = GaugeMetricFamily("vcascade:monitor_observations", "Observations the test has seen",
                                         labels=["test"])
        rate = GaugeMetricFamily("vcascade:monitor_rate",
                                 "Live rates with their anytime-valid bounds, and the calibration's band",
                                 labels=["rate", "bound"])
        for name, test in snap["tests"].items():
            alarm.add_metric([name], 1.0 if test["alarm"] else 0.0)
            observations.add_metric([name], float(test["n"]))
            if "value" in test:
                statistic.add_metric([name], test["value"])
                threshold.add_metric([name], test["alarm_threshold"])
            else:
                for bound, key in (("estimate", "rate"), ("lower", "lower"), ("upper", "upper"),
                                   ("calibration", "calibration"), ("calibration_lower", "calibration_lower"),
                                   ("calibration_upper", "calibration_upper")):
                    if test.get(key) is not None:
                        rate.add_metric([name, bound], float(test[key]))
        yield from (alarm, statistic, threshold, observations, rate)
        observed = CounterMetricFamily("vcascade:monitor_answers", "Answers the monitor saw, by scope",
                                       labels=["scope"])
        observed.add_metric(["in_scope"], snap["observed"])
        observed.add_metric(["out_of_scope"], snap["out_of_scope"])
        yield observed
        bound = snap["quality_loss_bound"]
        audits = CounterMetricFamily("vcascade:audits", "Audits of kept answers by the last tier, by outcome",
                                     labels=["outcome"])
        for outcome in ("started", "agreed", "disagreed", "failed"):
            audits.add_metric([outcome], snap["audits"][outcome])
        yield audits
        if bound.get("requests") is not None:
            loss = GaugeMetricFamily("vcascade:quality_loss_bound",
                                     "Audits' upper confidence bound on the realized quality loss per request "
                                     "(and the 1/p-weighted estimate)", labels=["bound"])
            loss.add_metric(["upper"], bound["upper"])
            if bound["estimate"] is not None:
                loss.add_metric(["estimate"], bound["estimate"])
            yield loss
        served = snap.get("served_risk")
        if served is not None:
            risk = GaugeMetricFamily("vcascade:served_risk", "Risk of the artifact's target among labelled answers: "
                                     "anytime-valid bounds (alarm when lower > alpha)", labels=["bound"])
            risk.add_metric(["lower"], served["lower"])
            risk.add_metric(["upper"], served["upper"])
            risk.add_metric(["alpha"], float(served["alpha"]))
            yield risk
            labels = CounterMetricFamily("vcascade:feedback", "Labels received, and counted (in scope)",
                                         labels=["outcome"])
            labels.add_metric(["received"], snap["feedback"]["received"])
            labels.add_metric(["counted"], snap["feedback"]["counted"])
            yield labels


def build_guard(cascade, artifact: LiveArtifact | None, settings: GuardSettings | None, decision_log=None,
                decision_log_path: Path | None = None) -> Guard | None:
    """The guard for a cascade and its artifact, or ``None`` (with the reason logged) when
    nothing can be monitored: no settings, no artifact, a forced or uncalibrated scope, or
    an artifact without a ``"monitor"`` section."""
    if settings is None or artifact is None:
        return None
    if not cascade.scope.calibrated or cascade.scope.forced or cascade.scope.dtype_departs:
        log.warning("monitor off: the policy is not a calibration's (or its artifact was forced, or the engines "
                    "run in another dtype than it was calibrated in)")
        return None
    if not (artifact.data.get("monitor") or {}).get("scores"):
        log.warning("monitor off: %s has no 'monitor' section (recalibrate it with this vcascade to monitor it)",
                    artifact.path)
        return None
    feedback = None if decision_log_path is None else decision_log_path.with_name(
        f"{decision_log_path.stem}.feedback.jsonl")
    return Guard(cascade, artifact, settings, decision_log, feedback)


__all__ = ["Feedback", "Guard", "GuardCollector", "GuardSettings", "KINDS", "LiveArtifact", "build_guard"]
