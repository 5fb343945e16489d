"""Outputs of a pruning run: ``pruning.json`` (everything), ``pruning.md`` (one table per metric: rows k, columns
methods; then the share of the unpruned score retained, and each method's paired-bootstrap difference from
``remove``, ``prune.compare``) and the figures -- metric against the number of changed blocks (the paper's
Figs. 6-8), against the fraction of blocks changed (Gromov et al.'s axis), and the per-token relative errors of
each block's linear fit on the unpruned model (the paper's Fig. 9).

``linreg prune-report DIR`` redraws the two curve figures from ``DIR/pruning.json``."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from core.cli import Parser, command, run_cli

_COUNTS = ("/nll", "/tokens", "/bytes")  # bookkeeping values, not curves
_LOWER_IS_BETTER = ("ppl", "loss", "bpb")
# The headline metrics of the retained table, where present.
HEADLINE = ("wikitext2/ppl", "/loss", "/acc_norm")


def metric_names(results: dict[str, dict[int, dict[str, float]]]) -> list[str]:
    names: list[str] = []
    for per_k in results.values():
        for metrics in per_k.values():
            names += [m for m in metrics if m not in names and not m.endswith(_COUNTS)]
    return names


def render_markdown(results: dict[str, dict[int, dict[str, float]]], num_blocks: int, header: str = "") -> str:
    methods = list(results)
    ks = sorted({k for per_k in results.values() for k in per_k})
    lines = [header] if header else []
    for metric in metric_names(results):
        arrow = "lower is better" if metric.endswith(_LOWER_IS_BETTER) else "higher is better"
        lines += ["", f"### {metric} ({arrow})", "", "| k | fraction | " + " | ".join(methods) + " |",
                  "|---|---|" + "---|" * len(methods)]
        for k in ks:
            cells = [_fmt(results[m].get(k, {}).get(metric)) for m in methods]
            lines.append(f"| {k} | {k / num_blocks:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render_retained(results: dict[str, dict[int, dict[str, float]]]) -> str:
    """One table per headline metric: rows methods, columns k, cells % of the unpruned score retained."""
    from prune.compare import retained

    ks = sorted({k for per_k in results.values() for k in per_k if k > 0})
    lines = []
    for metric in (m for m in metric_names(results) if m.endswith(HEADLINE)):
        lines += ["", f"### {metric}: % of the unpruned score retained", "",
                  "| method | " + " | ".join(f"k={k}" for k in ks) + " |", "|---|" + "---|" * len(ks)]
        for method, per_k in results.items():
            base = per_k.get(0, {}).get(metric)
            cells = [f"{retained(per_k[k][metric], base, metric):.1f}" if base is not None and metric in
                     per_k.get(k, {}) else "–" for k in ks]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render_comparison(comparison: dict) -> str:
    """Per document set: rows methods, columns k, cells 'difference [95 % interval]' against ``remove``."""
    keys = list(dict.fromkeys(key for per_k in comparison.values() for c in per_k.values() for key in c))
    ks = sorted({k for per_k in comparison.values() for k in per_k})
    lines = []
    for key in keys:
        unit = "mean NLL per token, nats (negative: better than remove)" if key == "wikitext2" else \
            "accuracy (positive: better than remove)"
        lines += ["", f"### {key}: difference from `remove`, {unit}; paired bootstrap 95 % interval", "",
                  "| method | " + " | ".join(f"k={k}" for k in ks) + " |", "|---|" + "---|" * len(ks)]
        for method, per_k in comparison.items():
            cells = []
            for k in ks:
                c = per_k.get(k, {}).get(key)
                cells.append(f"{c['diff']:+.4f} [{c['lo']:+.4f}, {c['hi']:+.4f}]" if c else "–")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.4g}" if abs(v) >= 1000 else f"{v:.4f}"


# The y-axis of each metric, by the last part of its name (``wikitext2/ppl`` -> ``ppl``).
_UNITS = {"ppl": "perplexity", "word_ppl": "word-level perplexity", "bpb": "bits per byte",
          "loss": "loss (nats per token)", "acc": "accuracy", "acc_norm": "length-normalised accuracy",
          "f1": "F1", "em": "exact match"}


def _log_y(ax) -> None:
    """Log y-axis with plain numbers: at 1-2-5 steps over several decades, at evenly spaced round values inside
    one (where matplotlib's default labels only the decades, and a metric that moves by less than one shows one
    or two labels)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    ax.set_yscale("log")
    lo, hi = ax.get_ylim()
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)) if hi / lo > 10 else MaxNLocator(6))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.4g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def plot_curves(results: dict[str, dict[int, dict[str, float]]], num_blocks: int, path: Path, fraction: bool) -> Path:
    """One panel per metric, one line per method (colour and marker), and one legend for all panels beside them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = metric_names(results)
    cols = min(3, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.5 * rows), squeeze=False)
    colors = plt.get_cmap("tab20").colors
    markers = "osD^v<>pP*Xh"
    for ax, metric in zip(axes.flat, metrics):
        for i, (method, per_k) in enumerate(results.items()):  # up to 20 methods, each its own colour and marker
            ks = sorted(k for k in per_k if metric in per_k[k])
            xs = [k / num_blocks for k in ks] if fraction else ks
            ax.plot(xs, [per_k[k][metric] for k in ks], marker=markers[i % len(markers)], ms=4,
                    color=colors[i % len(colors)], label=method)
        if metric.endswith("ppl"):
            _log_y(ax)
        ax.set_title(metric)
        unit = metric.split("/")[-1]
        ax.set_ylabel(_UNITS.get(unit, unit) + (" (log scale)" if metric.endswith("ppl") else ""))
        ax.set_xlabel(f"fraction of the {num_blocks} blocks changed" if fraction else "number of changed blocks")
        if not fraction:
            ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    # Every panel has the same methods in the same styles: one legend beside the grid serves them all and covers
    # none of them (up to 14 methods would hide a panel's curves).
    fig.legend(*axes.flat[0].get_legend_handles_labels(), loc="center right", fontsize=8, title="method")
    fig.tight_layout(rect=(0, 0, 0.84, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_fit_errors(errors: list[np.ndarray], path: Path) -> Path:
    """One histogram per block of the per-token relative error of its linear fit h_i -> h_{i+1}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(4, len(errors))
    rows = math.ceil(len(errors) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.6 * rows), squeeze=False)
    for i, (ax, err) in enumerate(zip(axes.flat, errors)):
        hi = float(np.quantile(err, 0.995))  # per block: the first block's errors can be 5x the others'
        ax.hist(np.clip(err, 0, hi), bins=np.linspace(0.0, hi, 50), color="tab:blue", alpha=0.8,
                label="tokens (last bin: beyond the 99.5 % quantile)")
        ax.axvline(float(np.median(err)), color="k", lw=1, ls="--", label="median")
        ax.set_title(f"block {i}: median {np.median(err):.3f}", fontsize=9)
    for ax in list(axes.flat)[len(errors):]:
        ax.axis("off")
    fig.legend(*axes.flat[0].get_legend_handles_labels(), loc="upper center", ncol=2, fontsize=8)
    fig.supxlabel(r"per-token relative error $\|A h_i + c - h_{i+1}\| \,/\, \|h_{i+1}\|$")
    fig.supylabel("probe tokens")
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_outputs(out: Path, record: dict, results: dict[str, dict[int, dict[str, float]]], num_blocks: int,
                  fit_errors: list[np.ndarray] | None, header: str = "", comparison: dict | None = None
                  ) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    record = {**record, "results": {m: {str(k): v for k, v in per_k.items()} for m, per_k in results.items()}}
    (out / "pruning.json").write_text(json.dumps(record, indent=1) + "\n")
    md = render_markdown(results, num_blocks, header) + render_retained(results)
    if comparison:
        md += render_comparison(comparison)
    (out / "pruning.md").write_text(md)
    paths = [out / "pruning.json", out / "pruning.md",
             plot_curves(results, num_blocks, out / "pruning_vs_k.png", fraction=False),
             plot_curves(results, num_blocks, out / "pruning_vs_fraction.png", fraction=True)]
    if fit_errors:
        paths.append(plot_fit_errors(fit_errors, out / "fit_errors.png"))
    return paths


def redraw(out: Path) -> list[Path]:
    """The two curve figures again, from the results and block count ``pruning.json`` holds."""
    from core.errors import DataError

    try:
        record = json.loads((out / "pruning.json").read_text())
        results = {m: {int(k): v for k, v in per_k.items()} for m, per_k in record["results"].items()}
        num_blocks = record["num_blocks"]
    except (OSError, ValueError, KeyError) as e:
        raise DataError(f"{out / 'pruning.json'}: not a pruning run's record ({e})") from None
    return [plot_curves(results, num_blocks, out / "pruning_vs_k.png", fraction=False),
            plot_curves(results, num_blocks, out / "pruning_vs_fraction.png", fraction=True)]


@command
def main(argv=None) -> int:
    ap = Parser("prune-report", "prune.report", "Redraw pruning_vs_k.png and pruning_vs_fraction.png from a pruning "
                                                "run's pruning.json.")
    ap.add_argument("dir", help="the run's output directory (holds pruning.json)")
    for path in redraw(Path(ap.parse_args(argv).dir)):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    run_cli(main)
