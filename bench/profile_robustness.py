"""Does the linearity profile's speed-up over the authors' SVD recipe hold outside linearity_bench's own data?

One process, both sides interleaved (recipe, ours, recipe, ours; fastest of ``--repeats``), over a grid of the
things an independent check can change: the states' spectrum (the bench's logspace(0, -2) decay, a steeper
logspace(0, -4), an isotropic one), the "massive activation" features (on/off), the number of torch threads, and
the first call of a process (cold) against later ones. The recipe is the notebook's: float32 thin SVD of X,
A = V diag(1/S) Uᵀ Y, twice per pair (with and without the residual); ours is ``linearity_profile`` (float64).

    python bench/profile_robustness.py --n 15000 --dim 768 --layers 6 --repeats 2
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from linearity_bench import hidden_state_chain, svd_recipe  # noqa: E402

from eval.linearity.score import linearity_profile  # noqa: E402


def recipe_profile(states: list[torch.Tensor]) -> list[float]:
    out = []
    for x, y in zip(states[:-1], states[1:]):
        out += [svd_recipe(x, y), svd_recipe(x, y - x)]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=15000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", default="2,1", help="comma list of torch thread counts")
    ap.add_argument("--out", type=Path, default=None, help="json of the rows")
    args = ap.parse_args(argv)
    grid = [("logspace(0,-2) + massive (linearity_bench)", 2.0, True), ("logspace(0,-2), no massive", 2.0, False),
            ("logspace(0,-4) + massive", 4.0, True), ("isotropic", 0.0, False)]
    rows = []
    print(f"n={args.n} d={args.dim} states={args.layers + 1}; load average {os.getloadavg()}", flush=True)
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        for name, decay, massive in grid:
            states = hidden_state_chain(args.n, args.dim, args.layers, decay=decay, massive=massive)
            cold = None
            best = {"recipe": float("inf"), "ours": float("inf")}
            sides = (("ours", lambda: linearity_profile(states)), ("recipe", lambda: recipe_profile(states)))
            for _ in range(args.repeats):
                for side, fn in sides:
                    t0 = time.perf_counter()
                    fn()
                    dt = time.perf_counter() - t0
                    if side == "ours" and cold is None:
                        cold = dt
                    best[side] = min(best[side], dt)
            row = {"threads": threads, "data": name, "recipe_s": best["recipe"], "ours_s": best["ours"],
                   "ours_first_call_s": cold, "speedup": best["recipe"] / best["ours"]}
            rows.append(row)
            print(f"threads={threads} {name:44s} recipe {best['recipe']:6.2f} s  ours {best['ours']:5.2f} s "
                  f"(first call {cold:5.2f} s)  {row['speedup']:.2f}x", flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
