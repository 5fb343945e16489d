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
    # .txt (docs separated by <|endoftext|> lines) or .jsonl files: a list (concatenated in order), or a mapping
    # {file: weight} (a weighted mixture: each file's share of the tokens, data/mixture.py).
    train_files: list[str] | dict[str, float] = field(default_factory=list)
    valid_files: list[str] | dict[str, float] = field(default_factory=list)
    dataset: str | None = None  # HF hub name, e.g. roneneldan/TinyStories
    dataset_config: str | None = None
    train_split: str = "train"
    valid_split: str | None = "validation"
    text_field: str = "text"
    valid_fraction: float = 0.0  # held-out share of training documents when there is no validation source
    max_docs: int | None = None  # cap on documents read from each source (quick experiments on huge datasets)
    num_proc: int | None = None  # tokenizer processes; null = every core this process may use
    seq_len: int = 1024
    val_batches: int = 20  # global batches in each validation-loss pass
    cache_dir: str = ".cache/linreg"  # token cache (memmap), keyed by a hash of source + tokenizer
    icl: ICLRegressionConfig | None = None  # in-context regression prompts instead of text (linear_attention)

    def validate(self, p: str) -> None:
        check(self.seq_len >= 2, f"{p}.seq_len", self.seq_len, "must be >= 2")
        check(0.0 <= self.valid_fraction < 1.0, f"{p}.valid_fraction", self.valid_fraction, "must be in [0, 1)")
        check(self.val_batches >= 1, f"{p}.val_batches", self.val_batches, "must be >= 1")
        for key in ("train_files", "valid_files"):
            files = getattr(self, key)
            if isinstance(files, dict):
                for name, w in files.items():
                    ok = isinstance(w, (int, float)) and not isinstance(w, bool) and w > 0 and w != float("inf")
                    check(ok, f"{p}.{key}[{name}]", w, "a mixture weight must be a positive number")
        check(self.num_proc is None or self.num_proc >= 1, f"{p}.num_proc", self.num_proc, "must be >= 1 (or null)")
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
