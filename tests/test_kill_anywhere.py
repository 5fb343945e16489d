"""kill -9 anywhere, then ``train.py --resume auto``: the run ends as the uninterrupted one, and its logs hold each
(step, tag) once with nothing missing -- metrics.jsonl, linearity.jsonl, the benchmark results and TensorBoard's
event files.

Every run here is the real ``train.py`` command line (``train.main``) in its own process, forked from one server
that imported torch, DeepSpeed and transformers once, so a killed run costs its own work and not a Python start.
The moments: the failpoints (startup, an evaluation before and after the first checkpoint, inside the first save,
after a save, a preemption whose evaluations stay owed and a kill inside them), then seeded random moments drawn
over the measured length of an uninterrupted run (no sleeps tuned to a machine). A damaged newest checkpoint
falls back to the previous one through the same command line.
"""
from __future__ import annotations

import collections
import json
import multiprocessing
import os
import random
import shutil
import sys
import time
from pathlib import Path

import pytest

from core.rundir import RunDir, step_of

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "tiny.yaml"
STEPS = 4
# Checkpoints at 2 and 4; val loss at 2 and 4, linearity and a benchmark at 3 and 4: a stop at step 3 owes both.
OVER = [f"train.max_steps={STEPS}", "checkpoint.every=2", "checkpoint.keep_last=3", "checkpoint.export_at_end=false",
        "eval.val_loss.every=2", "eval.linearity.every=3", "eval.linearity.plot=false",
        "eval.linearity.probe.num_chunks=8", "eval.benchmarks.enabled=true", "eval.benchmarks.every=3",
        "eval.benchmarks.tasks=[copa]", "eval.benchmarks.limit=2"]
TIMED = ("train/tokens_per_s", "train/step_time_s", "train/mem_gb", "train/mfu")  # wall-clock tags differ per run
PRELOAD = ["train", "linreg.trainer", "deepspeed", "transformers", "eval.hook", "eval.val_loss",
           "eval.linearity.evaluator", "data.cache", "data.stream", "model.build", "regularizers",
           "torch.utils.tensorboard", "tensorboard.backend.event_processing.event_file_loader"]


def _train_main(argv: list[str], env: dict[str, str], log: str) -> None:
    """The body of a forked run: train.py's main with this run's environment, its output appended to ``log``."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ.update(env)
    import train

    code = train.main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class Runs:
    """train.py runs forked from a server that preloaded the heavy imports."""

    def __init__(self, cache: Path):
        self.cache = cache
        self.ctx = multiprocessing.get_context("forkserver")
        self.ctx.set_forkserver_preload(PRELOAD)

    def start(self, run: RunDir, failpoint: str | None = None):
        argv = ["--config", str(TINY), "--run-dir", str(run.path), "--resume", "auto",
                f"data.cache_dir={self.cache}", *OVER]
        env = {"LINREG_FAILPOINT": failpoint or ""}
        run.path.mkdir(parents=True, exist_ok=True)
        proc = self.ctx.Process(target=_train_main, args=(argv, env, str(run.path.parent / f"{run.path.name}.log")))
        proc.start()
        return proc

    def run(self, run: RunDir, failpoint: str | None = None, timeout: float = 300) -> int:
        proc = self.start(run, failpoint)
        proc.join(timeout)
        assert proc.exitcode is not None, f"{run} did not finish in {timeout} s"
        return proc.exitcode


def output(run: RunDir) -> str:
    return (run.path.parent / f"{run.path.name}.log").read_text()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return Runs(tmp_path_factory.mktemp("kill_cache"))


@pytest.fixture(scope="module")
def reference(runs, tmp_path_factory):
    """The uninterrupted run, and how long it took from fork to exit. A first run builds the token cache and the
    tokenizer, which every other run starts with (BPE training is not what these tests are about)."""
    root = tmp_path_factory.mktemp("kill_ref")
    first = RunDir(root / "first")
    assert runs.run(first) == 0, output(first)[-3000:]
    run = new_run(root, first, "run")
    t0 = time.perf_counter()
    assert runs.run(run) == 0, output(run)[-3000:]
    return run, time.perf_counter() - t0


def new_run(root: Path, reference: RunDir, name: str) -> RunDir:
    run = RunDir(root / name)
    shutil.copytree(reference.tokenizer, run.tokenizer)
    return run


def tensorboard_entries(tb: Path) -> list[tuple[int, str, float]]:
    """(step, tag, value) of every scalar in the event files, as TensorBoard's own loader reads them."""
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

    out = []
    for path in sorted(tb.rglob("events.out.tfevents.*")):
        for event in LegacyEventFileLoader(str(path)).Load():
            out += [(event.step, v.tag, v.simple_value) for v in event.summary.value]
    return out


def logs(run: RunDir) -> dict:
    """Every logged (step, tag) with its value, per sink; a (step, tag) logged twice shows up as a repeat."""
    metrics = [(r["step"], k, v) for r in map(json.loads, run.metrics.read_text().splitlines())
               for k, v in r.items() if k != "step"]
    linearity = [(r["step"], "linearity", r["means"]) for r in map(json.loads, run.linearity.read_text().splitlines())]
    benchmarks = [(step_of(d), "results", json.loads((d / "results.json").read_text()))
                  for d in (run.path / "benchmarks").glob("step_*")]
    return {"metrics": metrics, "linearity": linearity, "benchmarks": benchmarks,
            "tensorboard": tensorboard_entries(run.tb)}


def assert_logged_as(run: RunDir, reference: RunDir) -> None:
    """Each (step, tag) once in every sink, the same set as the uninterrupted run, and bit-identical values (all
    but wall-clock measurements)."""
    got, want = logs(run), logs(reference)
    for sink in want:
        keys = [(s, t) for s, t, _ in got[sink]]
        repeated = [k for k, n in collections.Counter(keys).items() if n > 1]
        assert not repeated, f"{run} {sink}: logged more than once: {repeated[:5]}"
        assert set(keys) == {(s, t) for s, t, _ in want[sink]}, (
            f"{run} {sink}: missing {sorted({(s, t) for s, t, _ in want[sink]} - set(keys))[:5]}, "
            f"extra {sorted(set(keys) - {(s, t) for s, t, _ in want[sink]})[:5]}")
        same = {(s, t): v for s, t, v in want[sink] if t not in TIMED and not t.startswith("time/")}
        for s, t, v in got[sink]:
            if (s, t) in same:
                assert v == same[(s, t)], f"{run} {sink}: {t} at step {s}: {v} != {same[(s, t)]}"


def aborted_steps(run: RunDir) -> list[int]:
    """The steps of the rows kept aside from attempts that never finished a checkpoint."""
    steps = []
    for d in run.path.glob("aborted_*"):
        for line in (d / "metrics.jsonl").read_text().splitlines() if (d / "metrics.jsonl").is_file() else ():
            try:
                steps.append(json.loads(line)["step"])
            except ValueError:  # a line torn by the kill stays as it was
                pass
    return steps


def test_killed_at_the_failpoints_then_resumed_logs_every_row_once(runs, reference, tmp_path):
    """One run dir through seven processes, each killed at another moment, the last one left to finish."""
    ref, _ = reference
    run = new_run(tmp_path, ref, "chain")
    chain = [("after_start", "startup: nothing logged yet"),
             ("before_eval_log@1", "step 2's evaluation, before any checkpoint (rows 1-2 logged)"),
             ("before_manifest@1", "inside the first save: fresh start, its debris is no checkpoint"),
             ("after_save@1", "right after the step-2 save, before anything else is logged"),
             ("after_train_step@1:sigterm", "preempted at step 3, whose linearity evaluation is owed"),
             ("before_eval_log@1", "inside the owed evaluation: linearity.jsonl has its row, metrics not"),
             (None, "to the end")]
    for failpoint, moment in chain:
        code = runs.run(run, failpoint)
        want = 0 if failpoint is None or failpoint.endswith(":sigterm") else -9
        assert code == want, f"{failpoint} ({moment}): exit {code}\n{output(run)[-3000:]}"
        if failpoint == "before_manifest@1":
            assert not (run.checkpoint(2) / "manifest.json").exists() and run.checkpoint(2).is_dir()
    out = output(run)
    assert out.count("starting fresh; the logs of the attempt that ended before its first checkpoint") == 2
    assert "resumed from" in out and "Traceback" not in out
    assert_logged_as(run, ref)
    assert [step_of(p) for p in run.checkpoint_dirs()] == [2, 3, 4]
    assert sorted(aborted_steps(run)) == [1, 1, 2, 2, 2]  # attempt 2: rows 1-2; attempt 3: rows 1-2 and step 2's val


def test_killed_at_random_moments_then_resumed_logs_every_row_once(runs, reference, tmp_path):
    """Ten trials, seeded: a kill at a moment drawn uniformly over the uninterrupted run's measured length (startup,
    steps, evaluations and saves in the proportion they take), in half of them a second kill of the resumed run,
    then a resume to the end."""
    ref, length = reference
    rng = random.Random(20240512)
    killed = 0
    for trial in range(10):
        run = new_run(tmp_path, ref, f"trial{trial}")
        for _ in range(1 + (trial % 2)):
            proc = runs.start(run)
            proc.join(rng.uniform(0.0, length))
            if proc.exitcode is None:
                proc.kill()
                killed += 1
            proc.join(60)
        assert runs.run(run) == 0, output(run)[-3000:]
        assert_logged_as(run, ref)
        first_ckpt = 2
        assert all(s <= first_ckpt for s in aborted_steps(run)), aborted_steps(run)
    assert killed >= 5  # most draws land inside the run


@pytest.mark.parametrize("damage", ["truncated file", "missing shard", "garbage latest"])
def test_damaged_newest_checkpoint_resumes_from_the_previous_through_train_py(runs, reference, tmp_path, damage):
    """The newest checkpoint (step 4) damaged: `train.py --resume auto` warns in one line naming what it skipped,
    continues from step 2 and logs exactly what the uninterrupted run logged."""
    ref, _ = reference
    run = RunDir(tmp_path / "run")
    shutil.copytree(ref.path, run.path)
    newest = run.checkpoint(STEPS)
    model_file = newest / "mp_rank_00_model_states.pt"
    if damage == "truncated file":
        model_file.write_bytes(model_file.read_bytes()[:100])
        said = ["skipping damaged checkpoint", "mp_rank_00_model_states.pt has 100 bytes"]
    elif damage == "missing shard":
        model_file.unlink()
        said = ["skipping damaged checkpoint", "mp_rank_00_model_states.pt is missing"]
    else:  # a garbage `latest` beside a newest checkpoint that is only the debris of a save (no manifest)
        (newest / "manifest.json").unlink()
        (run.checkpoints / "latest").write_bytes(b"\x00\xffstep_4")
        said = [f"{run.checkpoints / 'latest'} names", "resuming from step_00000002"]
    assert runs.run(run) == 0, output(run)[-3000:]
    out = output(run)
    warned = [line for line in out.splitlines() if "Warning" in line and ("checkpoint" in line or "latest" in line)]
    assert len(warned) == 1 and all(s in warned[0] for s in said), out[-3000:]
    assert f"resumed from {run.checkpoint(2)} at step 2" in out
    assert_logged_as(run, ref)
    assert run.resumable_checkpoint() == run.checkpoint(STEPS) and run.latest_checkpoint() == run.checkpoint(STEPS)
