"""Layer-selection criteria: a score per block (or per span of blocks) from the residual stream h_0..h_L.

With h_i the input of block i and h_{i+1} its output (``model.capture.ResidualStream``: h_0 = embedding output,
every state before the final norm), pooled over the probe tokens (n x d each):

- ``linearity``         LS(h_i, h_{i+1}), the paper's linearity score (``eval.linearity``'s float64 solver);
                         the most linear block goes first.
- ``linearity_wo_res``  LS(h_i, h_{i+1} - h_i), the score without the residual; highest first.
- ``linearity_heldout`` the held-out LS of each block, on folds of whole probe sequences
                         (``prune/linearity_heldout.py``); highest first.
- ``cosine``            ShortGPT's block influence BI_i = 1 - mean_t cos(h_i[t], h_{i+1}[t]); lowest first (the
                         block that changes its input's direction least).
- ``angular``           Gromov et al.'s angular distance of a span of n contiguous blocks starting at i,
                         d_i = mean_t arccos(cos(h_i[t], h_{i+n}[t])) / pi; lowest first. Gromov et al. measure it
                         at the last token of each sequence; here it is the mean over every probe token, like the
                         other criteria. With n = 1 it ranks single blocks; selecting k blocks in one shot takes
                         the best span of n = k blocks (``span_criterion``).

Cosines are computed in float64. Each criterion returns one float per candidate; ``CRITERIA[name].first`` says
whether the highest or the lowest score is pruned first. ``Criterion.__call__`` is how callers score: it passes
``span`` to span criteria and the probe's document ids to those that fit on folds of documents.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from eval.linearity.score import linearity_profile
from prune.errors import PruneError
from prune.fit import to64
from prune.linearity_heldout import linearity_heldout


def linearity(states: list[torch.Tensor], device=None) -> list[float]:
    return [p.linearity for p in linearity_profile(states, device)]


def linearity_wo_res(states: list[torch.Tensor], device=None) -> list[float]:
    return [p.linearity_wo_res for p in linearity_profile(states, device)]


def token_cosines(x: torch.Tensor, y: torch.Tensor, device=None) -> torch.Tensor:
    """cos(x[t], y[t]) for every token t, in float64."""
    x, y = to64(x, device), to64(y, device)
    return (x * y).sum(1) / (x.norm(dim=1) * y.norm(dim=1)).clamp_min(torch.finfo(torch.float64).tiny)


def cosine(states: list[torch.Tensor], device=None) -> list[float]:
    return [1.0 - float(token_cosines(a, b, device).mean()) for a, b in zip(states[:-1], states[1:])]


def angular(states: list[torch.Tensor], device=None, span: int = 1) -> list[float]:
    """d_i for the spans [i, i + span), i = 0 .. L - span."""
    num_blocks = len(states) - 1
    return [float(torch.arccos(token_cosines(states[i], states[i + span], device).clamp(-1, 1)).mean()) / math.pi
            for i in range(num_blocks - span + 1)]


@dataclass(frozen=True)
class Criterion:
    fn: Callable[..., list[float]]
    first: str  # "highest" or "lowest": which score is pruned first
    spans: bool = False  # scores spans of n blocks (angular)
    documents: bool = False  # needs each pooled token's probe sequence (``groups=``): folds of whole documents

    def __call__(self, states: list[torch.Tensor], groups: torch.Tensor | None = None, span: int = 1) -> list[float]:
        """Scores of ``states`` pooled over the probe; ``groups``: each token's probe sequence (``probe_groups``)."""
        if self.spans:
            return self.fn(states, span=span)
        if self.documents:
            if groups is None:
                raise PruneError("this criterion fits on folds of probe sequences: it needs their token groups")
            return self.fn(states, groups=groups)
        return self.fn(states)

    def best(self, scores: dict[int, float]) -> int:
        """The candidate to prune first among ``scores`` (ties: the lowest index)."""
        sign = -1.0 if self.first == "highest" else 1.0
        return min(scores, key=lambda i: (sign * scores[i], i))

    def ranking(self, scores: dict[int, float]) -> list[int]:
        sign = -1.0 if self.first == "highest" else 1.0
        return sorted(scores, key=lambda i: (sign * scores[i], i))


CRITERIA: dict[str, Criterion] = {
    "linearity": Criterion(linearity, "highest"),
    "linearity_wo_res": Criterion(linearity_wo_res, "highest"),
    "linearity_heldout": Criterion(linearity_heldout, "highest", documents=True),
    "cosine": Criterion(cosine, "lowest"),
    "angular": Criterion(angular, "lowest", spans=True),
}


def get_criterion(name: str) -> Criterion:
    if name not in CRITERIA:
        raise PruneError(f"unknown criterion '{name}' (one of {', '.join(CRITERIA)})")
    return CRITERIA[name]
