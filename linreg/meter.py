"""The step meter: what a training row reports, and when.

Losses are summed on the device in float64 over the micro-steps of a *window* (the steps since the last row), so
the training step never waits for the host. A row is due every ``logging.every`` steps and at the last step;
producing it is the one host sync: the window's sums are all-reduced over ranks, checked for NaN/Inf, averaged,
and joined by tokens/s, MFU, peak memory and step time. Time spent in evaluators is paused out of the window.
``train/loss`` is ``train/task_loss`` (the objective the trainer's ``forward_loss`` returns: next-token
cross-entropy for a language model, the squared error on the testbed, the layer-wise MSE of distillation, a
classifier's loss) plus ``train/reg`` (the regularizer; 0 without one).

The window is part of the checkpoint (``state_dict``): a run preempted mid-window resumes the same window, so
its next row equals the uninterrupted run's bit for bit. Checkpoint and preemption steps check the losses for
NaN/Inf (``check_finite``) without closing the window.
"""
from __future__ import annotations

import contextlib
import math
import resource
import time

import torch

from core import dist
from core.errors import NonFiniteLossError


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


class StepMeter:
    def __init__(self, *, every: int, max_steps: int, micro_steps: int, world: int, tokens_per_step: int,
                 flops_per_token: float, peak_tflops: float | None, device: torch.device):
        self.every, self.max_steps = every, max_steps
        self.micro_steps, self.world = micro_steps, world
        self.tokens_per_step, self.flops_per_token, self.peak_tflops = tokens_per_step, flops_per_token, peak_tflops
        self.device = device
        self.on_nonfinite = ""  # appended to the non-finite error; the Trainer names the last good checkpoint there
        self.sums = torch.zeros(2, dtype=torch.float64, device=device)  # [task loss, reg] over the window's micro-steps
        self.steps = 0  # optimizer steps in the window
        self._t0 = time.perf_counter()
        self._paused = 0.0

    # -- cadence -------------------------------------------------------------------------------------------------
    def due(self, step: int) -> bool:
        """Whether ``step`` (counted from 1) gets a training row."""
        return step % self.every == 0 or step == self.max_steps

    # -- accumulation (no host sync) ---------------------------------------------------------------------------
    def add(self, task_loss: torch.Tensor, reg: torch.Tensor | None) -> None:
        self.sums[0] += task_loss.detach()
        if reg is not None:
            self.sums[1] += reg.detach()

    def step_done(self) -> None:
        self.steps += 1

    @contextlib.contextmanager
    def pause(self):
        """Exclude the enclosed time (evaluators, checkpoints) from the window's tokens/s."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._paused += time.perf_counter() - t0

    # -- host syncs ------------------------------------------------------------------------------------------------
    def mean_losses(self, step: int) -> tuple[float, float]:
        """(task loss, reg) averaged over the window's micro-steps on every rank; raises NonFiniteLossError."""
        sums = dist.all_reduce_sum(self.sums.clone())
        task, reg = (sums / (max(self.steps, 1) * self.micro_steps * self.world)).tolist()
        if not (math.isfinite(task) and math.isfinite(reg)):
            raise NonFiniteLossError(f"non-finite loss at step {step}: task_loss={task}, reg={reg}"
                                     f"{self.on_nonfinite}")
        return task, reg

    def check_finite(self, step: int) -> None:
        """Before a checkpoint: never save a state whose losses went NaN/Inf. The window stays open."""
        if self.steps:
            self.mean_losses(step)

    def row(self, step: int, lr: float, grad_norm: float | None = None, **extra: float) -> dict[str, float]:
        """The training row of ``step``; closes the window."""
        task, reg = self.mean_losses(step)
        dt = max(time.perf_counter() - self._t0 - self._paused, 1e-9)
        tok_s = self.steps * self.tokens_per_step / dt
        out = {"train/loss": task + reg, "train/task_loss": task, "train/reg": reg, "train/lr": lr,
               "train/tokens_per_s": tok_s, **extra, "train/mem_gb": peak_memory_gb(self.device),
               "train/step_time_s": dt / max(self.steps, 1)}
        if grad_norm is not None:
            out["train/grad_norm"] = float(grad_norm)
        if self.peak_tflops:
            out["train/mfu"] = self.flops_per_token * tok_s / (self.peak_tflops * 1e12 * self.world)
        self.reset()
        return out

    def reset(self) -> None:
        """Start a new window."""
        self.sums.zero_()
        self.steps = 0
        self._t0, self._paused = time.perf_counter(), 0.0

    # -- checkpoint state ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        # DeepSpeed keeps one client state (rank 0's), so store the window summed over ranks (a collective: every
        # rank saves) and give it all back to rank 0 on load. With one rank this is the exact window.
        return {"sums": dist.all_reduce_sum(self.sums.clone()).cpu(), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.sums.copy_(state["sums"].to(self.sums.device) if dist.rank() == 0 else torch.zeros_like(self.sums))
        self.steps = int(state["steps"])
        self._t0, self._paused = time.perf_counter(), 0.0
