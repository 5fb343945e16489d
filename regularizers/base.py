"""Regularizers on consecutive residual-stream states h_0..h_L (see model/capture.py for their definition).

A regularizer only defines a per-token loss between paired states; the base class does the rest the same way
for all of them: choose the pairs, stack them so that all pairs are computed in one batched op (no Python loop
over layers), average over (non-padding) tokens, reduce over pairs (``sum`` = the paper's Σ_i, or ``mean``) and
scale by λ with an optional linear warm-up. The per-token math runs in float32 whatever the model dtype.

``token_loss`` on the stacked states is the reference definition. A regularizer may also provide a
``fused_kernel()`` (regularizers/fused.py: no stacked fp32 copy, a hand-written backward); it is used when
``fused: true`` (the default) and must equal the reference to fp32 tolerance (tests/test_regularizers_fused.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from core.config import check
from regularizers.fused import fused_token_losses


@dataclass
class RegularizerConfig:
    name: str = "none"  # a key of regularizers.REGISTRY
    weight: float = 0.0  # λ
    warmup_steps: int = 0  # λ ramps linearly from 0 over these steps
    exclude_embedding: bool = False  # drop the pair (h_0, h_1)
    reduction: Literal["sum", "mean"] = "sum"  # over pairs; per pair always a mean over tokens
    fused: bool = True  # use the regularizer's fused kernel when it has one (else the reference token_loss)
    compile: bool = False  # torch.compile the per-token loss (fullgraph); on GPU it fuses each state's work

    def validate(self, p: str) -> None:
        from regularizers import REGISTRY

        check(self.name in REGISTRY, f"{p}.name", self.name, f"unknown regularizer; registered: {sorted(REGISTRY)}")
        check(self.weight >= 0, f"{p}.weight", self.weight, "must be >= 0")
        check(self.warmup_steps >= 0, f"{p}.warmup_steps", self.warmup_steps, "must be >= 0")


class Regularizer:
    """Subclasses implement ``token_loss``; call the instance as ``reg(states, step, mask)``."""

    def __init__(self, cfg: RegularizerConfig):
        self.cfg = cfg
        # Only the per-token part is compiled: weight_at(step) is a Python float that changes every warm-up
        # step and would recompile a graph that captured it.
        self._token_losses = torch.compile(self.token_losses, fullgraph=True) if cfg.compile else self.token_losses

    def token_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x = h_i, y = h_{i+1} stacked over pairs: [P, B, T, d] float32 -> per-token loss [P, B, T]."""
        raise NotImplementedError

    def fused_kernel(self):
        """A kernel for regularizers.fused (forward + hand-written backward), or None: use ``token_loss``."""
        return None

    def token_losses(self, states: list[torch.Tensor]) -> torch.Tensor:
        """Per-token losses [P, B, T] (float32) of the consecutive pairs of ``states`` (P + 1 tensors [B, T, d])."""
        kernel = self.fused_kernel() if self.cfg.fused else None
        if kernel is not None and len(states) > 1:  # (no pairs at all: the reference's empty result)
            return fused_token_losses(kernel, states)
        h = torch.stack(states).float()  # [P + 1, B, T, d]
        return self.token_loss(h[:-1], h[1:])

    def weight_at(self, step: int) -> float:
        if self.cfg.warmup_steps > 0:
            return self.cfg.weight * min(1.0, step / self.cfg.warmup_steps)
        return self.cfg.weight

    def pair_losses(self, states: list[torch.Tensor], mask: torch.Tensor | None = None) -> torch.Tensor:
        """Unweighted loss of each pair [P]: mean over tokens (those with mask == 1 when a mask is given)."""
        first = 1 if self.cfg.exclude_embedding else 0
        per_token = self._token_losses(list(states[first:]))  # [P, B, T]
        if mask is None:
            return per_token.mean(dim=(1, 2))
        m = mask.to(per_token.dtype)
        return (per_token * m).sum(dim=(1, 2)) / m.sum().clamp_min(1.0)

    def __call__(self, states: list[torch.Tensor], step: int, mask: torch.Tensor | None = None) -> torch.Tensor:
        pairs = self.pair_losses(states, mask)
        total = pairs.sum() if self.cfg.reduction == "sum" else pairs.mean()
        return self.weight_at(step) * total


class NoRegularizer(Regularizer):
    """``none``: contributes nothing and needs no residual states (the trainer skips capturing them)."""

    needs_states = False

    def __call__(self, states, step, mask=None):
        return None


Regularizer.needs_states = True
