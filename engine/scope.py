"""The scope of a guarantee: which requests a calibration covers, and why one is outside.

A calibration certifies the cascade on requests shaped like its items: rendered through
the chat template (not raw completions), with the instructions the items had (the
cascade's configured system prompt, or the items' own system turns), each tier's
configured decoding and ``max_tokens``, the whole tier range under the certified policy,
and — for a per-group artifact — one of its groups. A request of another shape may be
answered well, but the guarantee says nothing about it; ``Scope.reasons`` names every way
a request departs, and the cascade adds what only the run shows (a fallback answer after
a tier error). The reasons travel with the answer (``Answer.out_of_scope``) into the API's
``cascade`` object, the decision log and ``/metrics``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from .types import Request

REASONS = {
    "uncalibrated": "the policy's thresholds come from the config, not from a calibration artifact",
    "forced_artifact": "the artifact was forced onto a cascade it does not match (--force-artifact)",
    "endpoint": "a raw completion prompt; the calibration rendered chat requests",
    "system_prompt": "the request's own system turn replaces the instructions the calibration used",
    "max_tokens": "max_tokens is none of the calibrated answer budgets (the tiers' own, or one the calibration "
                  "items asked for)",
    "decoding": "temperature, top_p, stop or seed differ from the calibrated decoding",
    "dtype": "the engines run in another dtype than the calibration did (dtype auto resolved differently on this "
             "machine): answers and scores differ",
    "tier_range": "a pinned tier or cascade.max_tier: the certified policy is not running",
    "group_unknown": "the request's group is not one the artifact calibrated; the most conservative group's "
                     "policy answered it",
    "fallback_answer": "a tier failed and an earlier tier's rejected answer was returned (on_error: previous_answer)",
}
"""Every out-of-scope reason, with its meaning (the README's table is generated from these)."""


def _system_turns(request: Request) -> list[str]:
    return [m["content"] for m in request.messages or () if m["role"] == "system"]


@dataclass(frozen=True)
class Scope:
    """The request shape one calibration covers.

    ``instructions`` is ``"cascade"`` when every calibration item was rendered with the
    cascade's ``system_prompt`` (a request with any other system turn is then out of
    scope), ``"items"`` when the items carried their own system turns (a request may bring
    its own). ``max_tokens`` is each tier's configured answer budget (tier order);
    ``item_max_tokens`` the budgets calibration items set for themselves (a request may ask
    for one of them), and ``tier_budget_calibrated`` whether any item ran under the tiers'
    own budget (when none did, a request without ``max_tokens`` is out of scope);
    ``groups`` the groups of a per-group artifact (empty: one policy for the mix).
    """

    calibrated: bool = True
    forced: bool = False
    instructions: str = "cascade"
    system_prompt: str | None = None
    max_tokens: tuple[int, ...] = ()
    groups: tuple[str, ...] = field(default=())
    item_max_tokens: tuple[int, ...] = ()
    tier_budget_calibrated: bool = True
    group_by: str | None = None
    """``"length"``: groups are a function of the request (``engine.policy.length_group``),
    so every request has a known group."""
    dtype_departs: bool = False
    """The engines run in another dtype than the calibration (``engine.artifact.dtype_departure``)."""

    @classmethod
    def uncalibrated(cls) -> "Scope":
        return cls(calibrated=False)

    @classmethod
    def from_artifact(cls, artifact: dict[str, Any], forced: bool = False, dtype_departs: bool = False) -> "Scope":
        """The scope an artifact records (``"scope"``), completed from its tiers' decoding."""
        recorded = artifact.get("scope") or {}
        tiers = artifact["tiers"]
        decoding = tiers[0]["decoding"] if tiers else {}
        return cls(calibrated=True, forced=forced, instructions=recorded.get("instructions", "cascade"),
                   system_prompt=decoding.get("system_prompt"),
                   max_tokens=tuple(int(t["decoding"]["sampling"]["max_tokens"]) for t in tiers),
                   groups=tuple(recorded.get("groups") or ()),
                   item_max_tokens=tuple(int(b) for b in recorded.get("item_max_tokens") or ()),
                   tier_budget_calibrated=bool(recorded.get("tier_budget_calibrated", True)),
                   group_by=recorded.get("group_by"), dtype_departs=dtype_departs)

    def to_dict(self) -> dict[str, Any]:
        """What the artifact records under ``"scope"`` (the rest is in its tiers)."""
        return {"endpoint": "chat", "instructions": self.instructions, "system_prompt": self.system_prompt,
                "max_tokens": list(self.max_tokens), "item_max_tokens": list(self.item_max_tokens),
                "tier_budget_calibrated": self.tier_budget_calibrated, "groups": list(self.groups),
                "group_by": self.group_by}

    def reasons(self, request: Request, tiers: Sequence, first: int, last: int) -> list[str]:
        """Why ``request``, run on tiers ``first``..``last``, is outside this scope (empty: inside).

        ``tiers`` are the cascade's ``Tier``s (their configured decoding is what was calibrated).
        """
        if not self.calibrated:
            return ["uncalibrated"]
        out = []
        if self.forced:
            out.append("forced_artifact")
        if self.dtype_departs:
            out.append("dtype")
        if request.raw:
            out.append("endpoint")
        if self.instructions == "cascade" and any(t != self.system_prompt for t in _system_turns(request)):
            out.append("system_prompt")
        chosen = tiers[first : last + 1]
        budgets = self.max_tokens[first : last + 1] if self.max_tokens else [t.config.sampling.max_tokens
                                                                             for t in chosen]
        if request.max_tokens is None:
            if not self.tier_budget_calibrated:
                out.append("max_tokens")
        elif request.max_tokens not in self.item_max_tokens and any(request.max_tokens != b for b in budgets):
            out.append("max_tokens")
        if not all(t.keeps_calibrated_decoding(request) for t in chosen):
            out.append("decoding")
        if first != 0 or last != len(tiers) - 1:
            out.append("tier_range")
        if self.groups and self.group_by != "length" and request.group not in self.groups:
            out.append("group_unknown")
        return out
