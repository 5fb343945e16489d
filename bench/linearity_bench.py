"""Benchmark: the project's linearity score against the authors' SVD recipe, on the same data.

    python bench/linearity_bench.py [--n 15000] [--dims 768 2048 4096] [--devices cpu cuda] [--no-lstsq]
    python bench/linearity_bench.py --profile [--layers 12] [--dims 768] [--repeats 1]
    python bench/linearity_bench.py --heldout [--baseline OTHER/eval/linearity/score.py] [--dims 768] [--repeats 3]

Per hidden size d it times, on each device:
  svd32   the notebook's recipe: float32 thin SVD of X, A = V diag(1/S) U^T Y, LS = 1 - ||X A - Y||^2
          (no threshold on tiny singular values); the notebook runs it once per score, so twice per layer pair;
  ours    ``linearity_score`` (float64 Gram matrix + Cholesky, Gram-formula RSS), one score;
  pair    ``pair_stats``: LS, LS without residual and the norm ratio of a pair, from one solve;
and, on the CPU, the float64 ``numpy.linalg.lstsq`` reference that both are checked against. ``--fallback``
times the rank-deficient path (R-SVD) instead, on an X like h_0 of a probe with fewer distinct tokens than d
(its n rows drawn from d/2 distinct vectors). ``--profile`` times a whole profile instead: ``linearity_profile``
on L + 1 states against the recipe's two scores per pair, and checks all 2L scores against lstsq. The data
imitate hidden states (anisotropic spectrum, a few "massive activation" features, a mean offset) with Y = X plus
a small nonlinear update. ``--heldout`` times, in one process and interleaved, the same profile without and with
held-out statistics (``groups``: ``--docs`` contiguous documents, default 128 as the paper's probe chunks; 5 folds,
1000 bootstrap resamples, ``--chance-columns`` 64), the same with the toolkit's anisotropy and intrinsic dimension
(``--id-tokens``, default 1024) of every state ("all on"; the logit lens needs a model:
bench/model_profile_cost.py) and, with ``--baseline``, the ``linearity_profile`` of another checkout's score.py
(e.g. the main branch), to show that the plain path is not
slowed; by the wall clock and by the process's CPU time, with the load average before and after. Prints a
markdown table for docs/PERFORMANCE.md. Not a test: it takes minutes on CPU.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import platform
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from eval.linearity.heldout import HeldoutConfig  # noqa: E402
from eval.linearity.profile import profile_from_states  # noqa: E402
from eval.linearity.score import linearity_profile, linearity_score, pair_stats  # noqa: E402
from eval.linearity.state_measures import ToolkitConfig  # noqa: E402


def hidden_state_like(n: int, d: int, seed: int = 0, decay: float = 2.0,
                      massive: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """X with singular values logspace(0, -decay) in a random basis (isotropic for decay 0), 4 "massive activation"
    features x50 when ``massive``, a mean offset; Y = X plus a small nonlinear update."""
    g = torch.Generator().manual_seed(seed)
    spectrum = torch.logspace(0, -decay, d) if decay else torch.ones(d)  # decay 2: cond ~100 before the massive ones
    x = torch.randn(n, d, generator=g) * spectrum @ torch.linalg.qr(torch.randn(d, d, generator=g))[0]
    if massive:
        x[:, :4] *= 50.0
    x += torch.randn(1, d, generator=g)
    update = torch.tanh(x @ (torch.randn(d, d, generator=g) / d**0.5)) + 0.1 * torch.randn(n, d, generator=g)
    return x, x + 0.5 * update


def hidden_state_chain(n: int, d: int, layers: int, seed: int = 0, decay: float = 2.0,
                       massive: bool = True) -> list[torch.Tensor]:
    """h_0 like ``hidden_state_like``'s X, then h_{i+1} = h_i + 0.5 (tanh(h_i W_i / sqrt(d)) + 0.1 noise)."""
    g = torch.Generator().manual_seed(seed)
    states = [hidden_state_like(n, d, seed, decay, massive)[0]]
    for _ in range(layers):
        h = states[-1]
        update = torch.tanh(h @ (torch.randn(d, d, generator=g) / d**0.5)) + 0.1 * torch.randn(n, d, generator=g)
        states.append(h + 0.5 * update)
    return states


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


class PeakMemory:
    """Peak memory a call adds: the device allocator's peak on CUDA; on Linux CPUs the resident-set high-water
    mark (VmHWM, reset through /proc/self/clear_refs) above the resident set before the call; else None."""

    def __init__(self, device: torch.device):
        self.device, self.mib = device, None

    @staticmethod
    def _status(key: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) * 1024
        raise KeyError(key)

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")
                self.base = self._status("VmRSS:")
            except (OSError, KeyError):
                self.base = None
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.mib = (torch.cuda.max_memory_allocated(self.device) - self.base) / 2**20
        elif self.base is not None:
            self.mib = (self._status("VmHWM:") - self.base) / 2**20


def profile_rows(args) -> None:
    """One row per (d, device): a whole profile, ours against the recipe's two scores per pair."""
    print("| device | d | pairs | svd32 s/profile (2 scores/pair) | ours s/profile | speed-up | ours peak MiB "
          "(states excluded) | solvers | max ours - lstsq64 | max svd32 - lstsq64 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for d in args.dims:
        states = hidden_state_chain(args.n, d, args.layers)
        refs = None
        if not args.no_lstsq:
            # Y - X in float64: the float32 difference of the float32 states is off by ~1e-11 in LS w/o residual
            refs = [(lstsq_reference(x, y), lstsq_reference(x, y.double() - x.double()))
                    for x, y in zip(states, states[1:])]
        for name in args.devices:
            device = torch.device(name)
            on_dev = [s.to(device) for s in states]
            if device.type == "cuda":  # load cuSOLVER/cuBLAS before timing
                svd_recipe(on_dev[0][:1024, :64], on_dev[1][:1024, :64])
                linearity_profile([s[:1024, :64] for s in on_dev[:3]])
            t_svd = t_ours = float("inf")
            for _ in range(args.repeats):  # interleaved, fastest of each: a shared machine's load drifts
                svd, t = timed(lambda: [(svd_recipe(x, y), svd_recipe(x, y - x)) for x, y in zip(on_dev, on_dev[1:])],
                               device)
                t_svd = min(t_svd, t)
                with PeakMemory(device) as peak:
                    prof, t = timed(lambda: linearity_profile(on_dev), device)
                t_ours = min(t_ours, t)
            solvers = ", ".join(f"{k} {v}" for k, v in sorted(Counter(p.solver for p in prof).items()))
            err_ours = err_svd = "n/a"
            if refs is not None:  # the worst of both scores over all pairs
                ours = [(p.linearity, p.linearity_wo_res) for p in prof]
                err_ours, err_svd = (f"{max(abs(a - r) for got, want in zip(v, refs) for a, r in zip(got, want)):.1e}"
                                     for v in (ours, svd))
            mem = "n/a" if peak.mib is None else f"{peak.mib:.0f}"
            print(f"| {device_name(device)} | {d} | {len(prof)} | {t_svd:.2f} | {t_ours:.2f} | {t_svd / t_ours:.1f}x "
                  f"| {mem} | {solvers} | {err_ours} | {err_svd} |", flush=True)


def load_baseline(path: str):
    """Another checkout's eval/linearity/score.py as a module of its own (it imports only torch)."""
    spec = importlib.util.spec_from_file_location("baseline_score", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def loadavg() -> str:
    try:
        return " / ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def heldout_rows(args) -> None:
    """One row per d: the plain profile, the held-out one, all on (and a baseline's plain profile), interleaved,
    each timed by the wall clock and by the process's CPU time (steadier on a shared machine)."""
    base = load_baseline(args.baseline) if args.baseline else None
    print(f"load average (1 / 5 / 15 min) before: {loadavg()}")
    print("| device | d | pairs | plain s wall / CPU | held-out s wall / CPU | held-out / plain wall / CPU "
          "| all on s wall / CPU | all on / plain wall / CPU | baseline s wall / CPU | plain / baseline wall / CPU "
          "| max plain - baseline (LS) | max in-sample change with held-out |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    # the logit lens needs a model
    everything = ToolkitConfig(anisotropy=True, intrinsic_dimension=True, id_tokens=args.id_tokens)
    held = HeldoutConfig(chance_columns=args.chance_columns)
    for d in args.dims:
        states = hidden_state_chain(args.n, d, args.layers)
        groups = torch.arange(args.n) * args.docs // args.n
        for name in args.devices:
            device = torch.device(name)
            on_dev = [s.to(device) for s in states]
            runs = {"plain": lambda: linearity_profile(on_dev),
                    "heldout": lambda: linearity_profile(on_dev, groups=groups, heldout=held),
                    "all": lambda: profile_from_states(on_dev, groups=groups, toolkit=everything,
                                                       heldout=held).pairs}
            if base is not None:
                runs["base"] = lambda: base.linearity_profile(on_dev)
            wall, cpu, out = {k: float("inf") for k in runs}, {k: float("inf") for k in runs}, {}
            for _ in range(args.repeats):  # interleaved, fastest of each: a shared machine's load drifts
                for key, fn in runs.items():
                    c0 = time.process_time()
                    out[key], t = timed(fn, device)
                    wall[key], cpu[key] = min(wall[key], t), min(cpu[key], time.process_time() - c0)
            change = max(max(abs(p.linearity - q.linearity), abs(p.linearity_wo_res - q.linearity_wo_res))
                         for p, q in zip(out["plain"], out["heldout"]))

            def both(key, over=None):
                if over is None:
                    return f"{wall[key]:.2f} / {cpu[key]:.2f}"
                return f"{wall[key] / wall[over]:.2f}x / {cpu[key] / cpu[over]:.2f}x"
            if base is not None:
                diff = max(abs(p.linearity - q.linearity) for p, q in zip(out["plain"], out["base"]))
                base_cols = f"{both('base')} | {both('plain', 'base')} | {diff:.1e}"
            else:
                base_cols = "n/a | n/a | n/a"
            print(f"| {device_name(device)} | {d} | {len(out['plain'])} | {both('plain')} | {both('heldout')} | "
                  f"{both('heldout', 'plain')} | {both('all')} | {both('all', 'plain')} | {base_cols} | {change:.1e} |",
                  flush=True)
    print(f"load average (1 / 5 / 15 min) after: {loadavg()}")


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
    ap.add_argument("--profile", action="store_true", help="time a whole profile of --layers + 1 states instead")
    ap.add_argument("--layers", type=int, default=12, help="blocks L of the --profile chain (L + 1 states)")
    ap.add_argument("--repeats", type=int, default=1, help="--profile: fastest of this many interleaved runs")
    ap.add_argument("--heldout", action="store_true", help="time a profile without and with held-out statistics")
    ap.add_argument("--baseline", help="--heldout: also time this score.py's linearity_profile (another checkout)")
    ap.add_argument("--docs", type=int, default=128, help="--heldout: documents the n tokens are cut into")
    ap.add_argument("--id-tokens", type=int, default=ToolkitConfig.id_tokens,
                    help="--heldout: tokens of the all-on profile's intrinsic dimension")
    ap.add_argument("--chance-columns", type=int, default=HeldoutConfig.chance_columns,
                    help="--heldout: CountSketch columns of the chance level")
    args = ap.parse_args(argv)

    print(f"# {datetime.date.today()} torch {torch.__version__}, n = {args.n} tokens"
          + (", X of d/2 distinct rows" if args.fallback else "")
          + (f", {args.layers + 1} states" if args.profile or args.heldout else ""))
    if args.heldout:
        heldout_rows(args)
        return 0
    if args.profile:
        profile_rows(args)
        return 0
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
