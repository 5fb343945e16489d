"""Build transformers' ``MistralForCausalLM`` from a ``ModelConfig`` (no hand-written architecture, so weights
stay loadable by the whole HF ecosystem), and the FLOP count used for MFU."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from core.errors import ConfigError
from model.config import ModelConfig

if TYPE_CHECKING:
    from transformers import MistralConfig, MistralForCausalLM


def padded_vocab(cfg: ModelConfig, tokenizer_size: int) -> int:
    if cfg.vocab_size is not None:
        if cfg.vocab_size < tokenizer_size:
            raise ConfigError(f"model.vocab_size={cfg.vocab_size} is smaller than the tokenizer's "
                              f"{tokenizer_size} tokens")
        return cfg.vocab_size
    m = cfg.pad_vocab_multiple
    return int(math.ceil(tokenizer_size / m) * m)


def hf_config(cfg: ModelConfig, vocab_size: int, bos_id: int | None, eos_id: int | None,
              pad_id: int | None) -> MistralConfig:
    # Imported here, not at the top: count_params and flops_per_token serve every trainer, and a run that brings
    # its own model (the linear-attention testbed) should not pay for loading the Mistral modelling code.
    from transformers import MistralConfig

    return MistralConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.hidden_size // cfg.num_heads,
        max_position_embeddings=cfg.max_seq_len,
        rope_theta=cfg.rope_theta,
        rms_norm_eps=cfg.rms_norm_eps,
        sliding_window=cfg.sliding_window,
        tie_word_embeddings=cfg.tie_embeddings,
        initializer_range=cfg.init_std,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        use_cache=False,
    )


def check_attn_implementation(name: str) -> None:
    if name == "flash_attention_2":
        try:
            import flash_attn  # noqa: F401
        except ImportError:
            raise ImportError("model.attn_implementation=flash_attention_2 needs flash-attn: "
                              "pip install -e '.[gpu]' on a CUDA machine, or use sdpa") from None
        if not torch.cuda.is_available():
            raise RuntimeError("model.attn_implementation=flash_attention_2 needs a CUDA GPU; use sdpa on CPU")


def build_model(cfg: ModelConfig, tokenizer, seed: int | None = None) -> MistralForCausalLM:
    """A freshly initialised MistralForCausalLM sized for ``tokenizer`` (fp32 weights; DeepSpeed casts for bf16)."""
    from transformers import MistralForCausalLM

    check_attn_implementation(cfg.attn_implementation)
    config = hf_config(cfg, padded_vocab(cfg, len(tokenizer)), tokenizer.bos_token_id, tokenizer.eos_token_id,
                       tokenizer.pad_token_id)
    config._attn_implementation = cfg.attn_implementation
    if seed is not None:
        torch.manual_seed(seed)
    return MistralForCausalLM(config)


def count_params(model: torch.nn.Module) -> dict[str, int]:
    """Total parameters and the 'dense' ones that take part in matmuls (all but the input embedding lookup,
    unless the embedding is tied to the LM head, in which case it is a matmul too)."""
    total = sum(p.numel() for p in model.parameters())
    if model.get_input_embeddings() is None:  # a model without a token table (real-valued prompts)
        return {"total": total, "dense": total}
    emb = model.get_input_embeddings().weight
    tied = model.get_output_embeddings() is not None and model.get_output_embeddings().weight is emb
    dense = total if tied else total - emb.numel()
    return {"total": total, "dense": dense}


def flops_per_token(n_dense: int, num_layers: int, hidden_size: int, seq_len: int) -> float:
    """Training FLOPs per token: 6·N_dense (forward 2, backward 4 per weight) + 6·L·d·T for causal attention
    scores and values (12·L·d·T halved by the causal mask). The same formula as issue 5's baselines."""
    return 6.0 * n_dense + 6.0 * num_layers * hidden_size * seq_len
