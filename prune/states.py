"""The probe set and the residual states pruning decisions and fits are made on.

The probe is ``eval.linearity``'s (the paper's recipe by default: 128 random 512-character chunks of the text,
each tokenised on its own, every token pooled); the default text is TinyStories validation
(``<data root>/tinystories/valid.txt``, or the hub's ``roneneldan/TinyStories`` validation split without a data
root). ``collect`` runs the probe through a model with ``eval.linearity``'s ``StateCollector`` (h_0..h_L before
the final norm, real tokens only, pooled) and can record the outputs of extra modules on the same tokens (the MLP
output projection a merged map is fitted on).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from data.sources import data_root
from eval.linearity.probe import ProbeConfig, build_probe, read_probe_dataset, read_probe_text
from eval.linearity.profile import StateCollector, probe_batches
from prune.errors import PruneError


def probe_text(path: str | None = None, root: str | None = None, text_field: str = "text") -> tuple[str, str]:
    """(text, description): ``path`` if given, else TinyStories validation from the data root or the hub."""
    if path is not None:
        return read_probe_text(path, text_field), str(Path(path).resolve())
    base = data_root(cli=root)
    if base is not None:
        valid = base / "tinystories" / "valid.txt"
        return read_probe_text(valid), str(valid.resolve())
    return read_probe_dataset("roneneldan/TinyStories", "validation"), "roneneldan/TinyStories:validation"


def make_probe(text: str, tokenizer, cfg: ProbeConfig, model: nn.Module, source: str = "") -> list[list[int]]:
    try:
        probe = build_probe(text, tokenizer, cfg, max_len=getattr(model.config, "max_position_embeddings", None))
    except ValueError as e:  # fewer characters than one chunk
        raise PruneError(f"{source or 'probe text'}: {e}") from None
    n, d = sum(len(p) for p in probe), model.config.hidden_size
    if n <= d + 1:
        raise PruneError(f"probe has {n} tokens for hidden size {d}: a linear fit or linearity score needs more "
                         f"than d + 1 tokens (raise --num-chunks / --chunk-chars or give a longer --probe-text)")
    return probe


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
