"""Distillation through the Trainer lowers the layer-wise MSE to the teacher on held-out text, trains only what the
method says, and resumes from its checkpoints."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from prune_models import probe_tokens, tiny_model

from model.linear_block import LinearBlock
from prune.distill import Healing, distill_config, heldout_batches
from prune.methods import METHODS
from prune.plan import ProbeSet, Pruned


@pytest.fixture(scope="module")
def setup(tiny_tokenizer, tinystories_valid, tmp_path_factory):
    model = tiny_model("mistral", tiny_tokenizer).requires_grad_(False)
    probe = ProbeSet(probe_tokens(tiny_tokenizer, tinystories_valid, num_chunks=8), pad_id=tiny_tokenizer.pad_token_id)
    cache = tmp_path_factory.mktemp("distill_cache")
    cfg = distill_config(None, ["train.max_steps=25", "optim.lr=3e-3", "data.seq_len=32", "data.max_docs=300",
                                "train.global_batch_size=4", "train.micro_batch_size=4", "schedule.warmup_steps=2",
                                "logging.every=5", "logging.progress_bar=false", f"data.cache_dir={cache}"], 256)
    return model, probe, cfg, heldout_batches(cfg, tiny_tokenizer, 2)


@pytest.mark.parametrize("method,zero", [("linear+distill", 0), ("remove+distill", 0), ("remove+distill", 3)])
def test_distill_lowers_heldout_mse(method, zero, setup, tiny_tokenizer, tmp_path):
    model, probe, cfg, heldout = setup
    cfg = copy.deepcopy(cfg)
    cfg.train.zero_stage = zero  # ZeRO-3: the student is partitioned and the teacher is its own ZeRO-3 engine
    pruned = Pruned.of(model, method.split("+")[0])
    pruned.change(1, probe)
    student, info = METHODS[method].heal(pruned, Healing(model, tiny_tokenizer, cfg, tmp_path / "run", heldout=heldout))
    assert info["heldout_mse_after"] < 0.9 * info["heldout_mse_before"], info
    before = dict(pruned.model.named_parameters())
    changed = {n for n, p in student.model.named_parameters() if not torch.equal(p, before[n])}
    linear = {f"model.layers.1.linear.{w}" for w in ("weight", "bias")}
    if method == "linear+distill":
        assert changed == linear and isinstance(student.model.model.layers[1], LinearBlock)
        assert info["trainable_params"] == 32 * 33
    else:
        assert len(changed) > 10 and len(student.model.model.layers) == 3
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 25 and "val/loss" in rows[-1] and any((tmp_path / "run" / "tb").iterdir())


def test_distill_resumes(setup, tiny_tokenizer, tmp_path):
    model, probe, cfg, _ = setup
    pruned = Pruned.of(model, "linear")
    pruned.change(2, probe)
    short = distill_config(None, [f"{k}={v}" for k, v in (("train.max_steps", 10), ("checkpoint.every", 5))] +
                           [f"data.cache_dir={cfg.data.cache_dir}", "data.seq_len=32", "data.max_docs=300",
                            "train.global_batch_size=4", "train.micro_batch_size=4", "logging.progress_bar=false",
                            "logging.every=1"], 256)
    heal = METHODS["linear+distill"].heal
    first, _ = heal(pruned, Healing(model, tiny_tokenizer, short, tmp_path / "run"))
    longer = distill_config(None, ["train.max_steps=15", "checkpoint.every=5", f"data.cache_dir={cfg.data.cache_dir}",
                                   "data.seq_len=32", "data.max_docs=300", "train.global_batch_size=4",
                                   "train.micro_batch_size=4",
                                   "logging.progress_bar=false", "logging.every=1"], 256)
    resumed, _ = heal(pruned, Healing(model, tiny_tokenizer, longer, tmp_path / "run", resume=True))
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert sorted(set(steps)) == list(range(1, 16)) and steps.index(11) > steps.index(10), steps  # continued at 11
    assert not torch.equal(first.model.model.layers[2].linear.weight, resumed.model.model.layers[2].linear.weight)


def test_streamline_trains_one_block_on_its_span_and_finetune_only_the_tail(setup, tiny_tokenizer, tmp_path):
    from prune.criteria import get_criterion
    from prune.methods import Context
    from prune.plan import Selector

    model, probe, cfg, heldout = setup
    ctx = Context(Selector(get_criterion("cosine"), "cosine", 4), model, probe, probe.collect(model)[0])
    *_, (_, span, _) = METHODS["streamline"].build(ctx, 1)
    (start, end), = span.targets.items()
    assert end == start + 1 and len(span.alive) == 3 and span.state_pairs()[start + 1] == (start + 1, end + 1)
    student, info = METHODS["streamline"].heal(span, Healing(model, tiny_tokenizer, cfg, tmp_path / "s",
                                                             heldout=heldout))
    assert info["heldout_mse_after"] < 0.9 * info["heldout_mse_before"], info  # the one pair it trains on
    before = dict(span.model.named_parameters())
    changed = {n.split(".")[2] for n, p in student.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {str(start)}
    *_, (_, tail, _) = METHODS["reverse"].build(ctx, 1)
    tuned, info = METHODS["reverse+finetune"].heal(tail, Healing(model, tiny_tokenizer, cfg, tmp_path / "r"))
    assert info["objective"] == "lm"
    before = dict(tail.model.named_parameters())
    changed = {n for n, p in tuned.model.named_parameters() if not torch.equal(p, before[n])}
    # three remaining blocks: all of them, the final norm and lm_head (tied to the embedding in this model)
    assert {n.split(".")[1] if n.startswith("model.") else n for n in changed} >= {"layers", "norm"}
    assert all(n.startswith(("model.layers.", "model.norm", "lm_head", "model.embed_tokens")) for n in changed)
