"""Regularizers on consecutive residual-stream states h_0..h_L (see model/capture.py for their definition).

A regularizer only defines a per-token loss between paired states; the base class does the rest the same way
for all of them: choose the pairs, stack them so that all pairs are computed in one batched op (no Python loop
over layers), average over (non-padding) tokens, reduce over pairs (``sum`` = the paper's Σ_i, or ``mean``) and
scale by λ with an optional linear warm-up. The per-token math runs in float32 whatever the model dtype.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from linreg.config import check


@dataclass
class RegularizerConfig:
    name: str = "none"  # a key of regularizers.REGISTRY
    weight: float = 0.0  # λ
    warmup_steps: int = 0  # λ ramps linearly from 0 over these steps
    exclude_embedding: bool = False  # drop the pair (h_0, h_1)
    reduction: Literal["sum", "mean"] = "sum"  # over pairs; per pair always a mean over tokens

    def validate(self, p: str) -> None:
        from regularizers import REGISTRY

        check(self.name in REGISTRY, f"{p}.name", self.name, f"unknown regularizer; registered: {sorted(REGISTRY)}")
        check(self.weight >= 0, f"{p}.weight", self.weight, "must be >= 0")
        check(self.warmup_steps >= 0, f"{p}.warmup_steps", self.warmup_steps, "must be >= 0")


class Regularizer:
    """Subclasses implement ``token_loss``; call the instance as ``reg(states, step, mask)``."""

    def __init__(self, cfg: RegularizerConfig):
        self.cfg = cfg

    def token_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x = h_i, y = h_{i+1} stacked over pairs: [P, B, T, d] float32 -> per-token loss [P, B, T]."""
        raise NotImplementedError

    def weight_at(self, step: int) -> float:
        if self.cfg.warmup_steps > 0:
            return self.cfg.weight * min(1.0, step / self.cfg.warmup_steps)
        return self.cfg.weight

    def pair_losses(self, states: list[torch.Tensor], mask: torch.Tensor | None = None) -> torch.Tensor:
        """Unweighted loss of each pair [P]: mean over tokens (those with mask == 1 when a mask is given)."""
        first = 1 if self.cfg.exclude_embedding else 0
        h = torch.stack(states[first:]).float()  # [P + 1, B, T, d]
        per_token = self.token_loss(h[:-1], h[1:])  # [P, B, T]
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
