"""In-place changes to the decoder blocks of an HF causal LM: remove, replace by a linear map, merge.

The blocks are found by ``model.capture.find_decoder_layers`` (the one "where are the blocks" table: Mistral, Llama,
GPT-2, OPT, Pythia layouts). Positions are indices into the *current* block list.

- ``remove_blocks``: delete blocks; every ``layer_idx`` attribute inside the remaining blocks is renumbered
  0..L-k-1 and ``config.num_hidden_layers`` (GPT-2's ``n_layer``) and a per-layer ``config.layer_types`` follow,
  so the model *is* a standard model with L - k blocks: ``save_pretrained`` writes a checkpoint any HF install
  loads, and KV caches index the right layers. GPT-2 with ``scale_attn_by_inverse_layer_idx`` is refused: its
  attention scale depends on the block's index, so renumbering would change the function.
- ``replace_with_linear``: a ``model.linear_block.LinearBlock`` (h -> A h + c) takes the block's place.
- ``merge_into_previous`` (ReplaceMe-style, training-free): blocks p..p+n-1 are removed and a map T is folded into
  the MLP output projection of block p - 1. Block p - 1 computes h_p = h' + M (h' its post-attention residual, M
  its MLP output); after the fold it computes h' + T M, with T fitted so that h' + T M ~ h_{p+n}. The fold is
  exact: ``down_proj`` W -> T W (and b -> T b + c when the projection has a bias, which is when c is fitted). Needs
  the additive (pre-LN or parallel) residual; post-LN blocks (OPT-350m) are refused.
- ``contributions``: the modules whose outputs a block adds to the residual stream, attention first, then MLP (the
  output projections; Gemma-2/3's post-sublayer norms, which come after them). ``scale_contributions`` multiplies
  what a block adds by a factor, exactly (the projection's weight and bias, or a Gemma norm's gain 1 + w);
  ``zero_sublayer`` makes a block add nothing from its attention or its MLP (BlockPruner's sublayer removal, as a
  standard model of the family: the zeroed projection stays in the checkpoint).
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


# Where a block keeps the projection that produces its attention output (checked in order).
_ATTN_OUT_PATHS = (
    "self_attn.o_proj",  # Mistral, Llama, Qwen, Gemma
    "attn.c_proj",  # GPT-2
    "self_attn.out_proj",  # OPT
    "attention.dense",  # Pythia / GPT-NeoX
)
# Gemma-2/3 normalise each sublayer's output before adding it: the norm, not the projection, sets its scale.
_POST_NORMS = ("post_attention_layernorm", "post_feedforward_layernorm")


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


def first_submodule(block: nn.Module, paths: tuple[str, ...], what: str) -> nn.Module:
    for path in paths:
        try:
            return block.get_submodule(path)
        except AttributeError:
            continue
    raise PruneError(f"cannot find the {what} of {type(block).__name__} (looked for {', '.join(paths)})")


def mlp_output_projection(block: nn.Module) -> nn.Module:
    return first_submodule(block, _MLP_OUT_PATHS, "MLP output projection")


def attention_output_projection(block: nn.Module) -> nn.Module:
    return first_submodule(block, _ATTN_OUT_PATHS, "attention output projection")


def post_sublayer_norms(block: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """Gemma-2/3's (post-attention, post-feedforward) norms, or None for blocks that add their projections' output
    directly (Llama's ``post_attention_layernorm`` is the norm *before* its MLP, hence the check of both)."""
    if all(hasattr(block, n) for n in _POST_NORMS):
        return tuple(getattr(block, n) for n in _POST_NORMS)
    return None


def contributions(block: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(attention, MLP): the modules whose outputs are added to the residual stream."""
    if isinstance(block, LinearBlock):
        raise PruneError("a linear map has no attention or MLP sublayer")
    return post_sublayer_norms(block) or (attention_output_projection(block), mlp_output_projection(block))


def check_additive(model: nn.Module, what: str) -> None:
    if getattr(model.config, "do_layer_norm_before", True) is False:
        raise PruneError(f"{what}: post-LN blocks (do_layer_norm_before=False) do not add their sublayers' outputs "
                         f"to the residual stream")


@torch.no_grad()
def scale_contributions(block: nn.Module, factor: float) -> None:
    """Multiply what ``block`` adds to the residual stream by ``factor`` (folded into its weights)."""
    norms = post_sublayer_norms(block)
    if norms is not None:
        for norm in norms:  # Gemma's RMSNorm multiplies by (1 + w)
            norm.weight.copy_((1.0 + norm.weight.double()) * factor - 1.0)
        return
    for proj in contributions(block):
        proj.weight.mul_(factor)
        if has_bias(proj):
            proj.bias.mul_(factor)


@torch.no_grad()
def zero_sublayer(block: nn.Module, which: int) -> None:
    """Make ``block`` add nothing from its attention (``which`` = 0) or its MLP (1): the output projection (and its
    bias) become zero, so a following Gemma norm also outputs zero."""
    proj = (attention_output_projection, mlp_output_projection)[which](block)
    proj.weight.zero_()
    if has_bias(proj):
        proj.bias.zero_()


def check_mergeable(model: nn.Module, position: int) -> nn.Module:
    """The projection to fold into for removing block ``position``; refuses what cannot be merged."""
    if position < 1:
        raise PruneError("merged: block 0 has no preceding block to fold its map into")
    check_additive(model, "merged")
    if post_sublayer_norms(blocks(model)[position - 1]) is not None:
        raise PruneError("merged: a Gemma-style block normalises its MLP output after the projection, so a map of that "
                         "output cannot be folded into the projection")
    block = blocks(model)[position - 1]
    if isinstance(block, LinearBlock):
        raise PruneError(f"merged: block {position - 1} before block {position} is a linear map, not a block")
    return mlp_output_projection(block)


def has_bias(proj: nn.Module) -> bool:
    return getattr(proj, "bias", None) is not None


def merge_into_previous(model: nn.Module, position: int, fit: LinearMap, count: int = 1) -> None:
    """Fold ``fit`` (M -> T M + c) into the MLP output projection of block ``position - 1``; remove the ``count``
    blocks from ``position`` on."""
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
    remove_blocks(model, list(range(position, position + count)))
