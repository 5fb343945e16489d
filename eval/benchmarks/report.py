"""Markdown tables of ``{task: {metric: value}}`` result dicts, laid out from what the tasks say about themselves
(``Task.group``, ``columns``, ``paper_columns``; ``eval.benchmarks.tasks``).

- The paper's Table 2 layout: every task's ``paper_columns`` (boolq, cb-acc, cb-f1, copa, multirc, record-f1,
  record-em, rte, wic, wsc, xstorycloze-en) and their plain mean.
- Then one table per group (``Group``) over its tasks' ``columns``: a group with a mean (XStoryCloze per language)
  lists all its members once one has a result, so that its mean compares across rows; a ``split`` group (loss
  tasks, ARC) gets one table per task; other groups list the tasks that have results.

Values are shown as their column says (percentages; loss and bpb as they are). Results computed on a subset or on
a fallback split (logged as ``<task>_first<N>``, ``record_dev32``) are marked with a dagger and listed under the
tables.

Compare runs (e.g. baseline vs regularized) from their results.json files:

    linreg report runs/base/eval/results.json runs/cos/eval/results.json [--label base,cos]
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from core.cli import command, list_arg, parser, run_cli
from core.errors import DataError
from eval.benchmarks.tasks import Column, Task, base_name, lookup, registered

PAPER_TITLE = "SuperGLUE and XStoryCloze-en (Table 2 layout, %)"


@dataclass
class Table:
    title: str
    columns: list[tuple[str, Column]]  # (task, column)
    mean: bool = False


def paper_columns(tasks: list[Task] | None = None) -> list[tuple[str, Column]]:
    """(task, column) of the paper's Table 2, in registry order."""
    return [(t.name, c) for t in (tasks if tasks is not None else registered()) for c in t.paper_columns]


def group_tables(present: Iterable[str], tasks: list[Task] | None = None) -> list[Table]:
    """The per-group tables (module docstring) for results of the tasks ``present`` (registry names)."""
    tasks = tasks if tasks is not None else registered()
    present = set(present)
    groups: dict[str, list[Task]] = {}
    for t in tasks:
        if t.columns:
            groups.setdefault(t.group.name, []).append(t)
    out = []
    for members in groups.values():
        group = members[0].group
        if not group.mean:
            members = [t for t in members if t.name in present]
        elif not any(t.name in present for t in members):
            continue
        if group.split:
            for t in members:
                percent = all(c.fmt == "percent" for c in t.columns)
                out.append(Table(t.display_name + (" (%)" if percent else ""), [(t.name, c) for c in t.columns]))
        elif members:
            out.append(Table(group.title, [(t.name, c) for t in members for c in t.columns], group.mean))
    return out


def report_tables(present: Iterable[str]) -> list[Table]:
    tasks = registered()
    return [Table(PAPER_TITLE, paper_columns(tasks), mean=True), *group_tables(present, tasks)]


def value(results: dict[str, dict], task: str, metric: str) -> tuple[float | None, str | None]:
    """(value, logged name) of ``task``'s metric; the full-split result wins over subset/fallback ones."""
    logged, metrics = lookup(results, task, metric)
    return (metrics[metric], logged) if logged is not None else (None, None)


def paper_mean(results: dict[str, dict]) -> float | None:
    """Plain mean of the Table 2 columns present (fractions, not percent); None when none is present."""
    values = [v for t, c in paper_columns() if (v := value(results, t, c.metric)[0]) is not None]
    return sum(values) / len(values) if values else None


def _table(rows: dict[str, dict[str, dict]], table: Table, marked: set[str]) -> tuple[str | None, bool]:
    """(markdown, whether a mean covers only some columns); None when no row has a value."""
    if not any(value(r, t, c.metric)[0] is not None for r in rows.values() for t, c in table.columns):
        return None, False
    header = ["model", *(c.label for _, c in table.columns)] + (["mean"] if table.mean else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    partial_any = False
    for label, results in rows.items():
        cells, values = [label], []
        for task, column in table.columns:
            v, logged = value(results, task, column.metric)
            mark = "†" if logged is not None and logged != task else ""
            if mark:
                marked.add(logged)
            cells.append(column.show(v) + mark)
            if v is not None:
                values.append(v)
        if table.mean:
            partial = "" if len(values) == len(table.columns) else "*"
            partial_any |= bool(values and partial)
            cells.append((Column("mean", "").show(sum(values) / len(values)) + partial) if values else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines), partial_any


def render_report(rows: dict[str, dict[str, dict]], notes: list[str] = ()) -> str:
    """Every table for ``{row label: {logged task name: {metric: value}}}``."""
    marked: set[str] = set()
    present = {base_name(logged) for results in rows.values() for logged in results}
    parts, partial = [], False
    for table in report_tables(present):
        text, part = _table(rows, table, marked)
        if text:
            parts.append(f"### {table.title}\n\n{text}\n")
            partial |= part
    foot = []
    if partial:
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
