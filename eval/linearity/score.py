"""The linearity score LS(X, Y) and the per-pair statistics of a residual stream, in float64.

For n x d matrices X, Y of the same tokens, with X_c, Y_c the column-centred matrices,

    LS(X, Y) = 1 - min_A || X_c A / ||X_c|| - Y_c / ||Y_c|| ||_F^2  =  1 - RSS / ||Y_c||_F^2,
    RSS      = min_A || X_c A - Y_c ||_F^2.

(Scaling X never changes the column space, so the normalisation of X cancels; LS is the pooled R^2 of the
multi-output OLS of Y on X with intercept.) Because X_c is in its own column space, regressing Y_c - X_c on X_c
leaves the same residual, so one solve gives both scores of a layer pair (Z = Y_c - X_c):

    LS_wo = LS(X, Y - X) = 1 - RSS / ||Z||_F^2,   i.e.   1 - LS_wo = (1 - LS) ||Y_c||^2 / ||Z||^2.

How RSS is computed (float64; accuracy and speed in docs/PERFORMANCE.md). The cost is in float64 products of
size n x d x d, and a profile of L + 1 states needs about 1.6 of them per pair: the pair's cross product X_c^T T
and the symmetric Gram matrix of its Y, which is X of the next pair (an explicit residual would be one more):
  1. Upcast each state to float64 (exact for bf16/fp16/fp32 inputs), column-major, and centre it, once. Give zero
     coefficients to columns of X_c that are exactly zero (constant features carry no information) and scale
     the others to unit norm: column scaling leaves the column space, hence RSS, unchanged, and makes the Gram
     matrix G = X_s^T X_s a correlation matrix, so "massive activation" features do not spoil its conditioning.
     G is computed once per state (BLAS's syrk on the CPU, eval/linearity/blas.py; else its upper block triangle).
  2. Regress T = whichever of Y_c and Z = Y_c - X_c has the smaller norm (the same RSS; for a residual block
     it is Z, whose ||Z||^2 is the denominator of LS_wo), from B = X_s^T T.
  3. Fast path, when every Cholesky pivot of G = L L^T exceeds sqrt(eps) ~ 1.5e-8 (each feature keeps at least
     that fraction of its variance after regressing on the previous ones): the Gram formula per column of T,
     RSS_k = ||t_k||^2 - ||L^{-1} b_k||^2. It cancels, so its rounding error is first order in those of G and
     B (a_k^T E a_k and e_k^T a_k, a_k = G^{-1} b_k), where the explicit residual t_k - X_s a_k errs only to
     second order. Each column therefore gets an error estimate (``gram_error_estimate``, from the
     probabilistic model of rounding, with a safety factor): the columns with the smallest estimates keep the
     formula while their estimates sum to at most 1e-9 of min(||Y_c||^2, ||Z||^2), the denominators of both
     scores (a tenth of the 1e-8 the scores must meet, before the safety factor); the others get the explicit
     residual (solver "cholesky" if any did, "gram" if none did).
     Hidden-state-like data pass whole; a nearly collinear X sends some or all columns to the residual.
  4. Otherwise (nearly collinear or rank-deficient X, e.g. h_0 of a model whose probe has fewer distinct
     tokens than d): rank-revealing R-SVD -- Householder QR X_s = QR, SVD of R, singular values below
     max(n, d) * eps * s_max dropped (numpy.linalg.lstsq's default cut-off) -- then the explicit residual.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import torch

from eval.linearity import blas
from eval.linearity.heldout import (
                                    FoldPlan,
                                    HeldoutConfig,
                                    HeldoutResult,
                                    HeldoutStats,
                                    Target,
                                    chance_target,
                                    fold_cross,
                                    fold_fits,
                                    fold_grams,
                                    pair_heldout,
                                    row_sq,
                                    score_intervals,
)

_EPS = torch.finfo(torch.float64).eps
_PIVOT_TOL = math.sqrt(_EPS)  # below this Cholesky pivot the fast path hands over to the R-SVD
# The Gram formula's estimated error may use this fraction of the smaller score denominator: 10x under the 1e-8
# tolerance, and the estimate itself is >= 20x the measured error (safety factor 10, measured errors below half).
# 1e-10 sent the first pair of a steep spectrum (logspace(0, -4), estimate 3.9e-10) to the explicit residual.
_RSS_TOL = 1e-9
_SAFETY = 10.0  # on the error estimate; measured errors (tests, bench) stay below half of the estimate without it
_COPY_ROWS = 256  # rows per band of the CPU's upcasts and row orders (transposing: 14 ms vs 36 ms at d = 768)
_GRAM_BLOCK = 192  # narrowest block row of the symmetric product: below it the GEMMs fall off BLAS speed on a CPU


@dataclass
class PairStats:
    """Statistics of one pair (X = h_i, Y = h_{i+1}); ``rank_x`` and ``solver`` say how RSS was obtained."""
    linearity: float
    linearity_wo_res: float
    norm_ratio: float  # mean over tokens of ||y - x|| / ||y||
    rank_x: int  # numerical rank of the centred X
    solver: str  # "gram", "cholesky", "rsvd", "constant" (X has no variance) or "nonfinite"
    heldout: HeldoutStats | None = None  # when the profile was asked for held-out scores

    def to_dict(self) -> dict:
        out = asdict(self)
        if self.heldout is None:
            del out["heldout"]
        else:
            out["heldout"] = self.heldout.to_dict()  # without the bootstrap draws
        return out


def check_sizes(n: int, d: int) -> None:
    """Refuse n <= d + 1: the centred X then spans every centred Y and LS = 1 whatever the model does."""
    if n <= d + 1:
        raise ValueError(f"the probe has n={n} tokens for d={d} features: a linearity score or a linear fit needs "
                         f"n > d + 1 (with n <= d + 1 every score is trivially 1; the paper uses ~15k tokens for "
                         f"d=4096): use a longer text or more or longer chunks")


def _on_device(t: torch.Tensor, device) -> torch.Tensor:
    """Move first, upcast later: a bf16 state crosses PCIe in 2 bytes per value, not 8."""
    if t.dim() != 2:
        raise ValueError(f"expected an n x d matrix of token embeddings, got shape {tuple(t.shape)}")
    return t.detach().to(device)


def _centre_into(t: torch.Tensor, out: torch.Tensor | None, rows: bool = False,
                 order: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(t - mean, mean, row norms of t if ``rows``) in float64, written into ``out`` (a reused buffer: warm memory
    spares the page faults of a fresh n x d array) or a new array; ``t`` itself is left alone. The upcast is a
    copy of its own: torch's mixed-dtype kernels (a float32 tensor minus a float64 one) run ~6x slower on a CPU.
    With ``order``, row i of the result is row order[i] of t (the held-out folds' contiguous layout)."""
    if out is None:  # column-major: the products X_c^T T then read both operands in BLAS's fastest layout
        out = torch.empty(t.shape[::-1], dtype=torch.float64, device=t.device).T
    # Row order or a transposing copy on the CPU: in cache-sized bands (2.6x faster than one transposing copy), and
    # the raw rows' norms taken while a band is still in cache (22 ms instead of 28 ms for copy and norms at
    # 15,000 x 768 on one thread).
    if order is not None or (out.device.type == "cpu" and out.stride(0) < out.stride(1) and t.stride(0) > t.stride(1)):
        norms = torch.empty(t.shape[0], dtype=torch.float64, device=t.device) if rows else None
        for lo in range(0, t.shape[0], _COPY_ROWS):
            band = out[lo:lo + _COPY_ROWS]
            band.copy_(t[lo:lo + _COPY_ROWS] if order is None else t.index_select(0, order[lo:lo + _COPY_ROWS]))
            if rows:
                torch.linalg.vecdot(band, band, dim=1, out=norms[lo:lo + _COPY_ROWS])
    else:
        out.copy_(t)
        norms = row_sq(out) if rows else None
    mean = out.mean(dim=0)
    return out.sub_(mean), mean, norms.sqrt_() if rows else None


def symmetric_gram(x: torch.Tensor) -> torch.Tensor:
    """x^T x, mirrored from its upper triangle: BLAS's syrk where it applies (float64 on the CPU), elsewhere
    (torch has no syrk) the products of its upper block triangle: with b block rows,
    (1 + 1/b) / 2 of a full product's flops. b is a power of two (MKL ran uneven widths up to 1.5x slower):
    4 at d = 768 (measured: 0.66-0.70 of a full product's time), 8 at 2048, 16 at 4096."""
    d = x.shape[1]
    g = blas.upper_gram(x)  # BLAS's syrk on the CPU in float64: half a product (eval/linearity/blas.py)
    if g is None:
        blocks = 1 << max(0, int(math.log2(d / _GRAM_BLOCK)))
        if blocks == 1:
            return x.T @ x
        edges = [round(d * i / blocks) for i in range(blocks + 1)]
        g = torch.empty(d, d, dtype=x.dtype, device=x.device)
        for lo, hi in zip(edges, edges[1:]):
            g[lo:hi, lo:] = x[:, lo:hi].T @ x[:, lo:]
    # Mirrored into a fresh tensor (O(d^2)): copying a block into its own transpose in place overlaps the diagonal
    # blocks, whose result torch leaves undefined (seen: an asymmetric diagonal block when run after other tests).
    return g.triu() + g.triu(1).T


@dataclass
class _Design:
    """X of a pair, prepared once per state: the centred X_c and the Cholesky factor of the correlation matrix of
    its non-constant columns (None: the R-SVD must solve). Constant columns stay in X_c (they are exactly zero
    there) and get zero coefficients, so no column-subset copy of X_c is ever made."""
    xc: torch.Tensor
    col_sq: torch.Tensor  # ||x_k||^2 of every column (the Gram diagonal)
    keep: torch.Tensor | None  # indices of the non-constant columns; None: all of them
    inv: torch.Tensor  # 1 / ||x_k|| of the kept columns (the Jacobi scaling)
    chol: torch.Tensor | None
    finite: bool
    gram: torch.Tensor | None = None  # X_c^T X_c and its per-fold parts, kept for held-out fits only
    gram_parts: list[torch.Tensor] | None = None


def _design(xc: torch.Tensor, gram: torch.Tensor) -> _Design:
    col_sq = gram.diagonal().clone()
    finite = bool(torch.isfinite(col_sq).all())  # a NaN/Inf in a column reaches its diagonal entry
    keep = None
    if finite and not bool((col_sq > 0).all()):
        keep = (col_sq > 0).nonzero().squeeze(1)
        gram = gram[keep][:, keep]
    inv = 1.0 / gram.diagonal().sqrt()
    chol = None
    if finite and inv.numel():
        factor, info = torch.linalg.cholesky_ex(gram * inv[:, None] * inv[None, :])
        if int(info) == 0 and float(factor.diagonal().min()) ** 2 > _PIVOT_TOL:
            chol = factor
    return _Design(xc, col_sq, keep, inv, chol, finite)


def _full_coef(design: _Design, coef_s: torch.Tensor) -> torch.Tensor:
    """Coefficients of the scaled kept columns -> coefficients of every column of X_c (zero for constant ones)."""
    coef = coef_s * design.inv[:, None]
    if design.keep is None:
        return coef
    full = coef.new_zeros(design.xc.shape[1], coef.shape[1])
    full[design.keep] = coef
    return full


def gram_error_estimate(a: torch.Tensor, t_col_sq: torch.Tensor, n: int) -> torch.Tensor:
    """Per target column k, the rounding error to expect (times ``_SAFETY``) in the Gram formula's RSS_k.

    a: the d x k coefficients of the unit-norm (scaled) columns of X; t_col_sq: ||t_k||^2. To first order the
    error is a_k^T E a_k - 2 e_k^T a_k, with E the error of the scaled Gram matrix, of its Cholesky factor and of
    the triangular solves, and e_k that of b_k = X_s^T t_k. Under the probabilistic model of rounding
    (independent, mean-zero errors; Higham & Mary 2019) an inner product of length m errs by ~sqrt(m) u relative
    to the product of its operands' norms: |E_ij| ~ sqrt(n + 2d) u (the columns have unit norm), |e_jk| ~ sqrt(n) u
    ||t_k||, and the sums over the coefficients give sqrt(n + 2d) u (||a_k||^2 + 2 ||t_k|| ||a_k||). The errors are
    not independent across columns (they share E), so the estimates are summed, not added in quadrature."""
    d = a.shape[0]
    a_norm = torch.linalg.vector_norm(a, dim=0)
    return (_SAFETY * math.sqrt(n + 2 * d) * _EPS / 2) * a_norm * (a_norm + 2 * t_col_sq.clamp(min=0).sqrt())


def _solve(design: _Design, t: torch.Tensor, cross: torch.Tensor, t_energy: float, t_col_sq: torch.Tensor,
           budget: float) -> tuple[float, int, str]:
    """RSS = min_A ||X_c A - T||^2 from cross = X_c^T T; returns (RSS, rank of X_c, solver).

    Gram formula per column of T, RSS_k = ||t_k||^2 - ||L^{-1} b_k||^2, except for the columns whose error estimate
    does not fit in ``budget`` (absolute, summed over columns): those get an explicit residual t_k - X_c a_k."""
    n, p = design.xc.shape[0], design.inv.numel()
    if not (design.finite and math.isfinite(t_energy)):  # then |cross| <= ||x_j|| ||t_k|| is finite too
        return math.nan, 0, "nonfinite"
    if p == 0:
        return t_energy, 0, "constant"  # a constant X explains nothing
    if design.chol is None:
        return _solve_rsvd(design, t, n)
    bs = (cross if design.keep is None else cross[design.keep]) * design.inv[:, None]
    # W = L^{-1} B_s, solved as W^T L^T = B_s^T: the right-hand side is then already column-major (no copy)
    w = torch.linalg.solve_triangular(design.chol.mT, bs.mT, upper=True, left=False).mT
    a = torch.linalg.solve_triangular(design.chol.mT, w, upper=True)
    est = gram_error_estimate(a, t_col_sq, n)
    order = torch.argsort(est)
    fits = int((torch.cumsum(est[order], 0) <= budget).sum())  # the columns with the smallest estimates
    w_sq = (w * w).sum(dim=0)
    if fits == t.shape[1]:
        return max(t_energy - float(w_sq.sum()), 0.0), p, "gram"
    explicit = order[fits:]
    rss = t_energy - float(w_sq[order[:fits]].sum())
    if fits:
        tk = t.index_select(1, explicit)
        rss -= float(torch.linalg.vector_norm(tk)) ** 2
        resid = tk.addmm_(design.xc, _full_coef(design, a[:, explicit]), alpha=-1.0)
    else:  # every column: the residual of the whole target, its error second order in that of A
        rss = 0.0
        resid = torch.addmm(t, design.xc, _full_coef(design, a), alpha=-1.0)
    return max(rss + float(torch.linalg.vector_norm(resid)) ** 2, 0.0), p, "cholesky"


def _solve_rsvd(design: _Design, t: torch.Tensor, n: int) -> tuple[float, int, str]:
    """Rank-revealing fallback: Householder QR of the scaled kept columns X_s = QR, SVD of R, singular values
    below max(n, p) * eps * s_max dropped (numpy.linalg.lstsq's default), then the explicit residual."""
    xs = design.xc * design.inv if design.keep is None else design.xc.index_select(1, design.keep).mul_(design.inv)
    q, r = torch.linalg.qr(xs)
    del xs
    u, s, vh = torch.linalg.svd(r)
    p = s.numel()
    rank = int((s > s[0] * max(n, p) * _EPS).sum())
    u, s, vh = u[:, :rank], s[:rank], vh[:rank]
    coef = vh.T @ ((u.T @ (q.T @ t)) / s[:, None])
    del q  # before the residual: the fallback's peak is the QR's, not the QR's plus the residual's
    resid = torch.addmm(t, design.xc, _full_coef(design, coef), alpha=-1.0)
    return float(torch.linalg.vector_norm(resid)) ** 2, rank, "rsvd"


@dataclass
class _Held:
    """What a held-out profile adds to every pair: the folds (rows of every state in fold order) and settings."""
    plan: FoldPlan
    cfg: HeldoutConfig

    def design(self, xc: torch.Tensor) -> _Design:
        gram, parts = fold_grams(xc, self.plan, symmetric_gram)
        design = _design(xc, gram)
        design.gram, design.gram_parts = gram, parts
        return design


def _pair(design: _Design, mean_x: torch.Tensor, y_raw: torch.Tensor, y_buf: torch.Tensor | None, z: torch.Tensor,
          gram_y: bool, held: _Held | None = None) -> tuple[PairStats, torch.Tensor, torch.Tensor, object]:
    """The pair (X, Y) with X prepared as ``design``. y_raw: the state Y on the device in its own dtype; y_buf: a
    float64 buffer for Y_c (or None); z: an n x d float64 buffer. Returns the stats, Y_c, its column means and,
    with ``gram_y``, Y_c^T Y_c: the pieces of the next pair, whose X is this Y (with ``held``: the pair
    (Y_c^T Y_c, its per-fold parts), and rows in fold order)."""
    order = held.plan.order if held is not None else None
    y, mean_y, y_norm = _centre_into(y_raw, y_buf, rows=True, order=order)
    torch.sub(y, design.xc, out=z)  # Z = Y_c - X_c
    # Norm ratio of the raw states: y_i - x_i = z_i + delta with delta = mean_y - mean_x, so its squared norm is
    # ||z_i||^2 + 2 z_i.delta + ||delta||^2, from two passes over Z instead of a raw difference of its own. Rows
    # where that sum cancels (y_i - x_i short against z_i or delta) are recomputed from the raw difference.
    delta = mean_y - mean_x
    z_rows = row_sq(z)
    diff_sq = z_rows + 2 * (z @ delta) + delta @ delta
    cancels = (diff_sq < 1e-2 * (z_rows + delta @ delta)).nonzero().squeeze(1)
    if cancels.numel():
        src = cancels if order is None else order.index_select(0, cancels)
        raw = y_raw.index_select(0, src).to(torch.float64) - design.xc.index_select(0, cancels) - mean_x
        diff_sq[cancels] = torch.linalg.vector_norm(raw, dim=1) ** 2
    ratio = float((diff_sq.sqrt() / y_norm).mean())
    gram, gram_parts = None, None
    if gram_y:
        gram, gram_parts = fold_grams(y, held.plan, symmetric_gram) if held is not None else (symmetric_gram(y), None)
    y_energy = float(gram.diagonal().sum()) if gram_y else float(torch.linalg.vector_norm(y)) ** 2
    z_energy = float(z_rows.sum())
    # RSS(Y_c | X_c) = RSS(Z | X_c); the Gram formula's cancellation is relative to ||T||^2, so regress the smaller
    # of the two (Z for a residual block: its ||Z||^2 is the denominator of LS without residual anyway).
    use_z = z_energy <= y_energy
    t, t_energy = (z, z_energy) if use_z else (y, y_energy)
    cross, cross_parts = fold_cross(design.xc, t, held.plan) if held is not None else (design.xc.T @ t, None)
    if gram is None:
        t_col_sq = torch.linalg.vector_norm(t, dim=0) ** 2
    elif use_z:  # ||z_k||^2 = ||y_k||^2 - ||x_k||^2 - 2 x_k.z_k, from diagonals at hand (only the estimate uses it)
        y_sq, x_sq = gram.diagonal(), design.col_sq
        t_col_sq = (y_sq - x_sq - 2 * cross.diagonal()).abs() + 4 * (t.shape[0] + 2) * _EPS * (y_sq + x_sq)
    else:
        t_col_sq = gram.diagonal()
    positive = [e for e in (y_energy, z_energy) if e > 0]
    budget = _RSS_TOL * min(positive) if positive else 0.0
    rss, rank, solver = _solve(design, t, cross, t_energy, t_col_sq, budget)
    if solver == "nonfinite":
        warnings.warn("non-finite hidden states: the linearity statistics of this pair are NaN", stacklevel=3)
        return PairStats(math.nan, math.nan, math.nan, 0, solver), y, mean_y, (gram, gram_parts)
    stats = PairStats(
        linearity=1.0 - rss / y_energy if y_energy > 0 else math.nan,
        linearity_wo_res=1.0 - rss / z_energy if z_energy > 0 else math.nan,
        norm_ratio=ratio,
        rank_x=rank,
        solver=solver,
    )
    if held is None:
        return stats, y, mean_y, gram
    factor = (design.chol, design.inv) if design.keep is None and design.chol is not None else None
    stats.heldout = pair_heldout(held.plan, held.cfg, design.xc, design.gram, design.gram_parts, t, cross,
                                 cross_parts, y, z, use_z, z_rows, (stats.linearity, stats.linearity_wo_res), factor)
    return stats, y, mean_y, (gram, gram_parts)


def linearity_score(x: torch.Tensor, y: torch.Tensor, device: torch.device | str | None = None) -> float:
    """LS(x, y) for n x d tensors of the same n tokens (any float dtype; computed in float64 on ``device``,
    default: x's device). "Without residual" is ``linearity_score(h_i, h_next - h_i)``."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must hold the same tokens: {x.shape[0]} vs {y.shape[0]} rows")
    check_sizes(*x.shape)
    device = device or x.device
    xc, yc = (_centre_into(_on_device(t, device), None)[0] for t in (x, y))
    return _score(xc, yc, symmetric_gram(xc), xc.T @ yc)


def _score(xc: torch.Tensor, yc: torch.Tensor, gram: torch.Tensor, cross: torch.Tensor) -> float:
    """LS of the centred yc on the centred xc from X_c^T X_c and X_c^T Y_c."""
    col_sq = torch.linalg.vector_norm(yc, dim=0) ** 2
    y_energy = float(col_sq.sum())  # NaN/Inf in y reach it (and x's reach the Gram diagonal): the score is NaN
    if y_energy == 0:
        return math.nan  # a constant Y has no variance to explain
    rss = _solve(_design(xc, gram), yc, cross, y_energy, col_sq, _RSS_TOL * y_energy)[0]
    return 1.0 - rss / y_energy


def heldout_linearity(x: torch.Tensor, y: torch.Tensor, groups, folds: int = 5, *,
                      config: HeldoutConfig | None = None,
                      device: torch.device | str | None = None) -> HeldoutResult:
    """In-sample and held-out LS(x, y) with their intervals over documents and the chance levels
    (``eval.linearity.heldout``). x: n x d, y: n x d' of the same tokens; ``groups``: each token's document id.
    ``config`` sets the bootstrap and chance settings (its ``folds`` is replaced by ``folds``)."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must hold the same tokens: {x.shape[0]} vs {y.shape[0]} rows")
    if len(groups) != x.shape[0]:
        raise ValueError(f"groups has {len(groups)} document ids for {x.shape[0]} tokens")
    check_sizes(*x.shape)
    cfg = HeldoutConfig(**{**asdict(config or HeldoutConfig()), "folds": folds})
    cfg.validate("heldout")
    device = device or x.device
    plan = FoldPlan(groups, cfg.folds, cfg.seed, x.shape[1], device)
    xc, yc = (_centre_into(_on_device(t, device), None, order=plan.order)[0] for t in (x, y))
    gram, gram_parts = fold_grams(xc, plan, symmetric_gram)
    cross, cross_parts = fold_cross(xc, yc, plan)
    fits = fold_fits(xc, gram, gram_parts, yc, cross, cross_parts, chance_target(yc, plan, cfg), plan,
                     insample_rows=cfg.insample_interval == "bootstrap")
    rows = row_sq(yc)
    linearity = _score(xc, yc, gram, cross)  # as linearity_score computes it
    (heldout,), (ci_in, ci_ho), _ = score_intervals(plan, cfg, fits, rows, [Target(linearity, yc, rows, fits.t_means)])
    return HeldoutResult(linearity=linearity, heldout=heldout, linearity_ci=ci_in, heldout_ci=ci_ho,
                         chance=fits.chance, chance_heldout=fits.chance_heldout, folds=cfg.folds,
                         documents=plan.num_docs)


def pair_stats(x: torch.Tensor, y: torch.Tensor, device: torch.device | str | None = None) -> PairStats:
    """LS, LS without residual and norm ratio of one pair x -> y (same shape), from a single solve."""
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    check_sizes(*x.shape)
    device = device or x.device
    xc, mean_x, _ = _centre_into(_on_device(x, device), None)
    return _pair(_design(xc, symmetric_gram(xc)), mean_x, _on_device(y, device), None, torch.empty_like(xc),
                 gram_y=False)[0]


def linearity_profile(states: list[torch.Tensor], device: torch.device | str | None = None, *,
                      extra_y: torch.Tensor | None = None, groups: torch.Tensor | None = None,
                      heldout: HeldoutConfig | None = None, grams=None) -> list[PairStats]:
    """PairStats of every consecutive pair (states[i], states[i+1]) of [h_0, ..., h_L] (each n x d); with
    ``extra_y``, one more at the end: the pair (h_{L-1}, extra_y), e.g. the final-norm pair, which reuses the
    prepared h_{L-1} of the last block pair.

    States may live on the CPU in any dtype and are not modified. Each is moved to ``device`` (default: the
    first state's), upcast and centred once into one of three reused float64 buffers (X_c, Y_c, Z), and its Gram
    matrix is computed once: it serves as Y of one pair and X of the next. Peak memory beyond the inputs: those
    three n x d float64 buffers and O(d^2), plus what a pair's fallback solver allocates.

    With ``groups`` (each token's document id), every pair also gets ``heldout`` statistics (``eval.linearity.
    heldout``, settings ``heldout``, default ``HeldoutConfig()``): the states are laid out in fold order and the
    Gram and cross products are computed per fold, whose sums serve the in-sample scores unchanged. Extra memory:
    2 k + 2 d x d matrices per state and a k-th of an n x d product (n x 2d with the in-sample bootstrap).

    ``grams``: a callable given (i, X_c^T X_c) of every state h_i, e.g. for its anisotropy (the last state's Gram
    matrix is then computed too).
    """
    if len(states) < 2:
        raise ValueError("need at least two states (h_0 and h_1)")
    shape = states[0].shape
    if any(s.shape != shape for s in [*states, *([] if extra_y is None else [extra_y])]):
        raise ValueError(f"all states must have the same shape, got {[tuple(s.shape) for s in states]}"
                         + ("" if extra_y is None else f" and {tuple(extra_y.shape)}"))
    check_sizes(*shape)
    device = device or states[0].device
    held = None
    if groups is not None:
        if len(groups) != shape[0]:
            raise ValueError(f"groups has {len(groups)} document ids for {shape[0]} tokens")
        cfg = heldout or HeldoutConfig()
        held = _Held(FoldPlan(groups, cfg.folds, cfg.seed, shape[1], device), cfg)
    xc, mean_x, _ = _centre_into(_on_device(states[0], device), None, order=held and held.plan.order)
    if held is not None:
        design = held.design(xc)
        gram0 = design.gram
    else:
        gram0 = symmetric_gram(xc)
        design = _design(xc, gram0)
    if grams is not None:
        grams(0, gram0)
    z, spare, out = torch.empty_like(xc), None, []
    for i, nxt in enumerate(states[1:], start=1):
        more = i < len(states) - 1
        stats, y, mean_y, gram = _pair(design, mean_x, _on_device(nxt, device), spare, z,
                                       gram_y=more or grams is not None, held=held)
        out.append(stats)
        if grams is not None:
            grams(i, gram if held is None else gram[0])
        if more:  # Y_c becomes X_c; the old X_c buffer takes the next state
            spare, mean_x = design.xc, mean_y
            if held is None:
                design = _design(y, gram)
            else:
                design = _design(y, gram[0])
                design.gram, design.gram_parts = gram
    if extra_y is not None:  # same X as the last pair; h_L's buffer is free again
        out.append(_pair(design, mean_x, _on_device(extra_y, device), y, z, gram_y=False, held=held)[0])
    return out
