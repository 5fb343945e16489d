"""Markdown tables in the layout of the paper's Table 2, from ``{task: {metric: value}}`` result dicts.

Table 1: boolq, cb-acc, cb-f1, copa, multirc, record-f1, record-em, rte, wic, wsc, xstorycloze-en and their plain
mean; Table 2: XStoryCloze accuracy per language and their mean; Table 3: TinyStories loss / bits per byte /
perplexity. Values are percentages (loss and bpb as they are). Results computed on a subset or on a fallback split
(logged as ``<task>_first<N>``, ``record_dev32``) are marked with a dagger and listed under the tables.

Compare runs (e.g. baseline vs regularized) from their results.json files:

    linreg report runs/base/eval/results.json runs/cos/eval/results.json [--label base,cos]
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from core.cli import command, list_arg, parser, run_cli
from core.errors import DataError
from eval.benchmarks.tasks import GROUPS, TASKS

PAPER_COLUMNS = (  # (column, task, metric)
    ("boolq", "boolq", "acc"), ("cb-acc", "cb", "acc"), ("cb-f1", "cb", "f1"), ("copa", "copa", "acc"),
    ("multirc", "multirc", "acc"), ("record-f1", "record", "f1"), ("record-em", "record", "em"),
    ("rte", "rte", "acc"), ("wic", "wic", "acc"), ("wsc", "wsc", "acc"), ("xstorycloze-en", "xstorycloze_en", "acc"),
)
XSC_COLUMNS = tuple((g.rsplit("_", 1)[1], g, "acc") for g in GROUPS["xstorycloze"])
TINY_COLUMNS = (("loss", "tinystories", "loss"), ("bpb", "tinystories", "bpb"), ("ppl", "tinystories", "ppl"))


def base_name(logged: str) -> str:
    """'record_dev32_first100' -> 'record': the longest task or group name the logged name starts with."""
    names = [n for n in (*TASKS, *GROUPS) if logged == n or logged.startswith(n + "_")]
    return max(names, key=len) if names else logged


def _lookup(results: dict[str, dict], task: str, metric: str) -> tuple[float | None, str | None]:
    """(value, logged name) of ``task``'s metric; the full-split result wins over subset/fallback ones."""
    if task in results and metric in results[task]:
        return results[task][metric], task
    for logged, metrics in results.items():
        if base_name(logged) == task and metric in metrics:
            return metrics[metric], logged
    return None, None


def paper_mean(results: dict[str, dict]) -> float | None:
    """Plain mean of the Table 2 columns present (fractions, not percent); None when none is present."""
    values = [v for _, t, m in PAPER_COLUMNS if (v := _lookup(results, t, m)[0]) is not None]
    return sum(values) / len(values) if values else None


def _fmt(value: float | None, metric: str) -> str:
    if value is None or math.isnan(value):
        return "–"
    if metric in ("loss", "bpb"):
        return f"{value:.4f}"
    return f"{value:.2f}" if metric == "ppl" else f"{100 * value:.1f}"


def _table(rows: dict[str, dict[str, dict]], columns, mean: bool, marked: set[str]) -> str | None:
    if not any(_lookup(r, t, m)[0] is not None for r in rows.values() for _, t, m in columns):
        return None
    header = ["model", *(c for c, _, _ in columns)] + (["mean"] if mean else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, results in rows.items():
        cells, values = [label], []
        for _, task, metric in columns:
            value, logged = _lookup(results, task, metric)
            mark = "†" if logged is not None and logged != task else ""
            if mark:
                marked.add(logged)
            cells.append(_fmt(value, metric) + mark)
            if value is not None:
                values.append(value)
        if mean:
            partial = "" if len(values) == len(columns) else "*"
            cells.append((_fmt(sum(values) / len(values), "acc") + partial) if values else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_report(rows: dict[str, dict[str, dict]], notes: list[str] = ()) -> str:
    """All three tables for ``{row label: {logged task name: {metric: value}}}``."""
    marked: set[str] = set()
    parts = []
    for title, columns, mean in (("SuperGLUE and XStoryCloze-en (Table 2 layout, %)", PAPER_COLUMNS, True),
                                 ("XStoryCloze accuracy per language (%)", XSC_COLUMNS, True),
                                 ("TinyStories validation", TINY_COLUMNS, False)):
        table = _table(rows, columns, mean, marked)
        if table:
            parts.append(f"### {title}\n\n{table}\n")
    foot = []
    if any("*" in p for p in parts[:2]):
        foot.append("\\* mean over the columns present only.")
    if marked:
        foot.append("† not the full validation split: " + ", ".join(sorted(marked))
                    + " (first N documents, or ReCoRD's dev32 fallback).")
    foot += [f"- {n}" for n in dict.fromkeys(notes)]
    return "\n".join(parts) + ("\n" + "\n".join(foot) + "\n" if foot else "")


@command
def main(argv=None) -> int:
    p = parser("report", "eval.benchmarks.report", "Tables from one or more results.json files (one row each).")
    p.add_argument("results", nargs="+", help="results.json files written by linreg eval")
    list_arg(p, "--label", metavar="NAME", help="row labels, one per file (default: the parent directory names)")
    args = p.parse_args(argv)
    labels = args.label or [Path(r).resolve().parent.name for r in args.results]
    if len(labels) != len(args.results):
        p.error(f"{len(labels)} --label for {len(args.results)} results files: give one per file")
    results = {}
    for lab, r in zip(labels, args.results):
        try:
            results[lab] = json.loads(Path(r).read_text())
        except (OSError, ValueError) as e:
            raise DataError(f"{r}: not a readable results.json ({e.__class__.__name__})") from None
    print(render_report(results))
    return 0


if __name__ == "__main__":
    run_cli(main)
