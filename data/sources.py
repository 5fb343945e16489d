"""Text sources: local ``.txt`` (documents separated by a ``<|endoftext|>`` line) and ``.jsonl`` (a text field),
or an HF dataset from the hub (name, config, split, text field) through ``datasets``.

The data root -- where local files are looked up -- has one rule for every command (``data_root``): a command-line
``--data-root`` wins, then ``$LINREG_DATA_ROOT``, then the config's ``data.root``; with none, the hub is used.
"""
from __future__ import annotations

import os
from pathlib import Path

from core.errors import DataError, MissingDataError, MissingFieldError
from core.io import iter_jsonl

DOC_SEPARATOR = "<|endoftext|>"


def read_txt_documents(path: str | os.PathLike) -> list[str]:
    """Split a text file into documents at lines that are exactly ``<|endoftext|>`` (stripped, empties dropped)."""
    path = Path(path)
    if not path.is_file():
        raise MissingDataError(f"data file not found: {path}")
    docs, cur = [], []
    with path.open(encoding="utf-8") as f:
        try:
            for line in f:
                if line.strip() == DOC_SEPARATOR:
                    docs.append("".join(cur).strip())
                    cur = []
                else:
                    cur.append(line)
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    docs.append("".join(cur).strip())
    return [d for d in docs if d]


def read_jsonl_documents(path: str | os.PathLike, text_field: str = "text") -> list[str]:
    docs = []
    for n, row in iter_jsonl(path):
        if not isinstance(row, dict) or text_field not in row:
            fields = ", ".join(row) if isinstance(row, dict) else type(row).__name__
            raise MissingFieldError(f"{path}:{n}: no field '{text_field}' (fields: {fields})")
        if row[text_field]:
            docs.append(row[text_field])
    return docs


ENV_DATA_ROOT = "LINREG_DATA_ROOT"


def data_root(configured: str | os.PathLike | None = None, cli: str | os.PathLike | None = None) -> Path | None:
    """The local data root: ``cli`` (a --data-root flag), else ``$LINREG_DATA_ROOT``, else ``configured``
    (data.root); None means the HF hub."""
    root = cli or os.environ.get(ENV_DATA_ROOT) or configured
    return Path(root).expanduser() if root else None


def describe_source(cfg, split: str) -> dict:
    """A JSON-able description of where ``split`` ("train"/"valid") comes from; also the token-cache key input.

    Returns ``{"kind": "files", "files": [...]}``, ``{"kind": "hub", ...}``, ``{"kind": "holdout", ...}``
    (a held-out fraction of the training documents) or ``{"kind": "none"}``."""
    files = cfg.train_files if split == "train" else cfg.valid_files
    root = data_root(cfg.root)
    if files and (root is not None or cfg.dataset is None or all(Path(f).is_absolute() for f in files)):
        paths = [Path(f) if Path(f).is_absolute() else (root or Path.cwd()) / f for f in files]
        for pth in paths:
            if not pth.is_file():
                where = f" (data root {root})" if root else ""
                raise MissingDataError(f"data.{split}_files: {pth} not found{where}")
        return {"kind": "files", "files": [str(p.resolve()) for p in paths], "text_field": cfg.text_field}
    if cfg.dataset is not None:
        hub_split = cfg.train_split if split == "train" else cfg.valid_split
        if hub_split is not None:
            return {"kind": "hub", "dataset": cfg.dataset, "config": cfg.dataset_config, "split": hub_split,
                    "text_field": cfg.text_field}
    if split == "valid" and cfg.valid_fraction > 0:
        return {"kind": "holdout", "fraction": cfg.valid_fraction, "train": describe_source(cfg, "train")}
    return {"kind": "none"}


def load_hub_split(name: str, config: str | None, split: str, hint: str = "", data_dir: str | None = None):
    """An HF hub dataset split (``datasets.Dataset``), or a one-line DataError naming it when it cannot be loaded
    (offline, missing config or split, network errors: the hub raises many kinds). ``data_dir``: a folder of a
    data-files repository (e.g. ``Anthropic/hh-rlhf``'s ``helpful-base``)."""
    import datasets

    try:
        return datasets.load_dataset(name, config, split=split, **({"data_dir": data_dir} if data_dir else {}))
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0]
        where = f"{name}/{config or data_dir}" if config or data_dir else name
        raise MissingDataError(f"cannot load HF dataset '{name}' ({where} split '{split}'): {type(e).__name__}: "
                               f"{first}{' -- ' + hint if hint else ''}") from None


def _load_hub_texts(name: str, config: str | None, split: str, text_field: str):
    ds = load_hub_split(name, config, split, hint=f"offline? point data.root or ${ENV_DATA_ROOT} at local files")
    if text_field not in ds.column_names:
        fields = ", ".join(ds.column_names)
        raise MissingFieldError(f"HF dataset '{name}' has no field '{text_field}' (fields: {fields})")
    return ds[text_field]


def _documents_of(desc: dict, max_docs: int | None):
    kind = desc["kind"]
    if kind == "files":
        docs = []
        for f in desc["files"]:
            docs.extend(read_jsonl_documents(f, desc["text_field"]) if f.endswith(".jsonl") else read_txt_documents(f))
    elif kind == "hub":
        docs = _load_hub_texts(desc["dataset"], desc["config"], desc["split"], desc["text_field"])
    else:
        raise ValueError(f"no documents for source {desc}")
    return docs[:max_docs] if max_docs is not None else docs


def load_documents(cfg, split: str):
    """The documents (a sequence of strings) of ``split`` = "train" or "valid" of a ``DataConfig``.

    With a held-out validation fraction, the last ``valid_fraction`` of the training documents form the
    validation split and are removed from the training split."""
    train_desc = describe_source(cfg, "train")
    valid_desc = describe_source(cfg, "valid")
    if split == "train":
        docs = _documents_of(train_desc, cfg.max_docs)
        if valid_desc["kind"] == "holdout":
            docs = docs[: len(docs) - int(len(docs) * cfg.valid_fraction)]
    elif valid_desc["kind"] == "holdout":
        docs = _documents_of(train_desc, cfg.max_docs)
        docs = docs[len(docs) - int(len(docs) * cfg.valid_fraction):]
    elif valid_desc["kind"] == "none":
        raise DataError("no validation data: set data.valid_files, data.valid_split or data.valid_fraction > 0")
    else:
        docs = _documents_of(valid_desc, cfg.max_docs)
    if len(docs) == 0:
        raise DataError(f"empty {split} dataset: {describe_source(cfg, split)}")
    return docs
