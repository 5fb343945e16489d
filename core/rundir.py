"""The layout of a run directory, in one place. Everything that reads or writes a run dir goes through ``RunDir``.

    runs/<name>/
      config.yaml        resolved config (a resume reads it back)
      metrics.jsonl      one JSON object per logged step; tb/ holds the same scalars for TensorBoard
      tokenizer/         the run's tokenizer (save_pretrained format)
      checkpoints/       step_XXXXXXXX/ (DeepSpeed's files, rng_rank<r>.pt, meta.json) and ``latest``
      export/            HF model + tokenizer
      linearity.jsonl, plots/, benchmarks/step_XXXXXXXX/   evaluator outputs
      benchmarks/final/  full-split benchmarks of the final checkpoint (python -m eval --log-samples; sweeps)
"""
from __future__ import annotations

import json
import os
import re
import shutil
import warnings
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
        ``--resume auto``. A damaged newer one is reported and skipped; None when there are no checkpoints at all;
        a CheckpointError when checkpoints exist but none is usable (never a silent restart from step 0)."""
        dirs = self.checkpoint_dirs()
        problems = []
        for tag_dir in reversed(dirs):
            problem = verify_checkpoint(tag_dir)
            if problem is None:
                for p in problems:
                    warnings.warn(f"skipping damaged checkpoint: {p}; resuming from {tag_dir.name}", stacklevel=2)
                return tag_dir
            problems.append(problem)
        if problems:
            raise CheckpointError(f"no usable checkpoint in {self.checkpoints}: {problems[0]}"
                                  + (f" (and {len(problems) - 1} older ones damaged)" if len(problems) > 1 else ""))
        if (self.checkpoints / LATEST).exists():
            raise CheckpointError(f"{self.checkpoints / LATEST} names "
                                  f"'{(self.checkpoints / LATEST).read_text(errors='replace').strip()[:60]}' but "
                                  f"there is no step_* checkpoint: refusing to restart from step 0")
        return None

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

    def trim_logs(self, step: int) -> None:
        """Before a resume from ``step``: drop the log rows of later steps, which the resumed run logs again."""
        for path in (self.metrics, self.linearity):
            trim_jsonl(path, step)


def write_manifest(tag_dir: Path) -> None:
    """Record every file of a finished checkpoint with its size; written last and atomically."""
    files = {str(p.relative_to(tag_dir)): p.stat().st_size for p in sorted(tag_dir.rglob("*"))
             if p.is_file() and p.name != MANIFEST and not p.name.endswith(".tmp")}
    write_atomic(tag_dir / MANIFEST, json.dumps({"files": files}, indent=1))


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


def latest_in(ckpt_root: str | os.PathLike) -> Path | None:
    marker = Path(ckpt_root) / LATEST
    if not marker.is_file():
        return None
    path = Path(ckpt_root) / marker.read_text().strip()
    return path if path.is_dir() else None


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
