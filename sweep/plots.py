"""The comparison's figures (PNG), one line per variant: the mean over its seeds, with a band from the lowest to the
highest seed (with two or three seeds a min-max band says more than a ±std one).

    loss_curves.png                 validation loss and training loss (total and cross-entropy) against step
    linearity_wo_res_vs_step.png    mean linearity score without residual against step (the paper's Fig. 2 style)
    linearity_per_layer.png         per-block linearity without residual at the final step (Fig. 4 style)
    norm_ratio_per_layer.png        per-block ‖h_{i+1} − h_i‖ / ‖h_{i+1}‖ at the final step

Curves use the steps every seed of a variant has logged, so a run still in progress shortens its variant's line
rather than bending its mean.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _style(i: int, label: str, n: int) -> dict:
    import matplotlib.pyplot as plt

    colors = plt.get_cmap("tab10").colors
    return {"color": colors[i % len(colors)], "label": f"{label} (n={n})"}


def _band(ax, x, ys: np.ndarray, style: dict) -> None:
    ax.plot(x, ys.mean(axis=0), lw=1.6, marker="o" if len(x) <= 30 else None, ms=3, **style)
    if ys.shape[0] > 1:
        ax.fill_between(x, ys.min(axis=0), ys.max(axis=0), color=style["color"], alpha=0.2, lw=0)


def _common_curve(runs, key: str):
    curves = [r.curves.get(key, {}) for r in runs]
    steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    return np.array(steps), np.array([[c[s] for s in steps] for c in curves])


def _common_profile(runs):
    """The linearity records of each run at the latest step they all have."""
    by_step = [{rec["step"]: rec for rec in r.linearity} for r in runs]
    common = set.intersection(*(set(b) for b in by_step)) if by_step else set()
    if not common:
        return None, []
    step = max(common)
    return step, [b[step] for b in by_step]


def _finish(fig, ax_list, path: Path) -> str:
    for ax in ax_list:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path.name


def write_plots(variants, out: Path) -> list[str]:
    """Write every figure that has data; the names written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, key, title in zip(axes, ("val/loss", "train/loss", "train/task_loss"),
                              ("validation loss", "training loss (task loss + λ·regularizer)",
                               "training task loss (cross-entropy)")):
        for i, v in enumerate(variants):
            x, ys = _common_curve(v.runs, key)
            if x.size:
                _band(ax, x, ys, _style(i, v.label, len(v.runs)))
        ax.set(xlabel="step", ylabel="loss (nats per token)", title=title)
    written.append(_finish(fig, axes, out / "loss_curves.png"))

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, v in enumerate(variants):
        recs = [{r["step"]: r["means"]["linearity_wo_res"] for r in run.linearity} for run in v.runs]
        steps = sorted(set.intersection(*(set(r) for r in recs))) if recs else []
        if steps:
            _band(ax, np.array(steps), np.array([[r[s] for s in steps] for r in recs]), _style(i, v.label, len(v.runs)))
    ax.set(xlabel="step", ylabel="mean linearity score w/o residual",
           title="Linearity without residual through training")
    written.append(_finish(fig, [ax], out / "linearity_wo_res_vs_step.png"))

    for key, name, ylabel, title in (
            ("linearity_wo_res", "linearity_per_layer.png", "linearity score w/o residual",
             "Per-block linearity without residual, final step"),
            ("norm_ratio", "norm_ratio_per_layer.png", "‖h_{i+1} − h_i‖ / ‖h_{i+1}‖",
             "Per-block norm ratio, final step")):
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for i, v in enumerate(variants):
            step, recs = _common_profile(v.runs)
            if recs:
                ys = np.array([rec[key] for rec in recs])
                style = _style(i, v.label, len(v.runs))
                style["label"] += f", step {step}"
                _band(ax, np.arange(ys.shape[1]), ys, style)
        ax.set(xlabel="block i (pair h_i → h_{i+1})", ylabel=ylabel, title=title)
        ax.xaxis.get_major_locator().set_params(integer=True)
        written.append(_finish(fig, [ax], out / name))
    return written
