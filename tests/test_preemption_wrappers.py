"""Preemption through the wrappers clusters use: SIGTERM to README's `bash -c "exec ..."` line reaches train.py (a
checkpoint, exit 0); the sweep runner passes a signal on and waits for every process of its step, also the ones
that outlive their parent (the ranks under a `deepspeed` command); and a save that takes too long for launch.py's
kill timeout is announced at start-up with its measured time."""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from core.rundir import RunDir, step_of

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "tiny.yaml"
QUIET = ["eval.linearity.enabled=false", "eval.val_loss.enabled=false", "checkpoint.export_at_end=false"]


def _wait_for(cond, proc, what: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not cond():
        assert proc.poll() is None, f"ended before {what}"
        assert time.time() < deadline, f"no {what} in {timeout} s"
        time.sleep(0.05)


def test_sigterm_to_the_exec_wrapper_checkpoints_and_exits_0(tmp_path):
    run = RunDir(tmp_path / "run")
    train = shlex.join([sys.executable, str(REPO / "train.py"), "--config", str(TINY), "--run-dir", str(run.path),
                        "--resume", "auto", f"data.cache_dir={tmp_path / 'cache'}", "train.max_steps=100000",
                        "checkpoint.every=0", *QUIET])
    wrapper = subprocess.Popen(["bash", "-c", f"exec {train}"], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    _wait_for(lambda: run.metrics.is_file() and run.metrics.read_text().count("train/loss") >= 2, wrapper,
              "training rows")
    wrapper.send_signal(signal.SIGTERM)  # what srun signals: the wrapper's pid
    out, _ = wrapper.communicate(timeout=300)
    assert wrapper.returncode == 0, out[-3000:]
    assert "SIGTERM: saved checkpoint at step" in out
    tag = run.resumable_checkpoint()
    assert tag is not None and 2 <= step_of(tag) < 100000


def test_the_sweep_runner_waits_for_the_processes_its_signalled_step_leaves_behind(tmp_path):
    """The step stands in for `deepspeed`: it dies at once on SIGTERM and forwards nothing, while its child (a
    rank) takes its time to 'save' after noticing. The runner must not return before the rank has finished."""
    from sweep.runner import Interrupt

    done, started = tmp_path / "saved", tmp_path / "started"
    rank = textwrap.dedent(f"""
        import os, pathlib, time
        parent = os.getppid()
        pathlib.Path({str(started)!r}).write_text("up")
        while os.getppid() == parent:  # the launcher it watches is still there
            time.sleep(0.02)
        time.sleep(0.5)  # the stop save
        pathlib.Path({str(done)!r}).write_text("saved")
    """)
    launcher = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {rank!r}]); time.sleep(600)"
    interrupt = Interrupt()
    try:
        def signal_when_up():
            deadline = time.time() + 120
            while not started.exists() and time.time() < deadline:
                time.sleep(0.02)
            os.kill(os.getpid(), signal.SIGTERM)  # as the scheduler signals the sweep

        threading.Thread(target=signal_when_up, daemon=True).start()
        code = interrupt.run([sys.executable, "-c", launcher])
    finally:
        interrupt.restore()
    assert code == -signal.SIGTERM and interrupt.signal == signal.SIGTERM
    assert done.read_text() == "saved"  # run() returned only after the orphaned rank had saved and exited


def test_a_save_too_slow_for_launchs_kill_timeout_is_announced_at_start_up(tmp_path, monkeypatch):
    """A save slowed on purpose (the `before_save:sleep` failpoint) against launch.py's timeout scaled down to
    0.6 s: the run warns after its first save, and the resumed run warns at start-up, before any step, with the
    save time recorded in the checkpoint, where the timeout is set and how to avoid it."""
    import psutil

    from linreg import preemption
    from linreg.checkpoint import Checkpointer
    from linreg.config import load_config
    from linreg.trainer import Trainer

    monkeypatch.setattr(preemption, "LAUNCH_KILL_S", 0.6)
    # as if launch.py had started this process (pytest's parent is no `deepspeed` command: nothing to watch)
    monkeypatch.setattr(preemption, "_launch_parent", lambda: psutil.Process())
    monkeypatch.setenv("LINREG_FAILPOINT", "before_save:sleep=0.5")
    cfg = load_config(TINY, [f"data.cache_dir={tmp_path / 'cache'}", *QUIET, "train.max_steps=2", "checkpoint.every=1",
                             "logging.every=1"])
    run = RunDir(tmp_path / "run")
    with pytest.warns(UserWarning, match=r"a checkpoint save takes \d+\.\d s \(this run's last save\)"):
        assert Trainer(cfg, run).fit() == 0
    saved = Checkpointer.save_seconds(run.checkpoint(2))
    assert saved >= 0.5
    longer = load_config(TINY, [f"data.cache_dir={tmp_path / 'cache'}", *QUIET, "train.max_steps=3"])
    with pytest.warns(UserWarning) as caught:
        trainer = Trainer(longer, run, resume="auto")
    msg = next(str(w.message) for w in caught if "checkpoint save takes" in str(w.message))
    assert trainer.state.step == 2 and f"takes {saved:.1f} s (measured when step_00000002 was written)" in msg
    assert "terminate_process_tree" in msg and "launch.py" in msg and "the `deepspeed` command" in msg
    trainer.close()
