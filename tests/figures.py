"""Reading a saved figure back for the PNG tests: what a reader of the picture sees, from the artists drawn."""
from __future__ import annotations

import numpy as np


def panels(fig) -> list:
    """The data axes of a figure, in drawing order (colourbars and switched-off spare panels left out)."""
    return [ax for ax in fig.axes if ax.axison and ax.get_label() != "<colorbar>"]


def legend(ax_or_fig) -> list[str]:
    """The legend entries of an axes (or of a figure-level legend)."""
    leg = ax_or_fig.get_legend() if hasattr(ax_or_fig, "get_legend") else None
    if leg is None and getattr(ax_or_fig, "legends", None):
        leg = ax_or_fig.legends[0]
    return [t.get_text() for t in leg.get_texts()] if leg is not None else []


def lines(ax) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """label -> (x, y) of every labelled line of an axes."""
    return {ln.get_label(): (np.asarray(ln.get_xdata(), float), np.asarray(ln.get_ydata(), float))
            for ln in ax.get_lines() if not ln.get_label().startswith("_")}


def colorbar_labels(fig) -> list[str]:
    return [ax.get_ylabel() for ax in fig.axes if ax.get_label() == "<colorbar>"]


def has_raw_tex(fig) -> bool:
    """A label with TeX markup outside $...$ (e.g. ``h_{i+1}`` printed literally)."""
    texts = [fig._suptitle, fig._supxlabel, fig._supylabel]
    for ax in fig.axes:
        texts += [ax.title, ax.xaxis.label, ax.yaxis.label]
        if ax.get_legend() is not None:
            texts += ax.get_legend().get_texts()
    for t in texts:
        s = t.get_text() if t is not None else ""
        outside = "".join(s.split("$")[0::2])
        if "_{" in outside or "\\" in outside:
            return True
    return False
