"""Learning-rate schedules as a multiplier of ``optim.lr``: linear warm-up, then cosine, WSD or constant."""
from __future__ import annotations

import math

import torch


def lr_multiplier(step: int, kind: str, warmup: int, max_steps: int, min_ratio: float, decay_fraction: float) -> float:
    """``step`` = optimizer steps taken so far (0 for the first update)."""
    if step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    if kind == "cosine":
        progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    # WSD (warmup-stable-decay): constant, then a linear decay over the last `decay_fraction` of training.
    decay_start = max(warmup, int(max_steps * (1.0 - decay_fraction)))
    if step < decay_start:
        return 1.0
    progress = min(1.0, (step - decay_start) / max(1, max_steps - decay_start))
    return 1.0 - (1.0 - min_ratio) * progress


def build_scheduler(optimizer: torch.optim.Optimizer, sched_cfg, max_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    def fn(step: int) -> float:
        return lr_multiplier(step, sched_cfg.kind, sched_cfg.warmup_steps, max_steps, sched_cfg.min_lr_ratio,
                             sched_cfg.decay_fraction)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)


def apply_lr_override(scheduler: torch.optim.lr_scheduler.LambdaLR, lr: float) -> bool:
    """After a resume, use ``optim.lr`` from the config rather than the checkpoint's base lr (LambdaLR restores
    ``base_lrs`` from its state dict, which would silently ignore an ``optim.lr=`` override). Returns whether the
    lr changed; when it did not, nothing is touched (bit-exact resume)."""
    if all(base == lr for base in scheduler.base_lrs):
        return False
    scheduler.base_lrs = [lr] * len(scheduler.base_lrs)
    for group, fn in zip(scheduler.optimizer.param_groups, scheduler.lr_lambdas):
        group["lr"] = lr * fn(scheduler.last_epoch)
    scheduler._last_lr = [g["lr"] for g in scheduler.optimizer.param_groups]
    return True
