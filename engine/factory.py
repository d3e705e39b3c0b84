"""From a config to a running cascade: the policy (artifact or hand thresholds), then tiers.

The policy is resolved — artifact read, matched against the config, learned rules loaded —
before any engine starts, so a wrong artifact fails in a second, not after the start-up.
"""

from __future__ import annotations

import logging

from .artifact import (ArtifactError, dtype_departure, load_artifact_policy, mismatch, policy_from_artifact,
                       read_artifact)
from .cascade import Cascade
from .config import CascadeConfig
from .policy import Policy
from .scope import Scope
from .tiers import build_tiers


def build_policy(config: CascadeConfig, force_artifact: bool = False) -> Policy:
    """From the calibration artifact when the config names one (checked against the
    config's models), else from the config's signal and thresholds."""
    if config.artifact:
        return load_artifact_policy(config.artifact, config, force=force_artifact)
    return Policy.from_signal(config.signal, config.thresholds)


def build_scope(config: CascadeConfig, force_artifact: bool = False) -> Scope:
    """The requests the configured policy's guarantee covers (none without an artifact; an
    artifact forced onto tiers it does not match covers none either)."""
    if not config.artifact:
        return Scope.uncalibrated()
    artifact = read_artifact(config.artifact)
    departure = dtype_departure(artifact, config)
    if departure:
        logging.getLogger("vcascade").warning("%s: %s; answers are served with its policy but outside its guarantee "
                                              "(scope reason 'dtype')", config.artifact, departure)
    return Scope.from_artifact(artifact, forced=force_artifact and mismatch(artifact, config) is not None,
                               dtype_departs=departure is not None)


def cascade_for_artifact(config: CascadeConfig, artifact: dict, tiers, force_artifact: bool = False) -> Cascade:
    """The cascade over already running ``tiers`` under ``artifact`` (the content of the file
    ``config.artifact`` names), checked exactly as ``build_cascade`` checks it at start-up:
    the config's tiers, the running tiers, the learned rules. Raises ``ArtifactError``
    (or ``ValueError`` for a policy the tiers cannot run); nothing is changed on failure."""
    problem = mismatch(artifact, config)
    if problem and not force_artifact:
        raise ArtifactError(f"{config.artifact} does not match {config.source}: {problem}. "
                            "Recalibrate for this config, or pass --force-artifact to serve it anyway.")
    policy = policy_from_artifact(artifact, config.artifact)
    scope = Scope.from_artifact(artifact, forced=force_artifact and problem is not None,
                                dtype_departs=dtype_departure(artifact, config) is not None)
    if not force_artifact:
        problem = mismatch(artifact, config, live=[t.backend for t in tiers])
        if problem:
            raise ArtifactError(f"{config.artifact} does not match the running tiers: {problem}")
    return Cascade(tiers, policy, scope)


async def build_cascade(config: CascadeConfig, only: str | None = None, warmup_batch: int = 8,
                        force_artifact: bool = False) -> Cascade:
    """The configured ``Cascade`` over started tiers; ``only`` runs one tier alone."""
    policy = Policy.from_signal(config.signal, ()) if only else build_policy(config, force_artifact)
    scope = Scope.uncalibrated() if only else build_scope(config, force_artifact)
    tiers = await build_tiers(config, only=[only] if only else None, warmup_batch=warmup_batch)
    if config.artifact and not only and not force_artifact:
        problem = mismatch(read_artifact(config.artifact), config, live=[t.backend for t in tiers])
        if problem:
            raise ArtifactError(f"{config.artifact} does not match the running tiers: {problem}")
    return Cascade(tiers, policy, scope)
