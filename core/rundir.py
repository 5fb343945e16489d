"""The layout of a run directory, in one place. Everything that reads or writes a run dir goes through ``RunDir``.

    runs/<name>/
      config.yaml        resolved config (a resume reads it back)
      metrics.jsonl      one JSON object per logged step; tb/ holds the same scalars for TensorBoard
      tokenizer/         the run's tokenizer (save_pretrained format)
      checkpoints/       step_XXXXXXXX/ (DeepSpeed's files, rng_rank<r>.pt, meta.json) and ``latest``
      export/            HF model + tokenizer
      linearity.jsonl, plots/, benchmarks/step_XXXXXXXX/   evaluator outputs
      benchmarks/final/  full-split benchmarks of the final checkpoint (linreg eval --log-samples; sweeps)
      aborted_<n>/       the logs of an attempt killed before its first checkpoint, moved aside by the fresh start

The logs hold each (step, tag) once across crashes and resumes: a resume from step k drops what was logged after
the checkpoint (``trim_logs``), and a fresh start over an attempt that never finished a checkpoint moves that
attempt's logs aside (``set_aside_attempt``) instead of appending to them.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

from core.errors import CheckpointError, ConfigError
from core.io import trim_jsonl, write_atomic

LATEST = "latest"
MANIFEST = "manifest.json"  # written last, after every rank's files: its presence means "complete"
_TAG = re.compile(r"^step_(\d{8,})$")


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def step_of(tag_dir: str | os.PathLike) -> int | None:
    m = _TAG.match(Path(tag_dir).name)
    return int(m.group(1)) if m else None


def is_checkpoint_dir(path: Path) -> bool:
    # stage 0-2: mp_rank_00_model_states.pt; stage 3: zero_pp_rank_0_mp_rank_00_model_states.pt
    return path.is_dir() and any(path.glob("*mp_rank_00_model_states.pt"))


class RunDir:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    # -- files and folders ------------------------------------------------------------------------------------
    config = property(lambda self: self.path / "config.yaml")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    tb = property(lambda self: self.path / "tb")
    tokenizer = property(lambda self: self.path / "tokenizer")
    checkpoints = property(lambda self: self.path / "checkpoints")
    export = property(lambda self: self.path / "export")
    plots = property(lambda self: self.path / "plots")
    linearity = property(lambda self: self.path / "linearity.jsonl")

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / tag_for(step)

    def benchmarks(self, step: int) -> Path:
        return self.path / "benchmarks" / tag_for(step)

    # Not a step_* name: the in-loop evaluator's last result (a subset, usually) stays beside it.
    final_benchmarks = property(lambda self: self.path / "benchmarks" / "final")

    # -- checkpoints --------------------------------------------------------------------------------------------
    def latest_checkpoint(self) -> Path | None:
        """The checkpoint ``checkpoints/latest`` names, or None when there is none."""
        return latest_in(self.checkpoints)

    def checkpoint_step(self) -> int | None:
        """The step of the latest complete checkpoint (its meta.json, else the tag's name), or None."""
        latest = self.latest_checkpoint()
        if latest is None:
            return None
        meta = latest / "meta.json"
        if meta.is_file():
            return int(json.loads(meta.read_text())["step"])
        return step_of(latest)

    def checkpoint_dirs(self) -> list[Path]:
        """Every step_* directory, in step order (not name order: step numbers may outgrow 8 digits)."""
        if not self.checkpoints.is_dir():
            return []
        tags = [p for p in self.checkpoints.iterdir() if p.is_dir() and step_of(p) is not None]
        return sorted(tags, key=step_of)

    @classmethod
    def of_checkpoint(cls, tag_dir: str | os.PathLike) -> RunDir:
        return cls(Path(tag_dir).parent.parent)  # run_dir/checkpoints/step_XXXXXXXX

    def resumable_checkpoint(self) -> Path | None:
        """The newest *complete* checkpoint (manifest present, every file at its recorded size), for
        ``--resume auto``. The debris of an interrupted save (no manifest) is not a checkpoint and is passed over;
        a damaged newer checkpoint (its manifest present, a file missing or of another size) is reported and
        skipped, and so is a ``latest`` that names no checkpoint. None when there is no checkpoint at all (a
        fresh start); a CheckpointError when a checkpoint was completed but none is usable now (never a silent
        restart from step 0)."""
        problems = []
        for tag_dir in reversed(self.checkpoint_dirs()):
            if is_unfinished_save(tag_dir):
                continue
            problem = verify_checkpoint(tag_dir)
            if problem is None:
                for p in problems:
                    warnings.warn(f"skipping damaged checkpoint: {p}; resuming from {tag_dir.name}", stacklevel=2)
                self._check_latest(tag_dir)
                return tag_dir
            problems.append(problem)
        if problems:
            raise CheckpointError(f"no usable checkpoint in {self.checkpoints}: {problems[0]}"
                                  + (f" (and {len(problems) - 1} older ones damaged)" if len(problems) > 1 else ""))
        if (self.checkpoints / LATEST).exists():
            raise CheckpointError(f"{self.checkpoints / LATEST} names "
                                  f"'{(self.checkpoints / LATEST).read_text(errors='replace').strip()[:60]}' but "
                                  f"no complete checkpoint is left: refusing to restart from step 0")
        return None

    def _check_latest(self, used: Path) -> None:
        """One warning when ``latest`` is empty, garbage or dangling (the manifests chose ``used`` instead)."""
        _, why = read_latest(self.checkpoints)
        if why is not None:
            warnings.warn(f"{self.checkpoints / LATEST} {why}: resuming from {used.name}, the newest complete "
                          f"checkpoint", stacklevel=3)

    def unfinished_saves(self) -> list[Path]:
        """The step_* directories of saves that never finished (no manifest)."""
        return [d for d in self.checkpoint_dirs() if is_unfinished_save(d)]

    # -- preparation ---------------------------------------------------------------------------------------------
    def started(self) -> bool:
        """A run started here: its config.yaml was written after a successful start."""
        return self.config.is_file()

    def prepare(self, fresh: bool, overwrite: bool) -> None:
        """Check (and with ``overwrite`` clear) the run dir for a fresh start (``fresh``) or a resume. A fresh start
        refuses the dir of a run that started (config.yaml, checkpoints or metrics) unless ``overwrite``; what a
        failed start left behind (a tokenizer) does not block the corrected re-run. Call on one rank only."""
        if fresh and self.path.exists():
            if overwrite:
                shutil.rmtree(self.path)
            elif self.started() or self.checkpoint_dirs() or self.metrics.is_file():
                raise ConfigError(f"run dir {self.path} exists: use --resume auto to continue it, --overwrite to "
                                  f"replace it, or --run-dir for a new one")
        # Nothing is created here. The Trainer removes the run dir again when a fresh start fails before it was
        # created (the tokenizer is its first file); in a dir that existed before, a failed start may leave a
        # tokenizer/, which the re-run reuses.

    logs = property(lambda self: (self.metrics, self.linearity, self.tb, self.path / "benchmarks", self.plots))

    def trim_logs(self, step: int, evaluations_owed: bool = False) -> None:
        """Before a resume from the checkpoint of ``step``: drop what the resumed run logs again -- the rows of later
        steps, and the evaluations of ``step`` itself when the checkpoint owes them -- and the debris of
        unfinished saves. TensorBoard's event files are trimmed by ``linreg.metrics.trim_tensorboard`` with the
        same ``log_filter``."""
        keep = log_filter(step, evaluations_owed)
        trim_jsonl(self.metrics, lambda row: all(keep(row["step"], tag) for tag in row if tag != "step"))
        trim_jsonl(self.linearity, lambda row: keep(row["step"], "linearity"))
        bench = self.path / "benchmarks"
        for d in bench.iterdir() if bench.is_dir() else ():
            if step_of(d) is not None and not keep(step_of(d), "eval/benchmarks"):
                shutil.rmtree(d)
        for d in self.unfinished_saves():
            shutil.rmtree(d, ignore_errors=True)

    def set_aside_attempt(self) -> Path | None:
        """Before a fresh start in a run dir whose earlier attempt ended before its first checkpoint: move that
        attempt's logs into ``aborted_<n>/`` (kept, never mixed into the new run's) and remove the debris of its
        unfinished saves. Returns the folder, or None when there was nothing to move."""
        for d in self.unfinished_saves():
            shutil.rmtree(d, ignore_errors=True)
        present = [p for p in self.logs if p.exists()]
        if not present:
            return None
        n = 1
        while (self.path / f"aborted_{n}").exists():
            n += 1
        dest = self.path / f"aborted_{n}"
        dest.mkdir()
        for p in present:
            os.replace(p, dest / p.name)
        return dest


def log_filter(step: int, evaluations_owed: bool = False) -> Callable[[int, str], bool]:
    """Which logged (step, tag) a resume from the checkpoint of ``step`` keeps: every earlier step, and at ``step``
    itself what was logged before that checkpoint -- its training row always (rows come before the save), its
    evaluations unless the checkpoint owes them (a stop request skipped them; the resumed run runs them first)."""
    return lambda s, tag: s < step or (s == step and (not evaluations_owed or tag.startswith("train/")))


def write_manifest(tag_dir: Path) -> None:
    """Record every file of a finished checkpoint with its size; written last and atomically."""
    files = {str(p.relative_to(tag_dir)): p.stat().st_size for p in sorted(tag_dir.rglob("*"))
             if p.is_file() and p.name != MANIFEST and not p.name.endswith(".tmp")}
    write_atomic(tag_dir / MANIFEST, json.dumps({"files": files}, indent=1))


def is_unfinished_save(tag_dir: Path) -> bool:
    """The debris of a save that did not finish (no manifest yet): not a checkpoint, never a reason to refuse."""
    return not (tag_dir / MANIFEST).is_file()


def verify_checkpoint(tag_dir: Path) -> str | None:
    """None if ``tag_dir`` is a complete checkpoint, else what is wrong with it (naming the file)."""
    manifest = tag_dir / MANIFEST
    if not manifest.is_file():
        return f"{tag_dir} is incomplete (no {MANIFEST}: the save did not finish)"
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError):
        return f"{manifest} is damaged"
    for name, size in files.items():
        path = tag_dir / name
        if not path.is_file():
            return f"{path} is missing"
        if path.stat().st_size != size:
            return f"{path} has {path.stat().st_size} bytes, {size} were written"
    return None


def read_latest(ckpt_root: str | os.PathLike) -> tuple[Path | None, str | None]:
    """The checkpoint ``latest`` names, or why it names none: ``(path, None)``, ``(None, reason)``, or
    ``(None, None)`` when there is no ``latest`` (a kill before the first one was written: nothing was skipped)."""
    marker = Path(ckpt_root) / LATEST
    if not marker.exists():
        return None, None
    try:
        name = marker.read_text(errors="replace").strip()
    except OSError:
        name = "\x00"
    if not name:
        return None, "is empty"
    if step_of(name) is None or Path(name).name != name:
        return None, f"names {name[:40]!r}, not a checkpoint"
    path = Path(ckpt_root) / name
    return (path, None) if path.is_dir() else (None, f"names {name}, which does not exist")


def latest_in(ckpt_root: str | os.PathLike) -> Path | None:
    return read_latest(ckpt_root)[0]


def model_label(path: str | os.PathLike) -> str:
    """A model's label in tables and legends: its directory's name, ``<run>/step_XXXXXXXX`` for a checkpoint
    directory (the step alone says nothing), a hub name as it is given."""
    p = Path(path)
    if not p.exists():
        return str(path)
    p = p.resolve()
    return f"{p.parent.parent.name}/{p.name}" if step_of(p) is not None else p.name


def model_labels(paths: list[str], labels: list[str] | None = None) -> list[str]:
    """The label of each model path: the one given for it, else its ``model_label``, with the parent directory's
    name put in front of labels that would otherwise repeat (``a/export`` and ``b/export``)."""
    if labels and len(labels) != len(paths):
        raise ConfigError(f"{len(labels)} --label for {len(paths)} --model: give one label per model, or none")
    if labels:
        return list(labels)
    out = [model_label(p) for p in paths]
    return [f"{Path(p).resolve().parent.name}/{lab}" if out.count(lab) > 1 and Path(p).exists() else lab
            for p, lab in zip(paths, out)]


def find_checkpoint(path: str | os.PathLike) -> Path:
    """A complete checkpoint tag directory from a tag dir, a checkpoints dir or a run dir (their newest complete
    one); a CheckpointError naming the problem otherwise."""
    path = Path(path)
    if is_checkpoint_dir(path) or step_of(path) is not None:
        problem = verify_checkpoint(path)
        if problem is not None:
            raise CheckpointError(problem)
        return path
    for run in (RunDir(path), RunDir(path.parent)):
        if run.checkpoints == path or run.path == path:
            found = run.resumable_checkpoint()
            if found is not None:
                return found
    raise CheckpointError(f"no checkpoint found at {path} (expected a run dir, its checkpoints/ or a step_* dir)")
