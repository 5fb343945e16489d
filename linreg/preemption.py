"""SIGTERM/SIGINT as a stop request that every rank agrees on at the same step boundary.

The handler only sets a flag. ``agreed()`` is called once per optimizer step; with several ranks it all-reduces the
flag (one tiny collective) so that a stop seen by any rank -- the launcher forwarding a signal, SLURM signalling
every task, or one rank signalled by hand -- stops all ranks after the same step, and they save one checkpoint
together.

Under the ``deepspeed`` command on one node, a SIGTERM to that command kills it without forwarding anything (it
forwards signals only for multi-node pdsh launches), and its ``launch.py`` child goes on. So each rank started by
``launch.py`` also watches the ``deepspeed`` process above it (at most once a second): when it is gone, the rank
requests a stop as if it had been signalled.
"""
from __future__ import annotations

import signal
import time
import warnings

import torch

from core import dist

SIGNALS = (signal.SIGTERM, signal.SIGINT)
# DeepSpeed's launch.py, once it receives SIGTERM/SIGINT itself, terminates each rank and SIGKILLs what is still alive
# 30 s later (launcher/launch.py, terminate_process_tree): a preemption save must fit in that.
LAUNCH_KILL_S = 30.0


def _launch_parent():
    """DeepSpeed's per-node ``launch.py`` process that started this rank (psutil.Process), or None."""
    try:
        import psutil

        parent = psutil.Process().parent()
        if parent is None or "deepspeed.launcher.launch" not in " ".join(parent.cmdline()):
            return None
        return parent
    except Exception:  # no psutil, no /proc, a vanished parent: nothing to watch
        return None


def _launch_file() -> str:
    import importlib.util

    spec = importlib.util.find_spec("deepspeed.launcher.launch")
    return spec.origin if spec is not None and spec.origin else "deepspeed/launcher/launch.py"


def _deepspeed_runner(launch):
    """The ``deepspeed`` command above launch.py, to watch; None for any other parent (a pdsh remote shell, a
    script that started launch.py itself), whose exit says nothing about the job."""
    try:
        runner = None if launch is None else launch.parent()
        return runner if runner is not None and "deepspeed" in " ".join(runner.cmdline()) else None
    except Exception:
        return None


class Preemption:
    def __init__(self, device: torch.device):
        self.device = device
        self.requested: str | None = None
        self._previous = {sig: signal.signal(sig, self._handle) for sig in SIGNALS}
        launch = _launch_parent()
        self.under_launch = launch is not None
        self._runner = _deepspeed_runner(launch)
        self._next_check = 0.0
        self._warned_slow_save = False

    def check_save_time(self, seconds: float, measured: str = "this run's last save") -> None:
        """Warn once when a checkpoint save takes close to launch.py's kill timeout: a signal that reaches launch.py
        (Ctrl-C, a signal to the process group, scancel) would then SIGKILL the ranks before their stop save ends.
        Called at start-up with the resumed checkpoint's recorded save time, and after every save."""
        if (self.under_launch and not self._warned_slow_save and seconds > LAUNCH_KILL_S * 2 / 3
                and dist.rank() == 0):
            self._warned_slow_save = True
            warnings.warn(f"a checkpoint save takes {seconds:.1f} s ({measured}); DeepSpeed's launch.py SIGKILLs the "
                          f"ranks {LAUNCH_KILL_S:.0f} s after a signal reaches it, so a stop save may not finish "
                          f"(the previous checkpoint then stays in charge). To raise that timeout, edit timeout="
                          f"{LAUNCH_KILL_S:.0f} in terminate_process_tree of {_launch_file()}; or let the signal reach "
                          f"only the ranks or the `deepspeed` command, which sets no deadline (README, Fault "
                          f"tolerance)", stacklevel=2)

    def _handle(self, signum, frame) -> None:
        self.requested = signal.Signals(signum).name

    def _runner_gone(self) -> bool:
        if self._runner is None or time.monotonic() < self._next_check:
            return False
        self._next_check = time.monotonic() + 1.0
        try:
            import psutil

            # is_running also compares creation times (PID reuse is safe); a killed runner that its parent has
            # not reaped yet is a zombie: gone as well
            return not self._runner.is_running() or self._runner.status() == psutil.STATUS_ZOMBIE
        except Exception:
            return True

    def agreed(self) -> bool:
        if self.requested is None and self._runner_gone():
            self.requested = "the deepspeed launcher exited"
        if dist.world_size() == 1:
            return self.requested is not None
        flag = torch.tensor([0.0 if self.requested is None else 1.0], device=self.device)
        stop = float(dist.all_reduce_sum(flag)) > 0
        if stop and self.requested is None:
            self.requested = "another rank's stop request"
        return stop

    def restore(self) -> None:
        """Put the previous handlers back (in-process users such as tests and sweeps)."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
