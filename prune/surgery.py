"""In-place changes to the decoder blocks of an HF causal LM: remove, replace by a linear map, merge.

The blocks are found by ``model.capture.find_decoder_layers`` (the one "where are the blocks" table: Mistral, Llama,
GPT-2, OPT, Pythia layouts). Positions are indices into the *current* block list.

- ``remove_blocks``: delete blocks; every ``layer_idx`` attribute inside the remaining blocks is renumbered
  0..L-k-1 and ``config.num_hidden_layers`` (GPT-2's ``n_layer``) and a per-layer ``config.layer_types`` follow,
  so the model *is* a standard model with L - k blocks: ``save_pretrained`` writes a checkpoint any HF install
  loads, and KV caches index the right layers. GPT-2 with ``scale_attn_by_inverse_layer_idx`` is refused: its
  attention scale depends on the block's index, so renumbering would change the function.
- ``replace_with_linear``: a ``model.linear_block.LinearBlock`` (h -> A h + c) takes the block's place.
- ``merge_into_previous`` (ReplaceMe-style, training-free): block p is removed and a map T is folded into the
  MLP output projection of block p - 1. Block p - 1 computes h_p = h' + M (h' its post-attention residual, M its
  MLP output); after the fold it computes h' + T M, with T fitted so that h' + T M ~ h_{p+1}. The fold is exact:
  ``down_proj`` W -> T W (and b -> T b + c when the projection has a bias, which is when c is fitted). Needs the
  additive (pre-LN or parallel) residual; post-LN blocks (OPT-350m) are refused.
"""
from __future__ import annotations

import torch
from torch import nn

from model.capture import find_decoder_layers
from model.linear_block import LinearBlock
from prune.errors import PruneError
from prune.fit import LinearMap

# Where a block keeps the projection that produces its MLP output (checked in order).
_MLP_OUT_PATHS = (
    "mlp.down_proj",  # Mistral, Llama, Qwen, Gemma
    "mlp.c_proj",  # GPT-2 (a Conv1D: y = x W + b, W is [in, out])
    "fc2",  # OPT
    "mlp.dense_4h_to_h",  # Pythia / GPT-NeoX
)


def blocks(model: nn.Module) -> nn.ModuleList:
    try:
        return find_decoder_layers(model)
    except ValueError as e:
        raise PruneError(f"{e}: this model family is not supported (no decoder block list found)") from None


def blocks_path(model: nn.Module) -> str:
    """Dotted path of the block list inside ``model`` (e.g. ``model.layers``)."""
    layers = blocks(model)
    return next(name for name, mod in model.named_modules() if mod is layers)


def remove_blocks(model: nn.Module, positions: list[int]) -> None:
    config = model.config
    if getattr(config, "scale_attn_by_inverse_layer_idx", False):
        raise PruneError("GPT-2 with scale_attn_by_inverse_layer_idx=True: a block's attention scale depends on its "
                         "index, so removing blocks would change the others")
    layers = blocks(model)
    positions = sorted(set(positions))
    if not positions or positions[0] < 0 or positions[-1] >= len(layers):
        raise PruneError(f"block positions {positions} out of range for {len(layers)} blocks")
    if len(positions) >= len(layers):
        raise PruneError(f"cannot remove all {len(layers)} blocks")
    types = getattr(config, "layer_types", None)
    if isinstance(types, (list, tuple)) and len(types) == len(layers):
        types = [t for i, t in enumerate(types) if i not in positions]
    else:
        types = None
    for p in reversed(positions):
        del layers[p]  # ModuleList renumbers its keys
    for new_index, block in enumerate(layers):
        for mod in block.modules():
            if isinstance(getattr(mod, "layer_idx", None), int):
                mod.layer_idx = new_index
    config.num_hidden_layers = len(layers)
    if types is not None:
        config.layer_types = types


def _param_like(model: nn.Module) -> torch.Tensor:
    return next(model.parameters())


def replace_with_linear(model: nn.Module, position: int, fit: LinearMap) -> LinearBlock:
    layers = blocks(model)
    ref = _param_like(model)
    d = fit.weight.shape[1]
    block = LinearBlock(d, layer_idx=position, device=ref.device, dtype=ref.dtype)
    with torch.no_grad():
        block.linear.weight.copy_(fit.weight)
        block.linear.bias.copy_(fit.bias if fit.bias is not None else torch.zeros(d, dtype=torch.float64))
    layers[position] = block
    return block


def mlp_output_projection(block: nn.Module) -> nn.Module:
    for path in _MLP_OUT_PATHS:
        try:
            return block.get_submodule(path)
        except AttributeError:
            continue
    raise PruneError(f"merged: cannot find the MLP output projection of {type(block).__name__} "
                     f"(looked for {', '.join(_MLP_OUT_PATHS)})")


def check_mergeable(model: nn.Module, position: int) -> nn.Module:
    """The projection to fold into for removing block ``position``; refuses what cannot be merged."""
    if position < 1:
        raise PruneError("merged: block 0 has no preceding block to fold its map into")
    if getattr(model.config, "do_layer_norm_before", True) is False:
        raise PruneError("merged: post-LN blocks (do_layer_norm_before=False) do not add their MLP output to the "
                         "residual, so no map can be folded into it")
    block = blocks(model)[position - 1]
    if isinstance(block, LinearBlock):
        raise PruneError(f"merged: block {position - 1} before block {position} is a linear map, not a block")
    return mlp_output_projection(block)


def has_bias(proj: nn.Module) -> bool:
    return getattr(proj, "bias", None) is not None


def merge_into_previous(model: nn.Module, position: int, fit: LinearMap) -> None:
    """Fold ``fit`` (M -> T M + c) into the MLP output projection of block ``position - 1``; remove the block."""
    proj = check_mergeable(model, position)
    t = fit.weight
    with torch.no_grad():
        w = proj.weight.detach().to("cpu", torch.float64)
        if isinstance(proj, nn.Linear):  # M = W x + b, W: [d, f]
            new_w = t @ w
        else:  # a Conv1D: M = x W + b, W: [f, d]
            new_w = w @ t.T
        proj.weight.copy_(new_w)
        if has_bias(proj):
            b = proj.bias.detach().to("cpu", torch.float64)
            proj.bias.copy_(t @ b + (fit.bias if fit.bias is not None else 0.0))
    remove_blocks(model, [position])
