"""Learned deferral rules, frozen: a scikit-learn classifier over answer and request features.

Targets (what the classifier predicts for tier k's answer to a request):

* ``correct`` — P(tier k is right); the rule's score is that probability (keep when likely right)
* ``gain``    — P(the last tier is right and tier k wrong): escalating this request is what
  would recover accuracy (Jitkrittum et al., NeurIPS 2023: defer on whether the larger model
  would do better, not on whether the smaller one is unsure); the score is minus that
  probability, so a higher score still means "keep". Under the ``quality-loss`` target an
  accepted answer costs quality exactly when it is a gain item.

A pre-generation ``LearnedSkipRule`` predicts the same target from the request alone (its
prompt features and length), so a request that would almost surely escalate can skip
tier 0 (a router in front of the cascade). The prompt features are the MiniLM embedding or
hashed n-grams (``prompt_features`` in the rule's feature spec; absent means MiniLM).

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
from .features import FEATURE_VERSION, HASHING, PROMPT_FEATURES, feature_matrix
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


class Forest:
    """A binary ``HistGradientBoostingClassifier``'s trees as flat arrays, all trees walked at
    once: the same probabilities as ``predict_proba`` (up to float summation order, ~1e-16)
    for a fraction of its fixed per-call cost (one call of 150 trees: ~0.8 ms in
    scikit-learn, which visits the trees one by one, whatever the number of rows).

    ``compile`` returns ``None`` for anything else (other models, categorical splits,
    multi-class) or when a self-check against ``predict_proba`` fails; the rule then uses
    ``predict_proba``."""

    def __init__(self, trees, baseline: float):
        nodes = [t.nodes for t in trees]
        offsets = np.cumsum([0] + [len(n) for n in nodes[:-1]])
        flat = np.concatenate(nodes)
        shift = np.repeat(offsets, [len(n) for n in nodes])
        self.roots = offsets.astype(np.intp)
        self.feature = flat["feature_idx"].astype(np.intp)
        self.threshold = flat["num_threshold"].astype(np.float64)
        self.missing_left = flat["missing_go_to_left"].astype(bool)
        self.leaf = flat["is_leaf"].astype(bool)
        self.left = np.where(self.leaf, np.arange(len(flat)), flat["left"] + shift).astype(np.intp)
        self.right = np.where(self.leaf, np.arange(len(flat)), flat["right"] + shift).astype(np.intp)
        self.value = flat["value"].astype(np.float64)
        self.depth = int(flat["depth"].max())
        self.baseline = float(baseline)

    @classmethod
    def compile(cls, estimator) -> "Forest | None":
        try:
            from sklearn.ensemble import HistGradientBoostingClassifier

            if (not isinstance(estimator, HistGradientBoostingClassifier) or estimator.n_trees_per_iteration_ != 1
                    or getattr(estimator, "_preprocessor", None) is not None):
                return None
            trees = [predictors[0] for predictors in estimator._predictors]
            if any(t.nodes["is_categorical"].any() for t in trees):
                return None
            forest = cls(trees, estimator._baseline_prediction.ravel()[0])
            X = np.random.default_rng(0).normal(size=(16, estimator.n_features_in_))
            X[0] = 0.0
            X[1, :: 3] = np.nan
            if not np.allclose(forest.proba(X), estimator.predict_proba(X)[:, 1], rtol=0, atol=1e-12):
                return None
            return forest
        except Exception:  # noqa: BLE001 - an unknown estimator layout: predict_proba it is
            return None

    def raw(self, X: np.ndarray) -> np.ndarray:
        """Shape (n,): the sum of every tree's leaf value plus the baseline."""
        X = np.asarray(X, dtype=np.float64)
        node = np.broadcast_to(self.roots, (X.shape[0], len(self.roots))).copy()
        rows = np.arange(X.shape[0])[:, None]
        for _ in range(self.depth):
            x = X[rows, self.feature[node]]
            left = np.where(np.isnan(x), self.missing_left[node], x <= self.threshold[node])
            node = np.where(left, self.left[node], self.right[node])
        return self.baseline + self.value[node].sum(axis=1)

    def proba(self, X: np.ndarray) -> np.ndarray:
        """Shape (n,): P(class 1), as ``predict_proba(X)[:, 1]``."""
        from scipy.special import expit

        return expit(self.raw(X))


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
        self.prompt_features = self.features.get("prompt_features", "minilm") if self.features["request"] else None
        self._forest = Forest.compile(self.estimator)
        self.needs_embedding = self.prompt_features == "minilm"

    def _score(self, X: np.ndarray) -> np.ndarray:
        p = self._forest.proba(X) if self._forest is not None else self.estimator.predict_proba(X)[:, 1]
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
        X = feature_matrix(queries, results, samples=self.needs_samples, request=self.features["request"],
                           prompt_features=self.prompt_features, long_form=bool(self.features.get("long_form")))
        return self._score(X)


class LearnedSkipRule(_Learned):
    """A learned pre-generation rule over request features only; low score = skip tier 0."""

    def score_many(self, queries: Sequence[Query]) -> np.ndarray:
        return self._score(feature_matrix(queries, None, request=True, prompt_features=self.prompt_features))


def _check(spec: dict) -> None:
    features = spec.get("features", {})
    if features.get("version") != FEATURE_VERSION:
        raise LearnedRuleError(f"learned rule {spec.get('name')!r} uses feature version {features.get('version')}; "
                               f"this vcascade computes version {FEATURE_VERSION}. Retrain it (vcascade calibrate).")
    prompt_features = features.get("prompt_features", "minilm")
    if features.get("request") and prompt_features not in PROMPT_FEATURES:
        raise LearnedRuleError(f"learned rule {spec.get('name')!r} uses prompt features {prompt_features!r}; "
                               f"this vcascade knows {', '.join(PROMPT_FEATURES)}")
    if features.get("request") and prompt_features == "hashed" and features.get("hashing") != HASHING:
        raise LearnedRuleError(f"learned rule {spec.get('name')!r} hashes prompts as {features.get('hashing')}; "
                               f"this vcascade hashes them as {HASHING}. Retrain it (vcascade calibrate).")
    if features.get("request") and prompt_features == "static":
        _check_static(spec.get("name"), features.get("static_model") or {})
    trained, here = spec.get("versions", {}), library_versions()
    if trained.get("scikit-learn") != here["scikit-learn"]:
        raise LearnedRuleError(f"learned rule {spec.get('name')!r} was trained with scikit-learn "
                               f"{trained.get('scikit-learn')}; this environment has {here['scikit-learn']}. "
                               "Retrain it, or install the same version.")


def _check_static(name, recorded: dict) -> None:
    """A static-feature rule runs only where the same distillation reproduces its probe."""
    from .static_embedding import STATIC_MODEL, StaticEmbeddingError, check_probe

    definition = {k: v for k, v in recorded.items() if k != "probe"}
    if definition != STATIC_MODEL:
        raise LearnedRuleError(f"learned rule {name!r} uses static prompt embeddings {definition}; this vcascade "
                               f"distills {STATIC_MODEL}. Retrain it (vcascade calibrate).")
    try:
        check_probe(recorded.get("probe") or [], name)
    except StaticEmbeddingError as err:
        raise LearnedRuleError(str(err)) from err


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
