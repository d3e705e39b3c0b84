"""Give an artifact written before the monitor existed its ``"monitor"`` section, from the
calibration-split items whose generations are in the cache — without recalibrating.

The monitor compares live traffic with a reference sample of the calibration split (ranks
of scores, acceptance and skip rates, disagreement with the last tier). Any subset of that
split chosen independently of its scores is exchangeable with it, so the items that happen
to be cached (here: the first items of the mixed workload's seeded order, while the split
is a separate seeded permutation) are a valid, smaller reference. The section records how
many of the split's items it holds and why (``"reference"``). The thresholds, rules and
guarantee are untouched; ``vcascade calibrate`` writes the section over the whole split.

    python benchmarks/backfill_monitor.py engine/default_cascade.artifact.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace


def main(argv=None) -> int:
    from vcascade.calibration import cache
    from vcascade.calibration.datasets import load_dataset, split, to_request
    from vcascade.calibration.embeddings import prompt_embeddings
    from vcascade.calibration.job import calibration_data, collect
    from vcascade.calibration.monitoring import monitor_reference
    from vcascade.calibration.selection import three_way_split
    from vcascade.engine.artifact import policy_from_artifact, read_artifact, tier_identity
    from vcascade.engine.config import load_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact")
    parser.add_argument("--config", help="the cascade the artifact was calibrated for (default: embedded)")
    args = parser.parse_args(argv)
    path = Path(args.artifact)
    artifact = read_artifact(path)
    config = load_config(args.config)
    meta = artifact["dataset"]
    calibration, _ = split(load_dataset(meta["name"]), meta["n_calibration"], meta["seed"])
    fit_split = [calibration[i] for i in three_way_split(len(calibration), meta["seed"]).calibrate]
    cached = [cache.read(cache.tier_cache_path(tier_identity(t, config))) for t in config.tiers]
    items = [item for item in fit_split if all(cache.request_key(to_request(item)) in c for c in cached)]
    if not items:
        raise SystemExit(f"none of the {len(fit_split)} calibration-split items is cached; run vcascade calibrate")
    policy = policy_from_artifact(artifact, path)
    records = collect(config, items, progress=False)  # all cached: no engine starts
    embeddings = prompt_embeddings(items) if policy.needs_embedding else None
    data = calibration_data(config, records, items, policy.rules, policy.skip, embeddings)
    fit = SimpleNamespace(config=list(policy.thresholds) + ([] if policy.skip is None else [policy.skip_threshold]))
    section = monitor_reference(config, records, items, data, fit)
    section["reference"] = (f"{len(items)} of the {len(fit_split)} calibration-split items: those whose generations "
                            "were cached when the section was added (benchmarks/backfill_monitor.py), a subset "
                            "chosen independently of their scores")
    artifact["monitor"] = section
    path.write_text(json.dumps(artifact, indent=2) + "\n")
    print(f"{path}: monitor section from {len(items)} of {len(fit_split)} calibration-split items "
          f"(acceptance {section['acceptance_rate']:.3f}, skip {section['skip_rate']}, "
          f"disagreement {section['disagreement_rate']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
