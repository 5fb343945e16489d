"""The Trainer in-process (tiny config, seconds): which steps log, checkpoint, evaluate and stop on preemption, and
that a run preempted between two log steps resumes into the same curve as an uninterrupted one."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from core.rundir import RunDir, step_of
from linreg.config import load_config
from linreg.metrics import read_metrics
from linreg.trainer import Trainer

TINY = Path(__file__).resolve().parent / "tiny.yaml"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("trainer_cache")


def tiny_cfg(cache_dir, *overrides):
    return load_config(TINY, [f"data.cache_dir={cache_dir}", "eval.linearity.enabled=false",
                              "checkpoint.export_at_end=false", *overrides])


def rows(run: RunDir, key: str) -> dict[int, dict]:
    return {r["step"]: r for r in read_metrics(run.metrics) if key in r}


def test_cadence_of_rows_checkpoints_and_evaluations(tmp_path, cache_dir):
    cfg = tiny_cfg(cache_dir, "train.max_steps=23", "logging.every=5", "checkpoint.every=10",
                   "checkpoint.keep_last=5", "eval.val_loss.every=7")
    run = RunDir(tmp_path / "run")
    assert Trainer(cfg, run).fit() == 0
    train = rows(run, "train/loss")
    assert sorted(train) == [5, 10, 15, 20, 23]  # every logging.every steps, and the last step
    assert all("train/grad_norm" in r and r["train/grad_norm"] > 0 for r in train.values())
    assert sorted(rows(run, "val/loss")) == [7, 14, 21, 23]  # every eval.val_loss.every steps, and at the end
    assert [step_of(p) for p in run.checkpoint_dirs()] == [10, 20, 23]
    assert run.latest_checkpoint() == run.checkpoint(23)


def _sigterm_after(trainer: Trainer, stop_at: int) -> None:
    """Deliver a real SIGTERM to this process right after optimizer step ``stop_at``."""
    step_fn = trainer.train_step

    def step() -> None:
        step_fn()
        if trainer.state.step == stop_at:
            os.kill(os.getpid(), signal.SIGTERM)

    trainer.train_step = step


def test_preempted_off_cadence_resumes_into_the_uninterrupted_curve(tmp_path, cache_dir):
    over = ["train.max_steps=30", "logging.every=10", "checkpoint.every=0", "eval.val_loss.enabled=false"]
    full = RunDir(tmp_path / "full")
    assert Trainer(tiny_cfg(cache_dir, *over), full).fit() == 0

    part = RunDir(tmp_path / "part")
    handler = signal.getsignal(signal.SIGTERM)
    trainer = Trainer(tiny_cfg(cache_dir, *over), part)
    _sigterm_after(trainer, 12)
    assert trainer.fit() == 0
    assert part.latest_checkpoint() == part.checkpoint(12)  # saved at the agreed stop step
    assert sorted(rows(part, "train/loss")) == [10]  # the stop step is off-cadence: no row, the window stays open
    assert signal.getsignal(signal.SIGTERM) == handler  # fit() puts the previous handler back

    resumed = Trainer(tiny_cfg(cache_dir, *over), part, resume="auto")
    assert resumed.state.step == 12 and resumed.meter.steps == 2  # steps 11-12 of the window came back
    assert resumed.fit() == 0
    a, b = rows(full, "train/loss"), rows(part, "train/loss")
    assert sorted(a) == sorted(b) == [10, 20, 30]
    for s in a:
        for key in ("train/loss", "train/task_loss", "train/reg", "train/lr", "train/grad_norm", "train/tokens"):
            assert a[s][key] == b[s][key], (s, key, a[s][key], b[s][key])
