"""Fused per-token losses over consecutive residual states, with a hand-written backward.

The reference path (``Regularizer.pair_losses`` with ``fused=False``) stacks h_0..h_L and upcasts the stack: for
Mistral-150M at 32×1024 tokens that is a 0.65 GB bf16 copy, a 1.3 GB fp32 copy, and whatever autograd keeps for
``token_loss`` (for the cosine: the two normalised fp32 stacks, 2.5 GB more) until the backward. Here:

* forward: each state is upcast to fp32 once, one at a time; the cosine takes its per-token norm and its dot
  product with the previous state, the MSE the squared distance to the previous state. Only per-token scalars
  are stored ([P+1, B, T] norms and [P, B, T] cosines: 3 MB at that size) plus references to the states, which
  the model keeps alive for its own backward anyway (``save_for_backward`` copies nothing and checks versions).
* backward: the gradient of each state is formed from it and its two neighbours (a rolling window of fp32
  upcasts, each state upcast once) with per-token coefficients, and returned in the state's dtype.

Under ``torch.compile`` (``regularizer.compile=true``) each state's work fuses into one or two kernels that
read the bf16 state(s) once; eager mode runs a handful of elementwise ops per state.

A kernel describes one regularizer: ``forward(hs) -> (per_token [P, B, T], small tensors to save)`` and
``backward(hs, saved, grad [P, B, T]) -> [∂(Σ grad·per_token)/∂h_j for each state]`` (accumulation dtype).
"""
from __future__ import annotations

import torch


def _acc(h: torch.Tensor) -> torch.Tensor:
    """The state in its accumulation dtype: fp32 for bf16/fp16/fp32 (a no-op for fp32), fp64 kept (gradcheck)."""
    return h.to(torch.promote_types(h.dtype, torch.float32))


def _windows(hs):
    """(h_{j-1}, h_j, h_{j+1}) upcast, None past the ends; each state is upcast once and dropped when done."""
    prev, cur, nxt = None, None, _acc(hs[0])
    for j in range(len(hs)):
        prev, cur, nxt = cur, nxt, (_acc(hs[j + 1]) if j + 1 < len(hs) else None)
        yield prev, cur, nxt


class CosineKernel:
    """loss = 1 − cos(x, y), cos = x·y / (max(|x|, eps) · max(|y|, eps)) as ``F.cosine_similarity`` computes it.

    ∂loss/∂x = cos · x / |x|² − y / (|x| |y|), and the same with x and y swapped. State j is the y of pair j − 1
    and the x of pair j, so with g the incoming per-token gradient:
        ∂/∂h_j = a_j h_j − b_j h_{j−1} − c_j h_{j+1},   a_j = (g_{j−1} cos_{j−1} + g_j cos_j) / |h_j|²,
        b_j = g_{j−1} / (|h_{j−1}| |h_j|),   c_j = g_j / (|h_j| |h_{j+1}|)   (terms of missing pairs are 0).
    Norms are clamped like torch does; for 0 < |x| < eps (never seen in practice) torch's gradient differs."""

    def __init__(self, eps: float):
        self.eps = eps

    def forward(self, hs):
        norms, dots = [], []
        for prev, cur, _ in _windows(hs):
            norms.append(torch.linalg.vector_norm(cur, dim=-1).clamp_min(self.eps))
            if prev is not None:
                dots.append((prev * cur).sum(-1))
        n = torch.stack(norms)  # [P + 1, B, T]
        cos = torch.stack(dots) / (n[:-1] * n[1:])  # [P, B, T]
        return 1.0 - cos, (n, cos)

    def backward(self, hs, saved, grad):
        n, cos = saved
        cross = grad / (n[:-1] * n[1:])  # [P, B, T]: b_{j+1} = c_j
        a = torch.zeros_like(n)
        a[:-1] += grad * cos
        a[1:] += grad * cos
        a = a / n.square()
        grads = []
        for j, (prev, cur, nxt) in enumerate(_windows(hs)):
            g = a[j].unsqueeze(-1) * cur
            if prev is not None:
                g = g - cross[j - 1].unsqueeze(-1) * prev
            if nxt is not None:
                g = g - cross[j].unsqueeze(-1) * nxt
            grads.append(g)
        return grads


class MSEKernel:
    """loss = ‖y − x‖² (summed over d); with d_i = 2 g_i (h_{i+1} − h_i), ∂/∂h_j = d_{j−1} − d_j. Differences are
    taken directly, never through |x|² + |y|² − 2 x·y, which would cancel catastrophically for the near-equal
    states the paper trains for."""

    def forward(self, hs):
        return torch.stack([(cur - prev).square().sum(-1) for prev, cur, _ in _windows(hs) if prev is not None]), ()

    def backward(self, hs, saved, grad):
        grads, d_prev = [], None
        for j, (_, cur, nxt) in enumerate(_windows(hs)):
            d = (2.0 * grad[j]).unsqueeze(-1) * (nxt - cur) if nxt is not None else None
            grads.append(-d if d_prev is None else (d_prev if d is None else d_prev - d))
            d_prev = d
        return grads


class _FusedPairLoss(torch.autograd.Function):
    """per_token[i] = kernel.loss(h_i, h_{i+1}) for i < P = len(states) − 1, as one autograd node."""

    @staticmethod
    def forward(ctx, kernel, *states):
        per_token, small = kernel.forward(states)
        ctx.kernel, ctx.num_states = kernel, len(states)
        ctx.save_for_backward(*states, *small)
        return per_token

    @staticmethod
    def backward(ctx, grad):
        saved = ctx.saved_tensors
        hs, small = saved[:ctx.num_states], saved[ctx.num_states:]
        grads = ctx.kernel.backward(hs, small, grad)
        return (None, *(g.to(h.dtype) if need else None for g, h, need in zip(grads, hs, ctx.needs_input_grad[1:])))


def fused_token_losses(kernel, states) -> torch.Tensor:
    """Per-token losses [P, B, T] of the consecutive pairs of ``states`` (P + 1 tensors [B, T, d])."""
    return _FusedPairLoss.apply(kernel, *states)
