"""Calibration artifacts: the thresholds a calibration job certified, and the identity of
the cascade they were certified for.

Schema (JSON, ``schema_version`` 1)::

    {"schema_version": 1, "created": ISO time, "dataset": {...}, "signal": str,
     "target": str, "alpha": float, "delta": float | null, "n": int,
     "tiers": [{"name", "model", "model_hash", "decoding"}, ...],   # cost order
     "fit": {"thresholds": [...], "feasible", "method", "empirical_risk", "risk_bound",
             "acceptance": [...], "cost_ratio", ...}}

A cascade serves an artifact only when its tiers are the same models (content hash) with
the same decoding settings; otherwise ``load_artifact_policy`` refuses with a message
naming the first difference, unless ``force`` is set.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from . import model_store
from .config import CascadeConfig, TierConfig, resolve_model
from .policy import Policy

SCHEMA_VERSION = 1
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


def decoding_settings(tier: TierConfig, system_prompt: str | None) -> dict[str, Any]:
    """Everything besides the weights that changes a tier's answers or scores."""
    return {
        "dtype": tier.dtype,
        "sampling": asdict(tier.sampling),
        "samples": asdict(tier.samples) if tier.samples else None,
        "system_prompt": system_prompt,
    }


def tier_identity(tier: TierConfig, config: CascadeConfig) -> dict[str, Any]:
    return {
        "name": tier.name,
        "model": tier.model,
        "model_hash": model_hash(resolve_model(tier, config.source), tier.model),
        "decoding": decoding_settings(tier, config.system_prompt),
    }


def read_artifact(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: artifact not found")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{path}: not valid JSON ({err.msg}, line {err.lineno})") from None
    version = data.get("schema_version") if isinstance(data, dict) else None
    if version != SCHEMA_VERSION:
        raise ArtifactError(f"{path}: artifact schema version {version!r}; this vcascade reads version {SCHEMA_VERSION}")
    for key in ("tiers", "fit", "signal", "target", "alpha"):
        if key not in data:
            raise ArtifactError(f"{path}: artifact is missing {key!r}")
    return data


def mismatch(artifact: dict[str, Any], config: CascadeConfig) -> str | None:
    """The first difference between the artifact's tiers and the config's, or ``None``."""
    calibrated = artifact["tiers"]
    if len(calibrated) != len(config.tiers):
        return f"the artifact has {len(calibrated)} tiers, the config {len(config.tiers)}"
    for i, (was, tier) in enumerate(zip(calibrated, config.tiers)):
        now = tier_identity(tier, config)
        if was["model_hash"] != now["model_hash"]:
            return (f"tier {i} ({tier.name}): calibrated for model {was['model']!r} ({was['model_hash'][:23]}…), "
                    f"config has {tier.model!r} ({now['model_hash'][:23]}…)")
        if was["decoding"] != now["decoding"]:
            keys = [k for k in now["decoding"] if was["decoding"].get(k) != now["decoding"][k]]
            return f"tier {i} ({tier.name}): decoding settings differ ({', '.join(keys)})"
    return None


def load_artifact_policy(path: str | Path, config: CascadeConfig, force: bool = False) -> Policy:
    """The policy an artifact certifies, after checking it matches ``config``.

    An infeasible fit has +inf thresholds (always escalate). Raises ``ArtifactError`` for a
    wrong schema version or, unless ``force``, tiers that differ from the config's.
    """
    artifact = read_artifact(path)
    problem = mismatch(artifact, config)
    if problem and not force:
        raise ArtifactError(f"{path} does not match {config.source}: {problem}. "
                            "Recalibrate for this config, or pass --force-artifact to serve it anyway.")
    thresholds = [math.inf if t is None else float(t) for t in artifact["fit"]["thresholds"]]
    return Policy(artifact["signal"], tuple(thresholds))
