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

import os
import re
import shutil
from pathlib import Path

from core.errors import CheckpointError, ConfigError

LATEST = "latest"
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

    # -- preparation ---------------------------------------------------------------------------------------------
    def prepare(self, fresh: bool, overwrite: bool) -> None:
        """Create the run dir for a fresh start (``fresh``) or a resume. A fresh start refuses a non-empty dir
        unless ``overwrite``. Call on one rank only."""
        if fresh and self.path.exists():
            if overwrite:
                shutil.rmtree(self.path)
            elif any(self.path.iterdir()):
                raise ConfigError(f"run dir {self.path} exists: use --resume auto to continue it, --overwrite to "
                                  f"replace it, or --run-dir for a new one")
        self.checkpoints.mkdir(parents=True, exist_ok=True)


def latest_in(ckpt_root: str | os.PathLike) -> Path | None:
    marker = Path(ckpt_root) / LATEST
    if not marker.is_file():
        return None
    path = Path(ckpt_root) / marker.read_text().strip()
    return path if path.is_dir() else None


def find_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint tag directory from a tag dir, a checkpoints dir (its latest) or a run dir (its latest)."""
    path = Path(path)
    for root in (path, path / "checkpoints"):
        found = latest_in(root)
        if found is not None:
            return found
    if is_checkpoint_dir(path):
        return path
    raise CheckpointError(f"no checkpoint found at {path} (expected a run dir, its checkpoints/ or a step_* dir)")
