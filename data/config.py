"""The ``data:`` and ``tokenizer:`` config sections."""
from __future__ import annotations

from dataclasses import dataclass, field

from core.config import check
from data.icl_regression import ICLRegressionConfig


@dataclass
class DataConfig:
    """Where the text comes from and how it is packed.

    Local files win when a data root is known: ``$LINREG_DATA_ROOT`` (if set) or ``root``; ``train_files`` /
    ``valid_files`` are resolved against it (absolute paths are used as they are). Without a root the HF hub
    ``dataset`` is used (``dataset_config``, ``train_split``, ``valid_split``, ``text_field``).
    """
    root: str | None = None
    train_files: list[str] = field(default_factory=list)  # .txt (docs separated by <|endoftext|> lines) or .jsonl
    valid_files: list[str] = field(default_factory=list)
    dataset: str | None = None  # HF hub name, e.g. roneneldan/TinyStories
    dataset_config: str | None = None
    train_split: str = "train"
    valid_split: str | None = "validation"
    text_field: str = "text"
    valid_fraction: float = 0.0  # held-out share of training documents when there is no validation source
    max_docs: int | None = None  # cap on documents per split (quick experiments on huge hub datasets)
    seq_len: int = 1024
    val_batches: int = 20  # micro-batches per rank in each validation-loss pass
    cache_dir: str = ".cache/linreg"  # token cache (memmap), keyed by a hash of source + tokenizer
    icl: ICLRegressionConfig | None = None  # in-context regression prompts instead of text (linear_attention)

    def validate(self, p: str) -> None:
        check(self.seq_len >= 2, f"{p}.seq_len", self.seq_len, "must be >= 2")
        check(0.0 <= self.valid_fraction < 1.0, f"{p}.valid_fraction", self.valid_fraction, "must be in [0, 1)")
        check(self.val_batches >= 1, f"{p}.val_batches", self.val_batches, "must be >= 1")
        check(self.icl is not None or bool(self.train_files) or self.dataset is not None, f"{p}.train_files",
              self.train_files, "no training data: set data.train_files (local) or data.dataset (HF hub)")


@dataclass
class TokenizerConfig:
    """``name`` = an HF tokenizer (hub name or local dir); null = train a byte-level BPE on the training text."""
    name: str | None = None
    vocab_size: int = 32000  # for a trained BPE
    train_max_bytes: int = 200_000_000  # text used to train the BPE

    def validate(self, p: str) -> None:
        check(self.vocab_size >= 260, f"{p}.vocab_size", self.vocab_size, "must be >= 260 (256 bytes + specials)")
