"""Training learned deferral rules (scikit-learn) on a split disjoint from calibration.

For tier k's answers: features (``engine.uncertainty.features``) and a target —
``correct`` (tier k right) or ``gain`` (last tier right and tier k wrong). Two model
families, each with a small hyperparameter grid chosen on a separate selection split by
log-loss:

* ``logistic`` — L2-regularized logistic regression on standardized features
  (FrugalGPT's scorer; Gupta et al. 2024's Post-Hoc rules are of this kind)
* ``gbt``      — histogram gradient-boosted trees

A target with too few positive (or negative) training items is not trained; the reason
is reported. The trained rule is frozen with its feature spec, library versions and the
training data's fingerprint (``engine.uncertainty.learned``); because it never sees the
calibration split, a conformal fit on top of it keeps its guarantee unchanged.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from vcascade.engine.uncertainty.features import feature_spec
from vcascade.engine.uncertainty.learned import LearnedRule, LearnedSkipRule, freeze_estimator, library_versions

MIN_CLASS_ITEMS = 25
MODELS = ("logistic", "gbt")


@dataclass
class Refusal:
    """A learned rule that was not trained, and why."""

    name: str
    reason: str


def target_labels(correct: np.ndarray, tier: int, target: str) -> np.ndarray:
    """Shape (n,) bool: the event a rule for ``tier`` predicts (see the module docstring)."""
    if target == "correct":
        return correct[:, tier].copy()
    if target == "gain":
        return correct[:, -1] & ~correct[:, tier]
    raise ValueError(f"unknown learned-rule target {target!r}")


def fingerprint(ids) -> str:
    """A short hash of the training items' ids (which data the rule learned from)."""
    return "sha256:" + hashlib.sha256("\n".join(sorted(map(str, ids))).encode()).hexdigest()[:16]


def _candidates(model: str, seed: int):
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if model == "logistic":
        return [make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000)) for c in (0.003, 0.03, 0.3)]
    if model == "gbt":
        return [HistGradientBoostingClassifier(max_iter=iters, learning_rate=0.05, max_leaf_nodes=leaves,
                                               l2_regularization=1.0, random_state=seed)
                for iters, leaves in ((150, 8), (300, 15))]
    raise ValueError(f"unknown model family {model!r}; known: {', '.join(MODELS)}")


def _log_loss(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def train(X_train: np.ndarray, y_train: np.ndarray, X_select: np.ndarray, y_select: np.ndarray, *, model: str,
          target: str, features: dict, name: str, train_ids, skip: bool = False, seed: int = 0
          ) -> LearnedRule | LearnedSkipRule | Refusal:
    """Fit every hyperparameter setting of ``model`` on the training split, keep the one with
    the lowest log-loss on the selection split, and freeze it."""
    positives, negatives = int(y_train.sum()), int((~y_train).sum())
    if min(positives, negatives) < MIN_CLASS_ITEMS:
        return Refusal(name, f"only {positives} positive and {negatives} negative training items for target "
                             f"{target!r}; a learned rule needs at least {MIN_CLASS_ITEMS} of each")
    best, best_loss = None, np.inf
    for estimator in _candidates(model, seed):
        estimator.fit(X_train, y_train)
        loss = _log_loss(estimator.predict_proba(X_select)[:, 1], y_select)
        if loss < best_loss:
            best, best_loss = estimator, loss
    spec = {
        "kind": "learned", "name": name, "target": target, "model": model, "features": features,
        "estimator": freeze_estimator(best), "versions": library_versions(),
        "training": {"n": int(len(y_train)), "positives": positives, "fingerprint": fingerprint(train_ids),
                     "selection_log_loss": best_loss, "params": _params(best)},
    }
    return LearnedSkipRule(spec, best) if skip else LearnedRule(spec, best)


def _params(estimator) -> dict:
    params = estimator.get_params()
    keep = ("logisticregression__C", "max_iter", "max_leaf_nodes", "learning_rate")
    return {k: params[k] for k in keep if k in params}


def answer_feature_spec(samples: bool) -> dict:
    return feature_spec(answer=True, samples=samples, request=True)


def request_feature_spec() -> dict:
    return feature_spec(answer=False, samples=False, request=True)
