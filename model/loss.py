"""The language-modelling loss, shared by training and evaluation, and the windowed loss of a token stream.

A stream of ``n`` tokens longer than the model's context is scored in windows of at most ``context`` tokens that
start every ``stride`` tokens (``sliding_windows``). Each window scores only the targets the previous window did
not (the first window all but its first token), so for ``stride < context`` every token but the first is predicted
exactly once, with at least ``context - stride`` tokens of context (except in the first window). Two settings
cover every caller: ``stride = context - 1`` (windows overlapping by one token: every token predicted once, the
first of a window with the preceding tokens of that window only; TinyStories and the validation loss, whose
packed sequences are exactly these windows) and ``stride < context - 1`` (more context per prediction; WikiText-2,
as HF's perplexity guide computes it; with ``stride == context`` the first token of each window is not scored, as
in that guide). ``window_nll`` scores a batch of windows: the model reads all but each window's last token.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def causal_lm_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Token cross-entropy of ``logits`` [B, T, V] against already-shifted ``targets`` [B, T], in float32."""
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), reduction=reduction)


class _LinearCrossEntropy(torch.autograd.Function):
    """Mean token cross-entropy of ``hidden @ weight.T`` against ``targets``, row chunk by row chunk.

    Each chunk's logits are formed, turned into the loss and, when gradients are wanted, into the gradients of
    ``hidden`` and ``weight`` at once (d loss / d logits = (softmax - one-hot) / n), then dropped: the
    [tokens, vocab] logits are never held whole and never re-read in the backward. The arithmetic is the logits
    path's (the same three products), but the elementwise passes over the logits (upcast, log-softmax, its
    backward) run on a chunk that stays in cache. The backward only scales the stored gradients."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk):
        n = hidden.shape[0]
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if want_h else None
        # the weight's gradient: each chunk's product in the weight's dtype, summed over chunks in at least float32
        grad_w = torch.zeros(weight.shape, dtype=torch.promote_types(weight.dtype, torch.float32),
                             device=weight.device) if want_w else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for a in range(0, n, chunk):
            h, t = hidden[a:a + chunk], targets[a:a + chunk]
            z = (h @ weight.t()).float()
            lse = torch.logsumexp(z, dim=-1)
            total += (lse - z.gather(1, t[:, None])[:, 0]).sum()
            if want_h or want_w:
                z.sub_(lse[:, None]).exp_()  # softmax, in place
                z[torch.arange(len(t), device=z.device), t] -= 1.0
                g = z.div_(n).to(hidden.dtype)
                if want_h:
                    torch.mm(g, weight, out=grad_h[a:a + chunk])
                if want_w:
                    if grad_w.dtype == g.dtype:
                        grad_w.addmm_(g.t(), h)
                    else:
                        grad_w += g.t() @ h
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        return total / n

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        return (None if grad_h is None else grad_h * grad_out.to(grad_h.dtype),
                None if grad_w is None else (grad_w * grad_out).to(ctx.weight_dtype), None, None)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         chunk_elements: int | None = None) -> torch.Tensor:
    """``causal_lm_loss(hidden @ weight.T, targets)`` (the mean, float32) without the [B, T, V] logits:
    ``hidden`` [B, T, d] is the output head's input, ``weight`` [V, d] its weight (no bias), ``targets`` [B, T]
    already shifted (every target counts: no ignore index). Rows go in chunks of about ``chunk_elements`` logits
    (at least 256 rows); the loss and gradients equal the logits path's up to float32 summation order.

    Default chunk: 2^22 logits (16 MB) on CPU, where a chunk that stays in cache is the point (measured at 4,096
    tokens: 2^21-2^22 fastest, 2^23 slower); 2^25 elsewhere, fewer kernel launches (not yet measured on a GPU)."""
    if chunk_elements is None:
        chunk_elements = 1 << 22 if hidden.device.type == "cpu" else 1 << 25
    h = hidden.reshape(-1, hidden.shape[-1])
    chunk = max(256, chunk_elements // weight.shape[0])
    return _LinearCrossEntropy.apply(h, weight, targets.reshape(-1), chunk)


def sliding_windows(n: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, scored) per window: tokens [begin, end) in, the last ``scored`` of them counted as targets."""
    out, prev_end = [], 0
    for begin in range(0, max(n - 1, 1), stride):
        end = min(begin + context, n)
        out.append((begin, end, end - max(prev_end, begin + 1)))
        prev_end = end
        if end == n:
            break
    return out


def window_nll(model, x: torch.Tensor, scored: Sequence[int] | None = None) -> torch.Tensor:
    """Summed token NLL in nats (float64) of each row of ``x`` [B, T] over its last ``scored[b]`` targets (all
    ``T - 1`` when None). One row at a time keeps the float32 copy of the logits small."""
    logits = model(input_ids=x[:, :-1], use_cache=False).logits
    counts = scored if scored is not None else [x.shape[1] - 1] * x.shape[0]
    return torch.stack([causal_lm_loss(logits[b, logits.shape[1] - k:], x[b, x.shape[1] - k:], reduction="sum")
                        .double() for b, k in enumerate(counts)])
