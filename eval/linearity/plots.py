"""Figures: profiles of several models (as the paper's Fig. 1) and curves through training."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from core.errors import DataError  # noqa: E402
from core.io import iter_jsonl  # noqa: E402

TITLES = {
    "linearity": "Linearity score",
    "linearity_wo_res": "Linearity score without residual",
    "norm_ratio": r"Norm ratio $\|h_{i+1} - h_i\| \,/\, \|h_{i+1}\|$",
}


def plot_profiles(profiles: dict, path: str | Path) -> Path:
    """Two panels (LS; LS without residual) against normalised depth, one line per model. Profiles with held-out
    statistics add the held-out score (dashed), both scores' intervals (bands) and the chance levels (dotted:
    in-sample chance; dash-dotted: held-out chance).

    ``profiles``: label -> ``Profile``."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key in zip(axes, ("linearity", "linearity_wo_res")):
        for label, prof in profiles.items():
            x = prof.depths()
            line, = ax.plot(x, [getattr(p, key) for p in prof.pairs], marker="o", markersize=3, label=label)
            if prof.pairs[0].heldout is not None:
                heldout_lines(ax, x, [p.heldout for p in prof.pairs], key, line.get_color(), label)
        ax.set_title(TITLES[key])
        ax.set_xlabel("normalised depth (block index / (L - 1))")
        ax.set_ylabel("score")
        ax.grid(alpha=0.3)
        zoom_inset(ax)
        ax.legend(fontsize=8)
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


CHANCE = "chance"  # the artist id of the chance lines, by which zoom_inset tells them from the scores


def heldout_lines(ax, x, stats: list, key: str, color, label: str) -> None:
    """Intervals, held-out score and chance levels of one model's pairs (``HeldoutStats`` or their dicts)."""
    def get(name):
        return [st[name] if isinstance(st, dict) else getattr(st, name) for st in stats]

    held = key.replace("linearity", "heldout")
    prefix = f"{label}: " if label else ""
    ax.fill_between(x, get(f"{key}_lo"), get(f"{key}_hi"), color=color, alpha=0.2, linewidth=0)
    ax.plot(x, get(held), linestyle="--", marker="s", markersize=3, color=color, label=f"{prefix}held-out")
    ax.fill_between(x, get(f"{held}_lo"), get(f"{held}_hi"), color=color, alpha=0.2, linewidth=0,
                    label=f"{prefix}95 % intervals")
    ax.plot(x, get("chance"), linestyle=":", color=color, alpha=0.8, label=f"{prefix}chance (in-sample)",
            gid=CHANCE)
    ax.plot(x, get("chance_heldout"), linestyle="-.", color=color, alpha=0.8, label=f"{prefix}chance (held-out)",
            gid=CHANCE)


def zoom_inset(ax) -> bool:
    """When a panel with held-out statistics holds its scores far above its chance levels (an empty gap between
    them of at least 0.4 of the panel's height once 0.06 is kept clear on each side), the score lines and interval
    bands again in an inset placed in that gap, on their own range, where bands a few thousandths wide are visible
    (on the full 0-1 axis they are not). Call after drawing and before the legend; True if an inset was made."""
    chance = [ln for ln in ax.lines if ln.get_gid() == CHANCE]  # marked by heldout_lines, whatever the labels
    scores = [ln for ln in ax.lines if ln not in chance]
    fills = [c for c in ax.collections if c.get_paths()]
    bands = [c.get_paths()[0].vertices for c in fills]
    if not chance or not scores:
        return False
    top_chance = max(float(max(ln.get_ydata())) for ln in chance)
    data = [float(v) for ln in scores for v in ln.get_ydata()] + [float(v) for b in bands for v in b[:, 1]]
    lo, hi = min(data), max(data)
    y0, y1 = ax.get_ylim()
    gap_lo, gap_hi = (top_chance - y0) / (y1 - y0) + 0.06, (lo - y0) / (y1 - y0) - 0.06
    if gap_hi - gap_lo < 0.4:
        return False
    inset = ax.inset_axes([0.1, gap_lo, 0.45, gap_hi - gap_lo])
    # an empty patch where the inset is, so that the legend's "best" place avoids it as it avoids the lines
    ax.add_patch(Rectangle((0.1, gap_lo), 0.45, gap_hi - gap_lo, transform=ax.transAxes, facecolor="none",
                           edgecolor="none"))
    for ln in scores:
        inset.plot(ln.get_xdata(), ln.get_ydata(), color=ln.get_color(), linestyle=ln.get_linestyle(),
                   marker=ln.get_marker(), markersize=2)
    for c, b in zip(fills, bands):
        inset.fill(b[:, 0], b[:, 1], color=c.get_facecolor()[0], linewidth=0)
    pad = 0.08 * (hi - lo) or 1e-3
    inset.set_xscale(ax.get_xscale())
    inset.set_xlim(ax.get_xlim())
    inset.set_ylim(lo - pad, hi + pad)
    inset.tick_params(labelsize=6)
    inset.tick_params(axis="x", which="both", labelbottom=False)
    inset.grid(alpha=0.3)
    ax.indicate_inset_zoom(inset, edgecolor="0.5")
    return True


STATE_TITLES = {
    "anisotropy": "Anisotropy $\\lambda_1 / \\sum_k \\lambda_k$",
    "intrinsic_dimension": "Intrinsic dimension (TwoNN)",
    "loss": "Logit lens: loss of lm_head(final_norm($h_i$))",
    "loss_no_norm": "Logit lens: loss of lm_head($h_i$)",
    "neglogp_argmax": "Logit lens: $-\\log p(\\mathrm{argmax})$",
}
STATE_LABELS = {  # the y-axis of each per-state measurement
    "anisotropy": "share of variance on the top direction",
    "intrinsic_dimension": "intrinsic dimension",
    "loss": "loss (nats per token)",
    "loss_no_norm": "loss (nats per token)",
    "neglogp_argmax": "nats",
}


def plot_states(curves: dict[str, dict[str, list[float]]], path: str | Path, xlabel: str = "state $h_i$") -> Path:
    """One panel per per-state measurement, one line per label; ``curves``: label -> {measure: values of
    h_0..h_L}."""
    keys = [k for k in STATE_TITLES if any(k in c for c in curves.values())]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.8), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for label, c in curves.items():
            if key in c:
                ax.plot(range(len(c[key])), c[key], marker="o", markersize=3, label=label)
        ax.set_title(STATE_TITLES[key], fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(STATE_LABELS[key])
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def read_history(jsonl: str | Path) -> list[dict]:
    """Records of a run's linearity.jsonl, one per step (a resumed run may repeat steps: the last one wins)."""
    by_step = {}
    for n, rec in iter_jsonl(jsonl):
        if not isinstance(rec, dict) or "step" not in rec:
            raise DataError(f"{jsonl}:{n}: not a linearity record (no 'step')")
        by_step[rec["step"]] = rec
    if not by_step:
        raise DataError(f"{jsonl}: no linearity records")
    return [by_step[s] for s in sorted(by_step)]


def training_figures(history: list[dict]) -> dict[str, plt.Figure]:
    """Mean of each quantity against step, and a block x step heatmap of each quantity."""
    steps = [r["step"] for r in history]
    curves, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for ax, key in zip(axes, TITLES):
        line, = ax.plot(steps, [r["means"][key] for r in history], marker="o", markersize=3, label="in-sample")
        if key != "norm_ratio" and all("heldout" in r["means"] for r in history):
            means = [r["means"] for r in history]
            heldout_lines(ax, steps, means, key, line.get_color(), "")
            zoom_inset(ax)
            ax.legend(fontsize=7)
        ax.set_title(f"{TITLES[key]}, mean over blocks", fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("mean over blocks")
        ax.grid(alpha=0.3)
    curves.tight_layout()
    heat, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, key in zip(axes, TITLES):
        grid = [[r[key][b] for r in history] for b in range(len(history[-1][key]))]
        mesh = ax.pcolormesh(steps, range(len(grid)), grid, shading="nearest", cmap="viridis")
        heat.colorbar(mesh, ax=ax, label=TITLES[key])
        ax.set_title(TITLES[key], fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("block")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    heat.tight_layout()
    figures = {"linearity_vs_step": curves, "linearity_heatmaps": heat}
    if all("toolkit" in r for r in history):
        figures["linearity_states_vs_step"] = states_figure(steps, [r["toolkit"] for r in history])
    return figures


def states_figure(steps: list[int], measures: list[dict[str, list[float]]]) -> plt.Figure:
    """One panel per per-state measurement against step, one line per state h_i (colour: depth)."""
    keys = [k for k in STATE_TITLES if k in measures[-1]]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.8), squeeze=False)
    count = len(measures[-1][keys[0]])
    colours = plt.cm.viridis([i / max(count - 1, 1) for i in range(count)])
    for ax, key in zip(axes[0], keys):
        for i in range(count):
            ax.plot(steps, [m[key][i] for m in measures], marker="o", markersize=2, color=colours[i],
                    label=f"$h_{{{i}}}$")
        ax.set_title(STATE_TITLES[key], fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel(STATE_LABELS[key])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def save_figures(figures: dict[str, plt.Figure], out_dir: str | Path, close: bool = True) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in figures.items():
        paths.append(out_dir / f"{name}.png")
        fig.savefig(paths[-1], dpi=110)
        if close:
            plt.close(fig)
    return paths


def plot_history(jsonl: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write the training figures of a linearity.jsonl as PNGs (default: ``plots/`` beside it)."""
    out_dir = Path(out_dir) if out_dir is not None else Path(jsonl).parent / "plots"
    return save_figures(training_figures(read_history(jsonl)), out_dir)
