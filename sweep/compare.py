"""Compare the variants of an ablation: the paper's Table 2 with spreads over seeds and tested differences.

    linreg compare RUN_OR_SWEEP_DIR ... [--baseline VARIANT] --out DIR [--allow-mixed] [--n-boot 10000]
                                        [--plan DELTA]

Runs are grouped into variants by their resolved configs: runs whose configs differ only in the seed (and in what
does not change the experiment: ``sweep.runs.NOT_THE_EXPERIMENT``) are seeds of one variant, named after their
directory (``<sweep>/<variant>/seed<k>``). Writes DIR/compare.json (every number), DIR/compare.md (the tables,
sweep/report.py) and DIR/*.png (sweep/plots.py).

Cells: mean over seeds ± sample std [95 % t interval], with n. Each difference to the baseline answers two
questions (``sweep.stats``): is the recipe different (seeds are the units: Student's t over the per-seed values;
bold = p < 0.05), and are these trained models different on these documents (a paired bootstrap over documents,
conditional on the seeds; it needs the per-document samples that the sweep runner's ``linreg eval
--log-samples`` writes). Per column, the seed spread pooled over all variants gives the smallest difference the
sweep could detect (80 % power at alpha 0.05); ``--plan DELTA`` adds the seeds per variant a difference of DELTA
points needs.

Variants with another model shape or tokenizer than the baseline are refused unless ``--allow-mixed``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.cli import Parser, command, run_cli
from core.config import differences, first_difference
from core.errors import UserError
from core.stats import summarize
from sweep import stats
from sweep.runs import Run, find_runs

ALPHA = stats.ALPHA
_SEED_DIR = re.compile(r"^seed\d+$")


def lookup(results: dict | None, task: str) -> tuple[str | None, dict | None]:
    """eval's ``lookup`` (the full split wins), imported on first use so that this module loads without torch."""
    from eval.benchmarks.tasks import lookup as task_lookup

    return task_lookup(results, task)


def table2_columns():
    """(column, task, metric) of the paper's Table 2, as eval's report lays it out."""
    from eval.benchmarks.report import paper_columns

    return [(c.label, t, c.metric) for t, c in paper_columns()]


def _present(runs: list[Run]) -> set[str]:
    from eval.benchmarks.tasks import base_name

    return {base_name(logged) for r in runs for logged in (r.benchmarks or {})}


def other_columns(runs: list[Run]) -> list[tuple[str, str, str]]:
    """(column, task, metric) of the benchmarks the runs have results for beyond Table 2: the percent columns of
    their tasks' tables (eval's report), named ``<task>`` or, for a task with several, ``<task>-<column>``."""
    from eval.benchmarks.report import group_tables, paper_columns

    paper = {(t, c.metric) for t, c in paper_columns()}
    present = _present(runs)
    out = []
    for table in group_tables(present):
        cols = [(t, c) for t, c in table.columns
                if t in present and c.fmt == "percent" and (t, c.metric) not in paper]
        for t, c in cols:
            several = sum(t == u for u, _ in cols) > 1
            out.append((f"{t}-{c.label}" if several else t, t, c.metric))
    return out


def scalar_columns(runs: list[Run]) -> list[tuple[str, str, object]]:
    """(column, source, key): the validation loss, the compared columns of the loss tasks (eval's defaults and any
    with results: ``<task>-<metric>``) and linearity. All lower is better except linearity, which is what the
    paper raises; ``icl-loss`` (the linear-attention testbed's loss) where the runs log it."""
    from eval.benchmarks.tasks import DEFAULT_TASKS, expand_task_names, registered

    shown = set(expand_task_names(DEFAULT_TASKS)) | _present(runs)
    losses = [(f"{t.name}-{c.label}", "benchmark", (t.name, c.metric)) for t in registered() if t.name in shown
              for c in t.columns if c.fmt != "percent" and c.compared]
    # the linear-attention testbed's loss on its measurement prompts, where runs log it
    icl = [("icl-loss", "curve", "opt/loss")] if any("opt/loss" in r.curves for r in runs) else []
    return [("val-loss", "curve", "val/loss"), *losses, ("linearity", "linearity", "linearity"),
            ("linearity-wo-res", "linearity", "linearity_wo_res"), *icl]


@dataclass
class Variant:
    label: str
    runs: list[Run]

    @property
    def experiment(self) -> dict:
        return self.runs[0].experiment


# -- grouping ------------------------------------------------------------------------------------------------------

def _label(runs: list[Run]) -> str:
    parents = {r.path.parent.name for r in runs}
    if all(_SEED_DIR.match(r.path.name) for r in runs) and len(parents) == 1:
        return parents.pop()
    if len(runs) == 1:
        return runs[0].path.name
    names = [r.path.name for r in runs]
    prefix = names[0][:next((i for i, cs in enumerate(zip(*names)) if len(set(cs)) > 1), min(map(len, names)))]
    return prefix.rstrip("-_.") or "+".join(names)


def group_runs(runs: list[Run], order: list[str] = ()) -> list[Variant]:
    """Variants in ``order`` (a sweep's variant order), then in order of appearance."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(json.dumps(run.experiment, sort_keys=True, default=str), []).append(run)
    variants = [Variant(_label(g), g) for g in groups.values()]
    by_label: dict[str, Variant] = {}
    for v in variants:
        seeds = [r.seed for r in v.runs]
        if len(set(seeds)) != len(seeds):
            dup = [r.path for r in v.runs if seeds.count(r.seed) > 1]
            raise UserError(f"{dup[0]} and {dup[1]} are the same experiment with the same seed: keep one")
        if v.label in by_label:
            other = by_label[v.label]
            raise UserError(f"runs of variant '{v.label}' differ in more than the seed: {other.runs[0].path} and "
                            f"{v.runs[0].path} differ in {first_difference(other.experiment, v.experiment)}")
        by_label[v.label] = v
    rank = {name: i for i, name in enumerate(order)}
    return sorted(variants, key=lambda v: rank.get(v.label, len(rank)))


def _shape(v: Variant) -> dict:
    """What must agree between compared variants: model shape and tokenizer (config and trained fingerprint)."""
    keys = {k: val for k, val in v.experiment.items()
            if (k.startswith("model.") and k != "model.attn_implementation") or k.startswith("tokenizer.")}
    prints = {r.meta.get("tokenizer") for r in v.runs if r.meta.get("tokenizer")}
    if prints:
        keys["tokenizer fingerprint"] = ",".join(sorted(prints))
    return keys


def mixed(variants: list[Variant], baseline: Variant) -> list[str]:
    """One line per variant whose model shape or tokenizer differs from the baseline's."""
    out, ref = [], _shape(baseline)
    for v in variants:
        if v is not baseline and _shape(v) != ref:
            out.append(f"{v.label} vs {baseline.label}: {first_difference(_shape(v), ref)}")
    return out


def differs(v: Variant, baseline: Variant) -> dict:
    return {k: v.experiment.get(k) for k in differences(v.experiment, baseline.experiment)}


# -- per-run values ------------------------------------------------------------------------------------------------

def benchmark_values(run: Run, columns) -> tuple[list[float], set[str]]:
    """The Table 2 values of a run (NaN where missing) and the logged names that are not full splits."""
    values, subset = [], set()
    for _, task, metric in columns:
        logged, metrics = lookup(run.benchmarks, task)
        values.append(float(metrics[metric]) if metrics and metric in metrics else float("nan"))
        if logged is not None and logged != task:
            subset.add(logged)
    return values, subset


def scalar_value(run: Run, source: str, key) -> float | None:
    if source == "curve":
        return run.final(key)
    if source == "benchmark":
        _, metrics = lookup(run.benchmarks, key[0])
        return float(metrics[key[1]]) if metrics and key[1] in metrics else None
    return float(run.linearity[-1]["means"][key]) if run.linearity else None


def task_metric(run: Run, task: str, metrics: list[str]) -> tuple[stats.Metric | None, list | None, str | None]:
    """(metric over the task's documents for the given columns, doc ids, why not) from the run's samples."""
    logged, results = lookup(run.benchmarks, task)
    samples = run.samples(logged) if logged else None
    if not samples:
        return None, None, "no per-document samples"
    parts = []
    for m in metrics:
        if all(m in s for s in samples):
            parts.append(stats.mean_metric(np.array([float(s[m]) for s in samples])))
        elif m == "f1" and all("pred" in s and "target" in s for s in samples):
            parts.append(stats.macro_f1_metric([s["pred"] for s in samples], [s["target"] for s in samples],
                                               len(samples[0]["continuations"])))
        else:
            return None, None, f"samples have no '{m}'"
    metric = stats.combine(parts)
    expected = [results[m] for m in metrics]
    if not np.allclose(metric.score(), expected, rtol=0, atol=1e-9):
        return None, None, "samples do not reproduce results.json"
    return metric, [s["doc_id"] for s in samples], None


# -- the comparison ------------------------------------------------------------------------------------------------

def _cell(values: list[float], seeds: list) -> dict:
    kept = [(v, s) for v, s in zip(values, seeds) if v is not None and np.isfinite(v)]
    summary = summarize([v for v, _ in kept])
    base = summary.to_dict() if summary else {"n": 0, "mean": None, "std": None, "ci95": None}
    return {**base, "values": [v for v, _ in kept], "seeds": [s for _, s in kept]}


def compare(variants: list[Variant], baseline: Variant, n_boot: int = 10000, seed: int = 0,
            plan: float | None = None) -> dict:
    runs = [r for v in variants for r in v.runs]
    paper, others, scalar_cols = table2_columns(), other_columns(runs), scalar_columns(runs)
    columns = paper + others
    n_paper = len(paper)  # names: the Table 2 columns, their mean, then the other benchmarks' columns
    names = [c for c, _, _ in paper] + ["mean"] + [c for c, _, _ in others]
    index = {id(r): i for i, r in enumerate(runs)}
    notes: list[str] = []

    # Per run: the benchmark values (from results.json) and the plain Table 2 mean (only when all its columns are
    # there).
    point = np.full((len(runs), len(names)), np.nan)
    subset: set[str] = set()
    for i, r in enumerate(runs):
        values, sub = benchmark_values(r, columns)
        subset |= sub
        point[i, :n_paper], point[i, n_paper + 1:] = values[:n_paper], values[n_paper:]
        point[i, n_paper] = np.mean(values[:n_paper]) if np.all(np.isfinite(values[:n_paper])) else np.nan

    # Bootstrap replicates of every run on the same resampled documents, task by task (NaN where not possible).
    rng = np.random.default_rng(seed)
    reps = np.full((n_boot, len(runs), len(names)), np.nan)
    for (task, metrics), first in zip(_tasks(columns), _first_columns(columns)):
        col = names.index(first)
        width = len(metrics)
        found = [(i, *task_metric(r, task, metrics)) for i, r in enumerate(runs) if lookup(r.benchmarks, task)[0]]
        usable = [(i, m, d) for i, m, d, why in found if m is not None]
        problems: dict[str, list[str]] = {}
        for i, _, _, why in found:
            if why is not None:
                problems.setdefault(why, []).append(_run_label(runs[i]))
        notes += [f"{task}: {why} for {', '.join(who)}: no model question for differences involving them"
                  for why, who in problems.items()]
        if usable:
            ref = usable[0][2]
            same = [(i, m) for i, m, d in usable if d == ref]
            for i, _, d in usable:
                if d != ref:
                    notes.append(f"{task}: {_run_label(runs[i])} was scored on other documents than "
                                 f"{_run_label(runs[usable[0][0]])} (not paired: no model question)")
            r_t = stats.bootstrap_replicates([[m for _, m in same]], n_boot, rng)
            reps[:, [i for i, _ in same], col:col + width] = r_t
    reps[:, :, n_paper] = reps[:, :, :n_paper].mean(axis=2)  # the Table 2 mean, replicate by replicate

    def rows(v):
        return [index[id(r)] for r in v.runs]

    seeds = {v.label: [r.seed for r in v.runs] for v in variants}
    cells = {v.label: {c: _cell(list(point[rows(v), j]), seeds[v.label]) for j, c in enumerate(names)}
             for v in variants}
    scalars = {v.label: {c: _cell([scalar_value(r, src, key) for r in v.runs], seeds[v.label])
                         for c, src, key in scalar_cols} for v in variants}
    diffs: dict[str, dict] = {}
    for v in variants:
        if v is baseline:
            continue
        a, b = rows(v), rows(baseline)
        # the model question where every run of both variants has usable samples for the column
        paired = [j for j in range(len(names)) if np.all(np.isfinite(reps[:, a + b, j]))
                  and np.all(np.isfinite(point[a + b, j]))]
        model = dict(zip(paired, stats.model_difference(point[a][:, paired], point[b][:, paired],
                                                        reps[:, a][:, :, paired], reps[:, b][:, :, paired])))
        out = {}
        for j, c in enumerate(names):
            out[c] = _question(cells[v.label][c]["values"], cells[baseline.label][c]["values"], model.get(j))
        for c, _, _ in scalar_cols:
            out[c] = _question(scalars[v.label][c]["values"], scalars[baseline.label][c]["values"], None)
        diffs[v.label] = out

    # Holm over every recipe test of the table, reported beside the uncorrected p-values.
    flat = [(lab, c) for lab, d in diffs.items() for c in d if d[c] is not None]
    adjusted = stats.holm([diffs[lab][c]["recipe"].p for lab, c in flat])
    differences = {lab: {c: None for c in d} for lab, d in diffs.items()}
    for (lab, c), p_holm in zip(flat, adjusted):
        recipe, model = diffs[lab][c]["recipe"], diffs[lab][c]["model"]
        differences[lab][c] = {
            "recipe": {**recipe.to_dict(), "p_holm": p_holm, "significant": recipe.p is not None and recipe.p < ALPHA},
            "model": model.to_dict() if model else None}
    all_cells = {lab: {**cells[lab], **scalars[lab]} for lab in cells}
    planning = {c: _planning(all_cells, c, baseline.label, plan if c in names else None)
                for c in [*names, *(c for c, _, _ in scalar_cols)]}
    if subset:
        notes.append("not the full validation split: " + ", ".join(sorted(subset))
                     + " (first N documents, or ReCoRD's dev32 fallback: 32 queries of the train split)")
    return {"baseline": baseline.label, "alpha": ALPHA, "power": stats.POWER, "n_boot": n_boot,
            "bootstrap_seed": seed, "plan_delta": plan,
            "columns": {"benchmarks": names[:n_paper + 1], "other": names[n_paper + 1:],
                        "scalars": [c for c, _, _ in scalar_cols]},
            "variants": [_describe(v, baseline) for v in variants],
            "cells": all_cells, "differences": differences, "planning": planning, "notes": list(dict.fromkeys(notes))}


def _run_label(run: Run) -> str:
    return f"{run.path.parent.name}/{run.path.name}"


def _question(a: list[float], b: list[float], model: stats.Difference | None) -> dict | None:
    """Both questions for one column (None where a side has no value at all)."""
    if not a or not b:
        return None
    return {"recipe": stats.recipe_difference(a, b), "model": model}


def _planning(cells: dict, column: str, baseline: str, plan: float | None) -> dict:
    """The seed standard deviation of a column pooled over every variant, the smallest difference a sweep of this
    many seeds per variant could detect, and (``plan``, in the column's table units: percent points for the
    benchmarks) the seeds per variant a difference of ``plan`` needs."""
    sd, df = stats.pooled_sd([cells[lab][column]["values"] for lab in cells])
    n_base = cells[baseline][column]["n"]
    others = [cells[lab][column]["n"] for lab in cells if lab != baseline and cells[lab][column]["n"]]
    n_other = min(others) if others else 0
    out = {"seed_sd": sd, "df": df, "seeds": [n_other, n_base], "detectable": None, "plan_seeds": None}
    if sd and n_base >= 2 and n_other >= 2:
        out["detectable"] = stats.detectable(sd, n_other, n_base)
    if sd and plan is not None:
        out["plan_seeds"] = stats.seeds_needed(plan / 100.0, sd)
    return out


def _tasks(columns):
    """[(task, [metric, ...])] in column order (a task's columns are adjacent)."""
    out: list[tuple[str, list[str]]] = []
    for _, task, metric in columns:
        if out and out[-1][0] == task:
            out[-1][1].append(metric)
        else:
            out.append((task, [metric]))
    return out


def _first_columns(columns) -> list[str]:
    """The name of each task's first column, in the order of ``_tasks``."""
    return [c for j, (c, task, _) in enumerate(columns) if j == 0 or columns[j - 1][1] != task]


def _describe(v: Variant, baseline: Variant) -> dict:
    return {"label": v.label, "differs_from_baseline": differs(v, baseline),
            "runs": [{"path": str(r.path), "seed": r.seed, "step": r.step, "max_steps": r.max_steps,
                      "incomplete": r.problems} for r in v.runs]}


# -- command line --------------------------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    p = Parser("compare", "sweep.compare", __doc__)
    p.add_argument("paths", nargs="+", metavar="RUN_OR_SWEEP_DIR", help="run directories, or directories above them")
    p.add_argument("--out", required=True, help="output directory (compare.md, compare.json, PNG plots)")
    p.add_argument("--baseline", help="the variant the others are compared with (default: the sweep's, else the first)")
    p.add_argument("--allow-mixed", action="store_true",
                   help="compare variants with different model shapes or tokenizers (the table says so)")
    p.add_argument("--n-boot", type=int, default=10000, help="bootstrap replicates (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap random seed (default %(default)s)")
    p.add_argument("--plan", type=float, metavar="DELTA",
                   help="also say how many seeds per variant a difference of DELTA percent points needs on each "
                        "benchmark column (80 %% power, alpha 0.05, the seed spread this sweep observed)")
    p.add_argument("--title", help="title of compare.md (default: the sweep's name)")
    p.add_argument("--no-plots", action="store_true", help="tables only")
    return p.parse_args(argv)


@command
def main(argv=None) -> int:
    args = parse_args(argv)
    if args.n_boot < 100:
        raise UserError(f"--n-boot {args.n_boot}: use at least 100 replicates")
    if args.plan is not None and not (np.isfinite(args.plan) and args.plan > 0):
        raise UserError(f"--plan {args.plan}: give a difference above 0, in percent points")
    found = find_runs(args.paths)
    sweep = found.sweep or {}
    variants = group_runs(found.runs, list(sweep.get("variants", {})))
    labels = [v.label for v in variants]
    wanted = args.baseline or (sweep.get("baseline") if sweep.get("baseline") in labels else None) or labels[0]
    if wanted not in labels:
        raise UserError(f"--baseline {wanted}: no such variant (variants: {', '.join(labels)})")
    baseline = variants[labels.index(wanted)]
    mix = mixed(variants, baseline)
    if mix and not args.allow_mixed:
        raise UserError(f"variants differ in model shape or tokenizer: {mix[0]}; pass --allow-mixed to compare "
                        "them anyway")
    result = compare(variants, baseline, args.n_boot, args.seed, args.plan)
    result["mixed"] = mix
    result["title"] = args.title or sweep.get("name") or Path(args.paths[0]).resolve().name
    result["command"] = "linreg compare " + shlex.join(argv if argv is not None else sys.argv[1:])
    result["generated"] = datetime.datetime.now().isoformat(timespec="seconds")

    from sweep.report import render

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "compare.md").write_text(render(result))
    written = ["compare.md", "compare.json"]
    if not args.no_plots:
        from sweep.plots import write_plots

        written += write_plots(variants, out)
    print(render(result))
    print(f"wrote {', '.join(str(out / w) for w in written)}")
    return 0


if __name__ == "__main__":
    run_cli(main)
