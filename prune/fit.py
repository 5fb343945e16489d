"""Closed-form least-squares maps between residual states, in float64: the linear replacement of a block and the
merged (ReplaceMe-style) transform.

``fit_map(x, y, bias=True)`` returns A (d_out x d_in, ``nn.Linear``'s layout) and c minimising
``sum_t ||A x_t + c - y_t||^2`` over the n probe tokens. With a bias the problem is solved on the centred
matrices (the intercept of an OLS is ``mean(y) - A mean(x)``, exactly), without one on the raw ones. Columns of X
are scaled to unit norm first (the fitted map is scaled back): the column space and hence the solution do not
change, and "massive activation" features do not spoil the conditioning. The solve is LAPACK's SVD-based
``gelsd`` in float64 on the CPU with numpy's default cut-off (singular values below ``max(n, d) * eps * s_max``
are dropped), so it equals ``numpy.linalg.lstsq`` on ``[X, 1]`` and gives the minimum-norm map when X is rank
deficient (h_0 of a probe with fewer distinct tokens than d). n must exceed d + 1 (``check_sizes``): with fewer
tokens the map interpolates the probe and says nothing about other text.

``token_errors`` gives the per-token relative error ||A x_t + c - y_t|| / ||y_t|| of a fit (the paper's Fig. 9).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from eval.linearity.score import check_sizes
from prune.errors import PruneError

_EPS = torch.finfo(torch.float64).eps


def to64(t: torch.Tensor, device=None) -> torch.Tensor:
    """An n x d float64 copy on ``device`` (moved first: a bf16 state crosses PCIe in 2 bytes per value)."""
    return t.detach().to(device or t.device).to(torch.float64)


@dataclass
class LinearMap:
    weight: torch.Tensor  # [d_out, d_in], float64
    bias: torch.Tensor | None  # [d_out], float64
    rank: int  # numerical rank of the (centred) X

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        y = to64(x, "cpu") @ self.weight.T
        return y + self.bias if self.bias is not None else y


def fit_map(x: torch.Tensor, y: torch.Tensor, bias: bool = True) -> LinearMap:
    """Least-squares A, c with y ~ A x + c (see the module docstring); x: n x d_in, y: n x d_out."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must hold the same tokens: {x.shape[0]} vs {y.shape[0]} rows")
    n, d = x.shape
    try:
        check_sizes(n, d)
    except ValueError as e:
        raise PruneError(f"probe too small for a linear fit: {e}") from None
    x64, y64 = to64(x, "cpu"), to64(y, "cpu")
    mx = x64.mean(0) if bias else torch.zeros(d, dtype=torch.float64)
    my = y64.mean(0) if bias else torch.zeros(y.shape[1], dtype=torch.float64)
    xc, yc = x64 - mx, y64 - my
    norms = xc.norm(dim=0)
    keep = norms > 0
    xs = xc[:, keep] / norms[keep]
    coef = torch.zeros(d, y.shape[1], dtype=torch.float64)
    rank = 0
    if xs.shape[1]:
        sol = torch.linalg.lstsq(xs, yc, rcond=max(n, int(keep.sum())) * _EPS, driver="gelsd")
        coef[keep] = sol.solution / norms[keep, None]
        rank = int(sol.rank)
    weight = coef.T.contiguous()
    return LinearMap(weight, (my - weight @ mx) if bias else None, rank)


def token_errors(fit: LinearMap, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """||A x_t + c - y_t|| / ||y_t|| for every token (float64)."""
    y64 = to64(y, "cpu")
    return (fit.apply(x) - y64).norm(dim=1) / y64.norm(dim=1).clamp_min(torch.finfo(torch.float64).tiny)
