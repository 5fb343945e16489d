"""The scorer's attention on CPU: packed tree rows compute only the scores a token may see, and the last block
only the queries whose logits are read.

A packed row (``scorer.Row``) lays out a tree of segments one after another: a shared context prefix (segment 0),
context tails under it, continuations under those. A token sees its own segment up to itself and its ancestors
whole. The dense route gives SDPA the row's [L, L] boolean mask; on CPU a masked SDPA computes the whole square
(at 2,048 positions 22 ms a layer against 9.5 ms causal, docs/PERFORMANCE.md), however little of it is visible.

Here each segment s contributes one partial attention: the queries of s and of its descendants against the keys
of s alone, with SDPA's top-left causal mask. The layout puts a segment's subtree right after it, so those
queries are one contiguous run of the row: a query of s sees the keys of s up to itself, and a descendant's
query, placed after s, sees all of them. A query's attention is the softmax over the union of its partials'
keys, i.e. the partials merged by their log-sum-exps (as FlashAttention merges its key blocks):

    out = sum_s exp(lse_s - lse) out_s,    lse = log sum_s exp(lse_s).

The work is the sum over segments of (subtree length x segment length) instead of L^2: for a MultiRC row (a
300-token paragraph under 40-token question tails, 2,048 positions) about a sixth, by count. Partials of one depth have
disjoint query runs, so each depth fills one buffer and the depths are merged once. The partials are
``_scaled_dot_product_flash_attention_for_cpu``, the kernel behind CPU SDPA, which also returns the log-sum-exp.
On other devices the scorer keeps the dense mask.

The last block answers only the queries whose logits are read (``ScoredQueries``). Its other rows feed nothing
but the final norm and the LM head at positions nobody reads, so its attention runs those few queries against
every key (the keys and values of all rows are still computed: they are what the scored queries see), and
``scored_rows_only`` runs its output projection and MLP on those rows alone. In a BoolQ row that is one query of
hundreds: the last block's MLP and output projection are a fifth of a 4-block model's linear work, and its
attention a quarter of the attention. Where the scored queries are so many that a masked kernel over them and every
key would cost more than the usual attention (``attention_scores``), the attention runs all queries.

``use_tree_attention(model)`` switches a transformers model to this attention for the scorer's forward calls
(registered with ``AttentionInterface`` under ``linreg_tree``; the model's own implementation is restored
after). The model builds no attention mask: a forward call under it passes ``tree=TreeLayout`` for packed rows,
none for plain causal rows, or the scorer's own 4D mask for a layout the tree cannot take (transformers' SDPA then
runs, as without this attention), and ``scored=ScoredQueries``.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

NAME = "linreg_tree"

# (depth, first token of the segment, its end, the end of its subtree): one partial attention
Partial = tuple[int, int, int, int]


@dataclass
class TreeLayout:
    """The partials of each row of a batch (``rows[b]``), and how many depths they span (read by every layer)."""
    rows: list[list[Partial]]
    depths: int = field(init=False)

    def __post_init__(self) -> None:
        self.depths = 1 + max(d for partials in self.rows for d, *_ in partials)


def row_partials(segments: tuple[int, ...] | None, parents: tuple[int, ...] | None, n: int) -> list[Partial] | None:
    """The partials of a row of ``n`` tokens whose token i is in segment ``segments[i]`` (None: one causal
    segment), segment s under ``parents[s]`` (None: every segment under 0). None when a segment's subtree is not
    one contiguous run after it (the layout this attention relies on), so that the caller keeps the dense mask."""
    if segments is None:
        return [(0, 0, n, n)]
    count = max(segments) + 1
    parents = parents if parents is not None else (-1, *[0] * (count - 1))
    start, end = [n] * count, [0] * count
    for i, s in enumerate(segments):
        start[s], end[s] = min(start[s], i), i + 1
    tokens = [e - a for a, e in zip(start, end)]
    if sum(tokens) != n:  # a segment in pieces
        return None
    depth, sub_end = [0] * count, list(end)
    for s in range(1, count):
        if parents[s] >= s or start[s] < end[parents[s]]:  # a segment before (or inside) its parent
            return None
        depth[s] = depth[parents[s]] + 1
    for s in range(count - 1, 0, -1):  # children after their parents: each subtree is complete when it is passed up
        sub_end[parents[s]] = max(sub_end[parents[s]], sub_end[s])
        tokens[parents[s]] += tokens[s]
    if any(sub_end[s] - start[s] != tokens[s] for s in range(count)):  # a subtree with a stranger inside
        return None
    return [(depth[s], start[s], end[s], sub_end[s]) for s in range(count)]


@dataclass
class ScoredQueries:
    """The positions of a batch whose outputs are read, for block ``layer`` (the last): ``keep`` [B, L], the rows
    of its output projection and MLP. For its attention, ``index`` [B, m] the same positions row by row (a row
    with fewer than m repeats its first: the same query twice writes the same output) and ``mask`` [B, 1, m, L]
    the keys each sees (causal, and in a packed row its own segment and ancestors); both None where the attention
    runs all queries, as where the scored ones are so many that one masked kernel over them and every key would
    cost more than the usual attention (a packed row of MultiRC's 10-20-token answers)."""
    layer: int
    keep: torch.Tensor
    index: torch.Tensor | None = None
    mask: torch.Tensor | None = None

    def to(self, device) -> ScoredQueries:
        return ScoredQueries(self.layer, self.keep.to(device),
                             *(None if t is None else t.to(device) for t in (self.index, self.mask)))


def attention_scores(tree: TreeLayout | None, lengths: list[int]) -> int:
    """How many query-key scores the usual attention of a batch computes: each partial's queries against its keys
    (a causal half of the segment's own square), or a plain row's causal half."""
    if tree is None:
        return sum(n * (n + 1) // 2 for n in lengths)
    return sum((sub_end - a) * (e - a) - (e - a) * (e - a - 1) // 2
               for partials in tree.rows for _, a, e, sub_end in partials)


def _scored_attention(query, key, value, scaling, scored: ScoredQueries) -> torch.Tensor:
    """The attention of the scored queries alone, placed at their positions of a [B, L, H, D] output (zeros
    elsewhere: nothing reads those rows)."""
    b_, h_, l_, d_ = query.shape
    index = scored.index
    q = query.gather(2, index[:, None, :, None].expand(b_, h_, index.shape[1], d_))
    out = F.scaled_dot_product_attention(q, key, value, attn_mask=scored.mask, scale=scaling,
                                         enable_gqa=key.shape[1] != h_)
    full = query.new_zeros((b_, l_, h_, value.shape[-1]))
    full[torch.arange(b_, device=index.device)[:, None], index] = out.transpose(1, 2)
    return full


def tree_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, tree=None,
                   scored: ScoredQueries | None = None, **kwargs):
    """A transformers attention function: ``query`` [B, H, L, D], ``key``/``value`` [B, Hkv, L, D]; returns
    ([B, L, H, D], None). ``tree`` says what each token sees; without it the rows are plain causal ones, or
    ``attention_mask`` is the scorer's dense 4D mask. ``scored``: which queries the last block answers."""
    if scored is not None and scored.mask is not None and getattr(module, "layer_idx", None) == scored.layer:
        return _scored_attention(query, key, value, scaling, scored), None
    if tree is None:  # plain causal rows, or the dense mask of a layout the tree cannot take: the model's SDPA
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    groups = query.shape[1] // key.shape[1]
    if groups > 1:  # grouped-query attention: each key/value head serves `groups` query heads
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    b_, h_, l_, _ = query.shape
    # per depth: the partial outputs (at least float32 for the merge) and their log-sum-exps; -inf where none ran.
    # Laid out [depth, B, L, H, ...], the layout transformers wants back, so the merged output needs no transpose.
    # One kernel call per partial: padding the small ones into one masked call was slower (masked kernel, gathers)
    merge = torch.promote_types(query.dtype, torch.float32)
    outs = query.new_zeros((tree.depths, b_, l_, h_, value.shape[-1]), dtype=merge)
    lses = torch.full((tree.depths, b_, l_, h_), -math.inf, dtype=merge, device=query.device)
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    for b, partials in enumerate(tree.rows):
        for depth, a, e, sub_end in partials:
            out, lse = flash(query[b:b + 1, :, a:sub_end], key[b:b + 1, :, a:e], value[b:b + 1, :, a:e],
                             is_causal=True, scale=scaling)
            outs[depth, b, a:sub_end] = out[0].transpose(0, 1)
            lses[depth, b, a:sub_end] = lse[0].t()
    total = torch.logsumexp(lses, dim=0)
    total = torch.where(torch.isinf(total), 0.0, total)  # padding queries: no partial, a zero output
    weights = torch.exp(lses - total)[..., None]
    merged = outs[0].mul_(weights[0])  # in place, depth by depth: no [depth, ...]-sized temporary
    for d in range(1, tree.depths):
        merged.addcmul_(outs[d], weights[d])
    return merged.to(query.dtype), None


def _no_mask(*args, **kwargs) -> None:
    """The mask function of ``linreg_tree``: the layout says what each token sees, so the model builds no
    [L, L] mask (its packed position ids would otherwise make transformers build one)."""
    return None


def _register() -> None:
    from transformers import AttentionInterface, AttentionMaskInterface

    AttentionInterface.register(NAME, tree_attention)
    AttentionMaskInterface.register(NAME, _no_mask)


def supports_tree_attention(model, device: torch.device) -> bool:
    return device.type == "cpu" and hasattr(model, "set_attn_implementation")


@contextmanager
def use_tree_attention(model):
    """The model's forward calls inside use ``tree_attention``; its own attention implementation after."""
    _register()
    before = model.config._attn_implementation
    model.set_attn_implementation(NAME)
    try:
        yield
    finally:
        model.set_attn_implementation(before)


def _rows_in(keep: torch.Tensor):
    def pre(module, args):
        return (args[0][keep], *args[1:])
    return pre


def _rows_out(keep: torch.Tensor):
    def post(module, args, out):
        full = out.new_zeros((*keep.shape, out.shape[-1]))
        full[keep] = out
        return full
    return post


@contextmanager
def scored_rows_only(modules, keep: torch.Tensor):
    """Each of ``modules`` (row-wise: the last block's output projection and MLP) runs on the ``keep`` [B, L] rows
    of its input only, and hands on a [B, L, ...] output that is zero elsewhere. Forward hooks, removed after."""
    handles = []
    try:
        for m in modules:
            handles += [m.register_forward_pre_hook(_rows_in(keep)), m.register_forward_hook(_rows_out(keep))]
        yield
    finally:
        for h in handles:
            h.remove()
