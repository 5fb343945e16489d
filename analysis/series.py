"""Linearity across training checkpoints (the paper's Fig. 2), post hoc: one profile per checkpoint of a series.

    linreg series --run runs/x,runs/y [--label x,y] --out DIR
    linreg series --model EleutherAI/pythia-160m --revisions step1000,step2000,step4000 --out DIR
    linreg series --paths ckpt_a,ckpt_b,ckpt_c --label mine --out DIR

A series is a model's checkpoints in step order, from one of

- ``--run RUN_DIR``: every ``checkpoints/step_*`` of a linreg run (whether or not the in-loop linearity evaluator
  was on), read with ``model.export.load_model``;
- ``--model NAME --revisions R1,R2,...``: revisions (branches) of an HF model, as Pythia (``step1000``) and
  BLOOM publish their intermediate checkpoints; every ``--model`` is read at the same revisions (the Pythia suite
  names them alike across sizes);
- ``--paths P1,P2,...``: any list of model directories (HF exports, checkpoint dirs).

Several runs and models are several series, overlaid; ``--label`` names them, one per series in the order runs,
models, paths. The step of a checkpoint is the number of its ``step_*`` directory, else the last integer in its
revision or directory name.

Every checkpoint gets the paper's probe (``--text``, default the TinyStories validation text of the data root;
``--num-chunks`` 128 x ``--chunk-chars`` 512, ``--probe-seed`` 0), see docs/linearity.md. Results are cached in
``DIR/series.jsonl`` (one record per checkpoint, in the format of a run's ``linearity.jsonl``), keyed by the
checkpoint (path and modification time, or hub name and revision) and the probe: a rerun profiles only what is
missing, so a growing run or a longer revision list costs only the new checkpoints.

Outputs: ``series.csv`` (one row per model, checkpoint and block), ``series.json`` (settings + records),
``series.png`` (mean linearity with and without residual against step, log x-axis, one line per series) and
``series_heatmap.png`` (block x checkpoint, per series). Held-out statistics are on by default (``--no-heldout``
turns them off; ``--folds 5 --bootstrap 1000``): the held-out scores over folds of documents, 95 % intervals of
both scores and the chance levels (``eval.linearity.heldout``) in every record, the CSV's columns and series.png
(dashed lines, bands, chance).
``--toolkit [--id-tokens 1024] [--lens-tokens 1024]`` adds anisotropy, intrinsic dimension and the logit lens of
every state (``eval.linearity.state_measures``): ``series_states.csv`` (one row per checkpoint and state) and
``series_states.png`` (each measure against step, one line per state).
"""
from __future__ import annotations

import argparse
import gc
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from analysis.profiling import ProfileSpec, probe_from_args, profile_model
from analysis.report import ResultCache, fingerprint
from core.cli import Parser, add_shared_args, command, list_arg, run_cli
from core.errors import ConfigError
from core.io import write_csv, write_json
from core.rundir import RunDir, model_label, step_of
from eval.linearity.probe import ProbeSetConfig
from eval.linearity.profile import HELDOUT_QUANTITIES, INTERVALS, QUANTITIES
from eval.linearity.state_measures import STATE_KEYS, add_measure_arguments, measures_from_args

HELDOUT_COLUMNS = (*HELDOUT_QUANTITIES, *INTERVALS)


@dataclass(frozen=True)
class Checkpoint:
    name: str  # shown in tables: the step_* dir name, the revision, or the directory name
    step: int
    path: str  # a local directory or a hub name
    revision: str | None = None

    def identity(self) -> dict:
        """What makes two checkpoints the same for the cache (a rewritten directory is a new checkpoint)."""
        if self.revision is not None or not Path(self.path).exists():
            return {"hub": self.path, "revision": self.revision}
        local = Path(self.path).resolve()
        stamp = max((f.stat().st_mtime_ns for f in local.iterdir() if f.is_file()), default=local.stat().st_mtime_ns)
        return {"path": str(local), "mtime_ns": stamp}


def step_from_name(name: str) -> int:
    """``step_00000400`` -> 400; otherwise the last integer in the name (``step143000``, ``global_step3000``)."""
    step = step_of(name)
    if step is not None:
        return step
    numbers = re.findall(r"\d+", Path(name).name)
    if not numbers:
        raise ConfigError(f"cannot read a training step from '{name}': name checkpoints with their step "
                          f"(e.g. step1000)")
    return int(numbers[-1])


def run_series(run_dir: str) -> list[Checkpoint]:
    tags = RunDir(run_dir).checkpoint_dirs()
    if not tags:
        raise ConfigError(f"--run {run_dir}: no checkpoints/step_* directories")
    return [Checkpoint(t.name, step_of(t), str(t)) for t in tags]


def revision_series(model: str, revs: list[str]) -> list[Checkpoint]:
    return sorted((Checkpoint(r, step_from_name(r), model, r) for r in revs), key=lambda c: c.step)


def path_series(items: list[str]) -> list[Checkpoint]:
    for p in items:
        if not Path(p).exists():
            raise ConfigError(f"--paths: {p} does not exist")
    return sorted((Checkpoint(Path(p).name, step_from_name(p), p) for p in items), key=lambda c: c.step)


def collect_series(args) -> dict[str, list[Checkpoint]]:
    """label -> checkpoints in step order: a series per --run, a series per --model (read at every --revisions) and
    the series of --paths, named by --label in that order."""
    if bool(args.model) != bool(args.revisions):
        raise ConfigError(f"{len(args.model)} --model with {len(args.revisions)} --revisions: every --model is read "
                          f"at the --revisions, give both")
    sources = [(model_label(r), lambda r=r: run_series(r)) for r in args.run]
    sources += [(m, lambda m=m: revision_series(m, args.revisions)) for m in args.model]
    if args.paths:
        sources.append((Path(args.paths[0]).resolve().parent.name, lambda: path_series(args.paths)))
    if not sources:
        raise ConfigError("no series: give --run RUN_DIR, --model NAME --revisions LIST, or --paths LIST")
    if args.label and len(args.label) != len(sources):
        raise ConfigError(f"{len(args.label)} --label for {len(sources)} series: one per --run, per --model, and "
                          f"one for --paths")
    out: dict[str, list[Checkpoint]] = {}
    for label, (_, build) in zip(args.label or [name for name, _ in sources], sources):
        if label in out:
            raise ConfigError(f"two series are labelled '{label}': name them with --label")
        ckpts = build()
        steps = [c.step for c in ckpts]
        if len(set(steps)) != len(steps):
            raise ConfigError(f"series '{label}' has two checkpoints with the same step: {steps}")
        out[label] = ckpts
    return out


def profile_series(series: dict[str, list[Checkpoint]], text: str, spec: ProfileSpec, cache: ResultCache,
                   device: torch.device) -> dict[str, list[dict]]:
    """The profile record of every checkpoint (label -> records in step order); only uncached ones are run."""
    from eval.linearity.evaluator import history_record
    from model.export import load_model

    out = {}
    for label, ckpts in series.items():
        out[label] = []
        for ck in ckpts:
            key = fingerprint({"checkpoint": ck.identity(), "probe": spec.to_dict()})
            rec = cache.get(key)
            if rec is None:
                t0 = time.perf_counter()
                model, tokenizer = load_model(ck.path, revision=ck.revision)
                model.to(device)
                prof = profile_model(model, tokenizer, text, spec, device)
                rec = cache.add({"key": key, "checkpoint": ck.name, "path": ck.path, "revision": ck.revision,
                                 **history_record(ck.step, prof, time.perf_counter() - t0)})
                means = rec["means"]
                held = (f", held-out {means['heldout']:.4f} / {means['heldout_wo_res']:.4f} (chance "
                        f"{means['chance']:.4f} in-sample, {means['chance_heldout']:.4f} held-out)"
                        if "heldout" in means else "")
                print(f"{label} {ck.name} (step {ck.step}): mean linearity {means['linearity']:.4f}, "
                      f"without residual {means['linearity_wo_res']:.4f}{held} ({rec['seconds']:.1f} s)", flush=True)
                del model
                gc.collect()
            # the step and name are the series' (a cached record may have been written under another name)
            out[label].append({**rec, "step": ck.step, "checkpoint": ck.name})
    return out


def csv_rows(results: dict[str, list[dict]], heldout: bool = False):
    for label, recs in results.items():
        for rec in recs:
            for b in range(len(rec["linearity"])):
                yield [label, rec["checkpoint"], rec["step"], b, *(repr(rec[q][b]) for q in QUANTITIES),
                       rec["solver"][b], *(repr(rec[q][b]) for q in (HELDOUT_COLUMNS if heldout else ()))]


def state_rows(results: dict[str, list[dict]]):
    for label, recs in results.items():
        for rec in recs:
            measures = rec["toolkit"]
            for i in range(len(rec["linearity"]) + 1):
                yield [label, rec["checkpoint"], rec["step"], i,
                       *(repr(measures[k][i]) if k in measures else "" for k in STATE_KEYS)]


def parse_args(argv=None) -> argparse.Namespace:
    ap = Parser("series", "analysis.series", __doc__)
    g = ap.add_argument_group("series (one per run, one per model, and one of --paths)")
    list_arg(g, "--run", default=[], metavar="RUN_DIR", help="linreg runs: all their checkpoints/step_*")
    list_arg(g, "--model", default=[], metavar="NAME", help="HF models (hub names or directories), each read at "
             "every --revisions")
    list_arg(g, "--revisions", default=[], metavar="REV", help="revisions of every --model, e.g. step1000,step2000")
    list_arg(g, "--paths", default=[], metavar="DIR", help="model directories forming one series")
    list_arg(g, "--label", default=[], metavar="NAME", help="one per series, in the order runs, models, paths "
             "(default: the run's name, the model's name, the paths' parent directory)")
    ap.add_argument("--out", required=True, help="output and cache directory")
    add_shared_args(ap, data_root=True, probe=dict(defaults=ProbeSetConfig), device=True)
    add_measure_arguments(ap)
    return ap.parse_args(argv)


@command
def main(argv=None) -> int:
    from analysis.plots import plot_series, plot_series_heatmaps, plot_series_states
    from data.sources import data_root

    args = parse_args(argv)
    series = collect_series(args)
    device = torch.device(args.device)
    text, spec = probe_from_args(args, data_root(cli=args.data_root), device)
    spec.heldout, spec.toolkit = measures_from_args(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = profile_series(series, text, spec, ResultCache(out / "series.jsonl"), device)
    extra = HELDOUT_COLUMNS if args.heldout else ()
    write_csv(out / "series.csv", ["model", "checkpoint", "step", "block", *QUANTITIES, "solver", *extra],
              csv_rows(results, args.heldout))
    write_json(out / "series.json", {**spec.to_dict(), "device": str(device), "series": results})
    plot_series(results, out / "series.png")
    plot_series_heatmaps(results, out / "series_heatmap.png")
    if args.toolkit:
        write_csv(out / "series_states.csv", ["model", "checkpoint", "step", "state", *STATE_KEYS],
                  state_rows(results))
        plot_series_states(results, out / "series_states.png")
        print(f"wrote {out / 'series_states.csv'}, series_states.png")
    for label, recs in results.items():
        print(f"{label}: " + ", ".join(f"{r['step']}: {r['means']['linearity_wo_res']:.3f}" for r in recs)
              + "  (step: mean linearity without residual)")
    print(f"wrote {out / 'series.csv'}, series.json, series.png, series_heatmap.png")
    return 0


if __name__ == "__main__":
    run_cli(main)
