"""The model built from our config is HF's MistralForCausalLM; the captured h_0..h_L match a hook-free forward."""
import pytest
import torch
from transformers import MistralForCausalLM

from model.build import build_model, count_params, hf_config, padded_vocab
from model.capture import ResidualStream
from model.config import ModelConfig

TINY = ModelConfig(hidden_size=64, num_layers=3, num_heads=4, num_kv_heads=2, intermediate_size=128, max_seq_len=64,
                   pad_vocab_multiple=64)


def test_matches_hf_forward(tiny_tokenizer):
    model = build_model(TINY, tiny_tokenizer, seed=0).eval()
    assert type(model) is MistralForCausalLM
    cfg = hf_config(TINY, padded_vocab(TINY, len(tiny_tokenizer)), 1, 2, 0)
    ref = MistralForCausalLM(cfg).eval()
    ref.load_state_dict(model.state_dict())
    ids = tiny_tokenizer(["Once upon a time there was a cat.", "The dog ran to the park and"], padding=True,
                         return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref(ids).logits)
    assert model.config.vocab_size % 64 == 0 and model.config.vocab_size >= len(tiny_tokenizer)
    assert model.config.num_key_value_heads == 2 and model.config.sliding_window is None


def test_residual_capture_matches_manual_forward(tiny_tokenizer):
    model = build_model(TINY, tiny_tokenizer, seed=1).eval()
    ids = torch.randint(0, len(tiny_tokenizer), (2, 17))
    stream = ResidualStream(model)
    with torch.no_grad(), stream:
        logits = model(ids).logits
    hs = stream.take()
    assert len(hs) == TINY.num_layers + 1
    # Hook-free reference: run the blocks by hand.
    with torch.no_grad():
        inner = model.model
        h = inner.embed_tokens(ids)
        pos = torch.arange(ids.shape[1]).unsqueeze(0)
        rope = inner.rotary_emb(h, position_ids=pos)
        mask = torch.full((ids.shape[1], ids.shape[1]), float("-inf")).triu(1)[None, None]
        ref = [h]
        for layer in inner.layers:
            h = layer(h, attention_mask=mask, position_ids=pos, position_embeddings=rope)
            ref.append(h)
        for got, want in zip(hs, ref):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        # h_L is *before* the final norm: HF's last hidden state is norm(h_L), and the logits follow from it.
        out = model(ids, output_hidden_states=True)
        for i in range(TINY.num_layers):
            assert torch.equal(hs[i], out.hidden_states[i])
        torch.testing.assert_close(inner.norm(hs[-1]), out.hidden_states[-1])
        assert not torch.allclose(hs[-1], out.hidden_states[-1])
        torch.testing.assert_close(model.lm_head(inner.norm(hs[-1])), logits)


def test_capture_keeps_graph_under_gradient_checkpointing(tiny_tokenizer):
    model = build_model(TINY, tiny_tokenizer, seed=2).train()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    stream = ResidualStream(model)
    with stream:
        model(torch.randint(0, 100, (2, 9)))
    hs = stream.take()
    sum(h.pow(2).mean() for h in hs).backward()
    assert model.model.layers[0].mlp.down_proj.weight.grad.abs().sum() > 0


def test_capture_outside_context_raises(tiny_tokenizer):
    model = build_model(TINY, tiny_tokenizer)
    stream = ResidualStream(model)
    model(torch.randint(0, 100, (1, 4)))
    with pytest.raises(RuntimeError, match="not captured"):
        stream.take()


def test_param_count_and_sliding_window(tiny_tokenizer):
    cfg = ModelConfig(**{**TINY.__dict__, "sliding_window": 8, "tie_embeddings": True})
    model = build_model(cfg, tiny_tokenizer)
    counts = count_params(model)
    assert counts["total"] == counts["dense"]  # tied: the embedding is also the LM-head matmul
    assert model.config.sliding_window == 8


def test_flash_attention_missing_is_clear(tiny_tokenizer):
    cfg = ModelConfig(**{**TINY.__dict__, "attn_implementation": "flash_attention_2"})
    with pytest.raises((ImportError, RuntimeError), match="flash"):
        build_model(cfg, tiny_tokenizer)
