"""Tokenizers: any HF tokenizer by name/path, or a byte-level BPE trained with `tokenizers` on the training text.

A trained tokenizer is wrapped as a ``PreTrainedTokenizerFast`` and saved with ``save_pretrained`` so that the
run directory (and its HF export) loads with ``AutoTokenizer.from_pretrained`` anywhere. Like Mistral's, it
prepends BOS by default (``tok("text")``) -- the linearity probe recipe relies on the tokenizer's default special
tokens -- while packing for training calls it with ``add_special_tokens=False`` and inserts EOS between documents.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from core.errors import DataError, MissingDataError

BOS, EOS, PAD = "<s>", "</s>", "<pad>"


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, max_bytes: int | None = None):
    """Train a byte-level BPE on ``texts`` (capped at ``max_bytes`` of text). Deterministic for the same input."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    def capped():
        seen = 0
        for t in texts:
            yield t
            seen += len(t.encode("utf-8"))
            if max_bytes is not None and seen >= max_bytes:
                return

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(capped(), trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD)


def load_tokenizer(name_or_path: str | os.PathLike):
    """Load an HF tokenizer (hub name or local dir), with a one-line error when it cannot be found."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(name_or_path))
    except (OSError, ValueError) as e:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        why = "not a local directory and the hub is offline (HF_HUB_OFFLINE=1)" if offline else str(e).splitlines()[0]
        raise MissingDataError(f"cannot load tokenizer '{name_or_path}': {why}") from None
    if tok.eos_token_id is None:
        raise DataError(f"tokenizer '{name_or_path}' has no EOS token; packing needs one between documents")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def batch_ids(tok, strings: list[str], add_special_tokens: bool) -> list[list[int]]:
    """``tok(strings)["input_ids"]``; for a fast tokenizer straight from its Rust backend's ``encode_batch_fast``:
    the same ids without the character offsets transformers' call has it compute (for the 8 SuperGLUE tasks' 21M
    characters 3.2-3.7 s instead of 4.4-5.8 s, docs/PERFORMANCE.md)."""
    backend = getattr(tok, "backend_tokenizer", None)
    if hasattr(backend, "encode_batch_fast"):
        return [e.ids for e in backend.encode_batch_fast(strings, add_special_tokens=add_special_tokens)]
    return [list(row) for row in tok(strings, add_special_tokens=add_special_tokens)["input_ids"]]


def tokenizer_fingerprint(tok) -> str:
    """A hash of the tokenizer's full definition (vocab, merges, normalisation, specials), for cache keys."""
    import hashlib
    import json

    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        text = repr(sorted(tok.get_vocab().items()))
    else:
        spec = json.loads(backend.to_str())
        spec.pop("truncation", None)  # call-time state that tokenizer(..., padding=True) leaves behind
        spec.pop("padding", None)
        text = json.dumps(spec, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def save_tokenizer(tok, directory: str | os.PathLike) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(directory)
    return directory
