"""Small file formats shared by every package: jsonl read with line numbers, append with flush, and the atomic
replace (write a temporary file, fsync it, rename it over the target, fsync the directory) that every file a
reader may see mid-write goes through."""
from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
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


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a written file to disk (a checkpoint must survive a node crash, not just a process crash)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike, data: str | bytes, tmp_name: str | None = None) -> None:
    """Replace ``path`` with ``data`` (text as UTF-8) so that a reader sees the old or the new content, never a
    torn file, even after a node crash. ``tmp_name``: the temporary file's name in the same directory (default
    ``<name>.tmp``), for directories whose readers pick files by a pattern the default would match."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(tmp_name or path.name + ".tmp")
    tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    fsync_file(tmp)
    os.replace(tmp, path)
    fsync_file(path.parent)


def write_json(path: str | os.PathLike, obj, indent: int | None = 1) -> Path:
    """``obj`` as a JSON file (``default=str`` for paths and the like), replaced atomically."""
    write_atomic(path, json.dumps(obj, indent=indent, default=str) + "\n")
    return Path(path)


def write_csv(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence]) -> Path:
    """A header and rows as a CSV file (the csv module's quoting), replaced atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    write_atomic(path, buf.getvalue())
    return Path(path)


def trim_jsonl(path: str | os.PathLike, keep: Callable[[dict], bool]) -> int:
    """Keep the rows ``keep`` accepts (rows without a ``step`` always) and drop lines torn by a crash mid-write;
    returns how many lines were dropped. The file is replaced atomically, and only when something changed."""
    path = Path(path)
    if not path.is_file():
        return 0
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = []
    for line in lines:
        try:
            row = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:  # a line torn by a crash mid-write
            continue
        if isinstance(row, dict) and ("step" not in row or keep(row)):
            kept.append(line if line.endswith("\n") else line + "\n")
    dropped = sum(1 for line in lines if line.strip()) - len(kept)
    if dropped or (lines and not lines[-1].endswith("\n")):  # an unterminated last line would join the next
        write_atomic(path, "".join(kept))
    return dropped
