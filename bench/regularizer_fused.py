"""The regularizer alone: fused (regularizers/fused.py) vs reference (stacked fp32) forward + backward on
Mistral-shaped residual states h_0..h_L, eager and optionally compiled. CPU or GPU.

    python bench/regularizer_fused.py --tokens 4096 --dtype fp32          # CPU: 4 × 1024 tokens of 150M states
    python bench/regularizer_fused.py --tokens 32768 --dtype bf16 --compile   # GPU: one 150M micro-batch

Reports the median time of forward + backward (``torch.autograd.grad`` over all states), what autograd saves
beyond the states themselves (saved_tensors_hooks: exact), and the peak memory allocated above the states
during forward + backward (GPU: the caching allocator's peak; CPU: the running sum of the profiler's
allocation events), which includes the L + 1 returned state gradients that both paths produce.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from regularizers import RegularizerConfig, build_regularizer  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=4096, help="B × T (T = --seq)")
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--compile", action="store_true", help="also the torch.compile'd paths (regularizer.compile)")
    return p.parse_args(argv)


def make_states(args, device):
    g = torch.Generator(device=device).manual_seed(0)
    shape = (args.tokens // args.seq, args.seq, args.hidden)
    base = torch.randn(shape, generator=g, device=device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    return [(base + 0.3 * torch.randn(shape, generator=g, device=device)).to(dtype).requires_grad_()
            for _ in range(args.layers + 1)]


def fwd_bwd(reg, states):
    return torch.autograd.grad(reg(states, step=0), states)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def saved_bytes(reg, states) -> int:
    own, seen, total = {s.data_ptr() for s in states}, set(), 0

    def pack(t):
        nonlocal total
        if t.data_ptr() not in own and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        reg(states, step=0)
    return total


def peak_bytes(reg, states, device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fwd_bwd(reg, states)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fwd_bwd(reg, states)
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    running, peak = 0, 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        running += e.nbytes()
        peak = max(peak, running)
    return peak


def main(argv=None) -> None:
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    states = make_states(args, device)
    state_mb = states[0].numel() * states[0].element_size() / 2**20
    paths = [(fused, compiled) for compiled in ([False, True] if args.compile else [False]) for fused in (False, True)]
    regs = {(kind, *path): build_regularizer(RegularizerConfig(name=kind, weight=0.5, fused=path[0], compile=path[1]))
            for kind in ("cosine", "mse") for path in paths}
    times = {key: [] for key in regs}
    for reg in regs.values():
        fwd_bwd(reg, states)  # warm-up (compilation)
    for _ in range(args.repeats):  # round robin: a shared machine's load drifts alike over all paths
        for key, reg in regs.items():
            sync(device)
            t0 = time.perf_counter()
            fwd_bwd(reg, states)
            sync(device)
            times[key].append(time.perf_counter() - t0)
    print(f"{args.layers + 1} states of {list(states[0].shape)} {args.dtype} ({state_mb:.0f} MB each) on {device}, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}, median of {args.repeats} (round robin)\n")
    print("| regularizer | path | fwd+bwd ms | speed-up vs reference | saved beyond states MB | peak above states MB |")
    print("|---|---|---|---|---|---|")
    for (kind, fused, compiled), reg in regs.items():
        ms = statistics.median(times[(kind, fused, compiled)]) * 1e3
        ref = statistics.median(times[(kind, False, False)]) * 1e3
        path = ("fused" if fused else "reference") + (" compiled" if compiled else "")
        print(f"| {kind} | {path} | {ms:.1f} | {ref / ms:.2f}x | {saved_bytes(reg, states) / 2**20:.1f} | "
              f"{peak_bytes(reg, states, device) / 2**20:.0f} |", flush=True)


if __name__ == "__main__":
    main()
