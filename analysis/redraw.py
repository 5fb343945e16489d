"""Redraw the analyses' figures from the tables they wrote, without a model or data:

    linreg redraw DIR

From whichever of these DIR holds: ``series.csv`` -> ``series.png`` and ``series_heatmap.png`` (the mean over
blocks of each checkpoint is the mean of its block rows); ``finetune.csv`` -> ``finetune.png`` (mean and sample
std over the seed rows, as ``analysis.finetune`` summarizes them); ``probes.csv`` with ``probes.md`` (whose task
headings carry the chance level) -> ``probes_<task>.png``. The same plotting functions draw them as the analyses'
own runs do; what a table does not hold (the held-out statistics' intervals) is not redrawn.
"""
from __future__ import annotations

import csv
import re
from pathlib import Path

from core.cli import Parser, command, run_cli
from core.errors import DataError


def _rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def series(out: Path) -> list[Path]:
    from analysis.plots import SERIES_KEYS, plot_series, plot_series_heatmaps

    by_model: dict[str, dict[int, list[dict]]] = {}
    for r in _rows(out / "series.csv"):
        by_model.setdefault(r["model"], {}).setdefault(int(r["step"]), []).append(r)
    results = {}
    for model, steps in by_model.items():
        recs = []
        for step in sorted(steps):
            blocks = sorted(steps[step], key=lambda r: int(r["block"]))
            rec = {"step": step, **{k: [float(b[k]) for b in blocks] for k in SERIES_KEYS}}
            rec["means"] = {k: sum(rec[k]) / len(rec[k]) for k in SERIES_KEYS}
            recs.append(rec)
        results[model] = recs
    return [plot_series(results, out / "series.png"), plot_series_heatmaps(results, out / "series_heatmap.png")]


def finetune(out: Path) -> list[Path]:
    from analysis.finetune import plot_deltas
    from core import stats

    deltas: dict[str, dict[str, list[float]]] = {}
    for r in _rows(out / "finetune.csv"):
        deltas.setdefault(r["model"], {}).setdefault(r["task"], []).append(float(r["delta_wo_res"]))
    summary = {m: {t: {"delta_wo_res": (sm := stats.summarize(v)).mean, "delta_wo_res_std": sm.std}
                   for t, v in per_task.items()} for m, per_task in deltas.items()}
    tasks = list(dict.fromkeys(t for per_task in deltas.values() for t in per_task))  # the CLI's task order
    return [plot_deltas(summary, tasks, out / "finetune.png")]


def probes(out: Path) -> list[Path]:
    from analysis.probes import plot_task

    chance = {m.group(1): float(m.group(2)) for m in
              re.finditer(r"^### (\S+) \(.*chance ([0-9.]+)\)$", (out / "probes.md").read_text(), re.M)}
    curves: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for r in _rows(out / "probes.csv"):
        curves.setdefault(r["task"], {}).setdefault(r["model"], []).append((int(r["layer"]), float(r["accuracy"])))
    paths = []
    for task, per_model in curves.items():
        if task not in chance:
            raise DataError(f"{out / 'probes.md'}: no heading with the chance level of {task}")
        paths.append(plot_task(task, {m: [a for _, a in sorted(v)] for m, v in per_model.items()}, chance[task], out))
    return paths


DRAWERS = {"series.csv": series, "finetune.csv": finetune, "probes.csv": probes}


@command
def main(argv=None) -> int:
    ap = Parser("redraw", "analysis.redraw", __doc__)
    ap.add_argument("dir", help="an analysis output directory (e.g. docs/analyses_example)")
    out = Path(ap.parse_args(argv).dir)
    found = [draw for table, draw in DRAWERS.items() if (out / table).is_file()]
    if not found:
        raise DataError(f"{out}: none of {', '.join(DRAWERS)}")
    for draw in found:
        for path in draw(out):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    run_cli(main)
