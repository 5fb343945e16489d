"""Held-out linearity on synthetic data with a known population R^2: in-sample bias and interval coverage.

    python bench/heldout_coverage.py [--n 1000] [--dims 10 25 50 100 250 500] [--reps 200] [--out DIR]
    python bench/heldout_coverage.py --merge DIR1/heldout_coverage.json DIR2/heldout_coverage.json [--out DIR]

Each replicate draws n tokens in documents of ``--doc-len`` tokens: x = (document effect + token effect) / sqrt(2),
both N(0, S) with an anisotropic S (eigenvalues 1 .. 1e-2 in a random basis), so tokens of one document are
correlated; y = x A + e with e ~ N(0, s^2 I) per token, A and s fixed per d so that the population R^2 is rho
(``--rho``, 0.8). Then ``eval.linearity.heldout_linearity`` (5 folds of documents, 1000 bootstrap resamples) gives
the in-sample and held-out scores, their 95 % intervals (the in-sample one both ways: the delete-a-fold jackknife,
the default, and the document bootstrap, ``insample_interval: bootstrap``) and the chance levels. Two truths are
known exactly:

- rho, the population R^2 of the true map;
- rho_f, the population R^2 of the maps the held-out score evaluates: for fold f's least-squares fit (A_f, b_f,
  refitted here with torch.linalg.lstsq on the same document folds), e_f = tr((A - A_f)^T S (A - A_f)) +
  ||b_f||^2 + d s^2 and v_f = tr(A^T S A) + d s^2 + ||m_f||^2 (m_f the training mean of y), pooled as
  1 - sum_f n_f e_f / sum_f n_f v_f.

A third is estimated: E[LS_in], the expected in-sample score at this n and d, which the in-sample intervals are for
(the in-sample score is biased, so no interval of it covers rho at large d / n), by the mean over the replicates.

Prints a markdown table (docs/linearity.md) and writes, in ``--out`` (default docs/linearity_example),
heldout_coverage.json (the rows, after each d) and heldout_coverage.png: the mean bias of both scores against
d / n with the (1 - rho) d / (n - 1) line, and the coverage of rho, rho_f and E[LS_in] by the intervals.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from eval.linearity import heldout_linearity  # noqa: E402
from eval.linearity.heldout import FoldPlan, HeldoutConfig  # noqa: E402


def population(d: int, rho: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0]
    root = basis * torch.logspace(0, -1, d, dtype=torch.float64)  # S = root root^T, eigenvalues 1 .. 1e-2
    cov = root @ root.T
    a = torch.randn(d, d, generator=g, dtype=torch.float64) / d**0.5
    signal = float(torch.trace(a.T @ cov @ a))
    noise_var = signal * (1 - rho) / (rho * d)  # per output column
    return root, cov, a, signal, noise_var


def replicate(n: int, d: int, doc_len: int, pop, g: torch.Generator):
    root, _, a, _, noise_var = pop
    docs = n // doc_len
    groups = torch.arange(n) // doc_len
    doc = torch.randn(docs, d, generator=g, dtype=torch.float64)[groups]
    x = (doc + torch.randn(n, d, generator=g, dtype=torch.float64)) @ root.T / 2**0.5
    y = x @ a + noise_var**0.5 * torch.randn(n, d, generator=g, dtype=torch.float64)
    return x, y, groups


def fold_truth(x, y, groups, pop, folds: int = 5) -> float:
    """rho_f: the pooled population R^2 of the held-out score's fold fits (independent lstsq fits)."""
    _, cov, a, signal, noise_var = pop
    n, d = x.shape
    plan = FoldPlan(groups, folds, 0, d)
    fold = torch.empty(n, dtype=torch.long)
    for f, (lo, hi) in enumerate(plan.spans()):
        fold[plan.order[lo:hi]] = f
    err = tot = 0.0
    for f in range(folds):
        tr = fold != f
        design = torch.cat([torch.ones(int(tr.sum()), 1, dtype=x.dtype), x[tr]], 1)
        coef = torch.linalg.lstsq(design, y[tr], driver="gelsd").solution
        b, a_f = coef[0], coef[1:]
        diff = a - a_f
        n_f = int((~tr).sum())
        err += n_f * (float(torch.trace(diff.T @ cov @ diff)) + float(b @ b) + d * noise_var)
        m = y[tr].mean(0)
        tot += n_f * (signal + d * noise_var + float(m @ m))
    return 1.0 - err / tot


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--dims", type=int, nargs="+", default=[10, 25, 50, 100, 250, 500])
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--doc-len", type=int, default=10)
    ap.add_argument("--rho", type=float, default=0.8)
    ap.add_argument("--out", default="docs/linearity_example")
    ap.add_argument("--merge", nargs="+", metavar="JSON",
                    help="only draw the plot from the rows of earlier runs' heldout_coverage.json files")
    args = ap.parse_args(argv)
    if args.merge:
        rows = sorted((r for f in args.merge for r in json.loads(Path(f).read_text())), key=lambda r: r["d"])
        plot(rows, args, Path(args.out) / "heldout_coverage.png")
        return 0
    # one thread: these are small products, and on a shared CPU torch's threads cost 20-70x (measured) in waiting
    torch.set_num_threads(1)
    rows = []
    t0 = time.perf_counter()
    for d in args.dims:
        pop = population(d, args.rho, seed=d)
        g = torch.Generator().manual_seed(1000 + d)
        stats = {k: [] for k in ("ins", "ho", "ins_cov", "ho_cov", "ho_cov_f", "truth_f", "chance", "chance_ho",
                                 "ins_width", "ins_boot_width", "ho_width")}
        cis = []  # the in-sample intervals (jackknife, bootstrap) of each replicate
        for _ in range(args.reps):
            x, y, groups = replicate(args.n, d, args.doc_len, pop, g)
            res = heldout_linearity(x, y, groups)
            boot = heldout_linearity(x, y, groups, config=HeldoutConfig(insample_interval="bootstrap")).linearity_ci
            cis.append((res.linearity_ci, boot))
            truth_f = fold_truth(x, y, groups, pop)
            stats["ins"].append(res.linearity)
            stats["ho"].append(res.heldout)
            stats["truth_f"].append(truth_f)
            stats["ins_cov"].append(res.linearity_ci[0] <= args.rho <= res.linearity_ci[1])
            stats["ho_cov"].append(res.heldout_ci[0] <= args.rho <= res.heldout_ci[1])
            stats["ho_cov_f"].append(res.heldout_ci[0] <= truth_f <= res.heldout_ci[1])
            stats["chance"].append(res.chance)
            stats["chance_ho"].append(res.chance_heldout)
            stats["ins_width"].append(res.linearity_ci[1] - res.linearity_ci[0])
            stats["ins_boot_width"].append(boot[1] - boot[0])
            stats["ho_width"].append(res.heldout_ci[1] - res.heldout_ci[0])
        mean = {k: sum(map(float, v)) / len(v) for k, v in stats.items()}
        expected = mean["ins"]  # E[LS_in], estimated by the replicates' mean
        cover = [sum(ci[j][0] <= expected <= ci[j][1] for ci in cis) / len(cis) for j in (0, 1)]
        rows.append({"d": d, "ratio": d / args.n, **mean, "ins_cov_e": cover[0], "ins_boot_cov_e": cover[1],
                     "predicted": (1 - args.rho) * d / (args.n - 1)})
        print(f"d={d} done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
        if len(rows) == 1:
            print(f"n = {args.n} tokens in documents of {args.doc_len}, rho = {args.rho}, {args.reps} replicates "
                  f"per row, 5 folds, 95 % intervals: in-sample by the jackknife (or the bootstrap where it says so), "
                  f"held-out by the percentile bootstrap (1000 resamples)\n")
            print("| d | d/n | in-sample − ρ | (1 − ρ)·d/(n − 1) | held-out − ρ | ρ_f − ρ | in-sample CI covers ρ "
                  "| in-sample CI covers E[LS_in], jackknife / bootstrap | held-out CI covers ρ "
                  "| held-out CI covers ρ_f | CI width in-sample (jackknife / bootstrap) / held-out "
                  "| chance in / held-out | d/(n − 1) |")
            print("|" + "---|" * 13)
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "heldout_coverage.json").write_text(json.dumps(rows, indent=1))
        r = rows[-1]  # each row as soon as it is done: the large d take long
        print(f"| {r['d']} | {r['ratio']:.3f} | {r['ins'] - args.rho:+.4f} | {r['predicted']:+.4f} "
              f"| {r['ho'] - args.rho:+.4f} | {r['truth_f'] - args.rho:+.4f} | {r['ins_cov']:.3f} "
              f"| {r['ins_cov_e']:.3f} / {r['ins_boot_cov_e']:.3f} | {r['ho_cov']:.3f} | {r['ho_cov_f']:.3f} "
              f"| ({r['ins_width']:.4f} / {r['ins_boot_width']:.4f}) / {r['ho_width']:.4f} "
              f"| {r['chance']:.4f} / {r['chance_ho']:+.4f} | {r['d'] / (args.n - 1):.4f} |", flush=True)
    plot(rows, args, Path(args.out) / "heldout_coverage.png")
    return 0


def plot(rows: list[dict], args, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratio = [r["ratio"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot(ratio, [r["ins"] - args.rho for r in rows], marker="o", label=r"in-sample $-\ \rho$")
    left.plot(ratio, [r["predicted"] for r in rows], linestyle="--", color="grey",
              label=r"$(1-\rho)\,d\,/\,(n-1)$")
    left.plot(ratio, [r["ho"] - args.rho for r in rows], marker="s", label=r"held-out $-\ \rho$")
    left.plot(ratio, [r["truth_f"] - args.rho for r in rows], marker="^", linestyle=":",
              label=r"$\rho_f - \rho$ (fold fits' population $R^2$)")
    left.axhline(0, color="black", linewidth=0.6)
    left.set_xlabel(r"$d\,/\,n$")
    left.set_ylabel(r"mean bias against the population $R^2$ $\rho$")
    left.set_title(f"bias (n = {args.n}, ρ = {args.rho})", fontsize=10)
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    right.plot(ratio, [r["ins_cov"] for r in rows], marker="o", label=r"in-sample CI covers $\rho$")
    right.plot(ratio, [r["ins_cov_e"] for r in rows], marker="D",
               label=r"in-sample CI (jackknife) covers $E[\mathrm{LS}_\mathrm{in}]$")
    right.plot(ratio, [r["ins_boot_cov_e"] for r in rows], marker="v", linestyle=":",
               label=r"in-sample CI (bootstrap) covers $E[\mathrm{LS}_\mathrm{in}]$")
    right.plot(ratio, [r["ho_cov"] for r in rows], marker="s", label=r"held-out CI covers $\rho$")
    right.plot(ratio, [r["ho_cov_f"] for r in rows], marker="^", label=r"held-out CI covers $\rho_f$")
    right.axhline(0.95, color="grey", linestyle="--", label="nominal 0.95")
    right.set_xscale("log")
    left.set_xscale("log")
    right.set_ylim(-0.02, 1.02)
    right.set_xlabel(r"$d\,/\,n$")
    right.set_ylabel("coverage of the 95 % interval")
    right.set_title("coverage", fontsize=10)
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"\nwrote {path}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
