"""Tiny random-init causal LMs of several HF families for the pruning and linearity tests (hidden 32, 4 blocks by
default). Sliding windows are 16 tokens, so they bind on the probe and in the tests' sequences; per-layer
``layer_types`` alternate."""
from __future__ import annotations

import torch


def tiny_model(family: str, tokenizer, layers: int = 4, dtype=torch.float32, **extra):
    from transformers import (
        Gemma3ForCausalLM,
        Gemma3TextConfig,
        GPT2Config,
        GPT2LMHeadModel,
        GPTNeoXConfig,
        GPTNeoXForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        OPTConfig,
        OPTForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    vocab = len(tokenizer)
    common = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, **ids)
    mixed = ["sliding_attention", "full_attention"] * (layers // 2) + ["sliding_attention"] * (layers % 2)
    if family == "llama-gqa":
        cfg, cls = LlamaConfig(**common, **extra), LlamaForCausalLM
    elif family == "mistral-sw":
        cfg, cls = MistralConfig(**common, sliding_window=16, **extra), MistralForCausalLM
    elif family == "qwen2":
        cfg, cls = Qwen2Config(**common, use_sliding_window=True, sliding_window=16, max_window_layers=2,
                               **extra), Qwen2ForCausalLM
    elif family == "qwen3":
        cfg, cls = Qwen3Config(**common, head_dim=8, use_sliding_window=True, sliding_window=16, layer_types=mixed,
                               **extra), Qwen3ForCausalLM
    elif family == "gemma3":
        cfg, cls = Gemma3TextConfig(**common, head_dim=8, sliding_window=16, layer_types=mixed,
                                    **extra), Gemma3ForCausalLM
    elif family == "pythia":
        cfg, cls = GPTNeoXConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                                 num_attention_heads=4, max_position_embeddings=256, **ids, **extra), GPTNeoXForCausalLM
    elif family == "mistral":
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
    from eval.linearity.probe import ProbeSetConfig, build_probe, read_probe_text

    return build_probe(read_probe_text(text_path), tokenizer, ProbeSetConfig(num_chunks=num_chunks), max_len=256)


def sample_ids(tokenizer, text_path) -> torch.Tensor:
    """Two 40-token rows of TinyStories validation text."""
    text = text_path.read_text()[:3000]
    return torch.tensor([tokenizer(text)["input_ids"][:40], tokenizer(text[500:])["input_ids"][:40]])


def logits(model, ids, hooks=()) -> torch.Tensor:
    """float64 logits without cache, with forward ``hooks`` [(module, fn)] in place during the call."""
    handles = [mod.register_forward_hook(fn) for mod, fn in hooks]
    try:
        with torch.no_grad():
            return model(input_ids=ids, use_cache=False).logits.double()
    finally:
        for h in handles:
            h.remove()


def small_probe(tokenizer, text_path, num_chunks: int = 10):
    """A ``prune.plan.ProbeSet`` of ``num_chunks`` chunks, all in one batch."""
    from prune.plan import ProbeSet

    return ProbeSet(probe_tokens(tokenizer, text_path, num_chunks=num_chunks), batch_size=num_chunks,
                 pad_id=tokenizer.pad_token_id)
