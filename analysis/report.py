"""What the analyses share around their results: mean ± spread cells (the spread from ``core.stats``), markdown
tables, CSV rows, and the JSON-lines result caches that make every command resumable.

A cache is a jsonl file of records that each carry a ``key``; a command computes the key of every result it
needs, reads the file, and computes only the missing ones (appending each as soon as it exists, so a crash or an
interrupt loses at most the result in progress). A record whose key nobody asks for any more (other settings)
stays in the file and is ignored.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

from core.io import append_jsonl, read_jsonl


def model_identity(path: str) -> str:
    """A model in cache keys: a local path resolved (``runs/x`` and ``./runs/x`` are one model), a hub name as is."""
    return str(Path(path).resolve()) if Path(path).exists() else path


def fingerprint(obj) -> str:
    """A short, stable hash of a JSON-able object (cache keys)."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class ResultCache:
    """Records by ``key`` from a jsonl file; ``add`` appends at once. ``keep`` decides which records count as
    present (e.g. only successful grades: failed ones are retried on the next run)."""

    def __init__(self, path: str | Path, keep=lambda record: True):
        self.path = Path(path)
        self.records: dict[str, dict] = {}
        if self.path.is_file():
            for rec in read_jsonl(self.path):
                if keep(rec):
                    self.records[rec["key"]] = rec  # the last record of a key wins

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def get(self, key: str) -> dict | None:
        return self.records.get(key)

    def add(self, record: dict) -> dict:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        append_jsonl(self.path, record)
        self.records[record["key"]] = record
        return record


def pm(mean: float | None, spread: float | None, digits: int = 3, signed: bool = False) -> str:
    """'0.123 ± 0.004' ('+0.123 ± …' when ``signed``); the spread is left out where there is no estimate of it
    (``core.stats``: None at one seed or prompt), the whole cell where there is no mean."""
    if mean is None or math.isnan(mean):
        return "–"
    head = f"{mean:+.{digits}f}" if signed else f"{mean:.{digits}f}"
    return head if spread is None or math.isnan(spread) else f"{head} ± {spread:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)
