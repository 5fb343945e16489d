"""Small file formats shared by every package: jsonl read with line numbers, append with flush."""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

from core.errors import DataError, MissingDataError


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-empty line; a bad line raises DataError naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise MissingDataError(f"file not found: {path}")
    opener = _open_gz if path.suffix == ".gz" else (lambda p: p.open(encoding="utf-8"))
    with opener(path) as f:
        try:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield n, json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{n}: invalid JSON ({e.msg})") from None
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _open_gz(path: Path):
    import gzip

    return gzip.open(path, "rt", encoding="utf-8")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    return [row for _, row in iter_jsonl(path)]


def append_jsonl(path: str | os.PathLike, row: dict) -> None:
    """Append one object as a line and flush, so a crash loses nothing already written."""
    with Path(path).open("a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
