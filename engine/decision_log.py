"""The server's decision log: what it writes, how it rotates, how calibration reads it back.

``vcascade serve --decision-log FILE`` appends one JSON object per line:

* a **decision** (no ``type``, or ``"type": "decision"``): the request's id, the tier that
  answered, the trace, scope, latency — and, for recalibration from served traffic, the
  ``request`` as the tiers saw it (``prompt`` or ``messages`` with the request's own system
  turns, ``raw``, the decoding overrides ``max_tokens``, ``temperature``, ``top_p``, ``stop``,
  ``seed``, and ``group``), the answer ``text``, and ``cascade``: the fingerprint of the
  serving cascade's tiers (names and models), so that a log of another cascade is refused.
  A request or answer whose JSON is over ``max_record_bytes`` is not logged
  (``"request": null, "request_omitted": "size"``): never a truncated request;
* an **audit** (``"type": "audit"``): a kept answer, the last tier's answer to the same
  request and whether they disagree (``server.monitoring``).

The file rotates when it would grow past ``max_bytes``: ``FILE`` becomes ``FILE.1``
(``FILE.1`` → ``FILE.2``, …, at most ``backups`` kept). ``read_log`` reads lines back and
names every line it cannot use by file and line: torn (not JSON, e.g. an interrupted write),
not an object, from another cascade, or of an unknown version.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from .types import Request

LOG_VERSION = 1
MAX_BYTES = 256 * 2**20
BACKUPS = 3
MAX_RECORD_BYTES = 64 * 2**10


def cascade_fingerprint(tiers: Iterable[tuple[str, str]]) -> str:
    """Short hash of a cascade's ``(tier name, model)`` pairs, in cost order."""
    return hashlib.sha256(json.dumps([list(t) for t in tiers]).encode()).hexdigest()[:16]


def request_record(request: Request) -> dict[str, Any]:
    """What a tier sees of ``request``, JSON-ready (its id is the log entry's)."""
    out = asdict(request)
    out.pop("id")
    if out["messages"] is not None:
        out["messages"] = [dict(m) for m in out["messages"]]
    if out["stop"] is not None:
        out["stop"] = list(out["stop"])
    return out


def request_from_record(data: dict[str, Any], request_id: str | None = None) -> Request:
    """Inverse of ``request_record``; ``ValueError`` for a malformed one."""
    if not isinstance(data, dict):
        raise ValueError("'request' is not an object")
    known = {"prompt", "messages", "raw", "max_tokens", "temperature", "top_p", "stop", "seed", "group"}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"'request' has unknown fields {sorted(unknown)}")
    messages = data.get("messages")
    return Request(**{**data, "messages": tuple(messages) if messages is not None else None, "id": request_id})


class DecisionLog:
    """An append-only JSONL file with size-based rotation (see the module docstring)."""

    def __init__(self, path: str | Path, max_bytes: int = MAX_BYTES, backups: int = BACKUPS,
                 max_record_bytes: int = MAX_RECORD_BYTES):
        self.path = Path(path)
        self.max_bytes, self.backups, self.max_record_bytes = max_bytes, backups, max_record_bytes
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")
        self.rotations = 0

    def write_entry(self, entry: dict[str, Any]) -> None:
        line = json.dumps(entry) + "\n"
        if self.max_bytes and self._fh.tell() and self._fh.tell() + len(line.encode()) > self.max_bytes:
            self.rotate()
        self._fh.write(line)
        self._fh.flush()

    def write(self, text: str) -> None:
        """Raw lines (``text`` ends with a newline), for writers that format their own entries."""
        for line in text.splitlines():
            if line.strip():
                self.write_entry(json.loads(line))

    def flush(self) -> None:
        self._fh.flush()

    def rotate(self) -> None:
        self._fh.close()
        for i in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
        if self.backups > 0:
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink()
        self._fh = open(self.path, "a", encoding="utf-8")
        self.rotations += 1

    def bounded(self, value: Any) -> Any | None:
        """``value`` if its JSON fits in ``max_record_bytes``, else ``None``."""
        return value if len(json.dumps(value).encode()) <= self.max_record_bytes else None

    def close(self) -> None:
        self._fh.close()


@dataclass
class LogProblem:
    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


@dataclass
class LogContents:
    """What ``read_log`` found: decisions and audits (each with its ``where``), and problems."""

    decisions: list[dict] = field(default_factory=list)
    audits: list[dict] = field(default_factory=list)
    torn: list[LogProblem] = field(default_factory=list)
    foreign: list[LogProblem] = field(default_factory=list)


def read_log(paths: Sequence[str | Path], fingerprint: str | None = None) -> LogContents:
    """Decisions and audits from decision-log files (oldest first: pass ``FILE.2 FILE.1 FILE``).

    A line that is not a JSON object is *torn*; a decision of another cascade (its
    ``cascade`` differs from ``fingerprint``) or of an unknown ``log_version`` is *foreign*.
    Both are named by file and line, never used.
    """
    out = LogContents()
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for number, line in enumerate(fh, 1):
                where = f"{path}:{number}"
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError as err:
                    out.torn.append(LogProblem(where, f"not JSON ({err.msg}): a torn or foreign line"))
                    continue
                if not isinstance(entry, dict):
                    out.torn.append(LogProblem(where, "not a JSON object"))
                    continue
                kind = entry.get("type", "decision")
                if kind == "audit":
                    out.audits.append({**entry, "where": where})
                    continue
                if kind != "decision" or "id" not in entry or "tier_index" not in entry:
                    out.foreign.append(LogProblem(where, f"not a vcascade decision (type {kind!r})"))
                    continue
                version = entry.get("log_version")
                if version is not None and version != LOG_VERSION:
                    out.foreign.append(LogProblem(where, f"log version {version!r}; this vcascade reads "
                                                         f"{LOG_VERSION}"))
                    continue
                if fingerprint is not None and entry.get("cascade") != fingerprint:
                    out.foreign.append(LogProblem(where, f"written by another cascade (fingerprint "
                                                         f"{entry.get('cascade')!r}, this config's {fingerprint!r})"))
                    continue
                out.decisions.append({**entry, "where": where})
    return out
