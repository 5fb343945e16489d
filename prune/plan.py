"""Which blocks to change, and the pruned models k = 1..K that changing them produces.

A ``Pruned`` model is a copy of the original with some of its original blocks changed by one *base* method:

- ``remove``  the block is deleted (``surgery.remove_blocks``);
- ``linear``  the block is replaced by the least-squares map h_i -> h_{i+1} with bias (``fit.fit_map``);
- ``merged``  the block is deleted and a map of the preceding block's MLP output is folded into that block's
              down-projection (``surgery.merge_into_previous``), fitted so that the preceding block's new output
              approximates the deleted block's output.

- ``remove`` with ``comp`` (Prune&Comp's idea): before block p is deleted, the factor
              a = mean_t ||h_{p+1}[t]|| / mean_t ||h_p[t]|| is measured on the current model; the blocks after the
              gap then add 1/a times what they added (``surgery.scale_contributions``). Because the final norm is
              scale invariant, this is the model whose residual stream is multiplied by a at the gap: the next
              block sees the magnitude it was trained on, relative to what the later blocks add.

Changes are made one block at a time, and every fit uses the probe states of the *current* model (the one with the
earlier changes made), so later fits compensate for earlier approximations. ``change`` takes the current model's
states when the caller has them (the unpruned model's, or the iterative selection's) and collects them only
otherwise, and ``remove`` needs none. ``alive`` maps each current block to its original index, so results are
always reported in original indices.

Selection (``Selector``): the candidates are the original blocks not changed yet, minus the protected first/last
block, minus block 0 for ``merged`` (nothing precedes it). *One-shot*: the criterion is computed once on the
original model; k blocks = the first k of its ranking, or for ``angular`` the best span of k contiguous blocks
(Gromov et al.), which need not contain the best span of k - 1. *Iterative*: after each change the criterion is
recomputed on the current model and the best remaining block is changed next (``angular`` with spans of one
block), so the order depends on the method.
"""
from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from model.linear_block import LinearBlock
from prune import states as st
from prune import surgery
from prune.criteria import Criterion
from prune.errors import PruneError
from prune.fit import fit_map, token_errors

BASE_METHODS = ("remove", "linear", "merged")


@dataclass
class ProbeSet:
    """A built probe set (``eval.linearity.probe``): its token lists and how to run them through a model (shared
    by the criteria and the fits)."""
    tokens: list[list[int]]
    batch_size: int = 8
    device: torch.device | str | None = None
    pad_id: int = 0

    def collect(self, model: nn.Module, modules: tuple[nn.Module, ...] = ()):
        """States (and module outputs) on the CPU; the model visits ``device`` for the forwards."""
        device = torch.device(self.device or "cpu")
        model.to(device)
        try:
            return st.collect(model, self.tokens, batch_size=self.batch_size, device=device, pad_id=self.pad_id,
                              modules=modules)
        finally:
            model.to("cpu")


@dataclass
class Pruned:
    model: nn.Module
    method: str  # a base method
    alive: list[int]  # original index of each current block
    changed: list = field(default_factory=list)  # original indices (or sublayer names), in the order changed
    fits: dict = field(default_factory=dict)  # original index -> fit statistics (linear / merged / comp factor)
    comp: bool = False  # magnitude compensation after each removal
    targets: dict[int, int] = field(default_factory=dict)  # kept block -> teacher state its output stands for

    @classmethod
    def of(cls, model: nn.Module, method: str, comp: bool = False) -> Pruned:
        return cls(copy.deepcopy(model), method, list(range(len(surgery.blocks(model)))), comp=comp)

    def clone(self) -> Pruned:
        return copy.deepcopy(self)

    def position(self, block: int) -> int:
        return self.alive.index(block)

    def linear_positions(self) -> list[int]:
        return [i for i, b in enumerate(surgery.blocks(self.model)) if isinstance(b, LinearBlock)]

    def state_pairs(self) -> list[tuple[int, int]]:
        """(student state index, teacher state index) of the states both models have: h_0, and the output of
        every kept block (a block that replaces a span stands for the span's output)."""
        return [(0, 0)] + [(j + 1, self.targets.get(orig, orig) + 1) for j, orig in enumerate(self.alive)]

    def change(self, block: int, probe: ProbeSet, states: list[torch.Tensor] | None = None) -> None:
        """Change original block ``block``; ``states``: h_0..h_L of the current model if the caller has them."""
        pos = self.position(block)
        if self.method == "remove":
            if self.comp:
                hs = states if states is not None else probe.collect(self.model)[0]
                self.fits[block] = {"comp_factor": compensate(self.model, pos, hs)}
            surgery.remove_blocks(self.model, [pos])
            self.alive.pop(pos)
        elif self.method == "linear":
            hs = states if states is not None else probe.collect(self.model)[0]
            fit = fit_map(hs[pos], hs[pos + 1], bias=True)
            surgery.replace_with_linear(self.model, pos, fit)
            self.fits[block] = _fit_stats(fit, hs[pos], hs[pos + 1])
        elif self.method == "merged":
            proj = surgery.check_mergeable(self.model, pos)
            hs, (m,) = probe.collect(self.model, modules=(proj,))
            residual = hs[pos] - m  # h' of the preceding block: its output minus its MLP output
            fit = fit_map(m, hs[pos + 1] - residual, bias=surgery.has_bias(proj))
            surgery.merge_into_previous(self.model, pos, fit)
            self.alive.pop(pos)
            self.fits[block] = _fit_stats(fit, m, hs[pos + 1] - residual)
        else:
            raise PruneError(f"unknown base method '{self.method}' (one of {', '.join(BASE_METHODS)})")
        self.changed.append(block)


def compensate(model: nn.Module, pos: int, hs: list[torch.Tensor]) -> float:
    """Before block ``pos`` goes: scale what the blocks after it add by 1 / a (see the module docstring)."""
    surgery.check_additive(model, "comp")  # post-LN: each block's output is renormalised, there is no gap to mend
    a = float(hs[pos + 1].double().norm(dim=1).mean() / hs[pos].double().norm(dim=1).mean().clamp_min(1e-30))
    for later in surgery.blocks(model)[pos + 1:]:
        surgery.scale_contributions(later, 1.0 / a)
    return a


def _fit_stats(fit, x, y) -> dict:
    err = token_errors(fit, x, y)
    return {"rank": fit.rank, "tokens": int(err.numel()), "rel_error_mean": float(err.mean()),
            "rel_error_median": float(err.median())}


@dataclass
class Selector:
    criterion: Criterion
    name: str
    num_blocks: int
    protect_first: bool = False
    protect_last: bool = False

    def eligible(self, method: str, changed: list[int]) -> list[int]:
        out = [b for b in range(self.num_blocks) if b not in changed]
        if self.protect_first or method == "merged":
            out = [b for b in out if b != 0]
        if self.protect_last:
            out = [b for b in out if b != self.num_blocks - 1]
        return out

    def check_k(self, method: str, k_max: int) -> None:
        n = len(self.eligible(method, []))
        if k_max >= self.num_blocks:
            raise PruneError(f"k={k_max} must be smaller than the model's {self.num_blocks} blocks")
        if k_max > n:
            raise PruneError(f"k={k_max} exceeds the {n} blocks {method} may change (protected blocks excluded)")

    def scores(self, pruned: Pruned, hs: list[torch.Tensor], eligible: list[int], span: int = 1) -> dict[int, float]:
        """Criterion score of each eligible original block (of each span start) on the current model's states."""
        if self.criterion.spans:
            raw = self.criterion.fn(hs, span=span)
        else:
            raw = self.criterion.fn(hs)
        out = {}
        for pos, orig in enumerate(pruned.alive[: len(raw)]):
            members = pruned.alive[pos: pos + span]
            if len(members) == span and all(b in eligible for b in members):
                out[orig] = raw[pos]
        return out


def one_shot_plan(selector: Selector, original: Pruned, hs: list[torch.Tensor], method: str, k_max: int):
    """(plan, record): plan[k] = the original blocks changed at k (k = 1..k_max), record = what was chosen and why;
    ``hs``: the original model's states."""
    eligible = selector.eligible(method, [])
    if not selector.criterion.spans:
        scores = selector.scores(original, hs, eligible)
        ranking = selector.criterion.ranking(scores)
        plan = {k: ranking[:k] for k in range(1, k_max + 1)}
        record = {"mode": "one-shot", "scores": _keyed(scores),
                  "order": [{"block": b, "score": scores[b]} for b in ranking[:k_max]]}
        return plan, record
    plan, spans = {}, []
    for k in range(1, k_max + 1):
        scores = selector.scores(original, hs, eligible, span=k)
        if not scores:
            raise PruneError(f"angular: no span of {k} contiguous changeable blocks")
        start = selector.criterion.best(scores)
        plan[k] = list(range(start, start + k))
        spans.append({"k": k, "blocks": plan[k], "score": scores[start], "scores": _keyed(scores)})
    return plan, {"mode": "one-shot", "spans": spans}


def _keyed(scores: dict[int, float]) -> dict[str, float]:
    return {str(b): v for b, v in sorted(scores.items())}


def build(selector: Selector, model: nn.Module, probe: ProbeSet, method: str, k_max: int, iterative: bool,
          progress=None, states: list[torch.Tensor] | None = None, comp: bool = False
          ) -> Iterator[tuple[int, Pruned, dict]]:
    """Yield (k, pruned model, selection record so far) for k = 1..k_max; each model is the next's start when the
    plan is nested (always, except one-shot ``angular``), otherwise rebuilt from the original. ``states``: the
    original model's h_0..h_L when the caller has collected them already."""
    selector.check_k(method, k_max)
    # One working copy at a time: ``model`` itself is never changed, so a restart copies it again (a second
    # standing copy of a 7B model would be 28 GB in fp32).
    current = Pruned.of(model, method, comp)
    original = states if states is not None else probe.collect(model)[0]
    if not iterative:
        plan, record = one_shot_plan(selector, current, original, method, k_max)
        for k in range(1, k_max + 1):
            if current.changed != plan[k][: len(current.changed)]:
                current = Pruned.of(model, method, comp)
            for b in plan[k][len(current.changed):]:
                current.change(b, probe, original if not current.changed else None)
            if progress is not None:
                progress.update(1)
            yield k, current, record
        return
    order = []
    for k in range(1, k_max + 1):
        hs = original if k == 1 else probe.collect(current.model)[0]
        scores = selector.scores(current, hs, selector.eligible(method, current.changed))
        block = selector.criterion.best(scores)
        order.append({"block": block, "score": scores[block], "scores": _keyed(scores)})
        current.change(block, probe, hs)
        if progress is not None:
            progress.update(1)
        yield k, current, {"mode": "iterative", "order": list(order)}
