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
