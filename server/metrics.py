"""Prometheus metrics named like vLLM's own (``vllm/v1/metrics/loggers.py``) under a
``vcascade:`` prefix, labelled by ``model_name`` (the model id the client asked for) and
``tier``.

One ``CollectorRegistry`` per app (no module-level globals): requests and their outcome,
answers per tier, escalations and skips, the confidence score each tier's rule gave,
time to first token and end-to-end latency (by answering tier), time at each tier, the
controller's own overhead, prompt and generation tokens per tier, requests in flight at the
server, and — read from each engine at scrape time — running and waiting requests and
KV-cache use per tier.
"""

from __future__ import annotations

from typing import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

from vcascade.engine.types import Answer

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0)
OVERHEAD_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)


class EngineCollector:
    """Running / waiting requests and KV-cache use of every in-process tier, read at scrape."""

    def __init__(self, tiers: Sequence):
        self.tiers = tiers

    def collect(self):
        running = GaugeMetricFamily("vcascade:num_requests_running", "Requests running in the tier's engine",
                                    labels=["tier"])
        waiting = GaugeMetricFamily("vcascade:num_requests_waiting", "Requests waiting in the tier's engine queue",
                                    labels=["tier"])
        kv = GaugeMetricFamily("vcascade:kv_cache_usage_perc", "KV-cache usage of the tier's engine (1 = full)",
                               labels=["tier"])
        for tier in self.tiers:
            stats = getattr(tier.backend, "stats", None)
            if stats is not None:
                running.add_metric([tier.name], stats.running)
                waiting.add_metric([tier.name], stats.waiting)
                kv.add_metric([tier.name], stats.kv_cache_usage)
        yield from (running, waiting, kv)


class Metrics:
    """The server's metrics; ``observe`` records one finished request."""

    def __init__(self, tiers: Sequence):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("vcascade:requests", "Requests received", ["model_name", "endpoint"], registry=r)
        self.success = Counter("vcascade:request_success", "Requests answered", ["model_name", "finished_reason"],
                               registry=r)
        self.failures = Counter("vcascade:request_failures", "Requests that ended in an error or a client disconnect, "
                                "by status and reason (bad_request, engine_dead, tier_unavailable, disconnected)",
                                ["model_name", "status", "reason"], registry=r)
        self.rejected = Counter("vcascade:requests_rejected", "Requests refused before generation", ["reason"],
                                registry=r)
        self.answers = Counter("vcascade:answers", "Answers per answering tier", ["model_name", "tier"], registry=r)
        self.escalations = Counter("vcascade:escalations", "Requests escalated from a tier", ["tier"], registry=r)
        self.skips = Counter("vcascade:skips", "Requests that skipped a tier before generating", ["tier"], registry=r)
        self.decisions = Counter("vcascade:decisions", "Decisions at non-final tiers by kind and by where they were "
                                 "taken: checkpoint '0' before generating (skip), 'k' after k tokens (mid-generation "
                                 "commit or escalation), 'end' on the finished answer",
                                 ["tier", "decision", "checkpoint"], registry=r)
        self.score = Histogram("vcascade:confidence_score", "Rule score of each tier's answer", ["tier"],
                               buckets=(-20, -10, -5, -3, -2, -1.5, -1, -0.75, -0.5, -0.25, -0.1, 0, 0.1, 0.25, 0.5,
                                        0.75, 0.9, 1.0), registry=r)
        self.ttft = Histogram("vcascade:time_to_first_token_seconds", "Time to the first streamed token",
                              ["model_name", "tier"], buckets=LATENCY_BUCKETS, registry=r)
        self.e2e = Histogram("vcascade:e2e_request_latency_seconds", "End-to-end request latency",
                             ["model_name", "tier"], buckets=LATENCY_BUCKETS, registry=r)
        self.tier_time = Histogram("vcascade:tier_request_seconds", "Time a request spent at a tier", ["tier"],
                                   buckets=LATENCY_BUCKETS, registry=r)
        self.overhead = Histogram("vcascade:controller_overhead_seconds",
                                  "Wall time of vcascade's own work on a request (rendering, embedding, scoring, "
                                  "response building)", ["part"], buckets=OVERHEAD_BUCKETS, registry=r)
        self.overhead_cpu = Histogram("vcascade:controller_cpu_seconds",
                                      "CPU time of vcascade's own work on a request, by part", ["part"],
                                      buckets=OVERHEAD_BUCKETS, registry=r)
        self.generation = Counter("vcascade:generation_seconds", "Seconds requests spent generating at tiers",
                                  registry=r)
        self.prompt_tokens = Counter("vcascade:prompt_tokens", "Prompt tokens processed", ["tier"], registry=r)
        self.generation_tokens = Counter("vcascade:generation_tokens", "Tokens generated", ["tier"], registry=r)
        self.in_scope = Counter("vcascade:requests_in_scope", "Answers the artifact's guarantee covers",
                                ["model_name"], registry=r)
        self.out_of_scope = Counter("vcascade:requests_out_of_scope",
                                    "Answers outside the guarantee's scope, by reason (an answer may have several)",
                                    ["model_name", "reason"], registry=r)
        self.in_flight = Gauge("vcascade:num_requests_in_flight", "Requests admitted and not finished", registry=r)
        self.registry.register(EngineCollector(tiers))

    def observe(self, model_name: str, answer: Answer, e2e: float, ttft: float | None, overhead):
        self.success.labels(model_name, answer.finish_reason or "unknown").inc()
        if answer.in_scope:
            self.in_scope.labels(model_name).inc()
        for reason in answer.out_of_scope:  # values from engine.scope.REASONS: bounded
            self.out_of_scope.labels(model_name, reason).inc()
        self.answers.labels(model_name, answer.tier).inc()
        for step in answer.trace:
            if step.decision in ("accept", "commit", "escalate", "skip"):
                where = "end" if step.checkpoint is None else str(step.checkpoint)  # the artifact's few checkpoints
                self.decisions.labels(step.tier, step.decision, where).inc()
            if step.decision == "skip":
                self.skips.labels(step.tier).inc()
                continue
            if step.decision == "escalate":
                self.escalations.labels(step.tier).inc()
            if step.score is not None and step.decision != "error":
                self.score.labels(step.tier).observe(step.score)
            self.tier_time.labels(step.tier).observe(step.seconds)
            self.generation.inc(step.seconds)
            self.prompt_tokens.labels(step.tier).inc(step.prompt_tokens)
            self.generation_tokens.labels(step.tier).inc(step.completion_tokens)
        self.e2e.labels(model_name, answer.tier).observe(e2e)
        if ttft is not None:
            self.ttft.labels(model_name, answer.tier).observe(ttft)
        for part, seconds in overhead.parts.items():
            self.overhead.labels(part).observe(seconds)
            self.overhead_cpu.labels(part).observe(overhead.cpu.get(part, 0.0))
