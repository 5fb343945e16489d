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

import torch

from core import dist

SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _deepspeed_runner():
    """The ``deepspeed`` command's process above this rank (psutil.Process), or None when not launched by it."""
    try:
        import psutil

        parent = psutil.Process().parent()
        if parent is None or "deepspeed.launcher.launch" not in " ".join(parent.cmdline()):
            return None
        return parent.parent()
    except Exception:  # no psutil, no /proc, a vanished parent: nothing to watch
        return None


class Preemption:
    def __init__(self, device: torch.device):
        self.device = device
        self.requested: str | None = None
        self._previous = {sig: signal.signal(sig, self._handle) for sig in SIGNALS}
        self._runner = _deepspeed_runner()
        self._next_check = 0.0

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
