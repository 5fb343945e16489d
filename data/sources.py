"""Text sources: local ``.txt`` (documents separated by a ``<|endoftext|>`` line) and ``.jsonl`` (a text field),
or an HF dataset from the hub (name, config, split, text field) through ``datasets``."""
from __future__ import annotations

import json
import os
from pathlib import Path

DOC_SEPARATOR = "<|endoftext|>"


def read_txt_documents(path: str | os.PathLike) -> list[str]:
    """Split a text file into documents at lines that are exactly ``<|endoftext|>`` (stripped, empties dropped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    docs, cur = [], []
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip() == DOC_SEPARATOR:
                docs.append("".join(cur).strip())
                cur = []
            else:
                cur.append(line)
    docs.append("".join(cur).strip())
    return [d for d in docs if d]


def read_jsonl_documents(path: str | os.PathLike, text_field: str = "text") -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    docs = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if text_field not in row:
                raise KeyError(f"{path}:{n}: no field '{text_field}' (fields: {', '.join(row)})")
            if row[text_field]:
                docs.append(row[text_field])
    return docs


def data_root(cfg) -> Path | None:
    root = os.environ.get("LINREG_DATA_ROOT") or cfg.root
    return Path(root).expanduser() if root else None


def describe_source(cfg, split: str) -> dict:
    """A JSON-able description of where ``split`` ("train"/"valid") comes from; also the token-cache key input.

    Returns ``{"kind": "files", "files": [...]}``, ``{"kind": "hub", ...}``, ``{"kind": "holdout", ...}``
    (a held-out fraction of the training documents) or ``{"kind": "none"}``."""
    files = cfg.train_files if split == "train" else cfg.valid_files
    root = data_root(cfg)
    if files and (root is not None or cfg.dataset is None or all(Path(f).is_absolute() for f in files)):
        paths = [Path(f) if Path(f).is_absolute() else (root or Path.cwd()) / f for f in files]
        for pth in paths:
            if not pth.is_file():
                where = f" (data root {root})" if root else ""
                raise FileNotFoundError(f"data.{split}_files: {pth} not found{where}")
        return {"kind": "files", "files": [str(p.resolve()) for p in paths], "text_field": cfg.text_field}
    if cfg.dataset is not None:
        hub_split = cfg.train_split if split == "train" else cfg.valid_split
        if hub_split is not None:
            return {"kind": "hub", "dataset": cfg.dataset, "config": cfg.dataset_config, "split": hub_split,
                    "text_field": cfg.text_field}
    if split == "valid" and cfg.valid_fraction > 0:
        return {"kind": "holdout", "fraction": cfg.valid_fraction, "train": describe_source(cfg, "train")}
    return {"kind": "none"}


def _load_hub(name: str, config: str | None, split: str, text_field: str):
    import datasets

    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as e:  # the hub raises many kinds (ConnectionError, OfflineModeIsEnabled, FileNotFound...)
        raise FileNotFoundError(
            f"cannot load HF dataset '{name}' (config {config}, split {split}): {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''} -- offline? point data.root or LINREG_DATA_ROOT at local files"
        ) from None
    if text_field not in ds.column_names:
        raise KeyError(f"HF dataset '{name}' has no field '{text_field}' (fields: {', '.join(ds.column_names)})")
    return ds[text_field]


def _documents_of(desc: dict, max_docs: int | None):
    kind = desc["kind"]
    if kind == "files":
        docs = []
        for f in desc["files"]:
            docs.extend(read_jsonl_documents(f, desc["text_field"]) if f.endswith(".jsonl") else read_txt_documents(f))
    elif kind == "hub":
        docs = _load_hub(desc["dataset"], desc["config"], desc["split"], desc["text_field"])
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
        raise ValueError("no validation data: set data.valid_files, data.valid_split or data.valid_fraction > 0")
    else:
        docs = _documents_of(valid_desc, cfg.max_docs)
    if len(docs) == 0:
        raise ValueError(f"empty {split} dataset: {describe_source(cfg, split)}")
    return docs
