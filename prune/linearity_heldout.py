"""The ``linearity_heldout`` criterion: the held-out linearity score of each block, highest first.

LS_ho(h_i, h_{i+1}) (``eval.linearity.heldout``): the map of block i is fitted on k - 1 folds of the probe's
documents (its sequences) and scored on the left-out fold, pooled over the folds, so a block does not look linear
merely because a d x d map can fit n tokens (the in-sample score of unrelated states is ~d / (n - 1)). Every
sequence goes whole to one fold: its tokens are correlated, and a fit that saw some of them would score the rest
too well. ``groups`` gives each pooled token's sequence (``Probe.groups``, i.e. ``eval.linearity.probe_groups``).
"""
from __future__ import annotations

import torch

from eval.linearity.heldout import HeldoutConfig
from eval.linearity.score import linearity_profile

FOLDS = 5


def linearity_heldout(states: list[torch.Tensor], device=None, *, groups: torch.Tensor) -> list[float]:
    cfg = HeldoutConfig(folds=FOLDS, bootstrap=10, chance_columns=1)  # the point score alone decides
    return [p.heldout.heldout for p in linearity_profile(states, device, groups=groups, heldout=cfg)]
