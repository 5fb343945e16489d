"""The ``model:`` config section: the shape of a Mistral decoder (mapped 1:1 onto transformers' MistralConfig)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from core.config import check


@dataclass
class ModelConfig:
    # linear_attention: the in-context regression testbed (model/linear_attention.py; num_layers and init_std
    # apply, the prompt width comes from data.icl)
    arch: Literal["mistral", "linear_attention"] = "mistral"
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    num_kv_heads: int = 4  # grouped-query attention: num_heads must be a multiple
    intermediate_size: int = 3072  # SwiGLU width
    vocab_size: int | None = None  # None = the tokenizer's size (rounded up to pad_vocab_multiple)
    pad_vocab_multiple: int = 64  # tensor-core friendly embedding rows
    max_seq_len: int = 1024
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    sliding_window: int | None = None  # Mistral's local attention window; None = full causal attention
    tie_embeddings: bool = False
    init_std: float = 0.02
    attn_implementation: Literal["sdpa", "flash_attention_2", "eager"] = "sdpa"

    def validate(self, p: str) -> None:
        for k in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size", "max_seq_len"):
            check(getattr(self, k) >= 1, f"{p}.{k}", getattr(self, k), "must be >= 1")
        check(self.hidden_size % self.num_heads == 0, f"{p}.hidden_size", self.hidden_size,
              f"must be divisible by num_heads={self.num_heads}")
        check(self.num_heads % self.num_kv_heads == 0, f"{p}.num_kv_heads", self.num_kv_heads,
              f"must divide num_heads={self.num_heads}")
        if self.vocab_size is not None:
            check(self.vocab_size >= 2, f"{p}.vocab_size", self.vocab_size, "must be >= 2")
        check(self.pad_vocab_multiple >= 1, f"{p}.pad_vocab_multiple", self.pad_vocab_multiple, "must be >= 1")
        if self.sliding_window is not None:
            check(self.sliding_window >= 1, f"{p}.sliding_window", self.sliding_window, "must be >= 1 or null")
