"""Token caches: each source tokenized once into a flat token file, and each split assembled from them.

**Source cache** (one per file or hub split): ``tokens.bin`` holds the tokens of every document, EOS after each;
``ends.bin`` the end offset of each document (uint64), so that splits can pick documents without re-tokenizing.
The key hashes the source (file path with size and mtime, or hub name/config/split), the text field, the document
cap and the tokenizer's full definition: change any of them and a new cache is built.

Tokenization streams: the documents are read in blocks (``data.sources``) and handed, about a megabyte of text at
a time, to ``data.num_proc`` worker processes, each running the ``tokenizers`` library's batch encoder on its own
core; the results are written in order as they come back, with a bounded number of batches in flight, so memory
does not grow with the corpus.

**Split cache**: a split that is exactly one source is that source's token file. Otherwise (several files, a
held-out fraction, a weighted mixture: ``data.mixture``) its documents are copied into a token file of its own,
keyed by its sources' keys, the held-out rule and the normalised weights: changing a weight builds a new split.

**Builders**: every cache directory is built under a file lock (``filelock``) by whichever process takes it first
-- ranks of one run, sweep runs or SLURM array tasks sharing a cache -- in a temporary directory with a unique name,
renamed into place when complete. The others wait for the lock and read the finished cache; a build that fails
leaves nothing behind.
"""
from __future__ import annotations

import collections
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import NamedTuple

import numpy as np

from core.errors import DataError, MissingDataError
from data.mixture import mixture_order, mixture_summary
from data.sources import describe_source, held_out, iter_split_documents, split_plan
from data.tokenizer import batch_ids, tokenizer_fingerprint

_FORMAT = 2
_TASK_CHARS = 1 << 20  # text per worker task: large enough to amortise the hand-off, small enough to bound memory
_TASK_DOCS = 8192
_SERIAL_TASKS = 4  # sources up to this many tasks (~4 MiB of text) are tokenized in-process, with no fork
_COPY_BYTES = 64 << 20


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= 65536 else np.uint32


def num_workers(num_proc: int | None) -> int:
    """``data.num_proc``, or every core this process may run on when it is unset."""
    if num_proc is not None:
        return num_proc
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:20]


# -- building a cache directory once, whoever asks ----------------------------------------------------------------
def build_once(directory: Path, build) -> Path:
    """``directory``, built by ``build(tmp)`` (which writes ``meta.json`` last) unless it exists: under a file lock,
    in a uniquely named temporary directory renamed into place, so that concurrent callers build it once and no
    reader ever sees a partial cache."""
    from filelock import FileLock

    if (directory / "meta.json").is_file():
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(directory) + ".lock"):
        if (directory / "meta.json").is_file():
            return directory
        # Holding the lock, any temporary directory of this key is a dead builder's.
        for stale in directory.parent.glob(f".{directory.name}.*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = directory.parent / f".{directory.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        tmp.mkdir()
        try:
            build(tmp)
            if directory.exists():  # left by a build of an older layout: never complete, or it would have meta.json
                shutil.rmtree(directory)
            os.rename(tmp, directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return directory


def _write_meta(directory: Path, meta: dict) -> None:
    (directory / "meta.json").write_text(json.dumps(meta, indent=1))


# -- parallel, streaming tokenization ---------------------------------------------------------------------------
_WORKER: tuple = ()  # (tokenizer, eos id, dtype): set before the pool forks, so every worker inherits it


def _encode(docs: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The tokens of ``docs`` (EOS after each), flat, and each document's token count."""
    tok, eos, dtype = _WORKER
    flat, lengths = [], []
    for ids in batch_ids(tok, docs, add_special_tokens=False):  # the Rust tokenizer directly where there is one
        flat += ids
        flat.append(eos)
        lengths.append(len(ids) + 1)
    return np.array(flat, dtype=dtype), np.array(lengths, dtype=np.uint64)


def _tasks(docs):
    batch, chars = [], 0
    for d in docs:
        batch.append(d)
        chars += len(d)
        if chars >= _TASK_CHARS or len(batch) >= _TASK_DOCS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _in_order(pool, tasks, depth: int):
    """``pool.imap(_encode, tasks)`` with at most ``depth`` tasks in flight (imap would read every task at once)."""
    pending = collections.deque()
    for task in tasks:
        pending.append(pool.apply_async(_encode, (task,)))
        if len(pending) >= depth:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def _start_pool(num_proc: int):
    """Forked workers that inherit ``_WORKER``. Each runs on one core; the Rust thread pool would only
    oversubscribe them (and warn on fork)."""
    import multiprocessing

    saved = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        return multiprocessing.get_context("fork").Pool(num_proc)
    finally:
        if saved is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = saved


def tokenize_documents(docs, tokenizer, directory: Path, num_proc: int = 1, desc: str = "",
                       progress: bool = False) -> dict:
    """Tokenize the stream ``docs`` into ``directory``/tokens.bin (EOS after each document) and ends.bin; return
    the metadata. ``num_proc`` > 1 tokenizes in that many worker processes, once the text is longer than
    ``_SERIAL_TASKS`` tasks: small sources are tokenized in-process, with no fork (a forked pool in a process that
    already runs threads was once seen to hang in a loaded test run; see docs/PERFORMANCE.md)."""
    global _WORKER
    import itertools

    from tqdm import tqdm

    dtype = token_dtype(len(tokenizer))
    _WORKER = (tokenizer, tokenizer.eos_token_id, dtype)
    n_tokens, n_docs = 0, 0
    bar = tqdm(desc=f"tokenizing {desc}", unit="doc", unit_scale=True, disable=not progress)
    pool = None
    try:
        tasks = _tasks(docs)
        head = list(itertools.islice(tasks, _SERIAL_TASKS + 1))
        if num_proc > 1 and len(head) > _SERIAL_TASKS:
            pool = _start_pool(num_proc)
            results = _in_order(pool, itertools.chain(head, tasks), depth=2 * num_proc)
        else:
            results = map(_encode, itertools.chain(head, tasks))
        with (directory / "tokens.bin").open("wb") as tf, (directory / "ends.bin").open("wb") as ef:
            for tokens, lengths in results:
                tf.write(tokens.data)
                ef.write((n_tokens + np.cumsum(lengths)).data)
                n_tokens += tokens.size
                n_docs += lengths.size
                bar.update(lengths.size)
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
        _WORKER = ()
    return {"num_tokens": n_tokens, "num_docs": n_docs, "dtype": np.dtype(dtype).name, "format": _FORMAT}


class TokenFile(NamedTuple):
    """A cache directory opened: the flat tokens and each document's end offset (read-only memmaps)."""
    tokens: np.ndarray
    ends: np.ndarray
    directory: Path
    meta: dict

    @classmethod
    def open(cls, directory: Path) -> TokenFile:
        meta = json.loads((directory / "meta.json").read_text())
        tokens = _memmap(directory / "tokens.bin", np.dtype(meta["dtype"]), meta["num_tokens"])
        return cls(tokens, _memmap(directory / "ends.bin", np.dtype(np.uint64), meta["num_docs"]), directory, meta)

    def lengths(self) -> np.ndarray:
        return np.diff(np.asarray(self.ends), prepend=np.uint64(0))


def _memmap(path: Path, dtype, n: int) -> np.ndarray:
    return np.memmap(path, dtype=dtype, mode="r", shape=(n,)) if n else np.zeros(0, dtype=dtype)


def _stamp(source: dict) -> dict:
    if source["kind"] == "file":
        try:
            st = os.stat(source["path"])
        except FileNotFoundError:  # there when the config was read, gone now
            raise MissingDataError(f"data file not found: {source['path']}") from None
        return {**source, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return source


def source_tokens(source: dict, max_docs: int | None, tokenizer, cache_dir, num_proc: int = 1,
                  progress: bool = False) -> TokenFile:
    """The token cache of one source (``data.sources.sources_of``), built if needed."""
    key = _hash({"source": _stamp(source), "max_docs": max_docs, "tokenizer": tokenizer_fingerprint(tokenizer),
                 "format": _FORMAT})
    name = Path(source["path"]).name if source["kind"] == "file" else source["dataset"]

    def build(tmp: Path) -> None:
        if progress:
            print(f"building the token cache of {name} ({num_proc} processes): {Path(cache_dir) / key}", flush=True)
        meta = tokenize_documents(iter_split_documents(source, max_docs, None), tokenizer, tmp, num_proc, name,
                                  progress)
        _write_meta(tmp, {**meta, "source": source})

    return TokenFile.open(build_once(Path(cache_dir) / key, build))


# -- splits -----------------------------------------------------------------------------------------------------
def _copy_documents(parts: list[TokenFile], which: np.ndarray, docs: np.ndarray, out: Path) -> int:
    """Write document ``docs[k]`` of part ``which[k]``, for every k in order, to ``out``; return the token count.
    Reads runs of adjacent documents with pread: bounded memory, and no memmap pages held by this process."""
    itemsize = parts[0].tokens.dtype.itemsize
    starts, ends = np.empty(len(docs), np.int64), np.empty(len(docs), np.int64)
    for i, part in enumerate(parts):
        mask = which == i
        e = np.asarray(part.ends, dtype=np.int64)
        ends[mask] = e[docs[mask]]
        starts[mask] = np.where(docs[mask] > 0, e[np.maximum(docs[mask] - 1, 0)], 0)
    if len(docs) == 0:
        out.write_bytes(b"")
        return 0
    new_run = np.ones(len(docs), dtype=bool)
    new_run[1:] = (which[1:] != which[:-1]) | (starts[1:] != ends[:-1])
    first = np.flatnonzero(new_run)
    last = np.append(first[1:] - 1, len(docs) - 1)
    fds = [os.open(p.directory / "tokens.bin", os.O_RDONLY) for p in parts]
    try:
        with out.open("wb") as f:
            for part, a, b in zip(which[first], starts[first] * itemsize, ends[last] * itemsize):
                while a < b:
                    chunk = os.pread(fds[part], min(_COPY_BYTES, b - a), a)
                    f.write(chunk)
                    a += len(chunk)
    finally:
        for fd in fds:
            os.close(fd)
    return int((ends - starts).sum())


def tokenized_split(cfg, split: str, tokenizer, rank: int = 0, barrier=lambda: None, progress: bool = True):
    """Return a read-only memmap of the split's tokens (``split`` = "train" or "valid" of a ``DataConfig``),
    building the caches it needs. Rank 0 builds first while the other ranks wait at ``barrier``; they then find
    the caches built (or, on another machine's local disk, build their own under the same lock)."""
    if rank == 0:
        tokens = _split_tokens(cfg, split, tokenizer, progress)
    barrier()
    if rank != 0:
        tokens = _split_tokens(cfg, split, tokenizer, progress=False)
    if len(tokens) == 0:
        raise DataError(f"empty {split} dataset after tokenization: {describe_source(cfg, split)}")
    return tokens


def _split_tokens(cfg, split: str, tokenizer, progress: bool) -> np.ndarray:
    sources, weights, keep = split_plan(cfg, split)
    workers = num_workers(cfg.num_proc)
    parts = [source_tokens(s, cfg.max_docs, tokenizer, cfg.cache_dir, workers, progress) for s in sources]
    if len(parts) == 1 and keep is None:
        return parts[0].tokens
    norm = None if weights is None else [w / sum(weights) for w in weights]
    key = _hash({"parts": [p.directory.name for p in parts], "weights": norm, "keep": keep, "format": _FORMAT})
    names = [Path(s["path"]).name if s["kind"] == "file" else s["dataset"] for s in sources]

    def build(tmp: Path) -> None:
        lengths, picked = [], []
        for part in parts:
            n = part.lengths()
            docs = np.arange(len(n))
            if keep is not None:
                docs = docs[held_out(docs, keep[1]) == (keep[0] == "valid")]
            lengths.append(n[docs].astype(np.int64))
            picked.append(docs)
        if weights is None:
            which = np.concatenate([np.full(len(d), i, dtype=np.int64) for i, d in enumerate(picked)])
            docs = np.concatenate(picked)
        else:
            which, local = mixture_order(lengths, weights, names)
            if progress:
                print(f"{split}: {mixture_summary(lengths, which, local, names)}", flush=True)
            docs = np.empty(len(local), dtype=np.int64)
            for i in range(len(parts)):
                docs[which == i] = picked[i][local[which == i]]
        n_tokens = _copy_documents(parts, which, docs, tmp / "tokens.bin")
        meta = {"num_tokens": n_tokens, "num_docs": len(docs), "dtype": parts[0].meta["dtype"], "format": _FORMAT,
                "source": describe_source(cfg, split), "weights": norm, "keep": keep}
        _write_meta(tmp, meta)

    directory = build_once(Path(cfg.cache_dir) / "splits" / key, build)
    meta = json.loads((directory / "meta.json").read_text())
    return _memmap(directory / "tokens.bin", np.dtype(meta["dtype"]), meta["num_tokens"])
