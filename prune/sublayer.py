"""Sub-block granularity (BlockPruner, Zhong et al. 2024, "BlockPruner: Fine-grained Pruning for Large Language
Models"): a decoder block is two residual sublayers, attention then MLP, h_mid = h_i + A_i and h_{i+1} = h_mid +
F_i, and each is a pruning candidate of its own.

The residual stream at sublayer resolution is h_0, mid_0, h_1, mid_1, ..., h_L, with mid_i = h_i + (what block i's
attention adds: the output of its output projection, or of Gemma's post-attention norm; for Pythia's parallel
residual, mid_i = h_i + A_i likewise). Candidate 2i is block i's attention (mid_i vs h_i), 2i + 1 its MLP (h_{i+1}
vs mid_i), so every criterion that scores a pair of consecutive states (``linearity``, ``linearity_wo_res``,
``cosine``, and ``angular`` with spans of one) scores sublayers unchanged. BlockPruner itself ranks by perplexity,
iteratively; here the study's ``--criterion`` ranks, one-shot or ``--iterative``.

At k, 2k sublayers are removed (as many sublayers as k blocks have). A removed sublayer's output projection is
set to zero (``surgery.zero_sublayer``): the model is a standard model of its family and its export reloads
plainly, but a lone zeroed sublayer still computes (the saving is realised when a runtime drops it). A block with
both sublayers removed adds nothing and is deleted (``surgery.remove_blocks``). Post-LN blocks are refused.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from prune import surgery
from prune.errors import PruneError
from prune.plan import Pruned, Selector

NAMES = ("attn", "mlp")


def sublayer_states(pruned: Pruned, probe) -> tuple[list[torch.Tensor], list[int]]:
    """(h_0, mid_0, h_1, ..., h_L) of the current model, and the original block of each current position."""
    layers = surgery.blocks(pruned.model)
    hs, attn = probe.collect(pruned.model, modules=tuple(surgery.contributions(b)[0] for b in layers))
    out = []
    for j, a in enumerate(attn):
        out += [hs[j], hs[j] + a]
    return out + [hs[-1]], list(pruned.alive)


@dataclass(frozen=True)
class Sublayers:
    def eligible(self, selector: Selector, removed: set[tuple[int, int]]) -> list[tuple[int, int]]:
        blocks = selector.eligible("remove", [])
        return [(b, s) for b in blocks for s in (0, 1) if (b, s) not in removed]

    def check(self, selector: Selector, k_max: int) -> None:
        selector.check_k("remove", k_max)
        n = len(self.eligible(selector, set()))
        if 2 * k_max > n:
            raise PruneError(f"sublayer: k={k_max} means {2 * k_max} sublayers, more than the {n} changeable ones")

    def scores(self, ctx, pruned: Pruned, removed: set) -> dict[tuple[int, int], float]:
        states, alive = sublayer_states(pruned, ctx.probe)
        raw = ctx.selector.criterion(states, ctx.probe.groups())
        ok = set(self.eligible(ctx.selector, removed))
        return {(b, s): raw[2 * j + s] for j, b in enumerate(alive) for s in (0, 1) if (b, s) in ok}

    def __call__(self, ctx, k_max: int) -> Iterator[tuple[int, Pruned, dict]]:
        surgery.check_additive(ctx.model, "sublayer")
        crit = ctx.selector.criterion
        sign = -1.0 if crit.first == "highest" else 1.0
        pruned = Pruned.of(ctx.model, "sublayer")
        removed: set[tuple[int, int]] = set()
        order, ranking = [], None
        for k in range(1, k_max + 1):
            for _ in range(2):
                if ranking is None or ctx.iterative:
                    scores = self.scores(ctx, pruned, removed)
                    ranking = sorted(scores, key=lambda c: (sign * scores[c], c))
                cand = next(c for c in ranking if c not in removed)
                order.append({"sublayer": f"{cand[0]}.{NAMES[cand[1]]}", "score": scores.get(cand)})
                remove(pruned, cand, removed)
            if ctx.progress is not None:
                ctx.progress.update(1)
            yield k, pruned, {"mode": f"sublayers by {ctx.selector.name}, "
                                      f"{'iterative' if ctx.iterative else 'one-shot'}", "order": list(order)}


def remove(pruned: Pruned, cand: tuple[int, int], removed: set[tuple[int, int]]) -> None:
    block, which = cand
    pos = pruned.position(block)
    removed.add(cand)
    pruned.changed.append(f"{block}.{NAMES[which]}")
    if (block, 1 - which) in removed:  # both gone: the block adds nothing
        surgery.remove_blocks(pruned.model, [pos])
        pruned.alive.pop(pos)
    else:
        surgery.zero_sublayer(surgery.blocks(pruned.model)[pos], which)
