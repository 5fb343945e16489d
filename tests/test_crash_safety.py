"""What survives a crash: kill -9 inside a checkpoint write and before the final export, damaged checkpoints,
a requeued finished run, a failed resume, and a diverged run resumed from the checkpoint its error names."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core.errors import CheckpointError, NonFiniteLossError
from core.rundir import RunDir, find_checkpoint, step_of
from linreg.config import load_config
from linreg.metrics import read_metrics
from linreg.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "tiny.yaml"
QUIET = ["eval.linearity.enabled=false", "eval.val_loss.enabled=false"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("crash_cache")


def cfg(cache_dir, *overrides):
    return load_config(TINY, [f"data.cache_dir={cache_dir}", *QUIET, *overrides])


def train(run_dir, cache_dir, *overrides, extra=(), env=None, **kw):
    cmd = [sys.executable, str(REPO / "train.py"), "--config", str(TINY), "--run-dir", str(run_dir), *extra,
           f"data.cache_dir={cache_dir}", *QUIET, *overrides]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})}, **kw)


def snapshot(root: Path) -> dict:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


def train_losses(run: RunDir) -> list[tuple[int, float]]:
    return [(r["step"], r["train/loss"]) for r in read_metrics(run.metrics) if "train/loss" in r]


def test_kill_inside_checkpoint_write_then_resume_is_exact(tmp_path, cache_dir):
    over = ["train.max_steps=15", "checkpoint.every=5", "checkpoint.keep_last=5"]
    full = RunDir(tmp_path / "full")
    assert train(full.path, cache_dir, *over).returncode == 0

    part = RunDir(tmp_path / "part")  # killed (SIGKILL) inside the step-10 save, before its manifest
    res = train(part.path, cache_dir, *over, env={"LINREG_FAILPOINT": "before_manifest@2"})
    assert res.returncode == -signal.SIGKILL
    assert part.latest_checkpoint() == part.checkpoint(5) and not (part.checkpoint(10) / "manifest.json").exists()
    assert max(s for s, _ in train_losses(part)) == 10  # rows 6-10 were logged past the last complete checkpoint

    res = train(part.path, cache_dir, *over, extra=["--resume", "auto"])
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resumed from" in res.stdout and "step_00000005" in res.stdout
    assert train_losses(part) == train_losses(full)  # each step once (replayed rows trimmed), bit for bit
    assert [step_of(p) for p in part.checkpoint_dirs()] == [5, 10, 15]  # the torn step-10 save was redone

    # Killed after the final checkpoint, before the export: the requeued job only exports.
    last = RunDir(tmp_path / "last")
    assert train(last.path, cache_dir, *over, env={"LINREG_FAILPOINT": "before_export"}).returncode == -9
    before = snapshot(last.checkpoints)
    res = train(last.path, cache_dir, *over, extra=["--resume", "auto"])
    assert res.returncode == 0 and "run already finished at step 15" in res.stdout
    assert (last.export / "config.json").is_file() and snapshot(last.checkpoints) == before


def test_damaged_checkpoints_fall_back_or_refuse(tmp_path, cache_dir):
    run = RunDir(tmp_path / "run")
    assert Trainer(cfg(cache_dir, "train.max_steps=10", "checkpoint.every=5", "checkpoint.export_at_end=false"),
                   run).fit() == 0
    # A damaged `latest` is not trusted (the manifests are), and is named in one warning.
    latest = run.checkpoints / "latest"
    for text, why in [("garbage\x00", "names 'garbage\\x00', not a checkpoint"), ("", "is empty"),
                      ("step_00000099", "names step_00000099, which does not exist")]:
        latest.write_text(text)
        with pytest.warns(UserWarning) as caught:
            assert run.resumable_checkpoint() == run.checkpoint(10)
        assert [str(w.message) for w in caught] == [f"{latest} {why}: resuming from step_00000010, the newest "
                                                    f"complete checkpoint"]
    latest.write_text("step_00000010")

    model_file = run.checkpoint(10) / "mp_rank_00_model_states.pt"
    model_file.write_bytes(model_file.read_bytes()[:100])  # truncated
    with pytest.warns(UserWarning, match="skipping damaged checkpoint: .*mp_rank_00_model_states.pt has 100 bytes"):
        assert run.resumable_checkpoint() == run.checkpoint(5)
    with pytest.raises(CheckpointError, match="mp_rank_00_model_states.pt has 100 bytes"):
        find_checkpoint(run.checkpoint(10))  # an explicit --resume PATH is never silently replaced

    # The whole resume falls back too: a copy of the run resumes from step 5 and retrains 6-10 exactly as before.
    fell_back = RunDir(tmp_path / "fell_back")
    shutil.copytree(run.path, fell_back.path)
    with pytest.warns(UserWarning, match="skipping damaged checkpoint"):
        trainer = Trainer(cfg(cache_dir, "train.max_steps=10", "checkpoint.every=5", "checkpoint.export_at_end=false"),
                          fell_back, resume="auto")
    assert trainer.state.step == 5 and trainer.fit() == 0
    assert train_losses(fell_back) == train_losses(run)  # each step once, bit-exact
    assert fell_back.resumable_checkpoint() == fell_back.checkpoint(10)  # the damaged step_10 was replaced

    (run.checkpoint(5) / "rng_rank0.pt").unlink()
    with pytest.raises(CheckpointError, match="no usable checkpoint .*has 100 bytes.*and 1 older ones damaged"):
        run.resumable_checkpoint()
    res = train(run.path, cache_dir, "train.max_steps=10", "checkpoint.every=5", "checkpoint.export_at_end=false",
                extra=["--resume", "auto"])
    assert res.returncode == 2 and res.stderr.strip().splitlines()[-1].startswith("error: no usable checkpoint")
    assert "Traceback" not in res.stderr


def test_requeued_finished_run_and_failed_resume_change_nothing(tmp_path, cache_dir, capsys):
    run = RunDir(tmp_path / "run")
    assert Trainer(cfg(cache_dir, "train.max_steps=6", "checkpoint.every=3"), run).fit() == 0
    before = snapshot(run.path)
    assert Trainer(cfg(cache_dir, "train.max_steps=6", "checkpoint.every=3"), run, resume="auto").fit() == 0
    assert "run already finished at step 6" in capsys.readouterr().out
    assert snapshot(run.path) == before  # nothing rewritten: not a checkpoint, not config.yaml, not a log

    with pytest.raises(CheckpointError, match="does not match this run: model"):
        Trainer(cfg(cache_dir, "train.max_steps=9", "checkpoint.every=3", "model.hidden_size=64"), run, resume="auto")
    assert snapshot(run.path) == before  # a failed resume leaves config.yaml (and all else) as it was


def test_diverged_run_resumes_from_the_checkpoint_its_error_names(tmp_path, cache_dir):
    run = RunDir(tmp_path / "run")
    base = ["train.max_steps=8", "checkpoint.every=1", "checkpoint.keep_last=3", "checkpoint.export_at_end=false",
            "optim.grad_clip=0"]
    assert Trainer(cfg(cache_dir, *base, "train.max_steps=5"), run).fit() == 0
    # lr 1e30: the update of step 6 leaves huge but finite weights (saved as step_6); the loss of step 7, computed
    # from them, is not finite. So step_6 is not good: the error names step_5, whose next loss was finite.
    with pytest.raises(NonFiniteLossError, match="non-finite loss at step 7") as err:
        Trainer(cfg(cache_dir, *base, "optim.lr=1e30"), run, resume="auto").fit()
    named = Path(str(err.value).split("last good checkpoint: ")[1].split(";")[0])
    assert named == run.checkpoint(5) and (run.checkpoint(6) / "manifest.json").is_file()
    trainer = Trainer(cfg(cache_dir, *base), run, resume=str(named))
    assert trainer.fit() == 0 and trainer.state.step == 8
    assert all(isinstance(v, float) for _, v in train_losses(run))  # finite rows only ("nan" is logged as text)


def _launch_two(run: RunDir, cache_dir, log: Path, *overrides):
    launcher = Path(sys.executable).parent / "deepspeed"
    port = str(29600 + (os.getpid() + len(str(run.path))) % 500)
    cmd = [str(launcher), "--num_gpus", "2", "--master_port", port, str(REPO / "train.py"), "--config", str(TINY),
           "--run-dir", str(run.path), "train.micro_batch_size=2", "checkpoint.every=0",
           "checkpoint.export_at_end=false", f"data.cache_dir={cache_dir}", *QUIET, *overrides]
    # Output to a file: the ranks outlive a killed launcher, and a pipe would stay open until they exit.
    return subprocess.Popen(cmd, cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for_rows(proc, run: RunDir, n: int) -> None:
    import time

    deadline = time.time() + 300
    while not (run.metrics.is_file() and len(run.metrics.read_text().splitlines()) >= n):
        assert proc.poll() is None, "the 2-process run ended early"
        assert time.time() < deadline, "the 2-process run logged nothing"
        time.sleep(0.2)


def _wait_group_gone(pgid: int, timeout: float = 120) -> None:
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.killpg(pgid, signal.SIGKILL)
    raise AssertionError("ranks still running after the stop")


@pytest.mark.parametrize("target", ["launcher", "one rank", "process group"])
def test_sigterm_stops_every_rank_at_one_step_with_one_checkpoint(tmp_path, cache_dir, target):
    """SIGTERM to the `deepspeed` command (which forwards nothing on one node), to rank 1 alone, or to the whole
    process group (Ctrl-C, scancel: launch.py then also terminates rank 0 and SIGKILLs it 30 s later): both ranks
    stop after the same step and save one complete checkpoint; nothing hangs."""
    import psutil

    run, log = RunDir(tmp_path / "two"), tmp_path / "launcher.log"
    proc = _launch_two(run, cache_dir, log, "train.max_steps=2000")
    _wait_for_rows(proc, run, 3)
    if target == "launcher":
        proc.send_signal(signal.SIGTERM)
    elif target == "process group":
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        ranks = [p for p in psutil.Process(proc.pid).children(recursive=True) if "train.py" in " ".join(p.cmdline())]
        rank1 = next(p for p in ranks if "--local_rank=1" in " ".join(p.cmdline()))
        rank1.send_signal(signal.SIGTERM)
    proc.wait(timeout=180)
    _wait_group_gone(proc.pid)
    assert "saved checkpoint at step" in log.read_text(), log.read_text()[-3000:]
    tag = run.resumable_checkpoint()
    assert tag is not None and sorted(p.name for p in tag.glob("rng_rank*.pt")) == ["rng_rank0.pt", "rng_rank1.pt"]
    assert step_of(tag) < 2000 and run.latest_checkpoint() == tag
    if target == "one rank":
        assert proc.returncode == 0  # both ranks exited 0, so the launcher did too


def test_zero1_resume_on_another_world_size_is_refused_then_resumes_from_its_universal_copy(tmp_path, cache_dir):
    """ZeRO-1 partitions the optimizer state by rank: 1 -> 2 ranks is refused in one line naming the converter;
    after `linreg universal` the same resume continues the run as one process would have."""
    over = ["train.zero_stage=1", "checkpoint.every=0", "checkpoint.export_at_end=false"]
    reference = RunDir(tmp_path / "one_rank")
    assert Trainer(cfg(cache_dir, *over, "train.max_steps=6"), reference).fit() == 0
    run = RunDir(tmp_path / "z1")
    assert Trainer(cfg(cache_dir, *over, "train.max_steps=3"), run).fit() == 0
    launcher = Path(sys.executable).parent / "deepspeed"
    cmd = [str(launcher), "--num_gpus", "2", "--master_port", str(29100 + os.getpid() % 300), str(REPO / "train.py"),
           "--run-dir", str(run.path), "--resume", "auto", "train.max_steps=6", "train.micro_batch_size=2"]
    before = snapshot(run.path)
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    errors = [line for line in (res.stdout + res.stderr).splitlines() if line.startswith("error: ")]
    assert errors and "written by 1 ranks with ZeRO-1, this run has 2" in errors[0], res.stderr[-2000:]
    assert f"convert it first: linreg universal --run {run.checkpoint(3)}" in errors[0]
    assert snapshot(run.path) == before

    from linreg.universal import main as universal_main

    assert universal_main(["--run", str(run.path)]) == 0
    assert (run.checkpoint(3) / "universal" / "manifest.json").is_file()
    assert {k: v for k, v in snapshot(run.path).items() if "/universal/" not in k} == before  # nothing else touched
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    assert f"resumed from {run.checkpoint(3)} at step 3" in res.stdout
    resumed, uninterrupted = dict(train_losses(run)), dict(train_losses(reference))
    assert sorted(resumed) == list(range(1, 7))
    for step in range(4, 7):  # two ranks with micro 2 see what one rank with micro 4 sees
        assert resumed[step] == pytest.approx(uninterrupted[step], abs=1e-4), step
    assert "Traceback" not in res.stdout + res.stderr


def test_a_save_near_the_launchers_kill_timeout_warns_once():
    """Under DeepSpeed's launch.py a stop save must end within its 30 s kill timeout: a slow save says so, once."""
    import warnings

    from linreg.preemption import LAUNCH_KILL_S, Preemption

    stop = Preemption(torch.device("cpu"))
    try:
        assert not stop.under_launch  # pytest is not started by launch.py
        stop.under_launch = True  # as in a rank launch.py started
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            stop.check_save_time(LAUNCH_KILL_S / 2)  # well inside the timeout: silent
        with pytest.warns(UserWarning, match=r"a checkpoint save takes 25.0 s \(this run's last save\); DeepSpeed's"):
            stop.check_save_time(25.0)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            stop.check_save_time(28.0)  # once per run
    finally:
        stop.restore()
