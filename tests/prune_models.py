"""Tiny random-init causal LMs of several HF families for the pruning tests (hidden 32, 4 blocks)."""
from __future__ import annotations

import torch


def tiny_model(family: str, tokenizer, layers: int = 4, dtype=torch.float32, **extra):
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        OPTConfig,
        OPTForCausalLM,
    )

    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    vocab = len(tokenizer)
    if family == "mistral":
        cfg, cls = MistralConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                 **ids, **extra), MistralForCausalLM
    elif family == "llama":
        cfg, cls = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                               num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                               **ids, **extra), LlamaForCausalLM
    elif family == "gpt2":
        cfg, cls = GPT2Config(vocab_size=vocab, n_embd=32, n_layer=layers, n_head=4, n_positions=256,
                              **ids, **extra), GPT2LMHeadModel
    elif family == "opt":
        cfg, cls = OPTConfig(vocab_size=vocab, hidden_size=32, ffn_dim=64, num_hidden_layers=layers,
                             num_attention_heads=4, max_position_embeddings=256, word_embed_proj_dim=32,
                             **ids, **extra), OPTForCausalLM
    else:
        raise ValueError(family)
    torch.manual_seed(0)
    model = cls(cfg).to(dtype).eval()
    with torch.no_grad():  # larger than HF's init, so that blocks differ visibly from the identity
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.15)
    return model


def probe_tokens(tokenizer, text_path, num_chunks: int = 12) -> list[list[int]]:
    from eval.linearity.probe import ProbeConfig, build_probe, read_probe_text

    return build_probe(read_probe_text(text_path), tokenizer, ProbeConfig(num_chunks=num_chunks), max_len=256)
