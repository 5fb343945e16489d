"""Capture of the residual stream h_0..h_L during a forward pass.

Definitions used throughout linreg (the paper's, arXiv 2405.12250):
  h_0      = the input of decoder block 0, i.e. the embedding output (token embeddings, plus positional
             embeddings and dropout for architectures that have them, e.g. GPT-2);
  h_i      = the output of decoder block i (i = 1..L), *before* any final norm.

HF's ``output_hidden_states=True`` is not used for h_L because its last entry is taken *after* the final norm
(for Mistral/Llama/GPT-2/OPT/Pythia alike). Forward hooks on the blocks give the pre-norm states for every
architecture with one mechanism; they store references to tensors the forward builds anyway (no copies),
keep the autograd graph (so regularizers can backpropagate through them), and work under ZeRO-3, whose
parameter-gathering hooks are independent of ours.
"""
from __future__ import annotations

import inspect

import torch
from torch import nn

from core.errors import UnsupportedModelError

# Where common decoder families keep their block list (checked in order).
_LAYER_PATHS = (
    "model.layers",  # Mistral, Llama, Qwen, Gemma
    "model.decoder.layers",  # OPT
    "transformer.h",  # GPT-2, GPT-J, Falcon
    "gpt_neox.layers",  # Pythia / GPT-NeoX
    "model.language_model.layers",
    "layers",
)


def accepts_logits_to_keep(model: nn.Module) -> bool:
    """Whether ``model.forward`` takes ``logits_to_keep`` (transformers' causal LMs): callers that want the hidden
    states rather than the logits then run the LM head on one position (or on a mask's positions)."""
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # a forward whose signature cannot be read: assume the plain call
        return False


def find_decoder_layers(model: nn.Module) -> nn.ModuleList:
    """Return the ModuleList of decoder blocks of an HF causal LM (or a bare base model)."""
    for path in _LAYER_PATHS:
        obj = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList) and len(obj) > 0:
            return obj
    # Fallback: the longest ModuleList of identical block types.
    best = None
    for mod in model.modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 0 and len({type(m) for m in mod}) == 1:
            if best is None or len(mod) > len(best):
                best = mod
    if best is None:
        raise UnsupportedModelError(f"cannot find the decoder blocks of {type(model).__name__}")
    return best


class ResidualStream:
    """Records h_0..h_L (L+1 tensors of shape [batch, seq, d]) while enabled.

    Usage::

        stream = ResidualStream(model)          # registers hooks once
        with stream:                             # capture only inside the block
            out = model(input_ids)
        hs = stream.take()                       # [h_0, ..., h_L]; references, no copies
    """

    def __init__(self, model: nn.Module):
        self.layers = find_decoder_layers(model)
        self.num_layers = len(self.layers)
        self.active = False
        self._states: list[torch.Tensor | None] = [None] * (self.num_layers + 1)
        self._handles = [self.layers[0].register_forward_pre_hook(self._pre_hook, with_kwargs=True)]
        for i, layer in enumerate(self.layers):
            self._handles.append(layer.register_forward_hook(self._make_hook(i + 1)))

    def _pre_hook(self, module, args, kwargs):
        if self.active:
            self._states[0] = args[0] if args else kwargs["hidden_states"]

    def _make_hook(self, index: int):
        def hook(module, args, output):
            if self.active:
                # Some architectures return (hidden, present, attentions...) tuples.
                self._states[index] = output[0] if isinstance(output, (tuple, list)) else output

        return hook

    def __enter__(self) -> ResidualStream:
        self._states = [None] * (self.num_layers + 1)
        self.active = True
        return self

    def __exit__(self, *exc) -> None:
        self.active = False

    def take(self) -> list[torch.Tensor]:
        """Return the captured states and drop our references (so activations can be freed)."""
        states, self._states = self._states, [None] * (self.num_layers + 1)
        if any(s is None for s in states):
            missing = [i for i, s in enumerate(states) if s is None]
            raise RuntimeError(f"residual stream not captured for states {missing}: "
                               "was the forward run inside `with stream:`?")
        return states

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
