"""Does the linearity profile's speed-up over the authors' SVD recipe hold outside linearity_bench's own data?

One process, all sides interleaved (recipe, ours, ...; fastest of ``--repeats``), over a grid of the things an
independent check can change: the states' spectrum (the bench's logspace(0, -2) decay, a steeper logspace(0, -4),
an isotropic one), the "massive activation" features (on/off), the number of torch threads, and the first call of
a process (cold) against later ones. The recipe is the notebook's: float32 thin SVD of X, A = V diag(1/S) Uᵀ Y,
twice per pair (with and without the residual); ours is ``linearity_profile`` (float64). Each side is timed by the
wall clock and by the process's CPU time (steadier on a shared machine), with the load average before and after
each row. Besides the two, per row:

  floor    the float64 products any normal-equation solver of the profile must make, on states already centred
           into column-major float64 arrays: the Gram matrix of every state but the last (``symmetric_gram``, as ours
           computes it: BLAS's syrk on the CPU) and one n x d x d cross product per pair. ours / floor is what the rest
           (upcasts, centring, norms, factorisations, solves) costs on top.
  mixed    the floor of a mixed-precision path that stays equal to lstsq to 1e-8: the same products in float32,
           plus the float64 refinement's residual product X A (n x d x d) per pair, without which the float32
           products' rounding (~1e-5 relative over 15,000 tokens, amplified by the Gram's conditioning) reaches
           the scores.
  baseline (``--baseline``) another checkout's ``linearity_profile`` (e.g. the main branch's score.py): before
           and after a change, in the same process.

``--lstsq`` also checks both scores of every pair against float64 numpy lstsq (slow: two solves per pair).

    python bench/profile_robustness.py --n 15000 --dim 768 --layers 4 --repeats 2 [--baseline OTHER/score.py]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from linearity_bench import hidden_state_chain, load_baseline, loadavg, lstsq_reference, svd_recipe  # noqa: E402

from eval.linearity.score import linearity_profile, symmetric_gram  # noqa: E402


def recipe_profile(states: list[torch.Tensor]) -> list[float]:
    out = []
    for x, y in zip(states[:-1], states[1:]):
        out += [svd_recipe(x, y), svd_recipe(x, y - x)]
    return out


def centred(states: list[torch.Tensor], dtype: torch.dtype) -> list[torch.Tensor]:
    """Each state centred, in ``dtype``, column-major (the layout ours multiplies in)."""
    out = []
    for s in states:
        c = torch.empty(s.shape[::-1], dtype=dtype).T
        c.copy_(s)
        out.append(c.sub_(c.mean(dim=0)))
    return out


def product_floor(xs: list[torch.Tensor], refine: list[torch.Tensor] | None = None,
                  coef: torch.Tensor | None = None) -> None:
    """The Gram matrix of every state but the last and one cross product per pair; with ``refine`` (float64
    states) also the refinement's residual product X A per pair."""
    for i, (x, y) in enumerate(zip(xs, xs[1:])):
        symmetric_gram(x)
        x.T @ y
        if refine is not None:
            refine[i] @ coef


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=15000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", default="2,1", help="comma list of torch thread counts")
    ap.add_argument("--baseline", help="also time this score.py's linearity_profile (another checkout)")
    ap.add_argument("--lstsq", action="store_true", help="check every score against float64 numpy lstsq")
    ap.add_argument("--only", default="", help="only the spectra whose name contains this (e.g. -4)")
    ap.add_argument("--out", type=Path, default=None, help="json of the rows")
    args = ap.parse_args(argv)
    grid = [("logspace(0,-2) + massive (linearity_bench)", 2.0, True), ("logspace(0,-2), no massive", 2.0, False),
            ("logspace(0,-4) + massive", 4.0, True), ("isotropic", 0.0, False)]
    grid = [g for g in grid if args.only in g[0]]
    base = load_baseline(args.baseline) if args.baseline else None
    rows = []
    print(f"n={args.n} d={args.dim} states={args.layers + 1}; torch {torch.__version__}; load average {loadavg()}",
          flush=True)
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        for name, decay, massive in grid:
            states = hidden_state_chain(args.n, args.dim, args.layers, decay=decay, massive=massive)
            x64, x32 = centred(states, torch.float64), centred(states, torch.float32)
            coef = torch.randn(args.dim, args.dim, dtype=torch.float64)
            sides = {"ours": lambda: linearity_profile(states), "recipe": lambda: recipe_profile(states),
                     "floor": lambda: product_floor(x64), "mixed": lambda: product_floor(x32, x64, coef)}
            if base is not None:
                sides["baseline"] = lambda: base.linearity_profile(states)
            wall, cpu, out, cold = {k: float("inf") for k in sides}, {k: float("inf") for k in sides}, {}, None
            load_before = loadavg()
            for _ in range(args.repeats):  # interleaved, fastest of each: a shared machine's load drifts
                for side, fn in sides.items():
                    c0, t0 = time.process_time(), time.perf_counter()
                    out[side] = fn()
                    dt, dc = time.perf_counter() - t0, time.process_time() - c0
                    if side == "ours" and cold is None:
                        cold = dt
                    wall[side], cpu[side] = min(wall[side], dt), min(cpu[side], dc)
            row = {"threads": threads, "data": name, "load_before": load_before, "load_after": loadavg(),
                   "ours_first_call_s": cold, "solvers": sorted({p.solver for p in out["ours"]})}
            for side in sides:
                row[f"{side}_s"], row[f"{side}_cpu_s"] = wall[side], cpu[side]
            row["speedup"], row["speedup_cpu"] = wall["recipe"] / wall["ours"], cpu["recipe"] / cpu["ours"]
            row["speedup_floor_cpu"] = cpu["recipe"] / cpu["floor"]
            row["speedup_mixed_cpu"] = cpu["recipe"] / cpu["mixed"]
            if base is not None:
                row["ours_over_baseline"] = wall["ours"] / wall["baseline"]
                row["ours_over_baseline_cpu"] = cpu["ours"] / cpu["baseline"]
                row["max_ours_minus_baseline"] = max(
                    max(abs(p.linearity - q.linearity), abs(p.linearity_wo_res - q.linearity_wo_res))
                    for p, q in zip(out["ours"], out["baseline"]))
            if args.lstsq:  # Y - X in float64, as the scores see it
                refs = [r for x, y in zip(states, states[1:])
                        for r in (lstsq_reference(x, y), lstsq_reference(x, y.double() - x.double()))]
                got = [v for p in out["ours"] for v in (p.linearity, p.linearity_wo_res)]
                row["max_ours_minus_lstsq"] = max(abs(a - b) for a, b in zip(got, refs))
            rows.append(row)
            extra = "".join(f"  {k} {row[k]:.2e}" if "max" in k else f"  {k} {row[k]:.3f}"
                            for k in ("ours_over_baseline", "ours_over_baseline_cpu", "max_ours_minus_baseline",
                                      "max_ours_minus_lstsq") if k in row)
            print(f"threads={threads} {name:44s} load {load_before} -> {row['load_after']}\n"
                  + "".join(f"  {k} {wall[k]:6.2f} s (CPU {cpu[k]:6.2f} s)" for k in sides)
                  + f"\n  first call {cold:5.2f} s  recipe/ours {row['speedup']:.2f}x (CPU {row['speedup_cpu']:.2f}x)"
                  f"  recipe/floor CPU {row['speedup_floor_cpu']:.2f}x  recipe/mixed CPU "
                  f"{row['speedup_mixed_cpu']:.2f}x  solvers {','.join(row['solvers'])}{extra}", flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"load average at the end: {loadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
