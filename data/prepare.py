"""Build a data root from the HF hub: the training corpora and every evaluation set the commands read.

    linreg data --root DIR [--only SET,...] [--from DIR] [--force]

The sets, their hub datasets and the files they become are listed in ``data.catalog``; without ``--only`` every set
is built. Each file is written in the layout the readers already use (``../shared/data`` is a small sample of it),
so ``LINREG_DATA_ROOT=DIR`` is all a command needs afterwards.

**MANIFEST.json** (in the root) records, per set: ``source`` (the hub dataset), ``revision`` (the commit the files
were read at; ``local:<path>`` for ``--from``), and per file the hub config and split, ``rows`` (hub rows read),
``bytes`` and ``sha256``. A set is *finished* when the manifest lists it and every file it lists is on disk with
its recorded size and sha256; a re-run skips finished sets (``--force`` rebuilds them) and rebuilds any other.

**Never half-written.** A set's files are first written under ``DIR/.prepare-<set>.partial/`` and fsynced; only when
every file of the set is complete are they renamed into place (one ``os.replace`` each, atomic on one file system),
and then the manifest entry is written (also by an atomic replace). An interrupted run therefore leaves each file
either old or new, never torn, and leaves the set out of the manifest, so the next run builds it again. Readers
see a file whole or not at all. Builders started together on one root (``flock`` on ``DIR/.prepare.lock``) build
each set once, one at a time.

**Hub access.** Rows are read with ``datasets.load_dataset(..., streaming=True)``: nothing is materialised, in
memory or in the HF cache, beyond the batch being written, so TinyStories in full costs its output files only. The
revision is resolved first (``huggingface_hub``) and the rows are read at that commit. Offline, or when a dataset
cannot be reached, the command stops with one line naming the set and exit code 2; sets finished before stay.

**--from DIR** reads local copies instead of the hub, through the same ``load_dataset`` call with a path in place
of the hub name: ``DIR/<hub id>`` must be a copy of that hub repository, with its files in their places (what
``hf download --repo-type dataset <hub id> --local-dir DIR/<hub id>`` writes; for XStoryCloze, add
``--revision refs/convert/parquet``). Any layout ``datasets`` resolves by itself works: data files named by split
under config folders, or a README.md with ``configs:`` metadata.
"""
from __future__ import annotations

import argparse
import contextlib
import difflib
import fcntl
import gzip
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from core.cli import Parser, command, list_arg, run_cli
from core.errors import ConfigError, DataError, MissingDataError, UserError, one_line
from core.io import fsync_file, write_atomic
from data.catalog import SETS, DataSet, Part
from data.sources import load_hub_split

MANIFEST = "MANIFEST.json"
LOCK = ".prepare.lock"
FORMAT = 1


# -- the manifest --------------------------------------------------------------------------------------------------

def read_manifest(root: str | os.PathLike) -> dict:
    """The root's manifest (``{"format": 1, "sets": {...}}``; empty sets when there is none); a corrupt one is a
    DataError naming the file."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        return {"format": FORMAT, "sets": {}}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: corrupt manifest ({one_line(e)}); delete it and run linreg data "
                        f"again") from None
    sets = data.get("sets") if isinstance(data, dict) else None
    if not isinstance(sets, dict) or not all(isinstance(e, dict) and isinstance(e.get("files"), dict)
                                             for e in sets.values()):
        raise DataError(f"{path}: corrupt manifest (no 'sets' mapping of entries with 'files'); delete it and run "
                        f"linreg data again")
    return data


def prepared(root: str | os.PathLike | None, relpath: str) -> bool:
    """Whether ``relpath`` under ``root`` is a file ``linreg data`` wrote (listed in the manifest): the
    readers' test for "the full split, not a sample". Cheap: sizes are compared, hashes are not."""
    if root is None:
        return False
    for entry in read_manifest(root)["sets"].values():
        meta = entry["files"].get(relpath)
        if meta is not None:
            path = Path(root) / relpath
            return path.is_file() and path.stat().st_size == meta.get("bytes")
    return False


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def unfinished(root: Path, ds: DataSet, entry: dict | None) -> str | None:
    """Why ``ds`` must be (re)built, or None when the manifest entry matches every file on disk."""
    if entry is None:
        return "not built yet"
    for part in ds.parts:
        meta, path = entry["files"].get(part.path), root / part.path
        if meta is None:
            return f"{part.path} is not in the manifest"
        if not path.is_file():
            return f"{part.path} is missing"
        if path.stat().st_size != meta.get("bytes") or sha256_of(path) != meta.get("sha256"):
            return f"{part.path} differs from the manifest"
    return None


# -- reading a set -----------------------------------------------------------------------------------------------

@dataclass
class Opened:
    revision: str
    streams: list  # one datasets.IterableDataset per part


def load_part(part: Part, source: str, revision: str | None, streaming: bool = True):
    """The rows of one part: ``load_hub_split`` on ``source`` (a hub id or a local copy of the repository)."""
    return load_hub_split(source, part.config, part.split, data_dir=part.data_dir, streaming=streaming,
                          revision=revision, data_files=part.data_files)


def open_set(ds: DataSet, from_dir: Path | None) -> Opened:
    """Resolve the revision and open every part's rows (no data is read yet); MissingDataError naming the set if
    the hub or the local copy cannot be reached."""
    where = f"local copy {from_dir / ds.hub}" if from_dir else f"HF hub dataset {ds.hub}"
    try:
        if from_dir is not None:
            path = from_dir / ds.hub
            if not path.is_dir():
                raise MissingDataError(f"no directory {path}")
            source, revision, label = str(path), None, f"local:{path.resolve()}"
        else:
            from huggingface_hub import HfApi

            revision = HfApi().dataset_info(ds.hub, revision=ds.revision).sha
            source, label = ds.hub, revision
        streams = [load_part(p, source, revision) for p in ds.parts]
    except Exception as e:
        hint = "" if from_dir else " (offline? --from DIR reads local copies)"
        why = one_line(e) if isinstance(e, UserError) else f"{type(e).__name__}: {one_line(e)}"
        raise MissingDataError(f"set '{ds.name}': cannot fetch {where}: {why}{hint}") from None
    return Opened(label, streams)


class _HashingFile:
    """A binary sink that hashes and counts what is written to it (the bytes on disk, compressed or not)."""

    def __init__(self, f):
        self.f, self.sha, self.bytes = f, hashlib.sha256(), 0

    def write(self, b) -> int:
        self.sha.update(b)
        self.bytes += len(b)
        return self.f.write(b)

    def flush(self) -> None:
        self.f.flush()


class _Counted:
    """Rows passed through, counted (the manifest's ``rows``: hub rows read, whatever the file makes of them)."""

    def __init__(self, rows):
        self.rows, self.n = rows, 0

    def __iter__(self):
        for row in self.rows:
            self.n += 1
            yield row


def write_part(ds: DataSet, part: Part, rows, dst: Path, chunk_chars: int = 1 << 20) -> dict:
    """Write ``rows`` (an iterable of hub rows) as ``part`` into ``dst`` and fsync it; returns its manifest record."""
    counted = _Counted(rows)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with dst.open("wb") as raw:
        sink = _HashingFile(raw)
        # mtime=0 and no file name in the gzip header: the same rows always give the same bytes (and sha256)
        out = gzip.GzipFile(filename="", mode="wb", fileobj=sink, mtime=0) if dst.suffix == ".gz" else sink
        try:
            pending, size = [], 0
            for text in part.encode(counted):
                pending.append(text)
                size += len(text)
                if size >= chunk_chars:
                    out.write("".join(pending).encode("utf-8"))
                    pending, size = [], 0
            out.write("".join(pending).encode("utf-8"))
        except UserError:
            raise
        except Exception as e:
            raise MissingDataError(f"set '{ds.name}': reading {part.path} ({part.config or part.data_dir or ''} "
                                   f"{part.split}) failed: {type(e).__name__}: {one_line(e)}") from None
        finally:
            if out is not sink:
                out.close()
        raw.flush()
        os.fsync(raw.fileno())
    return {"config": part.config or part.data_dir, "split": part.split, "rows": counted.n, "bytes": sink.bytes,
            "sha256": sink.sha.hexdigest()}


def build_set(root: Path, ds: DataSet, opened: Opened) -> dict:
    """Write every file of ``ds`` into a temporary folder, then rename them into place; returns the manifest entry."""
    tmp = root / f".prepare-{ds.name}.partial"
    if tmp.exists():
        shutil.rmtree(tmp)  # left by a run that was killed
    files = {}
    try:
        for part, rows in zip(ds.parts, opened.streams):
            files[part.path] = write_part(ds, part, rows, tmp / part.path)
            print(f"  {part.path}: {files[part.path]['rows']:,} rows", flush=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for part in ds.parts:
        final = root / part.path
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp / part.path, final)
        fsync_file(final.parent)
    shutil.rmtree(tmp)
    return {"source": ds.hub, "revision": opened.revision, "files": files}


# -- the command ---------------------------------------------------------------------------------------------------

def select(names: list[str] | None) -> list[DataSet]:
    if not names:
        return list(SETS.values())
    out = []
    for item in names:
        if item not in SETS:
            close = difflib.get_close_matches(item, list(SETS), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"--only {item}: unknown set{hint}; sets: {', '.join(SETS)}")
        if SETS[item] not in out:
            out.append(SETS[item])
    return out


def parse_args(argv=None) -> argparse.Namespace:
    sets = "; ".join(f"{s.name} = {s.hub}, {s.purpose}" for s in SETS.values())
    p = Parser("data", "data.prepare", __doc__, epilog=f"sets: {sets}.")
    p.add_argument("--root", required=True, help="the data root to build (created if missing)")
    list_arg(p, "--only", metavar="SET", help="build only these sets (default: all)")
    p.add_argument("--from", dest="from_dir", metavar="DIR",
                   help="read local copies DIR/<hub id> instead of the hub (see the module docstring)")
    p.add_argument("--force", action="store_true", help="rebuild sets the manifest says are finished")
    return p.parse_args(argv)


@contextlib.contextmanager
def locked(root: Path):
    """Hold the root's lock: builders started together (array jobs that each prepare their data first) build a set
    once, one after the other, and never share a temporary folder or lose a manifest update."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / LOCK).open("a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def prepare_set(root: Path, ds: DataSet, from_dir: Path | None, force: bool) -> None:
    reason = "--force" if force else unfinished(root, ds, read_manifest(root)["sets"].get(ds.name))
    if reason is None:
        print(f"{ds.name}: finished (matches {MANIFEST}), skipped", flush=True)
        return
    opened = open_set(ds, from_dir)  # before the lock: offline, nothing is written
    with locked(root):
        if not force and unfinished(root, ds, read_manifest(root)["sets"].get(ds.name)) is None:
            print(f"{ds.name}: finished by another builder meanwhile, skipped", flush=True)
            return
        print(f"{ds.name}: {reason}; reading {ds.hub} at {opened.revision}", flush=True)
        entry = build_set(root, ds, opened)
        manifest = read_manifest(root)
        manifest["sets"][ds.name] = entry
        write_atomic(root / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True) + "\n")


@command
def main(argv=None) -> int:
    args = parse_args(argv)
    chosen = select(args.only)
    root = Path(args.root).expanduser()
    if root.exists() and not root.is_dir():
        raise ConfigError(f"--root {root}: not a directory")
    from_dir = Path(args.from_dir).expanduser() if args.from_dir else None
    if from_dir is not None and not from_dir.is_dir():
        raise MissingDataError(f"--from {from_dir}: no such directory")
    read_manifest(root)  # a corrupt manifest stops the command before anything is fetched
    created = not root.exists()
    try:
        for ds in chosen:
            prepare_set(root, ds, from_dir, args.force)
    except BaseException:
        if created and root.is_dir() and {p.name for p in root.iterdir()} <= {LOCK}:
            shutil.rmtree(root)  # a failed first set leaves no empty root behind
        raise
    print(f"data root {root}: {', '.join(s.name for s in chosen)} ready; use LINREG_DATA_ROOT={root}", flush=True)
    return 0


if __name__ == "__main__":
    run_cli(main)
