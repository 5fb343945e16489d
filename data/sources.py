"""Text sources: local ``.txt`` (documents separated by a ``<|endoftext|>`` line) and ``.jsonl`` (a text field),
or an HF dataset from the hub (name, config, split, text field) through ``datasets``.

Training data is streamed: the ``iter_*`` readers yield one document at a time from fixed-size blocks (files) or
``datasets``' streaming mode (hub), so no corpus is ever one Python list (``read_*`` / ``load_documents`` keep
lists for small texts: validation sets, probes). A split is a list of single sources (``split_plan``), optionally
weighted (a mixture, assembled by ``data.cache``), minus or restricted to the held-out documents (``held_out``).

The data root -- where local files are looked up -- has one rule for every command (``data_root``): a command-line
``--data-root`` wins, then ``$LINREG_DATA_ROOT``, then the config's ``data.root``; with none, the hub is used.
"""
from __future__ import annotations

import itertools
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path

from core.errors import DataError, MissingDataError, MissingFieldError
from core.io import iter_jsonl

DOC_SEPARATOR = "<|endoftext|>"


_READ_BLOCK = 8 << 20  # characters read per step: memory stays flat however large the file
# A separator line, newline included: only whitespace around the marker (str.strip's rule; \n excluded so that a
# match is one line). A line cut by the end of a block does not match until its newline has been read.
_SEPARATOR_LINE = re.compile(r"^[^\S\n]*" + re.escape(DOC_SEPARATOR) + r"[^\S\n]*\n", re.MULTILINE)


def iter_txt_documents(path: str | os.PathLike) -> Iterator[str]:
    """Stream the documents of a text file: split at lines that are exactly ``<|endoftext|>`` (after stripping),
    each document stripped, empties dropped. Reads fixed-size blocks, so memory does not grow with the file."""
    path = Path(path)
    try:
        f = path.open(encoding="utf-8")
    except FileNotFoundError:
        raise MissingDataError(f"data file not found: {path}") from None
    with f:
        carry = ""
        try:
            while block := f.read(_READ_BLOCK):
                pieces = _SEPARATOR_LINE.split(carry + block)
                carry = pieces.pop()  # starts at a line start: the text after the last complete separator line
                yield from filter(None, map(str.strip, pieces))
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    yield from filter(None, map(str.strip, _SEPARATOR_LINE.split(carry + "\n")))  # a last line without newline


def read_txt_documents(path: str | os.PathLike) -> list[str]:
    """All documents of a (small) text file; see ``iter_txt_documents``."""
    return list(iter_txt_documents(path))


def iter_jsonl_documents(path: str | os.PathLike, text_field: str = "text") -> Iterator[str]:
    """Stream the non-empty ``text_field`` values of a JSON-lines file (a row without the field is an error)."""
    for n, row in iter_jsonl(path):
        if not isinstance(row, dict) or text_field not in row:
            fields = ", ".join(row) if isinstance(row, dict) else type(row).__name__
            raise MissingFieldError(f"{path}:{n}: no field '{text_field}' (fields: {fields})")
        if row[text_field]:
            yield row[text_field]


def read_jsonl_documents(path: str | os.PathLike, text_field: str = "text") -> list[str]:
    return list(iter_jsonl_documents(path, text_field))


ENV_DATA_ROOT = "LINREG_DATA_ROOT"


def data_root(configured: str | os.PathLike | None = None, cli: str | os.PathLike | None = None) -> Path | None:
    """The local data root: ``cli`` (a --data-root flag), else ``$LINREG_DATA_ROOT``, else ``configured``
    (data.root); None means the HF hub."""
    root = cli or os.environ.get(ENV_DATA_ROOT) or configured
    return Path(root).expanduser() if root else None


def _named_files(files) -> tuple[list[str], list[float] | None]:
    """``data.*_files`` as (names, weights): a list has no weights, a mapping maps each file to its weight."""
    if isinstance(files, dict):
        return list(files), [float(w) for w in files.values()]
    return list(files), None


def describe_source(cfg, split: str) -> dict:
    """A JSON-able description of where ``split`` ("train"/"valid") comes from; also the token-cache key input.

    Returns ``{"kind": "files", "files": [...], "weights": [...] or None}``, ``{"kind": "hub", ...}``,
    ``{"kind": "holdout", ...}`` (a held-out fraction of the training documents) or ``{"kind": "none"}``."""
    names, weights = _named_files(cfg.train_files if split == "train" else cfg.valid_files)
    root = data_root(cfg.root)
    if names and (root is not None or cfg.dataset is None or all(Path(f).is_absolute() for f in names)):
        paths = [Path(f) if Path(f).is_absolute() else (root or Path.cwd()) / f for f in names]
        for pth in paths:
            if not pth.is_file():
                where = f" (data root {root})" if root else ""
                raise MissingDataError(f"data.{split}_files: {pth} not found{where}")
        return {"kind": "files", "files": [str(p.resolve()) for p in paths], "weights": weights,
                "text_field": cfg.text_field}
    if cfg.dataset is not None:
        hub_split = cfg.train_split if split == "train" else cfg.valid_split
        if hub_split is not None:
            return {"kind": "hub", "dataset": cfg.dataset, "config": cfg.dataset_config, "split": hub_split,
                    "text_field": cfg.text_field}
    if split == "valid" and cfg.valid_fraction > 0:
        return {"kind": "holdout", "fraction": cfg.valid_fraction, "train": describe_source(cfg, "train")}
    return {"kind": "none"}


def load_hub_split(name: str, config: str | None, split: str, hint: str = "", data_dir: str | None = None,
                   streaming: bool = False, revision: str | None = None, data_files=None):
    """An HF hub dataset split (``datasets.Dataset``, or ``IterableDataset`` when ``streaming``), or a one-line
    DataError naming it when it cannot be loaded (offline, missing config or split, network errors: the hub raises
    many kinds). ``name`` may also be a local copy of a repository. ``data_dir``: a folder of a data-files
    repository (e.g. ``Anthropic/hh-rlhf``'s ``helpful-base``); ``data_files``: files (or patterns) of it;
    ``revision``: a commit, branch or tag (None: the default branch)."""
    import datasets

    try:
        return datasets.load_dataset(name, config, split=split, streaming=streaming, revision=revision,
                                     **({"data_dir": data_dir} if data_dir else {}),
                                     **({"data_files": data_files} if data_files else {}))
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0]
        where = f"{name}/{config or data_dir}" if config or data_dir else name
        raise MissingDataError(f"cannot load HF dataset '{name}' ({where} split '{split}'): {type(e).__name__}: "
                               f"{first}{' -- ' + hint if hint else ''}") from None


_HUB_BATCH = 1000


def _iter_hub_documents(name: str, config: str | None, split: str, text_field: str) -> Iterator[str]:
    """Stream a hub split's texts through ``datasets`` (streaming: rows arrive in batches, nothing is materialised)."""
    ds = load_hub_split(name, config, split, hint=f"offline? point data.root or ${ENV_DATA_ROOT} at local files",
                        streaming=True)
    for batch in ds.iter(batch_size=_HUB_BATCH):
        if text_field not in batch:
            raise MissingFieldError(f"HF dataset '{name}' has no field '{text_field}' (fields: {', '.join(batch)})")
        yield from filter(None, batch[text_field])


def sources_of(desc: dict) -> list[dict]:
    """The single sources (one file, or one hub split) of a ``describe_source`` description, in order."""
    if desc["kind"] == "files":
        return [{"kind": "file", "path": f, "text_field": desc["text_field"]} for f in desc["files"]]
    if desc["kind"] == "hub":
        return [desc]
    raise ValueError(f"no documents for source {desc}")


def iter_documents(source: dict, max_docs: int | None = None) -> Iterator[str]:
    """Stream the documents of one source (``sources_of``), at most ``max_docs`` of them."""
    if source["kind"] == "file":
        path = source["path"]
        docs = (iter_jsonl_documents(path, source["text_field"]) if path.endswith((".jsonl", ".jsonl.gz"))
                else iter_txt_documents(path))
    else:
        docs = _iter_hub_documents(source["dataset"], source["config"], source["split"], source["text_field"])
    return itertools.islice(docs, max_docs)


def held_out(index, fraction: float):
    """Whether document ``index`` (its position in its source; an int or an integer array) is held out for
    validation: ``floor((i + 1) f) > floor(i f)``. Exactly ``floor(n f)`` of the first ``n`` documents, spread
    evenly through the source, so a stream can decide without knowing its length."""
    if isinstance(index, int):  # the same float64 arithmetic as the array form, without numpy's per-call cost
        return math.floor((index + 1) * fraction) > math.floor(index * fraction)
    import numpy as np

    i = np.asarray(index, dtype=np.float64)
    return np.floor((i + 1) * fraction) > np.floor(i * fraction)


def split_plan(cfg, split: str) -> tuple[list[dict], list[float] | None, tuple[str, float] | None]:
    """(sources, weights, holdout) of ``split``: its single sources, their mixture weights (None: concatenated in
    order) and which documents of each source it keeps: None (all), ("train", f) (all but the held-out ones) or
    ("valid", f) (only the held-out ones)."""
    train_desc, valid_desc = describe_source(cfg, "train"), describe_source(cfg, "valid")
    holdout = valid_desc["kind"] == "holdout"
    if split == "valid" and valid_desc["kind"] == "none":
        raise DataError("no validation data: set data.valid_files, data.valid_split or data.valid_fraction > 0")
    desc = train_desc if split == "train" or holdout else valid_desc
    keep = (split, cfg.valid_fraction) if holdout else None
    return sources_of(desc), desc.get("weights"), keep


def iter_split_documents(source: dict, max_docs: int | None, keep: tuple[str, float] | None) -> Iterator[str]:
    """The documents of one source that a split keeps (``split_plan``)."""
    docs = iter_documents(source, max_docs)
    if keep is None:
        return docs
    which, fraction = keep
    return (d for i, d in enumerate(docs) if held_out(i, fraction) == (which == "valid"))


def load_documents(cfg, split: str) -> list[str]:
    """The documents of ``split`` = "train" or "valid" of a ``DataConfig``, every source in order (mixture weights
    apply to tokens, in ``data.cache``): a list, for small splits such as a validation text. Training data is
    streamed by ``data.cache`` instead.

    With a held-out validation fraction, the documents ``held_out`` picks from each training source form the
    validation split and are removed from the training split."""
    sources, _, keep = split_plan(cfg, split)
    docs = [d for src in sources for d in iter_split_documents(src, cfg.max_docs, keep)]
    if not docs:
        raise DataError(f"empty {split} dataset: {describe_source(cfg, split)}")
    return docs


def _sample_base_bytes(source: dict, max_docs: int | None, keep) -> int | None:
    """The text a source offers the tokenizer sample: the file's size, or with a document cap the UTF-8 bytes of
    the documents under it (one streamed pass); None for a hub split."""
    if source["kind"] != "file":
        return None
    if max_docs is None:
        return os.path.getsize(source["path"])
    return sum(len(d.encode("utf-8")) for d in iter_split_documents(source, max_docs, keep))


def tokenizer_sample(cfg, max_bytes: int | None) -> Iterator[str]:
    """Training documents for a tokenizer: about ``max_bytes`` of UTF-8 text drawn from every training source,
    each in proportion to its mixture weight (or, without weights, to its file size), and spread evenly through
    each source (every k-th document) rather than taken from its start. A hub split, whose size is not known
    before it is read, gives its first documents."""
    sources, weights, keep = split_plan(cfg, "train")
    sizes = [_sample_base_bytes(s, cfg.max_docs, keep) for s in sources]
    if weights is None:
        weights = [1.0] if len(sources) == 1 else [float(s) for s in sizes]
    total_w = sum(weights)
    for src, size, w in zip(sources, sizes, weights):
        budget = None if max_bytes is None else max_bytes * w / total_w
        # Keep documents at a rate of budget/size (the floor rule of held_out), so the sample covers the whole file.
        rate = 1.0 if budget is None or not size else min(1.0, budget / size)
        seen = 0
        for i, doc in enumerate(iter_split_documents(src, cfg.max_docs, keep)):
            if rate < 1.0 and not held_out(i, rate):
                continue
            yield doc
            seen += len(doc.encode("utf-8"))
            if budget is not None and seen >= budget:
                break
