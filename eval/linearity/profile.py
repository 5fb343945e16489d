"""Linearity profiles of a causal LM: run a probe through the model, pool h_0..h_L over its tokens, score pairs.

The states are the residual stream of ``model.capture.ResidualStream`` (h_0 = input of block 0, h_i = output of
block i, *before* the final norm), the same for Mistral, Llama, GPT-2, OPT and Pythia layouts. HF's
``output_hidden_states`` is not used because its last entry is taken after the final norm; that state is
available separately, from a hook on the final norm module, as the labelled extra pair
(h_{L-1} -> final_norm(h_L)) -- the last pair the paper's notebook measured. Post-LN models (e.g. OPT-350m) have
no final norm module: their block outputs are already normed, and there is no extra pair.
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from eval.linearity.heldout import SCORES, HeldoutConfig, mean_interval
from eval.linearity.score import PairStats, check_sizes, linearity_profile
from model.capture import ResidualStream, accepts_logits_to_keep

if TYPE_CHECKING:  # state_measures imports the toolkit, which imports this module
    from eval.linearity.state_measures import ToolkitConfig

QUANTITIES = ("linearity", "linearity_wo_res", "norm_ratio")
HELDOUT_QUANTITIES = ("heldout", "heldout_wo_res", "chance", "chance_heldout")  # means and scalars of held-out runs
INTERVALS = tuple(f"{q}_{end}" for q in SCORES for end in ("lo", "hi"))

# Where common decoder families keep the norm applied after the last block (checked in order).
_FINAL_NORM_PATHS = (
    "model.norm",  # Mistral, Llama, Qwen, Gemma
    "model.decoder.final_layer_norm",  # OPT (None for post-LN OPT-350m)
    "transformer.ln_f",  # GPT-2, GPT-J
    "gpt_neox.final_layer_norm",  # Pythia / GPT-NeoX
    "model.language_model.norm",
)


def find_final_norm(model: nn.Module) -> nn.Module | None:
    for path in _FINAL_NORM_PATHS:
        try:
            return model.get_submodule(path)
        except AttributeError:  # absent, or None (post-LN OPT)
            continue
    return None


@dataclass
class Profile:
    num_layers: int
    hidden_size: int
    num_tokens: int
    pairs: list[PairStats]  # pair i = (h_i, h_{i+1}) = block i
    final_norm: PairStats | None = None  # (h_{L-1}, final_norm(h_L)), when asked for
    toolkit: dict[str, list[float]] | None = None  # per state h_0..h_L (``state_measures``), when asked for

    def means(self) -> dict[str, float]:
        """Per-model summary: the mean over the L block pairs (the final-norm pair is not included); with
        held-out statistics also the means of the held-out scores and chance levels."""
        out = {q: sum(getattr(p, q) for p in self.pairs) / len(self.pairs) for q in QUANTITIES}
        if self.pairs and self.pairs[0].heldout is not None:
            for q in HELDOUT_QUANTITIES:
                out[q] = sum(getattr(p.heldout, q) for p in self.pairs) / len(self.pairs)
            if all(p.heldout.draws is not None for p in self.pairs):
                out.update(mean_interval([p.heldout for p in self.pairs], out))
        return out

    def depths(self) -> list[float]:
        """Normalised depth of each pair, 0 (first block) .. 1 (last block), to compare models of any depth."""
        last = max(len(self.pairs) - 1, 1)
        return [i / last for i in range(len(self.pairs))]

    def to_dict(self) -> dict:
        out = asdict(self)
        out["pairs"] = [p.to_dict() for p in self.pairs]  # without a "heldout" key when there is none
        out["final_norm"] = self.final_norm.to_dict() if self.final_norm is not None else None
        out["means"] = self.means()
        if self.toolkit is None:
            del out["toolkit"]
        return out


def pool_order(probe: list[list[int]]) -> list[int]:
    """Indices of the probe's sequences in the order their tokens are pooled: longest first (a stable sort)."""
    return sorted(range(len(probe)), key=lambda i: len(probe[i]), reverse=True)


def probe_groups(probe: list[list[int]]) -> torch.Tensor:
    """The document (probe sequence) index of every pooled token, in the order ``StateCollector`` pools them."""
    order = pool_order(probe)
    return torch.repeat_interleave(torch.tensor(order, dtype=torch.long),
                                   torch.tensor([len(probe[i]) for i in order], dtype=torch.long))


def probe_batches(probe: list[list[int]], batch_size: int, pad_id: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Right-padded (input_ids, attention_mask) batches, sorted by length to waste little on padding.

    Right padding is exact for causal LMs: real tokens never attend to the pads after them and keep positions
    0..len-1. The order of tokens in the pool does not matter (LS is invariant to permuting rows)."""
    seqs = [probe[i] for i in pool_order(probe)]
    batches = []
    for start in range(0, len(seqs), batch_size):
        group = seqs[start:start + batch_size]
        width = len(group[0])
        ids = torch.full((len(group), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for row, seq in enumerate(group):
            ids[row, :len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, :len(seq)] = 1
        batches.append((ids, mask))
    return batches


class StateCollector:
    """Hooks a model once; ``collect`` runs probe batches and returns the pooled [h_0..h_L] (+ normed h_L)."""

    def __init__(self, model: nn.Module, final_norm: bool = False):
        # A torch.compile(model) wrapper hides the module that owns the blocks (the trainer's in-place
        # model.compile() leaves no wrapper; its evaluators run eagerly, see eval/hook.py).
        self.model = getattr(model, "_orig_mod", model)
        self.stream = ResidualStream(self.model)
        # The whole model runs (ZeRO-3's hooks expect the top-level forward), but the LM head on one position.
        self._head_kwargs = {"logits_to_keep": 1} if accepts_logits_to_keep(self.model) else {}
        self._normed: torch.Tensor | None = None
        self._norm_handle = None
        if final_norm:
            norm = find_final_norm(self.model)
            if norm is not None:
                self._norm_handle = norm.register_forward_hook(self._norm_hook)

    def _norm_hook(self, module, args, output):
        if self.stream.active:
            self._normed = output[0] if isinstance(output, (tuple, list)) else output

    def collect(self, batches, device, autocast=None, keep: bool = True,
                store_device: str | torch.device = "cpu") -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Forward every batch. With ``keep`` (the computing rank) return the states of the real tokens, pooled
        and moved to ``store_device`` in the dtype the model produced; other ranks only take part in the
        forwards (ZeRO-3 gathers parameters collectively) and get ([], None). ``autocast``: a context factory
        (e.g. ``EvalContext.autocast``) entered around each forward."""
        pooled: list[list[torch.Tensor]] = [[] for _ in range(self.stream.num_layers + 1)]
        normed: list[torch.Tensor] = []
        capture = self.stream if keep else contextlib.nullcontext()
        for ids, mask in batches:
            ids, mask = ids.to(device), mask.to(device)
            with torch.no_grad(), (autocast or contextlib.nullcontext)(), capture:
                self.model(input_ids=ids, attention_mask=mask, use_cache=False, **self._head_kwargs)
            if not keep:
                continue
            real = mask.bool()
            for i, h in enumerate(self.stream.take()):
                pooled[i].append(h[real].to(store_device))
            if self._normed is not None:
                normed.append(self._normed[real].to(store_device))
                self._normed = None
        if not keep:
            return [], None
        states = [torch.cat(parts) for parts in pooled]
        return states, (torch.cat(normed) if normed else None)

    def remove(self) -> None:
        self.stream.remove()
        if self._norm_handle is not None:
            self._norm_handle.remove()
            self._norm_handle = None


def profile_from_states(states: list[torch.Tensor], normed: torch.Tensor | None = None,
                        device: torch.device | str | None = None, *, groups: torch.Tensor | None = None,
                        heldout: HeldoutConfig | None = None, toolkit: ToolkitConfig | None = None, model=None,
                        labels: torch.Tensor | None = None) -> Profile:
    """The profile of pooled states; with ``groups`` (``probe_groups``) every pair also gets held-out statistics,
    with ``toolkit`` every state its enabled measurements (the logit lens needs ``model`` and ``labels``)."""
    n, d = states[0].shape
    aniso: list[float] = []
    on_gram = None
    if toolkit is not None and toolkit.anisotropy:
        from eval.linearity.state_measures import anisotropy_of_gram

        def on_gram(i, gram):
            aniso.append(anisotropy_of_gram(gram))
    # the final-norm pair shares h_{L-1}'s solve
    pairs = linearity_profile(states, device, extra_y=normed, groups=groups, heldout=heldout, grams=on_gram)
    final = pairs.pop() if normed is not None else None
    measures = None
    if toolkit is not None and toolkit.enabled():
        from eval.linearity.state_measures import state_measures

        measures = state_measures(states, toolkit, aniso, model, labels)
    return Profile(num_layers=len(states) - 1, hidden_size=d, num_tokens=n, pairs=pairs, final_norm=final,
                   toolkit=measures)


@torch.no_grad()
def model_profile(model: nn.Module, probe: list[list[int]], *, batch_size: int = 8, device=None, autocast=None,
                  final_norm: bool = False, pad_id: int = 0, heldout: HeldoutConfig | None = None,
                  toolkit: ToolkitConfig | None = None) -> Profile:
    """The linearity profile of ``model`` on ``probe`` (token id lists, e.g. from ``probe.build_probe``); with
    ``heldout``, held-out scores too, each probe sequence a document; with ``toolkit``, per-state measurements."""
    device = device or next(model.parameters()).device
    hidden = getattr(getattr(model, "config", None), "hidden_size", None)
    if hidden is not None:  # refuse before the forwards, not after
        check_sizes(sum(len(p) for p in probe), hidden)
    collector, was_training = StateCollector(model, final_norm=final_norm), model.training
    model.eval()  # dropout off: the profile of the function the model computes
    try:
        states, normed = collector.collect(probe_batches(probe, batch_size, pad_id), device, autocast)
    finally:
        collector.remove()
        model.train(was_training)
    groups = probe_groups(probe) if heldout is not None else None
    labels = None
    if toolkit is not None and toolkit.logit_lens:
        from eval.linearity.state_measures import pooled_labels

        labels = pooled_labels(probe, pool_order(probe))
    was_training = model.training
    model.eval()
    try:
        return profile_from_states(states, normed, device, groups=groups, heldout=heldout, toolkit=toolkit,
                                   model=model, labels=labels)
    finally:
        model.train(was_training)
