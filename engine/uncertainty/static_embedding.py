"""Static prompt embeddings: all-MiniLM-L6-v2 distilled into one vector per token.

A learned rule's request features need a sentence vector of the prompt, and MiniLM's six
transformer layers cost 15-20 ms of CPU per prompt in the server process, which caps one
process at a few dozen decisions per second. Model2Vec (Tulkens & van Dongen, 2024,
https://github.com/MinishLab/model2vec) distills a sentence transformer into a *static*
model: every token of its vocabulary is passed through the transformer alone, the outputs
are reduced by PCA and reweighted by a Zipf-estimated SIF weight (Arora et al., ICLR 2017);
a sentence is then the normalized mean of its tokens' vectors. That costs tens of
microseconds per prompt (a tokenizer call and a lookup), and keeps much of the teacher's
semantics (Model2Vec reports most of MiniLM's MTEB classification score).

The distillation runs here, from the same offline MiniLM wheel, once per machine (about
16 s on 2 cores; ``vcascade models fetch`` does it at setup), and is cached under
``$VCASCADE_CACHE/static-embeddings/`` (also looked for under ``~/.cache/vcascade``). A rule trained on these features records
``STATIC_MODEL`` and a probe (the first ``PROBE_DIMS`` values of ``PROBE_TEXT``'s vector);
``check_probe`` refuses a rule whose probe the local model does not reproduce (another
distillation, library or teacher), since its inputs would silently differ.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from .embedding import EMBEDDING_MODEL

STATIC_DIMENSIONS = 256
STATIC_MODEL = {"teacher": EMBEDDING_MODEL, "method": "model2vec distill_from_model", "model2vec": "0.10.0",
                "pca_dims": STATIC_DIMENSIONS, "sif_coefficient": 1e-4, "dtype": "float16", "pooling": "mean",
                "normalize": True}
"""The distillation's definition; stored with every rule trained on it."""
PROBE_TEXT = "Which planet is closest to the Sun? Write a Python function that reverses a list."
PROBE_DIMS = 16
PROBE_TOLERANCE = 0.02
"""Largest difference per probe value still taken as the same model: float16 storage and
another CPU's float arithmetic move values by about 1e-3; another distillation by far more."""


class StaticEmbeddingError(RuntimeError):
    """The static model cannot be built, or does not match the one a rule was trained on."""


def _model_dirs() -> list[Path]:
    """Where the distilled model may be: under ``$VCASCADE_CACHE`` (where it is distilled),
    then under the user's default cache (a machine's one distillation, also found by jobs
    that set their own ``VCASCADE_CACHE``)."""
    from ..model_store import cache_dir

    key = hashlib.sha256(json.dumps(STATIC_MODEL, sort_keys=True).encode()).hexdigest()[:12]
    roots = [cache_dir().parent, Path.home() / ".cache" / "vcascade"]
    return list(dict.fromkeys(root / "static-embeddings" / f"minilm-{key}" for root in roots))


def _model_dir() -> Path:
    """The folder to load: the first of ``_model_dirs`` that holds a model, else the first."""
    dirs = _model_dirs()
    return next((d for d in dirs if (d / "model.safetensors").is_file()), dirs[0])


def _distill(target: Path, verbose: bool) -> None:
    """Distill the teacher into ``target`` (written to a temporary folder, then renamed)."""
    from model2vec.distill import distill_from_model

    from .embedding import _sentence_encoder

    tokenizer, model = _sentence_encoder()
    if not verbose:  # its progress bar stays; its log lines only with --verbose
        logging.getLogger("model2vec").setLevel(logging.ERROR)
    static = distill_from_model(model, tokenizer, device="cpu", pca_dims=STATIC_MODEL["pca_dims"],
                                sif_coefficient=STATIC_MODEL["sif_coefficient"], quantize_to=STATIC_MODEL["dtype"],
                                pooling=STATIC_MODEL["pooling"])
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    static.save_pretrained(str(tmp))
    try:
        os.replace(tmp, target)
    except OSError:  # another process distilled it meanwhile: keep theirs
        if not (target / "model.safetensors").is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def _require_model2vec() -> None:
    try:
        import model2vec  # noqa: F401
    except ImportError as err:
        raise StaticEmbeddingError("static prompt features need `pip install --no-deps model2vec==0.10.0 "
                                   "skeletoken==0.6.1` (make setup installs them)") from err


def ensure_static_model(verbose: bool = False, log=print) -> Path:
    """The cached static model's folder, distilled first when missing."""
    _require_model2vec()
    target = _model_dir()
    if not (target / "model.safetensors").is_file():
        log(f"distilling static prompt embeddings from {EMBEDDING_MODEL} into {target} (once per machine)")
        target.parent.mkdir(parents=True, exist_ok=True)
        _distill(target, verbose)
    return target


@functools.lru_cache(maxsize=1)
def _static_model():
    from model2vec import StaticModel

    return StaticModel.from_pretrained(str(ensure_static_model(log=lambda line: print(line, file=sys.stderr))))


def static_vectors(texts: Sequence[str]) -> np.ndarray:
    """Unit-norm static embeddings, shape (len(texts), 256), float64; inputs truncated to
    512 tokens. Runs in the calling thread (no worker processes)."""
    if not texts:
        return np.zeros((0, STATIC_DIMENSIONS))
    vectors = _static_model().encode(list(texts), use_multiprocessing=False, show_progress_bar=False)
    return np.asarray(vectors, dtype=np.float64).reshape(len(texts), STATIC_DIMENSIONS)


def probe() -> list[float]:
    """The first ``PROBE_DIMS`` values of ``PROBE_TEXT``'s vector, rounded to 4 decimals."""
    return [round(float(v), 4) for v in static_vectors([PROBE_TEXT])[0, :PROBE_DIMS]]


def check_probe(recorded: Sequence[float], rule: str) -> None:
    """Refuse (``StaticEmbeddingError``) when the local model does not reproduce ``recorded``."""
    here = np.asarray(probe())
    theirs = np.asarray(recorded, dtype=np.float64)
    if theirs.shape != here.shape or float(np.max(np.abs(theirs - here))) > PROBE_TOLERANCE:
        gap = float(np.max(np.abs(theirs - here))) if theirs.shape == here.shape else float("inf")
        raise StaticEmbeddingError(
            f"learned rule {rule!r} was trained on static prompt embeddings that this machine's distillation "
            f"({_model_dir()}) does not reproduce (probe differs by {gap:.3g} > {PROBE_TOLERANCE}). "
            "Retrain it (vcascade calibrate), or delete that folder to distill again.")
