"""Calibration artifacts: the policy a calibration job certified (rules, thresholds, skip),
the guarantee it certified, and the identity of the cascade it was certified for.

Schema (JSON, ``schema_version`` 2)::

    {"schema_version": 2, "created": ISO time, "dataset": {...}, "target": str,
     "alpha": float, "delta": float | null, "guarantee": {"kind", "statement", ...},
     "tiers": [{"name", "model", "model_hash", "decoding"}, ...],          # cost order
     "policy": {"rules": [rule spec per non-final tier], "thresholds": [...],
                "skip": skip-rule spec | null, "skip_threshold": float | null,
                "checkpoints": {"tokens": [k_1..k_m], "rules": [prefix rule spec per checkpoint],
                                "commit": [m], "escalate": [m]} | absent,
                "groups": {group: {"thresholds", "skip_threshold", "commit", "escalate"}} | absent,
                "fallback_group": str, "group_by": "length" | absent},
     "selection": {...}, "fit": {...}}

A rule spec is ``{"kind": "signal", "name": ...}`` or a frozen learned rule (see
``engine.uncertainty.learned``). A cascade serves an artifact only when its tiers are the
same models (content hash; for a remote tier its served model id, stated revision and
context length) with the same decoding settings, and its learned rules load in this
environment; otherwise ``load_artifact_policy`` refuses with a message naming the first
difference (``force`` skips the tier comparison, never the learned-rule checks).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

from . import hardware, model_store
from .config import CascadeConfig, EngineTierConfig, RemoteTierConfig, resolve_model
from .policy import Checkpoints, Policy
from .uncertainty.learned import LearnedRuleError, rule_from_spec, skip_from_spec

SCHEMA_VERSION = 2
HASH_CACHE = ".vcascade-content-hash"


class ArtifactError(ValueError):
    """An artifact that cannot be served with this config."""


def model_hash(location: str, model: str | None = None) -> str:
    """Content hash of a tier's weights.

    A packaged model is identified by the pinned sha256 of its GGUF source (the verified
    input of a deterministic conversion, independent of library versions that format
    ``config.json``); a local folder by sha256 over every file's path, size and bytes,
    cached in the folder next to the files' sizes and mtimes; a hub id as ``hub:<id>``.
    """
    if model in model_store.CATALOG:
        return f"packaged:{model}@sha256:{model_store.CATALOG[model].sha256}"
    folder = Path(location)
    if not folder.is_dir():
        return f"hub:{location}"
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".vcascade"))
    signature = json.dumps([(str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in files])
    cache = folder / HASH_CACHE
    if cache.is_file():
        cached_signature, _, cached_hash = cache.read_text().rpartition("\n")
        if cached_signature == signature:
            return cached_hash
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.relative_to(folder)}\0{path.stat().st_size}\0".encode())
        with open(path, "rb") as fh:
            while block := fh.read(1 << 22):
                digest.update(block)
    value = f"sha256:{digest.hexdigest()}"
    if os.access(folder, os.W_OK):
        cache.write_text(f"{signature}\n{value}")
    return value


def decoding_settings(tier: EngineTierConfig | RemoteTierConfig, system_prompt: str | None) -> dict[str, Any]:
    """Everything besides the weights that changes a tier's answers or scores; an engine tier's
    ``dtype`` is the resolved one (``auto`` → this machine's native dtype)."""
    settings: dict[str, Any] = {
        "sampling": tier.sampling.model_dump(),
        "samples": tier.samples.model_dump() if tier.samples else None,
        "system_prompt": system_prompt,
    }
    if isinstance(tier, EngineTierConfig):
        settings = {"dtype": hardware.resolve_dtype(tier.dtype), **settings}
    return settings


def tier_identity(tier: EngineTierConfig | RemoteTierConfig, config: CascadeConfig) -> dict[str, Any]:
    """What an artifact (and a generation cache) pins about one tier. A remote tier is its
    served model id and the revision the operator states (``model_revision``)."""
    if isinstance(tier, RemoteTierConfig):
        digest = f"remote:{tier.model}@{tier.model_revision or 'unstated-revision'}"
    else:
        digest = model_hash(resolve_model(tier, config.source), tier.model)
    return {"name": tier.name, "model": tier.model, "model_hash": digest,
            "decoding": decoding_settings(tier, config.system_prompt)}


def read_artifact(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: artifact not found")
    return parse_artifact(path.read_text(), path)


def parse_artifact(text: str, path: str | Path = "<artifact>") -> dict[str, Any]:
    """An artifact from its JSON text, checked as ``read_artifact`` checks a file (``path``
    names it in errors)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{path}: not valid JSON ({err.msg}, line {err.lineno})") from None
    version = data.get("schema_version") if isinstance(data, dict) else None
    if version != SCHEMA_VERSION:
        raise ArtifactError(f"{path}: artifact schema version {version!r}; this vcascade reads version "
                            f"{SCHEMA_VERSION}. Recalibrate (vcascade calibrate).")
    for key in ("tiers", "policy", "fit", "target", "alpha"):
        if key not in data:
            raise ArtifactError(f"{path}: artifact is missing {key!r}")
    return data


def dtype_departure(artifact: dict[str, Any], config: CascadeConfig) -> str | None:
    """Why tiers with ``dtype: auto`` run in another dtype here than the calibration did (a
    bf16 calibration on a CPU that would emulate bf16, so ``auto`` picks float32), or ``None``.

    The cascade still runs the artifact's policy — refusing would leave such a machine with no
    default at all, or force it to emulate bf16 several times slower — but answers and
    scores differ between dtypes, so the guarantee does not cover them (scope reason ``dtype``).
    A tier whose config names a dtype other than the calibrated one is refused (``mismatch``).
    """
    for i, (was, tier) in enumerate(zip(artifact["tiers"], config.tiers)):
        if isinstance(tier, EngineTierConfig) and tier.dtype == "auto":
            here = hardware.resolve_dtype("auto")
            if was["decoding"].get("dtype") not in (None, here):
                return (f"tier {i} ({tier.name}): calibrated in {was['decoding']['dtype']}, runs in {here} here "
                        f"(dtype auto: {hardware.native_dtype().reason})")
    return None


def mismatch(artifact: dict[str, Any], config: CascadeConfig, live: Sequence | None = None) -> str | None:
    """The first difference between the artifact's tiers and the config's, or ``None`` (a
    ``dtype: auto`` tier resolving to another dtype is not one: see ``dtype_departure``).

    ``live`` (started tiers) adds what only a running tier knows: a remote tier's context length.
    """
    calibrated = artifact["tiers"]
    if len(calibrated) != len(config.tiers):
        return f"the artifact has {len(calibrated)} tiers, the config {len(config.tiers)}"
    for i, (was, tier) in enumerate(zip(calibrated, config.tiers)):
        now = tier_identity(tier, config)
        if was["model_hash"] != now["model_hash"]:
            return (f"tier {i} ({tier.name}): calibrated for model {was['model']!r} ({was['model_hash'][:40]}…), "
                    f"config has {tier.model!r} ({now['model_hash'][:40]}…)")
        dtype_differs = isinstance(tier, EngineTierConfig) and was["decoding"].get("dtype") != now["decoding"]["dtype"]
        if dtype_differs and tier.dtype != "auto":
            return (f"tier {i} ({tier.name}): calibrated with dtype {was['decoding'].get('dtype')}, the config "
                    f"runs it in {now['decoding']['dtype']}; answers and scores differ between dtypes "
                    f"(to run it as calibrated, set the tier's dtype: {was['decoding'].get('dtype')})")
        if dtype_differs:  # dtype auto resolved differently here: served, but outside the guarantee (dtype_departure)
            now = {**now, "decoding": {**now["decoding"], "dtype": was["decoding"].get("dtype")}}
        if was["decoding"] != now["decoding"]:
            keys = [k for k in now["decoding"] if was["decoding"].get(k) != now["decoding"][k]]
            return f"tier {i} ({tier.name}): decoding settings differ ({', '.join(keys) or 'engine kind'})"
        served = was.get("served") or {}
        if live is not None and served.get("max_model_len"):
            length = live[i].max_model_len
            if length and length != served["max_model_len"]:
                return (f"tier {i} ({tier.name}): calibrated against a server with max_model_len "
                        f"{served['max_model_len']}, this one has {length}")
    return None


def _floats(values) -> tuple[float, ...]:
    """Thresholds as written (JSON null = +inf, the threshold that keeps nothing)."""
    return tuple(math.inf if t is None else float(t) for t in values)


def _checkpoints(spec: dict | None, path) -> Checkpoints | None:
    """The checkpoint block of an artifact's policy (a null threshold is +inf: never commit,
    or escalate every answer reaching the checkpoint)."""
    if not spec:
        return None
    try:
        rules = tuple(rule_from_spec(r) for r in spec["rules"])
        return Checkpoints(tuple(spec["tokens"]), rules, _floats(spec["commit"]), _floats(spec["escalate"]))
    except LearnedRuleError as err:
        raise ArtifactError(f"{path}: checkpoint rule: {err}") from None
    except (KeyError, TypeError, ValueError) as err:
        raise ArtifactError(f"{path}: malformed policy checkpoints ({err})") from None


def policy_from_artifact(artifact: dict[str, Any], path: str | Path = "<artifact>") -> Policy:
    """The certified policy (an infeasible fit has +inf thresholds: always escalate)."""
    spec = artifact["policy"]
    try:
        rules = tuple(rule_from_spec(r) for r in spec["rules"])
        skip = skip_from_spec(spec["skip"]) if spec.get("skip") else None
    except LearnedRuleError as err:
        raise ArtifactError(f"{path}: {err}") from None
    checkpoints = _checkpoints(spec.get("checkpoints"), path)
    if checkpoints is not None and len(artifact["tiers"]) != 2:
        raise ArtifactError(f"{path}: checkpoints are certified for two tiers, the artifact has "
                            f"{len(artifact['tiers'])}")
    thresholds = _floats(spec["thresholds"])
    skip_threshold = None if skip is None else float(spec.get("skip_threshold"))
    groups = spec.get("groups") or {}
    by_group = {}
    for name, g in groups.items():
        entry = (_floats(g["thresholds"]), None if skip is None else float(g["skip_threshold"]))
        if checkpoints is not None:
            entry += ((_floats(g["commit"]), _floats(g["escalate"])),)
        by_group[name] = entry
    fallback = spec.get("fallback_group") if groups else None
    if groups:  # the top-level thresholds are the fallback group's
        thresholds, skip_threshold, *checkpointed = by_group[fallback]
        if checkpointed:
            checkpoints = checkpoints.with_thresholds(*checkpointed[0])
    return Policy(rules, thresholds, skip, skip_threshold, by_group, fallback,
                  spec.get("group_by") if groups else None, checkpoints)


def load_artifact_policy(path: str | Path, config: CascadeConfig, force: bool = False) -> Policy:
    """The policy an artifact certifies, after checking it matches ``config``.

    Raises ``ArtifactError`` for a wrong schema version, a learned rule this environment
    cannot load, or, unless ``force``, tiers that differ from the config's.
    """
    artifact = read_artifact(path)
    problem = mismatch(artifact, config)
    if problem and not force:
        raise ArtifactError(f"{path} does not match {config.source}: {problem}. "
                            "Recalibrate for this config, or pass --force-artifact to serve it anyway.")
    return policy_from_artifact(artifact, path)


def guarantee_statement(artifact: dict[str, Any]) -> str:
    """The guarantee in words, as the artifact states it.

    Artifacts written before the statement named the joint probability say "quality loss
    (cascade wrong where the largest tier is right) <= α", which reads as the conditional;
    the same claim is returned in today's words (``calibration.conformal.statement``):
    "P(cascade wrong and <largest> right) <= α, i.e. accuracy at most α below always-<largest>".
    """
    import re

    statement = (artifact.get("guarantee") or {}).get("statement", "no guarantee recorded")
    tiers = artifact.get("tiers") or []
    largest = tiers[-1].get("name") if tiers and isinstance(tiers[-1], dict) else None
    big = largest or "the largest tier"
    always = f"always-{largest}" if largest else "always calling the largest tier"
    return re.sub(r"quality loss \(cascade wrong where the largest tier is right\) <= ([0-9.eE+-]+)",
                  lambda m: f"P(cascade wrong and {big} right) <= {m.group(1)}, i.e. accuracy at most {m.group(1)} "
                            f"below {always}", statement)
