"""Run a sweep on this node, one run after another, or print its commands for a cluster scheduler.

    linreg sweep SWEEP.yaml [--runs-root runs] [--launcher python|deepspeed] [--no-eval] [--print-commands]
                            [--only VARIANT[/seedK],...] [-- LAUNCHER ARGS]

Each run is ``train.py --config BASE --run-dir <root>/<sweep>/<variant>/seed<k> --resume auto ...`` through the
normal command line (``deepspeed [launcher args] train.py ...`` with ``--launcher deepspeed``), then, unless
``--no-eval``, ``python -m eval`` on its final checkpoint with per-document samples (what compare's paired
bootstrap needs). A run whose ``checkpoints/latest`` is at ``train.max_steps`` is finished and skipped; one with an
older checkpoint is resumed; a benchmark result newer than the final checkpoint is kept. A failed run is reported
with its exit code at the end and the sweep goes on. SIGTERM/SIGINT are passed to the running step, which saves a
checkpoint (train.py's preemption path); the sweep then stops and the same command continues it later.
"""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from core.rundir import RunDir
from sweep.spec import RunPlan, SweepSpec

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "train.py"


def benchmarks_current(run: RunDir) -> bool:
    """A final benchmark result exists and is not older than the latest checkpoint (a run trained further since
    it was scored is scored again)."""
    results = run.final_benchmarks / "results.json"
    latest = run.latest_checkpoint()
    return results.is_file() and (latest is None or results.stat().st_mtime >= latest.stat().st_mtime)


@dataclass
class Status:
    trained: bool  # checkpoint at max_steps
    step: int | None
    scored: bool

    def describe(self, plan: RunPlan) -> str:
        if self.step is None:
            return "new"
        return "finished" if self.trained else f"at step {self.step} of {plan.max_steps}"


def status(plan: RunPlan) -> Status:
    run = RunDir(plan.run_dir)
    step = run.checkpoint_step()
    return Status(trained=step is not None and step >= plan.max_steps, step=step, scored=benchmarks_current(run))


def launcher_prefix(launcher: str, launcher_args: list[str]) -> list[str]:
    if launcher == "python":
        if launcher_args:
            from core.errors import ConfigError

            raise ConfigError(f"launcher arguments {launcher_args} need --launcher deepspeed")
        return [sys.executable]
    installed = Path(sys.executable).parent / "deepspeed"  # the launcher of this environment, else the PATH's
    return [str(installed) if installed.is_file() else "deepspeed", *launcher_args]


def launcher_ranks(launcher: str, launcher_args: list[str]) -> int | None:
    """Ranks the launch is known to start: 1 for python; deepspeed's ``--num_gpus N`` (per node, so a divisor of
    the world size: a batch that cannot be split over N ranks cannot be split over the whole launch); else None
    (the launcher counts the GPUs or reads a hostfile)."""
    if launcher == "python":
        return 1
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    p.add_argument("--num_gpus", "--num_accelerators", type=int, default=None)
    known, _ = p.parse_known_args(launcher_args)
    return known.num_gpus if known.num_gpus is not None and known.num_gpus > 0 else None


def train_command(plan: RunPlan, prefix: list[str]) -> list[str]:
    return [*prefix, str(TRAIN), "--config", str(plan.config), "--run-dir", str(plan.run_dir), "--resume", "auto",
            *plan.overrides]


def eval_command(plan: RunPlan, spec: SweepSpec) -> list[str]:
    b = spec.benchmarks
    run = RunDir(plan.run_dir)
    cmd = [sys.executable, "-m", "eval", "--model", str(plan.run_dir), "--tasks", ",".join(b.tasks),
           "--out", str(run.final_benchmarks), "--log-samples", "--step", str(plan.max_steps),
           "--label", plan.label]
    if b.limit is not None:
        cmd += ["--limit", str(b.limit)]
    return [*cmd, *b.args]


def pending_steps(plan: RunPlan, spec: SweepSpec, prefix: list[str], evaluate: bool) -> list[tuple[str, list[str]]]:
    """What is left of a run: ("training", cmd) unless finished, then ("benchmarks", cmd) unless scored."""
    st = status(plan)
    steps = [] if st.trained else [("training", train_command(plan, prefix))]
    if evaluate and spec.benchmarks.enabled and not (st.trained and st.scored):
        steps.append(("benchmarks", eval_command(plan, spec)))
    return steps


def shell_line(steps: list[tuple[str, list[str]]]) -> str:
    return " && ".join(shlex.join(cmd) for _, cmd in steps)


class Interrupt:
    """SIGTERM/SIGINT while a step runs: pass it on to that step, wait until every process the step had started
    has exited, then stop. train.py checkpoints and exits 0. Under ``--launcher deepspeed`` the child is the
    ``deepspeed`` command, which on one node dies at once and forwards nothing; its ranks notice it is gone and
    save -- so the sweep waits for them too, rather than leaving (a scheduler ends a job step when its main
    process exits, and would kill the ranks mid-save)."""

    def __init__(self):
        self.signal: int | None = None
        self.child: subprocess.Popen | None = None
        self._signalled: list = []  # the child's process tree when the signal came (psutil.Process)
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}

    def _handle(self, signum, frame):
        self.signal = signum
        if self.child is not None and self.child.poll() is None:
            self._signalled = _process_tree(self.child.pid)
            self.child.send_signal(signum)

    def restore(self) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)

    def run(self, cmd: list[str]) -> int:
        """Run ``cmd`` with this process's stdout/stderr; its exit code."""
        self.child = subprocess.Popen(cmd)
        try:
            return self.child.wait()  # retried by Python across signals (PEP 475): the handler only forwards them
        finally:
            self.child = None
            self._wait_for_signalled()

    def _wait_for_signalled(self) -> None:
        import psutil

        tree, self._signalled = self._signalled, []
        alive = [p for p in tree if _running(p)]
        if alive:
            print(f"waiting for {len(alive)} process(es) of the stopped step to save and exit", flush=True)
            psutil.wait_procs(alive)


def _process_tree(pid: int) -> list:
    try:
        import psutil

        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except Exception:  # gone already, or no psutil: nothing to wait for
        return []


def _running(proc) -> bool:
    import psutil

    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@dataclass
class Outcome:
    plan: RunPlan
    result: str  # skipped / trained / resumed / failed / stopped
    detail: str = ""
    seconds: float = 0.0


def run_sweep(spec: SweepSpec, plans: list[RunPlan], prefix: list[str], evaluate: bool) -> int:
    """Train (and score) every plan in turn; the exit code: 0 all done, 1 a run failed, 128+N stopped by signal N."""
    outcomes: list[Outcome] = []
    interrupt = Interrupt()
    env_note = "" if os.environ.get("LINREG_DATA_ROOT") else " (LINREG_DATA_ROOT unset: data from the HF hub)"
    print(f"sweep {spec.name}: {len(plans)} runs{env_note}", flush=True)
    try:
        for i, plan in enumerate(plans, 1):
            if interrupt.signal is not None:
                break
            st = status(plan)
            steps = pending_steps(plan, spec, prefix, evaluate)
            head = f"[{i}/{len(plans)}] {plan.label}: {st.describe(plan)}"
            if not steps:
                print(f"{head}, benchmarked: skipped" if evaluate and spec.benchmarks.enabled else f"{head}: skipped",
                      flush=True)
                outcomes.append(Outcome(plan, "skipped"))
                continue
            action = "resuming" if st.step is not None and not st.trained else ("training" if not st.trained else
                                                                                  "benchmarking")
            print(f"{head}: {action}\n  $ {shell_line(steps)}", flush=True)
            outcomes.append(_run_plan(plan, st, steps, interrupt))
    finally:
        interrupt.restore()
    return _report(spec, plans, outcomes, interrupt.signal)


def _run_plan(plan: RunPlan, before: Status, steps: list[tuple[str, list[str]]], interrupt: Interrupt) -> Outcome:
    t0 = time.perf_counter()
    for what, cmd in steps:
        code = interrupt.run(cmd)
        stopped = interrupt.signal is not None or (code == 0 and what == "training" and not status(plan).trained)
        if stopped:
            # train.py exits 0 after a preemption checkpoint (a killed `deepspeed` command does not, while its
            # ranks save): the run is not finished, and its newest complete checkpoint is where it goes on
            step = status(plan).step
            return Outcome(plan, "stopped", "no checkpoint yet: the same command starts it again" if step is None
                           else f"checkpoint at step {step} of {plan.max_steps}: the same command resumes it",
                           time.perf_counter() - t0)
        if code != 0:
            return Outcome(plan, "failed", f"{what} exited with code {code}", time.perf_counter() - t0)
    result = "resumed" if before.step is not None and not before.trained else (
        "trained" if not before.trained else "benchmarked")
    return Outcome(plan, result, "", time.perf_counter() - t0)


def _report(spec: SweepSpec, plans: list[RunPlan], outcomes: list[Outcome], signum: int | None) -> int:
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.result] = counts.get(o.result, 0) + 1
    left = len(plans) - len([o for o in outcomes if o.result != "stopped"])
    summary = ", ".join(f"{n} {r}" for r, n in counts.items()) or "nothing run"
    print(f"sweep {spec.name}: {summary}", flush=True)
    for o in outcomes:
        if o.result in ("failed", "stopped"):
            print(f"  {o.result}: {o.plan.label} ({o.detail}) in {o.plan.run_dir}", flush=True)
    if signum is not None:
        print(f"stopped by {signal.Signals(signum).name}: {left} run(s) left; run the same command to continue",
              flush=True)
        return 128 + signum
    failed = [o for o in outcomes if o.result == "failed"]
    if failed:
        print(f"{len(failed)} run(s) failed; rerunning the same command resumes them and skips the rest", flush=True)
        return 1
    return 0
