"""Tokenize a split once into a flat token file (EOS after every document), cached by content key.

The key hashes the source description (file paths with size and mtime, or hub name/config/split), the text
field, the document cap and the tokenizer's full definition: change any of them and a new cache is built.
Rank 0 builds it (atomically: write to a temporary name, then rename); the other ranks wait at a barrier.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from core.errors import DataError
from data.sources import describe_source, load_documents
from data.tokenizer import tokenizer_fingerprint

_BATCH_DOCS = 1000


def _file_stamp(desc: dict) -> dict:
    if desc.get("kind") == "files":
        return {**desc, "stamps": [(os.path.getsize(f), os.stat(f).st_mtime_ns) for f in desc["files"]]}
    if desc.get("kind") == "holdout":
        return {**desc, "train": _file_stamp(desc["train"])}
    return desc


def cache_key(cfg, split: str, tokenizer) -> str:
    desc = {"source": _file_stamp(describe_source(cfg, split)), "max_docs": cfg.max_docs,
            "valid_fraction": cfg.valid_fraction, "tokenizer": tokenizer_fingerprint(tokenizer), "format": 1}
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:20]


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= 65536 else np.uint32


def build_token_file(docs, tokenizer, out: Path, progress: bool = True) -> dict:
    """Write the tokens of ``docs`` (EOS appended to each) to ``out``; return the metadata."""
    from tqdm import tqdm

    dtype = token_dtype(len(tokenizer))
    eos = tokenizer.eos_token_id
    n_tokens, n_docs = 0, 0
    tmp = out.with_suffix(".tmp")
    with tmp.open("wb") as f:
        bar = tqdm(total=len(docs), desc=f"tokenizing {out.parent.name[:8]}", unit="doc", disable=not progress)
        for start in range(0, len(docs), _BATCH_DOCS):
            batch = list(docs[start:start + _BATCH_DOCS])
            ids = tokenizer(batch, add_special_tokens=False)["input_ids"]
            flat = np.fromiter((t for doc in ids for t in (*doc, eos)), dtype=dtype)
            f.write(flat.tobytes())
            n_tokens += flat.size
            n_docs += len(batch)
            bar.update(len(batch))
        bar.close()
    os.replace(tmp, out)
    return {"num_tokens": n_tokens, "num_docs": n_docs, "dtype": np.dtype(dtype).name}


def tokenized_split(cfg, split: str, tokenizer, rank: int = 0, barrier=lambda: None, progress: bool = True):
    """Return a read-only memmap of the split's tokens, building the cache on rank 0 if needed."""
    key = cache_key(cfg, split, tokenizer)
    directory = Path(cfg.cache_dir) / key
    meta_path, tokens_path = directory / "meta.json", directory / "tokens.bin"
    if rank == 0 and not meta_path.is_file():
        directory.mkdir(parents=True, exist_ok=True)
        meta = build_token_file(load_documents(cfg, split), tokenizer, tokens_path, progress)
        meta["source"] = describe_source(cfg, split)
        tmp = meta_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(meta, indent=1))
        os.replace(tmp, meta_path)  # the cache exists only once its metadata is complete
    barrier()
    meta = json.loads(meta_path.read_text())
    if meta["num_tokens"] == 0:
        raise DataError(f"empty {split} dataset after tokenization: {meta['source']}")
    return np.memmap(tokens_path, dtype=np.dtype(meta["dtype"]), mode="r", shape=(meta["num_tokens"],))
