"""ReplaceMe (Shopkhoev et al. 2025, "ReplaceMe: Network Simplification via Depth Pruning and Transformer Block
Linearization"): a contiguous span of n blocks is removed and one linear map T, fitted over the whole span, is
folded into the MLP output projection of the block before it. Training-free; the result is a standard model of the
family with n blocks fewer.

- **Span** (for each k = n): the start i >= 1 minimising the angular distance between the states entering and
  leaving the span, mean over probe sequences of arccos(cos(h_i, h_{i+n})) / pi taken at each sequence's *last
  token* (the authors' code takes the last non-padded token). Block 0 cannot start a span (nothing precedes it to
  fold into).
- **Map**: with M the MLP output of block i - 1 and h' = h_i - M its post-attention residual (every probe token),
  T is fitted so that T M approximates h_{i+n} - h', i.e. h' + T M ~ h_{i+n}; then ``down_proj`` W -> T W
  (``surgery.merge_into_previous``).
  - ``lstsq`` (``replaceme``): least squares, ``fit.fit_map`` in float64. The authors solve the normal equations
    with a ridge term alpha = 0 by default, the same minimiser when M has full rank; here the SVD solver also
    gives the minimum-norm map when it does not. A bias is fitted only where the projection has one (GPT-2, OPT).
  - ``cosine`` (``replaceme_cos``): minimise 1 - mean_t cos(T M_t, h_{i+n,t} - h'_t) with Adam, as the authors'
    code does by default: T starts at the identity (so the start is plain removal), learning rate 1e-4, 10
    epochs, batches of 1,024 tokens shuffled with the study's seed, float32. (The paper also states a variant
    with h' inside the cosine; their code's default leaves it out.)
- **Calibration**: the study's probe (the paper's recipe of ``eval.linearity``: 128 chunks). The authors use 128
  sequences of up to 1,024 tokens; every token enters the fit, the last ones only the span choice.

Gemma-style blocks normalise the MLP output after the projection and post-LN blocks do not add it to the residual:
both are refused (``surgery.check_mergeable``).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from prune import surgery
from prune.criteria import angular
from prune.errors import PruneError
from prune.fit import LinearMap, fit_map, token_errors
from prune.plan import Pruned, Selector
from prune.states import last_token_rows

ADAM_LR, EPOCHS, BATCH = 1e-4, 10, 1024


def cosine_map(x: torch.Tensor, y: torch.Tensor, seed: int = 0) -> LinearMap:
    """T minimising 1 - mean_t cos(T x_t, y_t) by Adam from the identity (see the module docstring)."""
    x32, y32 = x.float(), y.float()
    t = torch.eye(x.shape[1], y.shape[1], requires_grad=True)  # x @ t: t is [d_in, d_out]
    opt = torch.optim.Adam([t], lr=ADAM_LR)
    gen = torch.Generator().manual_seed(seed)
    with torch.enable_grad():
        for _ in range(EPOCHS):
            for idx in torch.randperm(len(x32), generator=gen).split(BATCH):
                opt.zero_grad()
                loss = 1 - torch.nn.functional.cosine_similarity(x32[idx] @ t, y32[idx], dim=1).mean()
                loss.backward()
                opt.step()
    return LinearMap(t.detach().T.double().contiguous(), None, int(torch.linalg.matrix_rank(t.detach())))


@dataclass(frozen=True)
class Span:
    solver: str  # "lstsq" or "cosine"

    def starts(self, selector: Selector, k: int) -> range:
        """First blocks of the spans of ``k`` blocks that may be merged: after block 0, within the last
        unprotected block."""
        last = selector.num_blocks - 1 - (1 if selector.protect_last else 0)
        return range(1, min(selector.num_blocks - k, last - k + 1) + 1)

    def check(self, selector: Selector, k_max: int) -> None:
        selector.check_k("merged", k_max)
        if not self.starts(selector, k_max):
            raise PruneError(f"replaceme: no span of {k_max} blocks after block 0")

    def __call__(self, ctx, k_max: int) -> Iterator[tuple[int, Pruned, dict]]:
        hs, rows = ctx.states, last_token_rows(ctx.probe.tokens)
        last = [h[rows] for h in hs]
        mlp_out: dict[int, torch.Tensor] = {}  # MLP output of block i - 1 on the original model, per span start
        spans = []
        for k in range(1, k_max + 1):
            starts = self.starts(ctx.selector, k)
            scores = {i: d for i, d in enumerate(angular(last, span=k)) if i in starts}
            start = min(scores, key=lambda i: (scores[i], i))
            pruned = Pruned.of(ctx.model, "replaceme")
            proj = surgery.check_mergeable(pruned.model, start)
            if start not in mlp_out:
                src = surgery.mlp_output_projection(surgery.blocks(ctx.model)[start - 1])
                mlp_out[start] = ctx.probe.collect(ctx.model, modules=(src,))[1][0]
            m = mlp_out[start]
            target = hs[start + k] - (hs[start] - m)
            fit = (fit_map(m, target, bias=surgery.has_bias(proj)) if self.solver == "lstsq"
                   else cosine_map(m, target, ctx.seed))
            surgery.merge_into_previous(pruned.model, start, fit, count=k)
            span = list(range(start, start + k))
            pruned.alive = [b for b in pruned.alive if b not in span]
            pruned.changed = span
            err = token_errors(fit, m, target)
            pruned.fits[start - 1] = {"span": span, "solver": self.solver, "rank": fit.rank,
                                      "rel_error_mean": float(err.mean()), "rel_error_median": float(err.median())}
            spans.append({"k": k, "blocks": span, "distance": scores[start],
                          "distances": {str(i): v for i, v in scores.items()}})
            if ctx.progress is not None:
                ctx.progress.update(1)
            yield k, pruned, {"mode": "span (last-token angular distance)", "spans": list(spans)}
