"""Build two tiers in multiprocess mode and print each engine worker's CPU affinity as JSON.

Run by tests/test_engine_modes.py in a fresh process (the engine mode is process-wide).
"""

import json
import sys

import psutil

from engine.config import SamplingConfig, TierConfig
from engine.types import Request
from engine.vllm_tier import VLLMTier

if __name__ == "__main__":
    model = sys.argv[1]
    tiers = [
        VLLMTier(TierConfig(name=f"t{i}", model=model, max_model_len=256, kv_cache_mib=16, enforce_eager=True,
                            sampling=SamplingConfig(max_tokens=3)), model, engine_mode="multiprocess",
                 tier_index=i, warmup_batch=1)
        for i in range(2)
    ]
    workers = [p for p in psutil.Process().children(recursive=True) if p.name().startswith("VLLM::Worker")]
    tokens = [t.generate([Request(prompt="hi")])[0].completion_tokens for t in tiers]
    print(json.dumps({"affinities": sorted(sorted(w.cpu_affinity()) for w in workers), "tokens": tokens}))
