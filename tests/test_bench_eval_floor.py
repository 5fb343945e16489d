"""bench/eval_floor.py's counts against what the kernels were asked to do: the linear FLOPs against torch's own FLOP
counter, the attention scores against the shapes of every attention call, seen from the dispatcher."""
from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from bench.eval_floor import count_work
from eval.benchmarks import BenchmarkSuite
from eval.benchmarks.tree_attention import NAME

# the kernel the tree calls itself, and the composite op the model's SDPA (and the scored queries) go through; a
# dispatch mode sees the composite whole. Position of is_causal among each one's arguments.
CAUSAL_AT = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default: 4,
             torch.ops.aten.scaled_dot_product_attention.default: 5}


class AttentionCalls(TorchDispatchMode):
    """Query-key scores x query heads x head_dim of every attention kernel call while ``model`` runs the scorer's
    attention (the bench counts those; the check row's other forward runs the model's own)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.work = model, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in CAUSAL_AT and self.model.config._attn_implementation == NAME:
            q, k = args[0], args[1]
            b, h, lq, d = q.shape
            lk = k.shape[2]
            causal = kwargs.get("is_causal", args[CAUSAL_AT[func]] if len(args) > CAUSAL_AT[func] else False)
            if causal:  # top-left: query i sees keys 0..i, a query past the last key sees them all
                scores = lk * (lk + 1) // 2 + (lq - lk) * lk if lq >= lk else lq * (lq + 1) // 2
            else:
                scores = lq * lk
            self.work += b * h * d * scores
        return func(*args, **kwargs)


def test_the_floor_bench_counts_what_the_kernels_compute(tiny_hf_model_dir, shared_data):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_hf_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_hf_model_dir).eval()
    # packed tree rows (MultiRC, COPA), plain rows (BoolQ), the last block on its scored queries
    suite = BenchmarkSuite("multirc,copa,boolq", tokenizer, data_root=shared_data, limit=8)
    with torch.inference_mode():
        linear, attention, _ = count_work(suite, model)
        with FlopCounterMode(display=False) as flops:
            suite.run(model)
        with AttentionCalls(model) as calls:
            suite.run(model)
    by_op = flops.get_flop_counts()["Global"]
    assert sum(linear.values()) == by_op[torch.ops.aten.mm] + by_op.get(torch.ops.aten.addmm, 0) > 0
    assert attention == 4 * calls.work > 0
