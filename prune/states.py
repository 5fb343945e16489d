"""The probe set and the residual states pruning decisions and fits are made on.

The probe is ``eval.linearity``'s (the paper's recipe by default: 128 random 512-character chunks of the text,
each tokenised on its own, every token pooled; the default text is ``eval.linearity.probe.probe_text``'s).
``collect`` runs the probe through a model with ``eval.linearity``'s ``StateCollector`` (h_0..h_L before the final
norm, real tokens only, pooled) and can record the outputs of extra modules on the same tokens (the MLP output
projection a merged map is fitted on).
"""
from __future__ import annotations

import torch
from torch import nn

from core.errors import DataError
from eval.linearity.probe import ProbeSetConfig, checked_probe
from eval.linearity.profile import StateCollector, probe_batches
from prune.errors import PruneError


def make_probe(text: str, tokenizer, cfg: ProbeSetConfig, model: nn.Module, source: str) -> list[list[int]]:
    """``checked_probe`` for ``model``; a probe too small for it is a refused pruning request."""
    try:
        return checked_probe(text, tokenizer, cfg, source=source, width=model.config.hidden_size,
                             max_len=getattr(model.config, "max_position_embeddings", None))
    except DataError as e:
        raise PruneError(str(e)) from None


@torch.no_grad()
def collect(model: nn.Module, probe: list[list[int]], *, batch_size: int = 8, device=None, pad_id: int = 0,
            modules: tuple[nn.Module, ...] = ()) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """([h_0..h_L], [output of each of ``modules``]), each n x d over the probe's tokens, on the CPU."""
    device = device or next(model.parameters()).device
    batches = probe_batches(probe, batch_size, pad_id)
    outputs: list[list[torch.Tensor]] = [[] for _ in modules]
    hooks = [m.register_forward_hook(lambda mod, args, out, i=i: outputs[i].append(out)) for i, m in enumerate(modules)]
    collector, was_training = StateCollector(model), model.training
    model.eval()
    try:
        states, _ = collector.collect(batches, device)
    finally:
        collector.remove()
        for h in hooks:
            h.remove()
        model.train(was_training)
    # OPT runs its MLP on [batch * seq, d]: outputs are viewed as [batch, seq, d] before taking the real tokens
    extras = [torch.cat([o.reshape(*mask.shape, -1)[mask.bool().to(o.device)].cpu()
                         for o, (_, mask) in zip(outs, batches)]) for outs in outputs]
    return states, extras


def last_token_rows(probe: list[list[int]]) -> torch.Tensor:
    """Row of each probe sequence's last token in ``collect``'s pooled states (which pool the sequences in
    ``probe_batches``' order: by length, longest first, ties in probe order)."""
    lengths = torch.tensor([len(s) for s in sorted(probe, key=len, reverse=True)])
    return torch.cumsum(lengths, 0) - 1
