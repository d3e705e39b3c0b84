"""Instant tiers: the real ``Tier`` over a backend that answers at once, without an engine.

For measuring vcascade's own work (``benchmarks/controller.py``): the backend renders the
prompt exactly as the in-process vLLM backend does (the model's chat template through
vLLM's tokenizer, timed as ``render_seconds``), then returns a canned short answer with
realistic logprobs in one chunk — no generation, no detokenization. Everything else the
server does (parsing, the policy's features and rules, metrics, response building) runs
unchanged on the same ``Tier`` and ``Cascade.stream``.

Canned answers are drawn per prompt (seeded by its text, so both servers of a comparison
see the same answers): a short factual phrase from a fixed list, tokenized once at
start-up, with chosen-token logprobs shaped like a small model's on factual questions —
a first token anywhere from confident to unsure, later tokens mostly near 0 — and top-k
alternatives below the chosen one.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, AsyncIterator

import numpy as np

from vcascade.engine.config import EngineTierConfig
from vcascade.engine.tiers.base import Chunk, Decoding, Tier
from vcascade.engine.tiers.rendering import prompt_token_ids
from vcascade.engine.types import Request, Sample

ANSWERS = ("Canberra", "Mercury", "Paris", "1945", "Sydney", "George Washington", "Photosynthesis", "Jupiter",
           "The Pacific Ocean", "Oxygen", "William Shakespeare", "Mount Everest", "42", "Albert Einstein", "Blue",
           "True", "False", "B", "C", "The mitochondria", "Leonardo da Vinci", "Tokyo", "Nitrogen", "Seven")


def _seed(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


class InstantBackend:
    """A ``Backend`` that renders like ``VLLMBackend`` and answers at once."""

    def __init__(self, name: str, tokenizer, system_prompt: str | None, max_model_len: int = 2048):
        self.name = name
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.max_model_len = max_model_len
        eos = tokenizer.eos_token_id
        self.answers = [(text, list(tokenizer.encode(text, add_special_tokens=False)) + [eos]) for text in ANSWERS]
        self.pieces = {tid: tokenizer.decode([tid]) for _, ids in self.answers for tid in ids}
        self._canned: dict[tuple[int, int], tuple] = {}

    def identity(self) -> dict[str, Any]:
        return {"backend": "instant"}

    def check_health(self) -> None:
        pass

    async def shutdown(self) -> None:
        pass

    def _answer(self, request: Request, k: int, variants: int = 512):
        """One of ``variants`` canned answers (made once each), chosen by the prompt's hash:
        answering costs a dictionary look-up, not vcascade's time."""
        key = (_seed(request.text) % variants, k)
        if key not in self._canned:
            self._canned[key] = self._make(key[0], k)
        return self._canned[key]

    def _make(self, variant: int, k: int):
        rng = np.random.default_rng(variant)
        text, ids = self.answers[rng.integers(len(self.answers))]
        first = -rng.exponential(0.6)                             # confident .. unsure first token
        rest = -rng.exponential(0.05, size=len(ids) - 1)          # later tokens near 0
        logprobs = [float(first), *map(float, rest)]
        top = []
        for tid, lp in zip(ids, logprobs):
            p = np.exp(lp)
            alts = np.sort(rng.dirichlet(np.ones(k - 1)) * (1 - p) * 0.9)[::-1]
            top.append([(self.pieces[tid], lp)] + [(f"alt{j}", float(np.log(max(a, 1e-9)))) for j, a in enumerate(alts)])
        return text, ids, logprobs, top

    async def stream(self, request: Request, decoding: Decoding) -> AsyncIterator[Chunk]:
        started, cpu = time.perf_counter(), time.thread_time()
        prompt = prompt_token_ids(self.tokenizer, request, self.system_prompt, self.name)
        render_seconds, render_cpu = time.perf_counter() - started, time.thread_time() - cpu
        text, ids, logprobs, top = self._answer(request, decoding.logprobs)
        n = min(len(ids), decoding.max_tokens)
        yield Chunk(text=text if n == len(ids) else "", token_ids=ids[:n], tokens=[self.pieces[t] for t in ids[:n]],
                    token_logprobs=logprobs[:n], top_logprobs=[list(position) for position in top[:n]],
                    finish_reason="stop" if n == len(ids) else "length", prompt_tokens=len(prompt),
                    render_seconds=render_seconds, render_cpu_seconds=render_cpu)

    async def sample(self, request: Request, decoding: Decoding, n: int) -> list[Sample]:
        text, ids, logprobs, _ = self._answer(request, 2)
        return [Sample(text, ids, logprobs, float(sum(logprobs)))] * n


def instant_tiers(config, tokenizer) -> list[Tier]:
    """The config's tiers, each over an ``InstantBackend`` sharing ``tokenizer``."""
    tiers = []
    for tier_config in config.tiers:
        if not isinstance(tier_config, EngineTierConfig):
            raise ValueError(f"tier {tier_config.name}: instant tiers replace in-process engine tiers only")
        tiers.append(Tier(tier_config, InstantBackend(tier_config.name, tokenizer, config.system_prompt,
                                                      tier_config.max_model_len)))
    return tiers
