"""Reverse-order pruning (Lu et al., "Reassessing Layer Pruning in LLMs: New Insights and Methods", ICLR 2026):
drop the last n blocks, the final block included (the authors' ``tail`` keeps blocks 0..L-n-1), with no selection
signal at all. ``--protect-last`` keeps the final block and drops the n before it.

``reverse+finetune`` then trains the final norm, ``lm_head`` and the last three remaining blocks on the next-token
loss (the authors' "partial-layer fine-tuning", ``last3``; they train 2 epochs of Alpaca at learning rate 1e-5),
here through linreg's plain ``Trainer`` on the distillation config's data, steps and learning rate
(``--distill-*``). With tied embeddings ``lm_head`` *is* the input embedding, which then trains too.

Magnitude compensation does not apply: no block follows the removed ones, and the final norm is scale invariant.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from torch import nn

from prune import surgery
from prune.distill import Healing, heal
from prune.plan import Pruned, Selector

LAST_BLOCKS = 3
# Where the final norm sits (checked in order).
_FINAL_NORMS = ("model.norm", "model.decoder.final_layer_norm", "transformer.ln_f", "gpt_neox.final_layer_norm")


@dataclass(frozen=True)
class LastN:
    def order(self, selector: Selector) -> list[int]:
        return sorted(selector.eligible("remove", []), reverse=True)

    def check(self, selector: Selector, k_max: int) -> None:
        selector.check_k("remove", k_max)

    def __call__(self, ctx, k_max: int) -> Iterator[tuple[int, Pruned, dict]]:
        order = self.order(ctx.selector)[:k_max]
        pruned = Pruned.of(ctx.model, "remove")
        for k, block in enumerate(order, 1):
            pruned.change(block, ctx.probe)
            if ctx.progress is not None:
                ctx.progress.update(1)
            yield k, pruned, {"mode": "reverse order", "order": order[:k]}


def final_norm(model: nn.Module) -> nn.Module:
    return surgery.first_submodule(model, _FINAL_NORMS, "final norm")


def finetune_last(pruned: Pruned, h: Healing) -> tuple[Pruned, dict]:
    def trainable(model: nn.Module) -> list[nn.Module]:
        return [final_norm(model), model.get_output_embeddings(), *surgery.blocks(model)[-LAST_BLOCKS:]]

    return heal(pruned, h, trainable, objective="lm")
