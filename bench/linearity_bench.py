"""Benchmark: the project's linearity score against the authors' SVD recipe, on the same data.

    python bench/linearity_bench.py [--n 15000] [--dims 768 2048 4096] [--devices cpu cuda] [--no-lstsq]

Per hidden size d it times, on each device:
  svd32   the notebook's recipe: float32 thin SVD of X, A = V diag(1/S) U^T Y, LS = 1 - ||X A - Y||^2
          (no threshold on tiny singular values); the notebook runs it once per score, so twice per layer pair;
  ours    ``linearity_score`` (float64 Gram + Cholesky, explicit residual), one score;
  pair    ``pair_stats``: LS, LS without residual and the norm ratio of a pair, from one solve;
and, on the CPU, the float64 ``numpy.linalg.lstsq`` reference that both are checked against. ``--fallback``
times the rank-deficient path (R-SVD) instead, on an X like h_0 of a probe with fewer distinct tokens than d
(its n rows drawn from d/2 distinct vectors). The data imitate
hidden states (anisotropic spectrum, a few "massive activation" features, a mean offset) with Y = X plus a
small nonlinear update. Prints a markdown table for docs/PERFORMANCE.md. Not a test: it takes minutes on CPU.
"""
from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from eval.linearity.score import linearity_score, pair_stats  # noqa: E402


def hidden_state_like(n: int, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    spectrum = torch.logspace(0, -2, d)  # cond ~100 before the massive features
    x = torch.randn(n, d, generator=g) * spectrum @ torch.linalg.qr(torch.randn(d, d, generator=g))[0]
    x[:, :4] *= 50.0  # massive activations
    x += torch.randn(1, d, generator=g)
    update = torch.tanh(x @ (torch.randn(d, d, generator=g) / d**0.5)) + 0.1 * torch.randn(n, d, generator=g)
    return x, x + 0.5 * update


def svd_recipe(x: torch.Tensor, y: torch.Tensor) -> float:
    """The authors' notebook (float32 on the given device)."""
    x = x - x.mean(dim=0, keepdim=True)
    y = y - y.mean(dim=0, keepdim=True)
    x, y = x / x.norm(), y / y.norm()
    u, s, vh = torch.linalg.svd(x, full_matrices=False)
    a = vh.T * (1 / s)[None, ...] @ u.T @ y
    return float(1 - (x @ a - y).square().sum())


def lstsq_reference(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.double().numpy(), y.double().numpy()
    xt, yt = x - x.mean(0), y - y.mean(0)
    xt, yt = xt / np.linalg.norm(xt), yt / np.linalg.norm(yt)
    coef, *_ = np.linalg.lstsq(xt, yt, rcond=None)
    return 1.0 - float(((xt @ coef - yt) ** 2).sum())


def timed(fn, device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - t0


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def cases(args, rank_deficient: bool = False):
    """(d, device, x, y, err) per size and device; err(v) = |v - float64 lstsq| as text ("n/a" with --no-lstsq).
    With ``rank_deficient``, X is like h_0 of a probe with d/2 distinct tokens: its rows repeat d/2 vectors."""
    for d in args.dims:
        x, y = hidden_state_like(args.n, d)
        if rank_deficient:
            x = x[torch.randint(0, d // 2, (args.n,), generator=torch.Generator().manual_seed(1))]
        ref = None if args.no_lstsq else lstsq_reference(x, y)
        for name in args.devices:
            device = torch.device(name)
            xd, yd = x.to(device), y.to(device)
            if device.type == "cuda":  # load cuSOLVER/cuBLAS before timing
                svd_recipe(xd[:1024, :64], yd[:1024, :64])
                linearity_score(xd[:1024, :64], yd[:1024, :64])
            yield d, device, xd, yd, (lambda v, ref=ref: "n/a" if ref is None else f"{abs(v - ref):.1e}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=15000)
    ap.add_argument("--dims", type=int, nargs="+", default=[768, 2048, 4096])
    ap.add_argument("--devices", nargs="+", default=["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    ap.add_argument("--no-lstsq", action="store_true", help="skip the (slow) float64 numpy reference")
    ap.add_argument("--fallback", action="store_true", help="time the rank-deficient (R-SVD) path instead")
    args = ap.parse_args(argv)

    print(f"# {datetime.date.today()} torch {torch.__version__}, n = {args.n} tokens"
          + (", X of d/2 distinct rows" if args.fallback else ""))
    if args.fallback:
        print("| device | d | solver | rank | ours s/score | svd32 s/score | ours - lstsq64 | svd32 - lstsq64 |")
        print("|---|---|---|---|---|---|---|---|")
        for d, device, xd, yd, err in cases(args, rank_deficient=True):
            stats, t_ours = timed(lambda: pair_stats(xd, yd), device)
            svd, t_svd = timed(lambda: svd_recipe(xd, yd), device)
            print(f"| {device_name(device)} | {d} | {stats.solver} | {stats.rank_x} | {t_ours:.2f} | {t_svd:.2f} "
                  f"| {err(stats.linearity)} | {err(svd)} |", flush=True)
        return 0
    print("| device | d | svd32 s/score | ours s/score | ours s/pair (LS, LS w/o res, ratio) | speed-up/score "
          "| speed-up/pair | ours - lstsq64 | svd32 - lstsq64 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for d, device, xd, yd, err in cases(args):
        svd, t_svd = timed(lambda: svd_recipe(xd, yd), device)
        ours, t_ours = timed(lambda: linearity_score(xd, yd), device)
        _, t_pair = timed(lambda: pair_stats(xd, yd), device)
        print(f"| {device_name(device)} | {d} | {t_svd:.2f} | {t_ours:.2f} | {t_pair:.2f} | "
              f"{t_svd / t_ours:.1f}x | {2 * t_svd / t_pair:.1f}x | {err(ours)} | {err(svd)} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
