"""Fused per-token losses over consecutive residual states, with a hand-written backward.

The reference path (``Regularizer.pair_losses`` with ``fused=False``) stacks h_0..h_L and upcasts the stack: for
Mistral-150M at 32×1024 tokens that is a 0.65 GB bf16 copy, a 1.3 GB fp32 copy, and whatever autograd keeps for
``token_loss`` (for the cosine: the two normalised fp32 stacks, 2.5 GB more) until the backward. Here:

* forward: each state is upcast to fp32 once, one at a time; the cosine takes its per-token norm and its dot
  product with the previous state, the MSE the squared distance to the previous state. Only per-token scalars
  are stored ([P+1, B, T] norms and [P, B, T] cosines: 3 MB at that size) plus references to the states, which
  the model keeps alive for its own backward anyway (``save_for_backward`` copies nothing and checks versions).
* backward: the gradient of each state is formed from it and its two neighbours (a rolling window of three
  fp32 upcasts) with per-token coefficients, and returned in the state's dtype.

Under ``torch.compile`` (``regularizer.compile=true``) the per-state work fuses into a few kernels that read
each bf16 state once in the forward and three times in the backward. Eager mode runs ~5 small ops per state.

A kernel describes one regularizer: ``forward(hs) -> (per_token [P, B, T] fp32, small tensors to save)`` and
``partial(saved, i, u, v, iu, iv, g)``: g ⊙ ∂loss_i/∂u for pair i of states (u, v) with indices (iu, iv), u
the one differentiated; both losses here are symmetric in the pair, so one formula serves x and y.
"""
from __future__ import annotations

import torch


class CosineKernel:
    """loss = 1 − cos(x, y), cos = x·y / (max(|x|, eps) · max(|y|, eps)) as ``F.cosine_similarity`` computes it.

    ∂loss/∂x = cos · x / |x|² − y / (|x| |y|) (and the same with x, y swapped). Norms are clamped like
    torch does; for 0 < |x| < eps (never seen in practice) torch's gradient differs slightly from this one."""

    def __init__(self, eps: float):
        self.eps = eps

    def forward(self, hs):
        norms, dots, prev = [], [], None
        for h in hs:
            h = h.float()  # one upcast per state; a no-op for fp32 states
            norms.append(torch.linalg.vector_norm(h, dim=-1).clamp_min(self.eps))
            if prev is not None:
                dots.append((prev * h).sum(-1))
            prev = h
        n = torch.stack(norms)  # [P + 1, B, T]
        cos = torch.stack(dots) / (n[:-1] * n[1:])  # [P, B, T]
        return 1.0 - cos, (n, cos)

    def partial(self, saved, i, u, v, iu, iv, g):
        n, cos = saved
        return (g * cos[i] / n[iu].square()).unsqueeze(-1) * u - (g / (n[iu] * n[iv])).unsqueeze(-1) * v


class MSEKernel:
    """loss = ‖y − x‖² (summed over d). ∂loss/∂x = 2 (x − y). Differences are taken directly, never through
    |x|² + |y|² − 2 x·y, which would cancel catastrophically for the near-equal states the paper trains for."""

    def forward(self, hs):
        dists, prev = [], None
        for h in hs:
            h = h.float()
            if prev is not None:
                dists.append((h - prev).square().sum(-1))
            prev = h
        return torch.stack(dists), ()

    def partial(self, saved, i, u, v, iu, iv, g):
        return (2.0 * g).unsqueeze(-1) * (u - v)


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
        kernel, last = ctx.kernel, ctx.num_states - 1
        grads = []
        prev, cur, nxt = None, None, hs[0].float()  # rolling window: each state is upcast once
        for j in range(ctx.num_states):
            prev, cur, nxt = cur, nxt, (hs[j + 1].float() if j < last else None)
            if not ctx.needs_input_grad[j + 1]:
                grads.append(None)
                continue
            g = None
            if j > 0:  # h_j is the second state of pair j − 1
                g = kernel.partial(small, j - 1, cur, prev, j, j - 1, grad[j - 1])
            if j < last:  # and the first of pair j
                term = kernel.partial(small, j, cur, nxt, j, j + 1, grad[j])
                g = term if g is None else g + term
            grads.append(g.to(hs[j].dtype))
        return (None, *grads)


def fused_token_losses(kernel, states) -> torch.Tensor:
    """Per-token losses [P, B, T] (fp32) of the consecutive pairs of ``states`` (P + 1 tensors [B, T, d])."""
    return _FusedPairLoss.apply(kernel, *states)
