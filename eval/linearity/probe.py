"""Probe sets: the token sets on which linearity profiles are measured.

The default is the paper's recipe (the authors' notebook), reproduced exactly::

    random.seed(0)
    starts = [512 * i for i in random.sample(range(len(text) // 512), 128)]

each chunk ``text[s:s+512]`` (characters) is tokenized on its own with the tokenizer's default special tokens
(BOS for Llama/Mistral/linreg tokenizers) and every token of every chunk is pooled (~15k tokens for the
tokenizers of 7B models). A private ``random.Random(seed)`` gives the same draws as seeding the global module,
without disturbing anyone else's random state.
"""
from __future__ import annotations

import random
import warnings
from dataclasses import dataclass
from pathlib import Path

from core.config import check
from core.errors import DataError
from eval.linearity.heldout import FoldPlan, HeldoutConfig
from eval.linearity.profile import probe_groups
from eval.linearity.score import check_sizes


@dataclass
class ProbeSetConfig:
    """The recipe of a probe set (the ``probe:`` section of ``eval.linearity``): how many chunks of how many
    characters are drawn with which seed, and an optional cap on the pooled tokens."""
    num_chunks: int = 128
    chunk_chars: int = 512
    seed: int = 0
    max_tokens: int | None = None  # cap on pooled tokens (the last chunk kept is cut); None = all

    def validate(self, p: str) -> None:
        check(self.num_chunks >= 1, f"{p}.num_chunks", self.num_chunks, "must be >= 1")
        check(self.chunk_chars >= 1, f"{p}.chunk_chars", self.chunk_chars, "must be >= 1")
        if self.max_tokens is not None:
            check(self.max_tokens >= 1, f"{p}.max_tokens", self.max_tokens, "must be >= 1 or null")


def sample_chunks(text: str, cfg: ProbeSetConfig | None = None) -> list[str]:
    """The paper's chunks of ``text``; all of them (fewer than asked) when the text is short, as the notebook."""
    cfg = cfg or ProbeSetConfig()
    available = len(text) // cfg.chunk_chars
    if available == 0:
        raise ValueError(f"probe text has {len(text)} characters, fewer than one chunk of {cfg.chunk_chars}")
    count = min(cfg.num_chunks, available)
    if count < cfg.num_chunks:
        warnings.warn(f"probe text holds only {available} chunks of {cfg.chunk_chars} characters; using all of them",
                      stacklevel=2)
    picks = random.Random(cfg.seed).sample(range(available), count)
    return [text[cfg.chunk_chars * i: cfg.chunk_chars * (i + 1)] for i in picks]


def tokenize_chunks(tokenizer, chunks: list[str], max_tokens: int | None = None,
                    max_len: int | None = None) -> list[list[int]]:
    """Token ids of each chunk (default special tokens), cut to ``max_len`` (the model's context) and the
    pooled total to ``max_tokens``; chunks that end up empty are dropped."""
    out, total, cut = [], 0, 0
    for chunk in chunks:
        ids = list(tokenizer(chunk)["input_ids"])
        if max_len is not None and len(ids) > max_len:
            ids, cut = ids[:max_len], cut + 1
        if max_tokens is not None:
            ids = ids[: max_tokens - total]
        if ids:
            out.append(ids)
            total += len(ids)
        if max_tokens is not None and total >= max_tokens:
            break
    if cut:
        warnings.warn(f"{cut} probe chunks were longer than the model's {max_len} positions and were cut",
                      stacklevel=2)
    return out


def read_probe_text(path: str | Path, text_field: str = "text") -> str:
    """A text file as one string: documents of a .jsonl (``text_field``) or of a linreg .txt (separated by
    ``<|endoftext|>`` lines, which are file format, not text) joined with newlines."""
    from data.sources import read_jsonl_documents, read_txt_documents

    path = Path(path)
    docs = read_jsonl_documents(path, text_field) if path.suffix == ".jsonl" else read_txt_documents(path)
    return "\n".join(docs)


def read_probe_dataset(name: str, split: str, config: str | None = None, text_field: str = "text") -> str:
    """An HF dataset's split (hub name, or a local directory of data files) as one string: documents joined
    with newlines. Goes through the training core's loader, so offline errors read the same."""
    from data.config import DataConfig
    from data.sources import load_documents

    cfg = DataConfig(dataset=name, dataset_config=config, valid_split=split, text_field=text_field)
    return "\n".join(load_documents(cfg, "valid"))


def probe_text(path: str | Path | None, root: Path | None, text_field: str = "text") -> tuple[str, str]:
    """(text, source): the file ``path`` (.txt or .jsonl), else TinyStories validation, the paper's probe text:
    ``<root>/tinystories/valid.txt`` under a data root, the hub's ``roneneldan/TinyStories`` split without one."""
    if path is None and root is not None:
        path = Path(root) / "tinystories" / "valid.txt"
    if path is not None:
        return read_probe_text(path, text_field), str(Path(path).resolve())
    return read_probe_dataset("roneneldan/TinyStories", "validation"), "roneneldan/TinyStories:validation"


def build_probe(text: str, tokenizer, cfg: ProbeSetConfig | None = None, max_len: int | None = None) -> list[list[int]]:
    cfg = cfg or ProbeSetConfig()
    return tokenize_chunks(tokenizer, sample_chunks(text, cfg), cfg.max_tokens, max_len)


def checked_probe(text: str, tokenizer, cfg: ProbeSetConfig, *, source: str, width: int | None,
                  max_len: int | None = None, heldout: HeldoutConfig | None = None,
                  heldout_off: str | None = None) -> list[list[int]]:
    """``build_probe`` for one model, refused before any forward with a one-line DataError naming ``source`` when
    the text is shorter than one chunk, when the pooled tokens are too few for the model's width ``width``
    (n <= d + 1: every score would be 1, every fit exact) or, with ``heldout``, too few documents for its folds.
    The size of a probe is the user's to fix (a longer text, more or longer chunks), hence a DataError; where
    held-out statistics are on by default, ``heldout_off`` says how to turn them off instead ("pass --no-heldout")."""
    try:
        probe = build_probe(text, tokenizer, cfg, max_len)
        if width is not None:
            check_sizes(sum(len(ids) for ids in probe), width)
    except ValueError as e:
        raise DataError(f"probe text {source}: {e}") from None
    if width is not None and heldout is not None:
        try:
            FoldPlan(probe_groups(probe), heldout.folds, heldout.seed, width)
        except ValueError as e:
            raise DataError(f"probe text {source}: {e}" + (f" (or {heldout_off})" if heldout_off else "")) from None
    return probe
