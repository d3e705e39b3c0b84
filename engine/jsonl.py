"""JSONL request files: one JSON object per line.

Each line: ``{"id": ..., "prompt": "..."}`` or ``{"id": ..., "messages": [...]}``, with
optional ``raw`` (bool) and ``max_tokens`` (int). ``id`` defaults to the line number.
Other fields are ignored here (e.g. reference ``answers`` for scoring). Errors name the
file and the line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, TypeVar

from .types import Request


class InputFileError(ValueError):
    """A malformed input file; the message names the file and line."""


T = TypeVar("T")


def parse_request(obj: object, where: str, default_id: str) -> Request:
    if not isinstance(obj, dict):
        raise InputFileError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    messages = obj.get("messages")
    max_tokens = obj.get("max_tokens")
    if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1):
        raise InputFileError(f"{where}: 'max_tokens' must be a positive integer, got {max_tokens!r}")
    prompt = obj.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise InputFileError(f"{where}: 'prompt' must be a string, got {type(prompt).__name__}")
    if messages is not None and not isinstance(messages, list):
        raise InputFileError(f"{where}: 'messages' must be a list of {{role, content}} objects")
    try:
        return Request(
            prompt=prompt,
            messages=tuple(messages) if messages is not None else None,
            raw=bool(obj.get("raw", False)),
            max_tokens=max_tokens,
            id=str(obj.get("id", default_id)),
        )
    except (ValueError, TypeError, AttributeError) as err:
        raise InputFileError(f"{where}: {err}") from None


def read_records(path: str | Path, parse: Callable[[object, str, str], T], error: type[ValueError] = InputFileError,
                 what: str = "requests") -> list[T]:
    """Parse every non-blank line of a JSONL file with ``parse(obj, "file:line", default_id)``.

    Raises ``error`` naming the file (and line) for a missing or empty file, a line that
    is not JSON, and duplicate ids (records need an ``id`` attribute); ``parse`` raises
    ``error`` itself for a bad record.
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: file not found")
    records, seen = [], set()
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise error(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
            record = parse(obj, where, str(number))
            if record.id in seen:
                raise error(f"{where}: duplicate id {record.id!r}")
            seen.add(record.id)
            records.append(record)
    if not records:
        raise error(f"{path}: no {what} (the file is empty)")
    return records


def read_requests(path: str | Path) -> list[Request]:
    """All requests of a JSONL file, in file order (format in the module docstring)."""
    return read_records(path, parse_request)


def done_ids(path: str | Path) -> set[str]:
    """Ids already written to an output JSONL file (for resuming); a torn last line is ignored."""
    path = Path(path)
    if not path.is_file():
        return set()
    ids = set()
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                ids.add(str(json.loads(line)["id"]))
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return ids
