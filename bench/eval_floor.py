"""How far the benchmark scorer is from the floor its own kernels set: a suite's work counted exactly, each kernel
timed alone at the run's shapes, against the whole run.

    python bench/eval_floor.py --model runs/tiny_cpu/export --data-root ../shared/data --tasks superglue
    python bench/eval_floor.py --model M --lme-seconds 74.8   # also: the seconds 5x lm-eval would allow

One warm run of the suite (the scorer's own plan and attention choices) is counted:
- linear FLOPs, 2 x rows x in x out per call, from forward hooks on every ``nn.Linear`` (the last block's cut rows and
  the head's scored positions included);
- attention FLOPs, 4 x head_dim per query-key score and query head, from the scores each call of the scorer's
  attention computes: a packed row's partials, a plain row's causal half, the last block's masked square of scored
  queries, a dense mask's full square.
Then each kernel is timed alone on this machine, fastest of ``--repeats``:
- ``F.linear`` on [batch_tokens, in] for every weight shape the run used;
- the CPU flash kernel, causal, at [batch_tokens / L, heads, L, head_dim] for L = 256, 1,024 and 2,048 (up to the
  model's length). Its best rate stands for every attention call, so the floor is optimistic.
The floor is linear FLOPs at their shapes' rates plus attention FLOPs at the best flash rate: what the products and
the attention would take if every call ran as fast as the kernel does alone. A torch profile of another warm run
groups the measured time: products, attention kernels, elementwise ops, the rest (its own overhead included).
Prints a table; ``--out`` writes JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from linearity_bench import device_name  # noqa: E402  (shared with the other benchmarks)

PRODUCTS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"}
ATTENTION = {"aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_attention_math"}
ELEMENTWISE = {"aten::mul", "aten::add", "aten::silu", "aten::pow", "aten::rsqrt", "aten::mean", "aten::neg",
               "aten::cat", "aten::div", "aten::exp", "aten::sub", "aten::addcmul_", "aten::mul_", "aten::add_",
               "aten::exp_", "aten::copy_", "aten::where", "aten::logsumexp"}


def fastest(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def count_work(suite, model) -> tuple[dict, int, float]:
    """(linear FLOPs per (in, out) weight shape, attention FLOPs, wall seconds) of one run of ``suite``."""
    import eval.benchmarks.tree_attention as ta

    linear: dict = defaultdict(int)
    attention = [0]

    def on_linear(module, args, out):
        linear[(module.in_features, module.out_features)] += 2 * args[0].shape[:-1].numel() * module.in_features \
            * module.out_features

    own = ta.tree_attention

    def counted(module, query, key, value, attention_mask, *args, tree=None, scored=None, **kwargs):
        b_, h_, l_, d_ = query.shape
        if scored is not None and scored.mask is not None and getattr(module, "layer_idx", None) == scored.layer:
            scores = b_ * scored.index.shape[1] * l_  # the masked kernel's whole [scored queries, keys] square
        elif tree is not None:
            scores = ta.attention_scores(tree, [])
        elif attention_mask is not None:
            scores = b_ * l_ * l_
        else:  # the causal kernel over the padded width
            scores = ta.attention_scores(None, [l_] * b_)
        attention[0] += 4 * d_ * h_ * scores
        return own(module, query, key, value, attention_mask, *args, tree=tree, scored=scored, **kwargs)

    handles = [m.register_forward_hook(on_linear) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    ta.tree_attention = counted  # what use_tree_attention registers on entry
    try:
        t0 = time.perf_counter()
        suite.run(model)
        wall = time.perf_counter() - t0
    finally:
        ta.tree_attention = own
        for h in handles:
            h.remove()
    return dict(linear), attention[0], wall


def kernel_rates(linear_shapes, rows: int, heads: int, head_dim: int, max_length: int, repeats: int):
    """GFLOP/s of F.linear per weight shape at ``rows`` rows, and of the causal flash kernel at a few lengths."""
    gen = torch.Generator().manual_seed(0)
    rates = {}
    for fan_in, fan_out in linear_shapes:
        x, w = torch.randn(rows, fan_in, generator=gen), torch.randn(fan_out, fan_in, generator=gen)
        rates[(fan_in, fan_out)] = 2 * rows * fan_in * fan_out / fastest(lambda: F.linear(x, w), repeats) / 1e9
    flash = {}
    for length in sorted({min(n, max_length) for n in (256, 1024, 2048)}):
        q = torch.randn(max(1, rows // length), heads, length, head_dim, generator=gen)
        seconds = fastest(lambda: torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, q, q, is_causal=True),
                          repeats)
        flash[length] = 4 * head_dim * heads * q.shape[0] * length * (length + 1) / 2 / seconds / 1e9
    return rates, flash


def profile_groups(suite, model) -> dict[str, float]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        suite.run(model)
    groups: dict[str, float] = defaultdict(float)
    for e in prof.key_averages():
        kind = ("products" if e.key in PRODUCTS else "attention kernels" if e.key in ATTENTION
                else "elementwise" if e.key in ELEMENTWISE else "the rest")
        groups[kind] += e.self_cpu_time_total / 1e6
    return dict(groups)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="an HF checkpoint directory")
    p.add_argument("--data-root", default=None)
    p.add_argument("--tasks", default="superglue")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--cache-dir", default=None, help="token cache (bench/eval_lme_parity.py's, to reuse it)")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--lme-seconds", type=float, default=None, help="lm-eval's time for the same suite")
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--out", default=None)
    args = p.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from eval.benchmarks import BenchmarkSuite, default_batch_tokens
    from eval.benchmarks.scorer import resolve_max_length

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    cfg = model.config
    suite = BenchmarkSuite(args.tasks, tokenizer, data_root=args.data_root, limit=args.limit,
                           cache_dir=args.cache_dir)
    with torch.inference_mode():
        suite.run(model)  # warm: plans, allocator, the check row
        t0 = time.perf_counter()
        suite.run(model)
        wall = time.perf_counter() - t0
        linear, attention, counted_wall = count_work(suite, model)
        groups = {}
        if not args.no_profile:  # the profiler's own bookkeeping takes minutes on a full suite
            t0 = time.perf_counter()
            groups = profile_groups(suite, model)
            print(f"profiled in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        heads = cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        rates, flash = kernel_rates(linear, default_batch_tokens(torch.device("cpu")), heads, head_dim,
                                    resolve_max_length(cfg, tokenizer), args.repeats)
    linear_floor = sum(f / (rates[s] * 1e9) for s, f in linear.items())
    attention_floor = attention / (max(flash.values()) * 1e9)
    report = {
        "device": device_name(torch.device("cpu")), "threads": torch.get_num_threads(), "tasks": args.tasks,
        "wall_s": wall, "wall_counted_s": counted_wall,
        "linear_gflop": sum(linear.values()) / 1e9, "attention_gflop": attention / 1e9,
        "linear_rates_gflops": {f"{i}x{o}": r for (i, o), r in rates.items()},
        "flash_rates_gflops": flash, "linear_floor_s": linear_floor, "attention_floor_s": attention_floor,
        "floor_s": linear_floor + attention_floor, "profile_s": groups, "lme_s": args.lme_seconds,
    }
    print(f"{report['device']}, {args.tasks}: warm run {wall:.1f} s")
    print(f"linear {report['linear_gflop']:.0f} GFLOP at "
          + ", ".join(f"{k} {v:.0f}" for k, v in report["linear_rates_gflops"].items())
          + f" GFLOP/s alone: {linear_floor:.1f} s")
    print(f"attention {report['attention_gflop']:.0f} GFLOP at the flash kernel's best "
          f"({', '.join(f'L={k} {v:.0f}' for k, v in flash.items())} GFLOP/s alone): {attention_floor:.1f} s")
    print(f"floor (products + attention at their kernels' own rates): {report['floor_s']:.1f} s")
    if groups:
        print("profiled run, self time: " + ", ".join(f"{k} {v:.1f} s" for k, v in sorted(groups.items())))
    if args.lme_seconds:
        print(f"5x lm-eval allows {args.lme_seconds / 5:.1f} s; the floor alone would be "
              f"{args.lme_seconds / report['floor_s']:.2f}x, this run {args.lme_seconds / wall:.2f}x")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
