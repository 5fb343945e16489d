"""The ``linearity_heldout`` criterion: the held-out linearity score of each block, highest first.

LS_ho(h_i, h_{i+1}) (``eval.linearity.heldout``): the map of block i is fitted on k - 1 folds of the probe's tokens
and scored on the left-out fold, pooled over the folds, so a block does not look linear merely because a d x d map
can fit n tokens (the in-sample score of unrelated states is ~d / (n - 1)). The criterion sees only the pooled
states, not which probe sequence each token came from; it uses k contiguous folds of the pool instead, in which the
tokens of every sequence are contiguous (``eval.linearity.profile.pool_order``), so at most k - 1 sequences have
tokens on both sides of a fit. Pass ``groups`` (``probe_groups``) for folds of whole sequences.
"""
from __future__ import annotations

import torch

from eval.linearity.heldout import HeldoutConfig
from eval.linearity.score import linearity_profile

FOLDS = 5


def linearity_heldout(states: list[torch.Tensor], device=None, groups: torch.Tensor | None = None) -> list[float]:
    n = states[0].shape[0]
    if groups is None:
        groups = torch.arange(n) * FOLDS // n  # k contiguous runs: each is one fold
    cfg = HeldoutConfig(folds=FOLDS, bootstrap=10, chance_columns=1)  # the point score alone decides
    return [p.heldout.heldout for p in linearity_profile(states, device, groups=groups, heldout=cfg)]
