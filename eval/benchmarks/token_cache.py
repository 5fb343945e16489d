"""A disk cache of a task's tokenised requests, so that every run of a sweep tokenises the benchmarks once.

Tokenising the requests is most of the cost of preparing the suite (MultiRC and BoolQ repeat a long passage in every
choice's ``context + continuation``), and it is the same for every run whose tokenizer has the same definition.

Key: a hash of the tokenizer's full definition (``tokenizer_fingerprint``), the encoding rule's version and the
request strings themselves. The strings already carry everything that shapes them -- the task file's content, the
prompt template, ``limit``, the few-shot draw -- so a changed data file or prompt can never be served stale tokens,
and reading the task files (cheap) still happens every time.

Layout: ``<cache_dir>/<key>.npz`` holding ``tokens`` (int64, every context then its continuation, request after
request) and ``lengths`` (int64, ``[len(context), len(continuation)]`` per request); ``np.load`` without pickle.
Writes go to a private temporary file in the same directory and are renamed into place, so a concurrent reader sees
either no entry or a complete one, and two runs that write the same entry at once leave one correct file. An entry
that cannot be read (a foreign or damaged file) is recomputed and replaced.
"""
from __future__ import annotations

import hashlib
import itertools
import logging
import os
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger("eval")

FORMAT = 1  # bump when ``encode_pairs``'s output for the same strings and tokenizer changes

TokenPair = tuple[list[int], list[int]]


def cache_key(fingerprint: str, pairs: Sequence[tuple[str, str]]) -> str:
    h = hashlib.sha256(f"linreg-benchmark-requests/{FORMAT}/{fingerprint}/{len(pairs)}".encode())
    for ctx, cont in pairs:  # lengths first: no two different lists of pairs hash the same bytes
        c, k = ctx.encode("utf-8", "surrogatepass"), cont.encode("utf-8", "surrogatepass")
        h.update(f"\0{len(c)},{len(k)}\0".encode())
        h.update(c)
        h.update(k)
    return h.hexdigest()[:24]


def _read(path: Path) -> list[TokenPair] | None:
    try:
        with np.load(path, allow_pickle=False) as f:
            tokens, lengths = f["tokens"], f["lengths"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
        return None
    if lengths.ndim != 2 or lengths.shape[1] != 2 or int(lengths.sum()) != tokens.size:
        return None
    flat, out, at = tokens.tolist(), [], 0
    for n_ctx, n_cont in lengths.tolist():
        out.append((flat[at:at + n_ctx], flat[at + n_ctx:at + n_ctx + n_cont]))
        at += n_ctx + n_cont
    return out


def _write(path: Path, pairs: list[TokenPair]) -> None:
    parts = [part for pair in pairs for part in pair]
    tokens = np.fromiter(itertools.chain.from_iterable(parts), dtype=np.int64, count=sum(map(len, parts)))
    lengths = np.array([(len(ctx), len(cont)) for ctx, cont in pairs], dtype=np.int64).reshape(-1, 2)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, tokens=tokens, lengths=lengths)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cached_encode(cache_dir: str | os.PathLike | None, fingerprint: str, pairs: Sequence[tuple[str, str]],
                  encode: Callable[[Sequence[tuple[str, str]]], list[TokenPair]]) -> list[TokenPair]:
    """``encode(pairs)``, read from ``cache_dir`` when an entry exists, else computed and stored there.

    ``cache_dir=None`` computes without caching. A cache directory that cannot be written to only costs the
    recomputation next time: the run goes on with the computed tokens."""
    if cache_dir is None or not pairs:
        return encode(pairs)
    path = Path(cache_dir) / f"{cache_key(fingerprint, pairs)}.npz"
    hit = _read(path) if path.is_file() else None
    if hit is not None and len(hit) == len(pairs):
        return hit
    out = encode(pairs)
    try:
        _write(path, out)
    except OSError as e:  # a read-only or full disk: correct results, no cache
        log.warning("benchmark token cache not written (%s): %s", path, e)
    return out
