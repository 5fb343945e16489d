"""SLEB-style iterative selection (Song et al. 2024, "SLEB: Streamlining LLMs through Redundancy Verification and
Elimination of Transformer Blocks"): at each step, remove the block whose removal raises the calibration
perplexity least, measured on the current model (the earlier removals made), so the choice is recomputed after
every removal.

The calibration set is the study's probe; a candidate's score is the mean next-token NLL over every real probe
token with that block skipped (a forward hook passes the block's input through), ln(perplexity). Each step costs
one probe forward per remaining candidate. ``sleb+comp`` compensates the magnitude after each removal
(``prune.plan``'s ``comp``); its first step, on the unpruned model, is ``sleb``'s, and a study computes it once
(``methods.Context.shared``).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from eval.linearity.profile import probe_batches
from model.loss import causal_lm_loss
from prune import surgery
from prune.plan import ProbeSet, Pruned, Selector


def _passthrough(module, args, kwargs, output):
    hidden = args[0] if args else kwargs["hidden_states"]
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


@torch.no_grad()
def probe_nll(model: nn.Module, probe: ProbeSet, skip: nn.Module | None = None) -> float:
    """Mean next-token NLL over the probe's real tokens, with the block ``skip`` passed through if given. The model
    runs where it is: the caller moves it to the probe's device once for all its candidates."""
    device = next(model.parameters()).device
    handle = skip.register_forward_hook(_passthrough, with_kwargs=True) if skip is not None else None
    try:
        # Summed on the device, read once: no host sync per batch (one candidate is many batches).
        total = torch.zeros((), dtype=torch.float64, device=device)
        count = torch.zeros((), dtype=torch.long, device=device)
        for ids, mask in probe_batches(probe.tokens, probe.batch_size, probe.pad_id):
            ids, mask = ids.to(device), mask.to(device)
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1]
            nll = causal_lm_loss(logits, ids[:, 1:], reduction="none")
            real = mask[:, 1:].flatten().bool()
            total += nll[real].double().sum()
            count += real.sum()
        return float(total) / int(count)
    finally:
        if handle is not None:
            handle.remove()


@dataclass(frozen=True)
class Perplexity:
    comp: bool = False

    def check(self, selector: Selector, k_max: int) -> None:
        selector.check_k("remove", k_max)

    def scores(self, ctx, pruned: Pruned) -> dict[int, float]:
        """Probe NLL with each remaining candidate skipped, on the current model."""
        layers = surgery.blocks(pruned.model)
        pruned.model.to(torch.device(ctx.probe.device or "cpu"))
        try:
            return {b: probe_nll(pruned.model, ctx.probe, layers[pruned.position(b)])
                    for b in ctx.selector.eligible("remove", pruned.changed)}
        finally:
            pruned.model.to("cpu")

    def __call__(self, ctx, k_max: int) -> Iterator[tuple[int, Pruned, dict]]:
        pruned = Pruned.of(ctx.model, "remove", self.comp)
        order = []
        for k in range(1, k_max + 1):
            if k == 1 and "sleb_first" in ctx.shared:
                scores = ctx.shared["sleb_first"]
            else:
                scores = self.scores(ctx, pruned)
                if k == 1:
                    ctx.shared["sleb_first"] = scores
            block = min(scores, key=lambda b: (scores[b], b))
            order.append({"block": block, "score": scores[block], "scores": {str(b): v for b, v in scores.items()}})
            pruned.change(block, ctx.probe, ctx.states if k == 1 else None)
            if ctx.progress is not None:
                ctx.progress.update(1)
            yield k, pruned, {"mode": "iterative (probe NLL with the block skipped)", "order": list(order)}
