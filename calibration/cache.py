"""The generation cache: every tier's answer to every request it was asked, keyed by the
request, not by the file the request came from.

One JSONL file per tier identity, ``$VCASCADE_CACHE/calibration/<model>-<tier key>.jsonl``;
the tier key hashes the tier's identity (model content hash + decoding settings + dtype,
``engine.artifact.tier_identity``) without its display name. Each line is
``{"key": request key, "id": item id, "result": TierResult as a dict}``, where the request
key hashes everything the tier sees of a request (messages or prompt, raw mode, and the
per-request decoding: ``max_tokens``, temperature, top-p, stop, seed) and nothing else.

So adding a field such as ``group`` to a labelled file, re-shuffling it, or calibrating on
a new file that repeats known requests regenerates nothing; changing a request's system
prompt or ``max_tokens``, or the tier's model or decoding, does. Correctness is not stored:
it is scored from the item's references when the records are read (``job.collect``), so
new or corrected references never need new generations.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Iterable

from vcascade.engine.model_store import cache_dir
from vcascade.engine.types import Request, TierResult

CACHE_VERSION = 3
"""v3: keyed by request (v2 files were keyed by dataset file and item id)."""


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def request_key(request: Request) -> str:
    """Hash of what a tier sees of ``request``: its text and its decoding overrides (not its
    id or group, which change nothing a tier generates)."""
    seen = asdict(request)
    seen.pop("id")
    seen.pop("group")
    return _digest(seen)[:32]


def tier_cache_path(identity: dict, root: Path | None = None) -> Path:
    """The cache file of one tier identity (its display name does not count)."""
    key = _digest([CACHE_VERSION, {k: v for k, v in identity.items() if k != "name"}])[:16]
    label = "".join(c if c.isalnum() or c in "-._" else "_" for c in str(identity.get("model") or "tier"))
    return (root or cache_dir().parent / "calibration") / f"{label}-{key}.jsonl"


def read_keyed(path: Path, field: str | None = None) -> dict[str, dict]:
    """The JSON objects of an append-only JSONL file by their ``"key"`` (the last one wins), or
    their ``field`` by key; a torn last line (an interrupted write) is ignored."""
    records: dict[str, dict] = {}
    if path.is_file():
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict) and "key" in record and (field is None or field in record):
                    records[record["key"]] = record if field is None else record[field]
    return records


def read(path: Path) -> dict[str, dict]:
    """Cached result dicts by request key."""
    return read_keyed(path, "result")


class Writer:
    """Appends results to one cache file, a batch at a time (an interrupt loses one batch)."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_file():  # drop a torn last line before appending
            text = path.read_text(encoding="utf-8")
            if text and not text.endswith("\n"):
                path.write_text(text[: text.rfind("\n") + 1], encoding="utf-8")
        self._sink = open(path, "a", encoding="utf-8")

    def append(self, entries: Iterable[tuple[str, str, TierResult]]) -> list[dict]:
        """Write ``(request key, item id, result)`` entries; returns the results as a reader
        would read them back (JSON round trip)."""
        out = []
        for key, item_id, result in entries:
            line = json.dumps({"key": key, "id": item_id, "result": asdict(result)}, ensure_ascii=False)
            self._sink.write(line + "\n")
            out.append(json.loads(line)["result"])
        self._sink.flush()
        return out

    def close(self) -> None:
        self._sink.close()

    def __enter__(self) -> "Writer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
