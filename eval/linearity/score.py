"""The linearity score LS(X, Y) and the per-pair statistics of a residual stream, in float64.

For n x d matrices X, Y of the same tokens, with X_c, Y_c the column-centred matrices,

    LS(X, Y) = 1 - min_A || X_c A / ||X_c|| - Y_c / ||Y_c|| ||_F^2  =  1 - RSS / ||Y_c||_F^2,
    RSS      = min_A || X_c A - Y_c ||_F^2.

(Scaling X never changes the column space, so the normalisation of X cancels; LS is the pooled R^2 of the
multi-output OLS of Y on X with intercept.) Because X_c is in its own column space, regressing Y_c - X_c on X_c
leaves the same residual, so one solve gives both scores of a layer pair:

    LS_wo = LS(X, Y - X) = 1 - RSS / ||Y_c - X_c||_F^2,   i.e.   1 - LS_wo = (1 - LS) ||Y_c||^2 / ||Y_c - X_c||^2.

How RSS is computed (exact to float64 rounding, see docs/PERFORMANCE.md for accuracy and speed):
  1. Upcast to float64 (exact for bf16/fp16/fp32 inputs) and centre. Drop columns of X_c that are exactly
     zero (constant features carry no information) and scale the others to unit norm: column scaling leaves
     the column space, hence RSS, unchanged, and makes the Gram matrix G = X_s^T X_s a correlation matrix, so
     "massive activation" features do not spoil its conditioning.
  2. Fast path: Cholesky G = L L^T, A = G^{-1} X_s^T Y_c, and RSS from the *explicit* residual Y_c - X_s A,
     whose error is second order in the error of A (the Gram formula ||Y||^2 - tr(B^T G^{-1} B) would lose up
     to eps * cond(G) to cancellation, and LS_wo divides that loss by the often small ||Y_c - X_c||^2).
     Taken when every Cholesky pivot of G exceeds sqrt(eps) ~ 1.5e-8, i.e. each feature keeps at least that
     fraction of its variance after regressing on the previous ones.
  3. Otherwise (nearly collinear or rank-deficient X, e.g. h_0 of a model whose probe has fewer distinct
     tokens than d): rank-revealing R-SVD -- Householder QR X_s = QR, SVD of R, singular values below
     max(n, d) * eps * s_max dropped (numpy.linalg.lstsq's default cut-off) -- then the same explicit residual.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import torch

_EPS = torch.finfo(torch.float64).eps
_PIVOT_TOL = math.sqrt(_EPS)  # below this Cholesky pivot the fast path hands over to the R-SVD


@dataclass
class PairStats:
    """Statistics of one pair (X = h_i, Y = h_{i+1}); ``rank_x`` and ``solver`` say how RSS was obtained."""
    linearity: float
    linearity_wo_res: float
    norm_ratio: float  # mean over tokens of ||y - x|| / ||y||
    rank_x: int  # numerical rank of the centred X
    solver: str  # "cholesky", "rsvd", "constant" (X has no variance) or "nonfinite"

    def to_dict(self) -> dict:
        return asdict(self)


def check_sizes(n: int, d: int) -> None:
    """Refuse n <= d + 1: the centred X then spans every centred Y and LS = 1 whatever the model does."""
    if n <= d + 1:
        raise ValueError(f"linearity score needs more tokens than features + 1: n={n} tokens, d={d} "
                         f"(with n <= d + 1 every score is trivially 1; the paper uses ~15k tokens for d=4096)")


def to64(t: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """Move first, then upcast on the device: a bf16 state crosses PCIe in 2 bytes per value, not 8."""
    if t.dim() != 2:
        raise ValueError(f"expected an n x d matrix of token embeddings, got shape {tuple(t.shape)}")
    return t.detach().to(device or t.device).to(torch.float64)


def centered64(t: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    t = to64(t, device)
    return t - t.mean(dim=0, keepdim=True)


def residual_sum_of_squares(xc: torch.Tensor, yc: torch.Tensor) -> tuple[float, int, str]:
    """min_A ||xc A - yc||_F^2 for centred float64 matrices; returns (RSS, rank of xc, solver).

    NaN (solver "nonfinite") when the inputs hold NaN/Inf: they reach the Gram matrices, checked in O(d^2)."""
    gram, cross = xc.T @ xc, xc.T @ yc
    if not (torch.isfinite(gram).all() and torch.isfinite(cross).all()):
        return math.nan, 0, "nonfinite"
    norms = gram.diagonal().sqrt()
    keep = norms > 0
    if not keep.all():
        xc, gram, cross, norms = xc[:, keep], gram[keep][:, keep], cross[keep], norms[keep]
    n, p = xc.shape
    if p == 0:
        return float((yc * yc).sum()), 0, "constant"  # a constant X explains nothing
    inv = 1.0 / norms  # Jacobi scaling: X_s = X_c diag(inv) has the same column space and a unit-diagonal Gram
    chol, info = torch.linalg.cholesky_ex(gram * inv[:, None] * inv[None, :])
    if int(info) == 0 and float(torch.diagonal(chol).min()) ** 2 > _PIVOT_TOL:
        coef = torch.cholesky_solve(cross * inv[:, None], chol)
        rank, solver = p, "cholesky"
    else:
        q, r = torch.linalg.qr(xc * inv)
        u, s, vh = torch.linalg.svd(r)
        rank = int((s > s[0] * max(n, p) * _EPS).sum())
        u, s, vh = u[:, :rank], s[:rank], vh[:rank]
        coef = vh.T @ ((u.T @ (q.T @ yc)) / s[:, None])
        solver = "rsvd"
    resid = yc - xc @ (coef * inv[:, None])  # coefficients of the unscaled X_c
    return float((resid * resid).sum()), rank, solver


def _pair_from_centered(x: torch.Tensor, y: torch.Tensor, xc: torch.Tensor, yc: torch.Tensor) -> PairStats:
    """x, y: the raw float64 states (for the per-token norm ratio); xc, yc: the same, centred."""
    rss, rank, solver = residual_sum_of_squares(xc, yc)
    if solver == "nonfinite":
        warnings.warn("non-finite hidden states: the linearity statistics of this pair are NaN", stacklevel=3)
        return PairStats(math.nan, math.nan, math.nan, 0, solver)
    y_energy = float((yc * yc).sum())
    delta_energy = float(((yc - xc) ** 2).sum())
    ratio = ((y - x).norm(dim=1) / y.norm(dim=1)).mean()
    return PairStats(
        linearity=1.0 - rss / y_energy if y_energy > 0 else math.nan,
        linearity_wo_res=1.0 - rss / delta_energy if delta_energy > 0 else math.nan,
        norm_ratio=float(ratio),
        rank_x=rank,
        solver=solver,
    )


def linearity_score(x: torch.Tensor, y: torch.Tensor, device: torch.device | str | None = None) -> float:
    """LS(x, y) for n x d tensors of the same n tokens (any float dtype; computed in float64 on ``device``,
    default: x's device). "Without residual" is ``linearity_score(h_i, h_next - h_i)``."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must hold the same tokens: {x.shape[0]} vs {y.shape[0]} rows")
    check_sizes(*x.shape)
    xc, yc = centered64(x, device), centered64(y, device)
    y_energy = float((yc * yc).sum())
    if y_energy == 0:
        return math.nan  # a constant Y has no variance to explain
    return 1.0 - residual_sum_of_squares(xc, yc)[0] / y_energy


def pair_stats(x: torch.Tensor, y: torch.Tensor, device: torch.device | str | None = None) -> PairStats:
    """LS, LS without residual and norm ratio of one pair x -> y (same shape), from a single solve."""
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    check_sizes(*x.shape)
    x64, y64 = to64(x, device), to64(y, device)
    return _pair_from_centered(x64, y64, centered64(x64), centered64(y64))


def linearity_profile(states: list[torch.Tensor], device: torch.device | str | None = None) -> list[PairStats]:
    """PairStats of every consecutive pair (states[i], states[i+1]) of [h_0, ..., h_L] (each n x d).

    States may live on the CPU in any dtype; each is moved to ``device`` (default: the first state's) and
    centred once, and serves as Y of one pair and X of the next.
    """
    if len(states) < 2:
        raise ValueError("need at least two states (h_0 and h_1)")
    shape = states[0].shape
    if any(s.shape != shape for s in states):
        raise ValueError(f"all states must have the same shape, got {[tuple(s.shape) for s in states]}")
    check_sizes(*shape)
    device = device or states[0].device
    out = []
    x = to64(states[0], device)
    xc = centered64(x)
    for nxt in states[1:]:
        y = to64(nxt, device)
        yc = centered64(y)
        out.append(_pair_from_centered(x, y, xc, yc))
        x, xc = y, yc
    return out
