"""Learned deferral rules, frozen: a scikit-learn classifier over answer and request features.

Targets (what the classifier predicts for tier k's answer to a request):

* ``correct`` — P(tier k is right); the rule's score is that probability (keep when likely right)
* ``gain``    — P(the last tier is right and tier k wrong): escalating this request is what
  would recover accuracy (Jitkrittum et al., NeurIPS 2023: defer on whether the larger model
  would do better, not on whether the smaller one is unsure); the score is minus that
  probability, so a higher score still means "keep". Under the ``quality-loss`` target an
  accepted answer costs quality exactly when it is a gain item.

A pre-generation ``LearnedSkipRule`` predicts the same target from the request alone (its
prompt embedding and length), so a request that would almost surely escalate can skip
tier 0 (a router in front of the cascade).

A rule is trained on data disjoint from the conformal calibration split (see
``calibration.learning``) and frozen here: the estimator is serialized with ``skops`` (no
pickle; only an allow-list of scikit-learn types loads) together with its feature spec,
the library versions and the training data's fingerprint. ``rule_from_spec`` refuses a rule
whose feature version, scikit-learn version or estimator types do not match this program.
"""

from __future__ import annotations

import base64
from importlib.metadata import version
from typing import Sequence

import numpy as np

from ..types import TierResult
from .features import FEATURE_VERSION, feature_matrix
from .rules import Query, Rule, SignalRule, SkipRule

TARGETS = ("correct", "gain")
TRUSTED_TYPES = ["sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"]


class LearnedRuleError(ValueError):
    """A learned rule that cannot be used with this program (versions, features, types)."""


def library_versions() -> dict[str, str]:
    return {"scikit-learn": version("scikit-learn"), "skops": version("skops"), "numpy": version("numpy")}


def freeze_estimator(estimator) -> str:
    import skops.io as sio

    return base64.b64encode(sio.dumps(estimator)).decode("ascii")


def thaw_estimator(blob: str):
    import skops.io as sio

    data = base64.b64decode(blob)
    untrusted = [t for t in sio.get_untrusted_types(data=data) if t not in TRUSTED_TYPES]
    if untrusted:
        raise LearnedRuleError(f"the learned rule's estimator contains types outside the allow-list: {untrusted}")
    return sio.loads(data, trusted=TRUSTED_TYPES)


class _Learned:
    """Shared by answer rules and skip rules: the frozen estimator and its metadata."""

    def __init__(self, spec: dict, estimator=None):
        self._spec = spec
        self.target = spec["target"]
        if self.target not in TARGETS:
            raise LearnedRuleError(f"unknown learned-rule target {self.target!r}; known: {', '.join(TARGETS)}")
        self.features = spec["features"]
        self.estimator = estimator if estimator is not None else thaw_estimator(spec["estimator"])
        self.name = spec["name"]
        self.needs_embedding = bool(self.features["request"])

    def _score(self, X: np.ndarray) -> np.ndarray:
        p = self.estimator.predict_proba(X)[:, 1]
        return p if self.target == "correct" else -p

    def spec(self) -> dict:
        return dict(self._spec)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class LearnedRule(_Learned):
    """A learned deferral rule over (answer, request) features; higher score = keep."""

    def __init__(self, spec: dict, estimator=None):
        super().__init__(spec, estimator)
        self.needs_samples = bool(self.features["samples"])

    def score_many(self, queries: Sequence[Query], results: Sequence[TierResult]) -> np.ndarray:
        X = feature_matrix(queries, results, samples=self.needs_samples, request=self.features["request"])
        return self._score(X)


class LearnedSkipRule(_Learned):
    """A learned pre-generation rule over request features only; low score = skip tier 0."""

    def score_many(self, queries: Sequence[Query]) -> np.ndarray:
        return self._score(feature_matrix(queries, None, request=True))


def _check(spec: dict) -> None:
    features = spec.get("features", {})
    if features.get("version") != FEATURE_VERSION:
        raise LearnedRuleError(f"learned rule {spec.get('name')!r} uses feature version {features.get('version')}; "
                               f"this vcascade computes version {FEATURE_VERSION}. Retrain it (vcascade calibrate).")
    trained, here = spec.get("versions", {}), library_versions()
    if trained.get("scikit-learn") != here["scikit-learn"]:
        raise LearnedRuleError(f"learned rule {spec.get('name')!r} was trained with scikit-learn "
                               f"{trained.get('scikit-learn')}; this environment has {here['scikit-learn']}. "
                               "Retrain it, or install the same version.")


def rule_from_spec(spec: dict) -> Rule:
    """A deferral rule from its artifact description (``{"kind": "signal"|"learned", ...}``)."""
    kind = spec.get("kind")
    if kind == "signal":
        return SignalRule(spec["name"])
    if kind == "learned":
        _check(spec)
        return LearnedRule(spec)
    raise LearnedRuleError(f"unknown rule kind {kind!r}")


def skip_from_spec(spec: dict) -> SkipRule:
    _check(spec)
    return LearnedSkipRule(spec)
