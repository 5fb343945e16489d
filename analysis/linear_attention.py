"""The linear-Transformer testbed's study: the Adam−SGD gap across depth and data tails, the optimisation
measurements, and the linearity profile of the trained models (docs/linear_attention.md).

    linreg linear-attention runs/la_adam_vs_sgd --out docs/linear_attention_example

Reads a sweep of ``configs/linear_attention/adam_vs_sgd.yaml`` (variants named ``<adam|sgd>_L<k>_<gauss|heavy>``).
Per (L, data): the late training loss of each optimizer (the median of its last 5 logged rows, each a mean over
its logging interval), mean over seeds with a 95 % t interval, and the SGD − Adam difference with Welch's 95 %
interval; the same difference for the held-out loss ``opt/loss`` of the last measurement (step max_steps for a
finished run: the same measurement prompts for every run); the last measured tail index, λ_max, λ_min, local
smoothness and gradient norm, averaged over the finished runs. Writes summary.json,
summary.md and figures.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from scipy import stats as sps

from analysis.report import pm
from core import stats
from core.cli import Parser, command, run_cli
from core.errors import UserError
from core.io import write_atomic, write_json
from core.rundir import RunDir

_VARIANT = re.compile(r"^(adam|sgd)_L(\d+)_(gauss|heavy)$")
MEASURES = ("opt/tail_index", "opt/sharpness", "opt/lambda_min", "opt/local_smoothness", "opt/dir_sharpness",
            "opt/grad_norm", "opt/loss")


def _interval(values: list[float]) -> dict:
    s = stats.summarize(values)
    return {"mean": s.mean, "ci95": s.half, "n": s.n, "values": [float(v) for v in values]}


def _welch(a: list[float], b: list[float]) -> dict:
    """Difference of means with Welch's 95 % interval half-width and p (scipy's unequal-variance t-test)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    diff = float(a.mean() - b.mean())
    if a.var(ddof=1) + b.var(ddof=1) == 0:  # no spread on either side: no test
        return {"diff": diff, "ci95": 0.0, "p": float("nan")}
    res = sps.ttest_ind(a, b, equal_var=False)
    low, high = res.confidence_interval(0.95)
    return {"diff": diff, "ci95": float(high - low) / 2, "p": float(res.pvalue)}


def _runs(sweep_dir: Path) -> list[tuple[re.Match, dict]]:
    """(variant match, {key: {step: value}}) of every run <sweep>/<variant>/seed<k> with a metrics.jsonl; a run
    that stopped before train.max_steps (a non-finite loss) has ``curves["diverged"]`` set."""
    from core.config import yaml_load
    from core.io import read_jsonl

    out = []
    for run in map(RunDir, sorted(sweep_dir.glob("*/seed*"))):
        m = _VARIANT.match(run.path.parent.name)
        if m is None or not run.metrics.is_file():
            continue
        max_steps = yaml_load(run.config.read_text())["train"]["max_steps"]
        curves: dict[str, dict[int, float]] = {}
        for row in read_jsonl(run.metrics):
            for k, v in row.items():
                if k != "step":
                    curves.setdefault(k, {})[row["step"]] = float(v)  # non-finite values are logged as strings
        if max(curves.get("train/loss", {0: 0})) < max_steps:
            curves["diverged"] = {}
        out.append((m, curves))
    return out


def _final(curves: dict, key: str) -> float | None:
    curve = curves.get(key)
    return curve[max(curve)] if curve else None


def _late_loss(curves: dict, rows: int = 5) -> float | None:
    """Median of the last ``rows`` logged training losses: a single loss spike (10^5 at some steps of the deeper
    models) would otherwise decide the comparison."""
    curve = curves.get("train/loss")
    return float(np.median([curve[s] for s in sorted(curve)[-rows:]])) if curve else None


def summarize(sweep_dir: Path, runs: list[tuple[re.Match, dict]]) -> dict:
    """Per (L, data) cell: each optimizer's late loss over seeds, the SGD − Adam gap, the last measurements."""
    cells: dict[tuple[int, str], dict[str, list]] = {}
    for m, curves in runs:
        opt, depth, tails = m.group(1), int(m.group(2)), m.group(3)
        cell = cells.setdefault((depth, tails), {})
        if "diverged" in curves:  # counted even when it stopped before its first logged row
            cell.setdefault(f"{opt}:diverged", []).append(1)
            continue
        late = _late_loss(curves)
        cell.setdefault(opt, []).append(late)
        for key in MEASURES:
            value = _final(curves, key)
            if value is not None:
                cell.setdefault(f"{opt}:{key}", []).append(value)
    if not cells:
        raise UserError(f"{sweep_dir}: no finished runs named <adam|sgd>_L<k>_<gauss|heavy>/seed<k>")
    out = []
    for (depth, tails), cell in sorted(cells.items()):
        row = {"L": depth, "data": tails}
        for opt in ("adam", "sgd"):
            if opt in cell:
                row[opt] = _interval(cell[opt])
            row[f"{opt}:diverged"] = len(cell.get(f"{opt}:diverged", []))
            for key in MEASURES:
                if f"{opt}:{key}" in cell:
                    row[f"{opt}:{key}"] = float(np.mean(cell[f"{opt}:{key}"]))
        if len(cell.get("adam", [])) > 1 and len(cell.get("sgd", [])) > 1:
            row["sgd_minus_adam"] = _welch(cell["sgd"], cell["adam"])
        held = [cell.get(f"{opt}:opt/loss", []) for opt in ("sgd", "adam")]
        if all(len(v) > 1 for v in held):  # the loss on the last measurement's prompts, the same for every run
            row["sgd_minus_adam_heldout"] = _welch(*held)
        out.append(row)
    return {"sweep": str(sweep_dir), "cells": out}


def to_markdown(summary: dict) -> str:
    lines = ["| L | data | Adam loss | SGD loss | SGD − Adam [95 % CI] (p) | held-out loss Adam / SGD "
             "| held-out SGD − Adam [95 % CI] (p) | diverged Adam / SGD "
             "| tail index Adam / SGD | λ_max Adam / SGD | λ_min Adam / SGD |", "|---" * 11 + "|"]
    fmt = lambda c: f"{pm(c['mean'], c['ci95'])} (n={c['n']})" if c else "–"  # noqa: E731
    gap_fmt = lambda g: f"{g['diff']:+.3g} [±{g['ci95']:.3g}] ({g['p']:.2g})" if g else "–"  # noqa: E731
    for r in summary["cells"]:
        gap_s, held_s = gap_fmt(r.get("sgd_minus_adam")), gap_fmt(r.get("sgd_minus_adam_heldout"))
        held = " / ".join(f"{r.get(f'{o}:opt/loss', float('nan')):.3g}" for o in ("adam", "sgd"))
        ti = " / ".join(f"{r.get(f'{o}:opt/tail_index', float('nan')):.2f}" for o in ("adam", "sgd"))
        sh = " / ".join(f"{r.get(f'{o}:opt/sharpness', float('nan')):.3g}" for o in ("adam", "sgd"))
        lo = " / ".join(f"{r.get(f'{o}:opt/lambda_min', float('nan')):.3g}" for o in ("adam", "sgd"))
        div = f"{r['adam:diverged']} / {r['sgd:diverged']}"
        lines.append(f"| {r['L']} | {r['data']} | {fmt(r.get('adam'))} | {fmt(r.get('sgd'))} | {gap_s} | {held} "
                     f"| {held_s} | {div} "
                     f"| {ti} | {sh} | {lo} |")
    return "\n".join(lines) + "\n"


def plot(summary: dict, runs: list[tuple[re.Match, dict]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, tails in zip(axes, ("gauss", "heavy")):
        ax.set_title("Gaussian $x$" if tails == "gauss" else "heavy-tailed $x$")
        ax.set_xlabel("layers $L$")
        if not any(r["data"] == tails for r in summary["cells"]):
            # A study of one kind of data (e.g. `--only` on the Gaussian variants) leaves this panel empty;
            # a log axis without data would stop the whole plot.
            ax.text(0.5, 0.5, "no runs", transform=ax.transAxes, ha="center", va="center")
            ax.set_xticks([])
            continue
        for opt, colour in (("adam", "C0"), ("sgd", "C3")):
            rows = [r for r in summary["cells"] if r["data"] == tails and opt in r]
            # Each seed as a point and the mean as a line: a t interval over 3 seeds can span zero on a log axis.
            ax.plot([r["L"] for r in rows], [r[opt]["mean"] for r in rows], color=colour,
                    label="Adam" if opt == "adam" else "SGD (momentum 0.9)")
            ax.scatter([r["L"] for r in rows for _ in r[opt]["values"]], [v for r in rows for v in r[opt]["values"]],
                       color=colour, s=18)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.legend()
    axes[0].set_ylabel("late training loss $(\\hat y - y_q)^2$ (median of last 5 rows)")
    fig.tight_layout()
    fig.savefig(out / "adam_vs_sgd.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for m, curves in runs:
        gn, ls = curves.get("opt/grad_norm", {}), curves.get("opt/local_smoothness", {})
        if not gn:
            continue
        steps = [s for s in sorted(set(gn) & set(ls)) if np.isfinite(gn[s]) and np.isfinite(ls[s])]
        ax.scatter([gn[s] for s in steps], [ls[s] for s in steps], s=14,
                   color="C0" if m.group(1) == "adam" else "C3", marker="o" if m.group(3) == "gauss" else "^")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("gradient norm $\\|\\nabla f(\\theta_t)\\|$")
    ax.set_ylabel("local smoothness $\\|\\nabla f(\\theta_{t+1})-\\nabla f(\\theta_t)\\| / \\|\\Delta\\|$")
    from matplotlib.lines import Line2D

    ax.legend(handles=[Line2D([], [], color=c, marker=mk, ls="", label=lab) for c, mk, lab in
                       (("C0", "o", "Adam, Gaussian"), ("C3", "o", "SGD, Gaussian"),
                        ("C0", "^", "Adam, heavy-tailed"), ("C3", "^", "SGD, heavy-tailed"))], fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "smoothness_vs_grad_norm.png", dpi=120)
    plt.close(fig)


@command
def main(argv=None) -> int:
    p = Parser("linear-attention", "analysis.linear_attention", __doc__)
    p.add_argument("sweep_dir", help="the sweep's directory (runs/<name>)")
    p.add_argument("--out", required=True, help="output directory (summary.json, summary.md, PNG figures)")
    args = p.parse_args(argv)
    sweep_dir, out = Path(args.sweep_dir), Path(args.out)
    if not sweep_dir.is_dir():
        raise UserError(f"{sweep_dir}: not a directory")
    runs = _runs(sweep_dir)
    summary = summarize(sweep_dir, runs)
    write_json(out / "summary.json", summary)
    write_atomic(out / "summary.md", to_markdown(summary))
    plot(summary, runs, out)
    print(to_markdown(summary), end="")
    return 0


if __name__ == "__main__":
    run_cli(main)
