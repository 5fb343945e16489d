"""Every build of ``prune.methods`` on tiny random models of eight HF families (GQA, sliding windows, mixed
``layer_types``, q/k norms, post-sublayer norms, learned positions, parallel residual): the export reloads with
plain ``AutoModelForCausalLM.from_pretrained`` (remote code only for a linear map), gives the in-memory pruned
model's logits to 1e-5 and the same greedy tokens with the KV cache on. A method that cannot apply to a family
refuses with a one-line ``PruneError``, and exactly those listed here do."""
from __future__ import annotations

import pytest
import torch
from prune_models import logits, sample_ids, small_probe, tiny_model

from prune import surgery
from prune.criteria import get_criterion
from prune.errors import PruneError
from prune.export import export
from prune.methods import METHODS, Context
from prune.plan import Selector

FAMILIES = ["llama-gqa", "mistral-sw", "qwen2", "qwen3", "gemma3", "gpt2", "opt", "pythia", "opt-postln"]
# One method per distinct build (the healing methods export what their build exports, after training).
BUILDS = ["remove", "remove+comp", "linear", "merged", "replaceme", "replaceme_cos", "reverse", "sleb", "sleb+comp",
          "sublayer", "streamline"]
# Gemma-3 normalises the MLP output after its projection: no map can be folded into the projection. Post-LN
# blocks (OPT-350m) renormalise the residual stream after each sublayer: nothing is added to it to fold, zero or mend.
REFUSED = {"gemma3": {"merged", "replaceme", "replaceme_cos"},
           "opt-postln": {"merged", "replaceme", "replaceme_cos", "remove+comp", "sleb+comp", "sublayer"}}


@pytest.fixture(scope="module")
def probe(tiny_tokenizer, tinystories_valid):
    return small_probe(tiny_tokenizer, tinystories_valid)


@pytest.fixture(scope="module")
def ids(tiny_tokenizer, tinystories_valid):
    return sample_ids(tiny_tokenizer, tinystories_valid)



@pytest.mark.parametrize("family", FAMILIES)
def test_every_build_exports_reloads_and_decodes(family, tiny_tokenizer, probe, ids, tmp_path):
    from transformers import AutoModelForCausalLM

    model = (tiny_model("opt", tiny_tokenizer, do_layer_norm_before=False) if family == "opt-postln"
             else tiny_model(family, tiny_tokenizer))
    ctx = Context(Selector(get_criterion("cosine"), "cosine", 4), model, probe, probe.collect(model)[0])
    refused = set()
    for name in BUILDS:
        try:
            *_, (k, pruned, _) = METHODS[name].build(ctx, 2)
        except PruneError as e:
            assert "\n" not in str(e)
            refused.add(name)
            continue
        got = logits(pruned.model, ids)
        remote = bool(pruned.linear_positions())
        out = export(pruned, tiny_tokenizer, tmp_path / name)
        reloaded = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=remote).eval()
        assert type(reloaded).__name__.endswith(type(model).__name__), name
        assert float((logits(reloaded, ids) - got).abs().max()) <= 1e-5, name
        cached = reloaded.generate(ids[:1, :12], max_new_tokens=8, do_sample=False, use_cache=True)
        plain = pruned.model.generate(ids[:1, :12], max_new_tokens=8, do_sample=False, use_cache=False)
        assert torch.equal(cached, plain), name
        depth = 4 if name in ("linear", "sublayer") else 2  # sublayer: 4 sublayers may leave all blocks standing
        assert len(surgery.blocks(reloaded)) <= 4 and (name == "sublayer" or len(surgery.blocks(reloaded)) == depth)
    assert refused == REFUSED.get(family, set())
