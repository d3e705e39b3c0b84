"""Prompt embeddings of labelled items, computed once and cached per item source.

Learned deferral rules read every calibration item's prompt embedding; computing 8000 of
them takes about a minute on this CPU, so they are cached in
``$VCASCADE_CACHE/embeddings/<source>-<key>.npz`` (item ids and vectors), keyed by the
source's fingerprint and the embedding model. Training then takes seconds.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from vcascade.engine.model_store import cache_dir
from vcascade.engine.uncertainty.embedding import EMBEDDING_MODEL, embed

from .datasets import Item, dataset_fingerprint, to_request


def _path(source: str, root: Path | None) -> Path:
    key = hashlib.sha256(f"{dataset_fingerprint(source)}|{EMBEDDING_MODEL}".encode()).hexdigest()[:16]
    return (root or cache_dir().parent / "embeddings") / f"{Path(source).stem}-{key}.npz"


def prompt_embeddings(items: Sequence[Item], root: Path | None = None) -> np.ndarray:
    """Shape (len(items), 384): each item's prompt embedding (the text the request's user
    turns carry), from the cache or computed and added to it."""
    out = np.zeros((len(items), 384), dtype=np.float32)
    by_source: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        by_source.setdefault(item.source, []).append(i)
    for source, index in by_source.items():
        path = _path(source, root)
        cached: dict[str, np.ndarray] = {}
        if path.is_file():
            with np.load(path) as data:
                cached = dict(zip(data["ids"].tolist(), data["vectors"]))
        missing = [i for i in index if items[i].id not in cached]
        if missing:
            vectors = embed([to_request(items[i]).text for i in missing])
            cached.update({items[i].id: v for i, v in zip(missing, vectors)})
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.stem}.tmp.npz")
            np.savez(tmp, ids=np.array(list(cached)), vectors=np.stack(list(cached.values())))
            os.replace(tmp, path)
        for i in index:
            out[i] = cached[items[i].id]
    return out
