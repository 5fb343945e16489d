"""What compare reads from a run directory: its resolved config, the logged curves, linearity profiles, the final
benchmark results and their per-document samples. Reads whatever exists, so runs still in progress can be compared.

A resumed run may log a step twice (after a crash, the steps since the last checkpoint are trained again): the
later line wins, as it is the one the final model descends from.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from core.config import flatten, yaml_load
from core.errors import UserError
from core.io import iter_jsonl
from core.rundir import RunDir

# Config keys that do not change what a run computes (or that name it): runs differing only in these, and in
# the seed, are seeds of one variant. The micro-batch and the accumulation only split the same global batch
# (a step on 8 GPUs and on 1 differs by floating-point rounding).
NOT_THE_EXPERIMENT = ("name", "train.seed", "logging", "checkpoint", "data.cache_dir", "train.micro_batch_size",
                      "train.grad_accum_steps")


_RENAMED = {"train/ce": "train/task_loss"}  # old metrics.jsonl key -> its name now


def _ignored(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in NOT_THE_EXPERIMENT)


@dataclass
class Run:
    run: RunDir
    config: dict  # the run's config.yaml as data (not re-validated: compare must read runs of older versions)

    @property
    def path(self) -> Path:
        return self.run.path

    @property
    def flat(self) -> dict:
        return flatten(self.config)

    @property
    def seed(self) -> int | None:
        return self.config.get("train", {}).get("seed")

    @property
    def experiment(self) -> dict:
        """The flattened config without what does not change the experiment (its seed included)."""
        return {k: v for k, v in self.flat.items() if not _ignored(k)}

    @property
    def max_steps(self) -> int | None:
        return self.config.get("train", {}).get("max_steps")

    @cached_property
    def step(self) -> int | None:
        """The latest checkpoint's step."""
        return self.run.checkpoint_step()

    @cached_property
    def meta(self) -> dict:
        latest = self.run.latest_checkpoint()
        path = latest / "meta.json" if latest is not None else None
        return json.loads(path.read_text()) if path is not None and path.is_file() else {}

    @cached_property
    def curves(self) -> dict[str, dict[int, float]]:
        """metrics.jsonl as {key: {step: value}}; non-finite values (logged as strings) are dropped. Runs logged
        before the task loss had its name say ``train/ce``: read as ``train/task_loss``."""
        out: dict[str, dict[int, float]] = {}
        if self.run.metrics.is_file():
            for _, row in iter_jsonl(self.run.metrics):
                step = row.get("step")
                for k, v in row.items():
                    if k != "step" and isinstance(v, (int, float)):
                        out.setdefault(_RENAMED.get(k, k), {})[int(step)] = float(v)
        return {k: dict(sorted(v.items())) for k, v in out.items()}

    @cached_property
    def linearity(self) -> list[dict]:
        """linearity.jsonl records in step order (one per step)."""
        if not self.run.linearity.is_file():
            return []
        by_step = {int(r["step"]): r for _, r in iter_jsonl(self.run.linearity)}
        return [by_step[s] for s in sorted(by_step)]

    @cached_property
    def benchmarks(self) -> dict[str, dict[str, float]] | None:
        """The final benchmarks' results.json ({logged task name: {metric: value}}), or None."""
        path = self.run.final_benchmarks / "results.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def samples(self, logged_task: str) -> list[dict] | None:
        """The per-document samples of a task of the final benchmarks, or None when they were not logged."""
        path = self.run.final_benchmarks / f"samples_{logged_task}.jsonl"
        return [row for _, row in iter_jsonl(path)] if path.is_file() else None

    def final(self, key: str) -> float | None:
        """The last logged value of a metrics.jsonl key."""
        curve = self.curves.get(key)
        return curve[max(curve)] if curve else None

    @property
    def problems(self) -> list[str]:
        """Why this run is not complete yet (empty when it is)."""
        out = []
        if self.step is None:
            out.append("no checkpoint yet")
        elif self.max_steps is not None and self.step < self.max_steps:
            out.append(f"trained to step {self.step} of {self.max_steps}")
        if self.benchmarks is None:
            out.append("no final benchmarks")
        return out


@dataclass
class Found:
    runs: list[Run] = field(default_factory=list)
    sweep: dict | None = None  # sweep.json of the sweep the first runs belong to (variant order, baseline)


def find_runs(paths: list[str | os.PathLike]) -> Found:
    """Run directories (those holding a config.yaml) at or below each path, in path order."""
    found = Found()
    seen: set[Path] = set()
    for given in paths:
        root = Path(given)
        if not root.is_dir():
            raise UserError(f"{root}: not a directory (give run directories or a sweep directory)")
        dirs = []
        for here, subdirs, files in os.walk(root):
            if "config.yaml" in files:
                dirs.append(Path(here))
                subdirs[:] = []  # a run dir's contents are not runs
            else:
                subdirs.sort()
        if not dirs:
            raise UserError(f"{root}: no run directory (config.yaml) here or below")
        for d in dirs:
            if d.resolve() not in seen:
                seen.add(d.resolve())
                run = RunDir(d)
                config = yaml_load(run.config.read_text()) or {}
                if not isinstance(config, dict):
                    raise UserError(f"{run.config}: not a config mapping")
                found.runs.append(Run(run, config))
        if found.sweep is None:
            for candidate in (root, *list(root.resolve().parents)[:3]):  # a run dir is <sweep>/<variant>/seed<k>
                if (candidate / "sweep.json").is_file():
                    found.sweep = json.loads((candidate / "sweep.json").read_text())
                    break
    return found
