"""Figures of the analyses, in the style of ``eval.linearity.plots`` (Agg backend, one PNG per figure):
linearity against training step (Fig. 2), per-block heatmaps across checkpoints, probe accuracy against layer
(Fig. 5) and grouped bars with intervals (judge grades)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from eval.linearity.plots import TITLES, heldout_lines, zoom_inset  # noqa: E402

SERIES_KEYS = ("linearity", "linearity_wo_res")


def _save(fig, path: str | Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def _step_axis(ax, steps: list[int]) -> None:
    """Log x-axis; symlog with a linear part below 1 when a step-0 checkpoint is present."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    if min(steps) <= 0:
        ax.set_xscale("symlog", linthresh=1)
    else:
        ax.set_xscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")  # 200, 1e+05: not 2x10^2
    distinct = sorted(set(steps))
    if len(distinct) <= 12:  # few checkpoints: label each one's step, nothing else
        ax.set_xticks(distinct, [f"{s:g}" for s in distinct])
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        ax.xaxis.set_major_formatter(plain)
        if max(steps) / max(min(steps), 1) < 100:  # under two decades: label the minor ticks too
            ax.xaxis.set_minor_formatter(plain)
    ax.tick_params(axis="x", which="both", labelsize=8)
    ax.set_xlabel("training step")


def plot_series(series: dict[str, list[dict]], path: str | Path) -> Path:
    """Mean linearity (with and without residual) against step, one line per model (the paper's Fig. 2).
    ``series``: label -> records with ``step`` and ``means``, in step order."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key in zip(axes, SERIES_KEYS):
        for label, recs in series.items():
            steps = [r["step"] for r in recs]
            line, = ax.plot(steps, [r["means"][key] for r in recs], marker="o", markersize=3, label=label)
            if all("heldout" in r["means"] for r in recs):  # held-out mean, intervals of both means, chance
                heldout_lines(ax, steps, [r["means"] for r in recs], key, line.get_color(), label)
        _step_axis(ax, [r["step"] for recs in series.values() for r in recs])
        ax.set_title(f"{TITLES[key]}, mean over blocks", fontsize=10)
        ax.set_ylabel("score (mean over blocks)")
        ax.grid(alpha=0.3, which="both")
        zoom_inset(ax)
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_series_states(series: dict[str, list[dict]], path: str | Path) -> Path:
    """Per-state measurements against step: one row of panels per series, one line per state h_i."""
    from eval.linearity.plots import STATE_LABELS, STATE_TITLES

    keys = [k for k in STATE_TITLES if any(k in recs[-1]["toolkit"] for recs in series.values())]
    fig, axes = plt.subplots(len(series), len(keys), figsize=(4.2 * len(keys), 3.6 * len(series)), squeeze=False)
    for row, (label, recs) in zip(axes, series.items()):
        steps = [r["step"] for r in recs]
        count = len(recs[-1]["toolkit"][keys[0]])
        colours = plt.cm.viridis([i / max(count - 1, 1) for i in range(count)])
        for ax, key in zip(row, keys):
            for i in range(count):
                ax.plot(steps, [r["toolkit"][key][i] for r in recs], marker="o", markersize=2, color=colours[i],
                        label=f"$h_{{{i}}}$")
            _step_axis(ax, steps)
            ax.set_title(f"{label}: {STATE_TITLES[key]}", fontsize=8)
            ax.set_ylabel(STATE_LABELS[key], fontsize=8)
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=6, ncol=2)
    return _save(fig, path)


def plot_series_heatmaps(series: dict[str, list[dict]], path: str | Path) -> Path:
    """Block x checkpoint heatmaps, one row per model, one column per quantity (columns are checkpoints in step
    order, labelled with their steps)."""
    fig, axes = plt.subplots(len(series), 2, figsize=(12, 3.4 * len(series)), squeeze=False)
    for row, (label, recs) in zip(axes, series.items()):
        for ax, key in zip(row, SERIES_KEYS):
            grid = [[r[key][b] for r in recs] for b in range(len(recs[-1][key]))]
            mesh = ax.pcolormesh(range(len(recs)), range(len(grid)), grid, shading="nearest", cmap="viridis")
            fig.colorbar(mesh, ax=ax, label=TITLES[key])
            ticks = range(0, len(recs), max(1, len(recs) // 10))
            ax.set_xticks(list(ticks), [str(recs[i]["step"]) for i in ticks], rotation=45, fontsize=7)
            ax.set_yticks(range(len(grid)))
            ax.set_title(f"{label}: {TITLES[key]}", fontsize=9)
            ax.set_xlabel("checkpoint (step)")
            ax.set_ylabel("block")
    return _save(fig, path)


def plot_probes(curves: dict[str, list[float]], chance: float, title: str, path: str | Path) -> Path:
    """Probe accuracy against the state h_i (h_0 = the embedding output, h_i = the output of block i - 1), one line
    per model."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for label, acc in curves.items():
        ax.plot(range(len(acc)), acc, marker="o", markersize=3, label=label)
    ax.axhline(chance, color="grey", linestyle="--", linewidth=1, label=f"chance ({chance:.2f})")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("state $h_i$ ($h_0$: embeddings; $h_i$: output of block $i-1$)")
    ax.set_ylabel("probe accuracy (eval split)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def grouped_bars(groups: dict[str, tuple[list[float], list[float]]], categories: list[str], ylabel: str, title: str,
                 path: str | Path, ylim: tuple[float, float] | None = None) -> Path:
    """One group of bars per category, one bar per label; ``groups``: label -> (values, error half-widths)."""
    import math

    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(categories), 4.2))
    width = 0.8 / max(len(groups), 1)
    for k, (label, (values, errors)) in enumerate(groups.items()):
        xs = [c + (k - (len(groups) - 1) / 2) * width for c in range(len(categories))]
        ax.bar(xs, values, width, yerr=[0 if e is None or math.isnan(e) else e for e in errors], capsize=3, label=label)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xticks(range(len(categories)), categories)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if ylim:
        ax.set_ylim(*ylim)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    return _save(fig, path)
