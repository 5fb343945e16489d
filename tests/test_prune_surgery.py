"""Block surgery on tiny real models of four families: each pruned model computes what its definition says (checked
against the unpruned model with hooks), and its export reloads with transformers and gives the same logits."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from prune_models import probe_tokens, tiny_model

from prune import surgery
from prune.errors import PruneError
from prune.export import export
from prune.fit import fit_map
from prune.plan import ProbeSet, Pruned

FAMILIES = ["mistral", "llama", "gpt2", "opt"]


@pytest.fixture(scope="module")
def probe(tiny_tokenizer, tinystories_valid):
    return ProbeSet(probe_tokens(tiny_tokenizer, tinystories_valid), batch_size=8, pad_id=tiny_tokenizer.pad_token_id)


@pytest.fixture(scope="module")
def ids(tiny_tokenizer, tinystories_valid):
    text = tinystories_valid.read_text()[:3000]
    return torch.tensor([tiny_tokenizer(text)["input_ids"][:40], tiny_tokenizer(text[500:])["input_ids"][:40]])


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits.double()


def close(a, b, rel=1e-5):
    scale = max(float(b.abs().max()), 1.0)
    assert float((a - b).abs().max()) <= rel * scale, float((a - b).abs().max())


def hooked(model, hooks):
    handles = [mod.register_forward_hook(fn) for mod, fn in hooks]
    return handles


@pytest.mark.parametrize("family", FAMILIES)
def test_remove_is_skipping_the_block_and_reloads_plain(family, tiny_tokenizer, probe, ids, tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_model(family, tiny_tokenizer)
    pruned = Pruned.of(model, "remove")
    pruned.change(1, probe)
    pruned.change(3, probe)
    assert pruned.alive == [0, 2] and model.config.num_hidden_layers == 4
    assert pruned.model.config.num_hidden_layers == 2
    layers = surgery.blocks(model)
    handles = hooked(model, [(layers[i], lambda m, a, o: a[0]) for i in (1, 3)])
    reference = logits(model, ids)
    for h in handles:
        h.remove()
    got = logits(pruned.model, ids)
    close(got, reference)
    out = export(pruned, tiny_tokenizer, tmp_path / "removed")
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(reloaded) is type(model) and len(surgery.blocks(reloaded)) == 2
    assert float((logits(reloaded, ids) - got).abs().max()) <= 1e-5
    assert json.loads((out / "pruning.json").read_text())["changed_blocks"] == [1, 3]
    # the KV cache indexes the renumbered layers: cached greedy decoding equals uncached
    a = reloaded.generate(ids[:1, :8], max_new_tokens=6, do_sample=False, use_cache=True)
    b = reloaded.generate(ids[:1, :8], max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(a, b)


@pytest.mark.parametrize("family", FAMILIES)
def test_merged_folds_the_map_into_the_previous_block(family, tiny_tokenizer, probe, ids, tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_model(family, tiny_tokenizer)
    proj = surgery.mlp_output_projection(surgery.blocks(model)[1])
    hs, (m,) = probe.collect(model, modules=(proj,))
    fit = fit_map(m, hs[3] - (hs[2] - m), bias=surgery.has_bias(proj))
    pruned = Pruned.of(model, "merged")
    pruned.change(2, probe)
    assert pruned.alive == [0, 1, 3]
    w, c = fit.weight.float(), (fit.bias.float() if fit.bias is not None else 0.0)
    handles = hooked(model, [(proj, lambda mod, a, o: o @ w.T + c), (surgery.blocks(model)[2], lambda mod, a, o: a[0])])
    reference = logits(model, ids)
    for h in handles:
        h.remove()
    got = logits(pruned.model, ids)
    close(got, reference, rel=1e-4)
    reloaded = AutoModelForCausalLM.from_pretrained(export(pruned, tiny_tokenizer, tmp_path / "merged")).eval()
    assert float((logits(reloaded, ids) - got).abs().max()) <= 1e-5
    assert reloaded.config.num_hidden_layers == 3


@pytest.mark.parametrize("family", ["mistral", "gpt2"])
def test_linear_export_loads_with_remote_code_and_linreg(family, tiny_tokenizer, probe, ids, tmp_path):
    from transformers import AutoModelForCausalLM

    from model.export import load_model

    model = tiny_model(family, tiny_tokenizer)
    pruned = Pruned.of(model, "linear")
    pruned.change(0, probe)  # block 0: the KV cache's length is read from layer 0
    pruned.change(2, probe)
    assert pruned.linear_positions() == [0, 2] and pruned.alive == [0, 1, 2, 3]
    got = logits(pruned.model, ids)
    out = export(pruned, tiny_tokenizer, tmp_path / "linear")
    remote = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    assert float((logits(remote, ids) - got).abs().max()) <= 1e-5
    ours, tok = load_model(out)
    assert type(ours).__name__ == f"LinearReplaced{type(model).__name__}"
    assert float((logits(ours, ids) - got).abs().max()) <= 1e-5
    with pytest.raises(ValueError, match="trust_remote_code"):
        AutoModelForCausalLM.from_pretrained(out, trust_remote_code=False)
    a = ours.generate(ids[:1, :8], max_new_tokens=6, do_sample=False, use_cache=True)
    b = ours.generate(ids[:1, :8], max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(a, b)


def test_linear_fit_equals_float64_lstsq(tiny_tokenizer, probe, ids):
    model = tiny_model("mistral", tiny_tokenizer, dtype=torch.float64)
    hs, _ = probe.collect(model)
    pruned = Pruned.of(model, "linear")
    pruned.change(1, probe)
    block = surgery.blocks(pruned.model)[1]
    x, y = hs[1].numpy(), hs[2].numpy()
    ref = np.linalg.lstsq(np.hstack([x, np.ones((len(x), 1))]), y, rcond=None)[0]
    assert np.abs(block.linear.weight.detach().numpy() - ref[:-1].T).max() < 1e-8
    assert np.abs(block.linear.bias.detach().numpy() - ref[-1]).max() < 1e-8
    # and the replaced model computes h_2 = A h_1 + c in place of block 1
    handles = hooked(model, [(surgery.blocks(model)[1], lambda m, a, o: a[0] @ block.linear.weight.T
                              + block.linear.bias)])
    reference = logits(model, ids)
    handles[0].remove()
    close(logits(pruned.model, ids), reference, rel=1e-10)
    assert pruned.fits[1]["rank"] == 32 and 0 < pruned.fits[1]["rel_error_median"] < 1


def test_refusals(tiny_tokenizer, probe):
    gpt2 = tiny_model("gpt2", tiny_tokenizer, scale_attn_by_inverse_layer_idx=True)
    with pytest.raises(PruneError, match="scale_attn_by_inverse_layer_idx"):
        surgery.remove_blocks(gpt2, [1])
    post_ln = tiny_model("opt", tiny_tokenizer, do_layer_norm_before=False)
    with pytest.raises(PruneError, match="post-LN"):
        Pruned.of(post_ln, "merged").change(2, probe)
    with pytest.raises(PruneError, match="block 0 has no preceding block"):
        Pruned.of(tiny_model("llama", tiny_tokenizer), "merged").change(0, probe)
    with pytest.raises(PruneError, match="not supported"):
        surgery.blocks(torch.nn.Sequential(torch.nn.Linear(2, 2)))
