"""SIGTERM/SIGINT as a stop request that every rank agrees on at the same step boundary.

The handler only sets a flag. ``agreed()`` is called once per optimizer step; with several ranks it all-reduces the
flag (one tiny collective) so that a signal seen by any rank -- the launcher forwarding it, SLURM signalling every
task, or one rank killed by hand -- stops all ranks after the same step, and they save one checkpoint together.
"""
from __future__ import annotations

import signal

import torch

from core import dist

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preemption:
    def __init__(self, device: torch.device):
        self.device = device
        self.requested: str | None = None
        self._previous = {sig: signal.signal(sig, self._handle) for sig in SIGNALS}

    def _handle(self, signum, frame) -> None:
        self.requested = signal.Signals(signum).name

    def agreed(self) -> bool:
        if dist.world_size() == 1:
            return self.requested is not None
        flag = torch.tensor([0.0 if self.requested is None else 1.0], device=self.device)
        stop = float(dist.all_reduce_sum(flag)) > 0
        if stop and self.requested is None:
            self.requested = "another rank's signal"
        return stop

    def restore(self) -> None:
        """Put the previous handlers back (in-process users such as tests and sweeps)."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
