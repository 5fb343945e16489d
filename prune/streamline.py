"""LLM-Streamline-style replacement (Chen et al. 2024, "Compressing Large Language Models by Streamlining the
Unimportant Layer"): a contiguous span of blocks is replaced by one lightweight layer trained to map the span's
input to its output.

Here the lightweight layer is one decoder block of the family (the paper's transformer-layer variant), so the
result is a standard model: for k, a span of k + 1 blocks i..i+k becomes one block, k blocks fewer, like every
other method at k. The span maximises the mean over probe tokens of cos(h_i, h_{i+k+1}) (the paper's choice: the
span whose input and output are most similar). The block starts as block i (the span's first block) and is
trained through linreg's ``Trainer`` (``prune.distill.heal``) with only its parameters free, on the paper's
objective: the MSE between its output and the original model's h_{i+k+1}, on the distillation config's data.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from prune import surgery
from prune.criteria import token_cosines
from prune.distill import Healing, heal
from prune.errors import PruneError
from prune.plan import Pruned, Selector


@dataclass(frozen=True)
class SpanBlock:
    def starts(self, selector: Selector, k: int) -> list[int]:
        ok = set(selector.eligible("remove", []))
        return [i for i in range(selector.num_blocks - k) if all(b in ok for b in range(i, i + k + 1))]

    def check(self, selector: Selector, k_max: int) -> None:
        selector.check_k("remove", k_max)
        if not self.starts(selector, k_max):
            raise PruneError(f"streamline: no span of {k_max + 1} changeable blocks")

    def __call__(self, ctx, k_max: int) -> Iterator[tuple[int, Pruned, dict]]:
        hs, spans = ctx.states, []
        for k in range(1, k_max + 1):
            scores = {i: float(token_cosines(hs[i], hs[i + k + 1]).mean()) for i in self.starts(ctx.selector, k)}
            start = max(scores, key=lambda i: (scores[i], -i))
            pruned = Pruned.of(ctx.model, "streamline")
            surgery.remove_blocks(pruned.model, list(range(start + 1, start + k + 1)))
            pruned.alive = [b for b in pruned.alive if not start < b <= start + k]
            pruned.changed = list(range(start, start + k + 1))
            pruned.targets[start] = start + k
            spans.append({"k": k, "blocks": pruned.changed, "cosine": scores[start],
                          "cosines": {str(i): v for i, v in scores.items()}})
            if ctx.progress is not None:
                ctx.progress.update(1)
            yield k, pruned, {"mode": "span (mean cosine of input and output)", "spans": list(spans)}


def train_block(pruned: Pruned, h: Healing) -> tuple[Pruned, dict]:
    (start, end), = pruned.targets.items()
    pos = pruned.position(start)
    return heal(pruned, h, lambda m: [surgery.blocks(m)[pos]], pairs=[(pos + 1, end + 1)])
