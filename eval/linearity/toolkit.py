"""The other measurements of the authors' toolkit (Razzhigaev et al., the ``llm-microscope`` package), on the same
hidden states as the linearity score, in float64.

- Anisotropy of an n x d embedding matrix X: with X_c the column-centred X and lambda_1 >= ... its covariance
  eigenvalues (the squared singular values of X_c over n - 1),

      anisotropy(X) = lambda_1 / sum_k lambda_k   in [1/min(n - 1, d), 1]

  (1: every token lies on one line through the mean; the n - 1 cancels). The sum is the trace, ||X_c||_F^2; the
  largest eigenvalue is that of the smaller Gram matrix (X_c^T X_c or X_c X_c^T), by Lanczos iteration
  (``top_eigenvalue``): a full symmetric eigensolver spends O(d^3) on a tridiagonal reduction, mostly
  matrix-vector work, to return d eigenvalues of which one is used (measured at d = 768: 0.06 s against 0.01 s on
  one thread, and 1.4 s against 0.14 s on two busy ones).

- Intrinsic dimension: the authors' variant of TwoNN (Facco et al. 2017, Sci. Rep. 7:12140). Centre X, divide
  it by the mean row norm; for every point i let r1_i <= r2_i be the Euclidean distances to its two nearest other
  points and mu_i = r2_i / r1_i. Points with r1_i < 1e-8 (a duplicate) get mu_i = -1. Sort the mu; the u points
  with mu <= 1 + 1e-8 are discarded (duplicates and exact ties r2 = r1), but keep their ranks: the i-th kept
  ratio (i = 1..m, m = n - u) has the empirical CDF F_i = (u + i) / n. The estimate is the slope of the line
  through the origin fitted to (log mu_i, -log(1 - F_i)) over the first k = min(floor(fraction * m), m - 1)
  kept ratios, the smallest:

      ID = sum_i log(mu_i) (-log(1 - F_i)) / sum_i log(mu_i)^2.

  ``fraction`` is 1/5 by default, the authors' (their ``reduction_factor=5``); Facco et al.'s TwoNN fits the
  smallest 90 % instead (``fraction=0.9``). ``fraction`` is read as the nearest ratio with a denominator up to
  1e6, so that floor(fraction * m) is exact (0.2 is 1/5, not 0.2000000000000000111).

  The authors find the neighbours with one pass over all n points per point, in Python. Here the squared
  distances of a block of rows come from one matrix product, ||x_i||^2 + ||x_j||^2 - 2 x_i.x_j, which gives the
  candidate neighbours (the _CANDIDATES nearest); their distances are then recomputed from the differences
  x_i - x_j, as the authors compute them, so r1 and r2 carry no cancellation error. A row whose second
  distance is not clearly below every non-candidate's (by the product's rounding-error bound), and is not 0, is
  recomputed against all points. No randomness is involved, on either side.

- Logit lens (nostalgebraist 2020): the unembedding ``lm_head`` applied to each state h_0..h_L of the residual
  stream, per layer, with next-token cross-entropy against the labels (mean over the predicted tokens):
    "loss":           CE(lm_head(final_norm(h_i)))  -- the model's own readout at every depth; at i = L it is
                      the model's loss;
    "loss_no_norm":   CE(lm_head(h_i))              -- the unembedding alone;
    "neglogp_argmax": -log max_v softmax(lm_head(s_i))_v, the authors' per-token quantity (the model's
                      confidence in its own top prediction; no label enters), where s_i is the i-th state of
                      HF's ``output_hidden_states`` as the authors used it: h_i for i < L, final_norm(h_L) last.
  The final norm is the model's own module in its own precision (as in the forward); the unembedding, softmax
  and means are float64. Post-LN models without a final norm module (OPT-350m) use the identity.
"""
from __future__ import annotations

import logging
import math
from fractions import Fraction

import torch
from torch import nn

from eval.linearity.profile import find_final_norm
from eval.linearity.score import symmetric_gram

log = logging.getLogger(__name__)

_EPS = torch.finfo(torch.float64).eps
_ID_EPS = 1e-8  # the authors' threshold on r1 (duplicates) and on mu - 1 (ties), after the mean-norm scaling
ID_FRACTION = 0.2  # the authors' regression fraction (reduction_factor = 5)
# neighbours per point kept from the bounds: enough unless a point has rounding-level ties (a point with two or
# more duplicates is settled by them: r1 = r2 = 0); the search keeps one more (a top-4 costs 2/3 of a top-9)
_CANDIDATES = 3
_MORE_CANDIDATES = 16  # for the rows these do not settle (e.g. a neighbour with duplicates: tied bounds)
_BLOCK_ROWS = 1024  # rows (and columns) of one block of the squared-distance matrix
# rows of one product in a diagonal block (its upper triangle only). One thread, 1024 rows: 5.0-5.1 ms at 128
# against 5.2-5.5 (64), 5.2-5.4 (256), 5.5 (512) and 6.1 for the full product at d = 256; 11.5-11.7 at 64 and 128
# against 16.9 at d = 768
_SUB = 128
# below this width a diagonal block is one full product: for 1024 rows on the CPU of docs/PERFORMANCE.md the
# mirror costs ~1.6 ms, the half product saves 1.1 ms at d = 256 and loses 0.6 ms at d = 128
_SYMMETRIC_MIN_D = 192
# one band of candidate differences (float64): 1 MiB stays in the cache and reuses its memory. 1024 points, one
# thread: two_nearest 5.7 against 6.1-6.7 ms at d = 128 and 8.5 against 10.1 ms at 256 with 64 MiB bands (the whole
# 1024 x 3 x d gather at once); two threads 6.8-7.9 against 13-14 ms and 12-13 against 21 ms. A band holds at
# least 64 rows, so that wide states (d = 4096) do not loop over a few rows at a time
_BLOCK_BYTES = 1 << 20
_LENS_ROWS = 1024  # tokens per unembedding product (their float64 logits are rows x vocabulary)
_LANCZOS_MIN = 160  # up to this order the full eigensolver costs less (0.4 vs 0.6 ms at 128, 1.0 vs 0.7 at 192)
_LANCZOS_CHECK = 8  # Lanczos steps between convergence checks (each a tiny tridiagonal eigenproblem)
_LANCZOS_STEPS = 96  # then the full eigensolver: a spectrum without a gap at the top (not a hidden state's)


def _float64(x: torch.Tensor, what: str) -> torch.Tensor:
    if x.dim() != 2:
        raise ValueError(f"{what} needs an n x d matrix of token embeddings, got shape {tuple(x.shape)}")
    return x.detach().to(torch.float64)


def anisotropy(x: torch.Tensor) -> float:
    """Largest covariance eigenvalue of the n x d matrix ``x`` over their sum (float64; NaN if x is constant)."""
    x = _float64(x, "anisotropy")
    if x.shape[0] < 2:
        raise ValueError(f"anisotropy needs at least 2 tokens, got {x.shape[0]}")
    xc = x - x.mean(dim=0)
    gram = symmetric_gram(xc) if xc.shape[1] <= xc.shape[0] else xc @ xc.T
    total = float(gram.diagonal().sum())
    if total == 0:
        return math.nan
    return top_eigenvalue(gram) / total


def top_eigenvalue(a: torch.Tensor) -> float:
    """The largest eigenvalue of the symmetric d x d matrix ``a`` (float64): Lanczos from a seeded random vector,
    with full reorthogonalisation (the Krylov basis is kept, so no ghost eigenvalues), until the residual bound
    |lambda - theta| <= beta_k |s_k| of the largest Ritz value theta is below d eps theta -- rounding level, as
    for a backward-stable eigensolver -- or the basis spans the space (then theta is exact). A random start has
    a component along the top eigenvector with probability one, so the iteration cannot miss it. Hidden states'
    Gram matrices, with a few dominant directions, converge in a few dozen steps; a matrix that has not after
    ``_LANCZOS_STEPS`` goes to the full eigensolver (the basis would grow to O(d^3) work)."""
    d = a.shape[0]
    if d <= _LANCZOS_MIN:
        return float(torch.linalg.eigvalsh(a)[-1])
    q = torch.randn(d, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(a.device)
    basis = torch.empty(min(d, _LANCZOS_STEPS), d, dtype=torch.float64, device=a.device)  # rows: Lanczos vectors
    basis[0] = q / torch.linalg.vector_norm(q)
    alpha, beta = [], []
    for k in range(d):
        w = a @ basis[k]
        alpha.append(float(w @ basis[k]))
        for _ in range(2):  # twice is enough (Parlett's "twice is enough")
            w -= basis[:k + 1].T @ (basis[:k + 1] @ w)
        b = float(torch.linalg.vector_norm(w))
        if (k + 1) % _LANCZOS_CHECK == 0 or k == d - 1 or b == 0:
            tri = torch.diag(torch.tensor(alpha, dtype=torch.float64))
            if k:
                off = torch.tensor(beta, dtype=torch.float64)
                tri += torch.diag(off, 1) + torch.diag(off, -1)
            theta, s = torch.linalg.eigh(tri)
            if k == d - 1 or b * abs(float(s[-1, -1])) <= d * _EPS * abs(float(theta[-1])):
                return float(theta[-1])
        if k + 1 == _LANCZOS_STEPS:
            return float(torch.linalg.eigvalsh(a)[-1])
        beta.append(b)
        basis[k + 1] = w / b
    raise AssertionError("unreachable: the loop returns at k = d - 1")


def _exact_distances(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """||x_i - x_j|| for i in ``rows`` (b) and each row's columns ``cols`` (b x k), from the differences (taken
    as x_j - x_i in place in the gathered b x k x d block: one such temporary, not two; the same norms)."""
    b, k = cols.shape
    diff = x.index_select(0, cols.reshape(-1)).view(b, k, x.shape[1])
    return torch.linalg.vector_norm(diff.sub_(x.index_select(0, rows)[:, None, :]), dim=2)


def _keep_smallest(best_v: torch.Tensor, best_i: torch.Tensor, vals: torch.Tensor, idx: torch.Tensor) -> None:
    """Per row, the smallest of the kept (values, indices) and a block's, written back into the kept views."""
    v, i = torch.cat([best_v, vals], dim=1), torch.cat([best_i, idx], dim=1)
    v, pos = torch.topk(v, best_v.shape[1], dim=1, largest=False)
    best_v.copy_(v)
    best_i.copy_(i.gather(1, pos))


def _symmetric_bound(y: torch.Tensor, a: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """The (symmetric) block of ``two_nearest``'s bounds a_i + a_j - 2 y_i . y_j for rows and columns lo:hi: the
    products of each band of ``_SUB`` rows with the columns from its own band on, written in place, each mirrored
    below the diagonal (about (1 + _SUB / m) / 2 of a full product's work for m rows, plus a transposed copy)."""
    m = hi - lo
    out = torch.empty(m, m, dtype=y.dtype, device=y.device)
    for s in range(0, m, _SUB):
        e = min(s + _SUB, m)
        band = out[s:e, s:]
        torch.addmm(a[None, lo + s:hi], y[lo + s:lo + e], y[lo + s:hi].T, alpha=-2.0, out=band)
        band.add_(a[lo + s:lo + e, None])
        out[e:, s:e] = band[:, e - s:].T
    return out


def two_nearest(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(r1, r2): each row's distances to its nearest and second-nearest other row of ``x`` (float64, n >= 3).

    The search runs on lower bounds of the squared distances from float32 products (float64 on a GPU), over the
    blocks of the upper triangle of the n x n matrix only, and is exact nonetheless. With y_i = fl32(x_i) and
    n_i = ||x_i||,
    ||y_i||^2 + ||y_j||^2 - 2 fl32(y_i . y_j) differs from ||x_i - x_j||^2 by at most
    u32 (d + 16) (n_i + n_j)^2 (the rounding of x to y: 3 u32 (n_i + n_j)^2; of the length-d inner product:
    gamma_d n_i n_j <= gamma_d (n_i + n_j)^2 / 4, doubled; of the float32 sums: a few u32 (n_i + n_j)^2; so
    about a factor 2 to spare). Subtracting that bound is one more product term: with t = u32 (d + 16), a_i =
    ||y_i||^2 - t n_i^2 and the extra column sqrt(t) n_i appended to y_i, the bound is a_i + a_j - 2 y'_i . y'_j.
    The ``_CANDIDATES`` points of smallest bound are the candidates, whose distances are recomputed from the
    differences in float64; every other point is at least as far as the next-smallest bound, so when r2^2 does
    not exceed it, r1 and r2 are exact, and so they are when r2 = 0 (two duplicates among the candidates).
    Other rows (tied bounds: a neighbour with duplicates, or a lattice) are searched again with more candidates
    (``_MORE_CANDIDATES``, from their own bound rows against every point), and what that does not settle is
    recomputed against every point."""
    n, d = x.shape
    k = min(_CANDIDATES, n - 1)
    kk = min(k + 1, n - 1)  # one more than the candidates: its bound holds for every point outside them
    norms = torch.linalg.vector_norm(x, dim=1)
    # float32 products on a CPU (twice as fast); on a GPU float32 may mean TF32 (10-bit mantissa), so float64
    search = torch.float32 if x.device.type == "cpu" else torch.float64
    t = torch.finfo(search).eps / 2 * (d + 16)
    y = torch.empty(n, d + 1, dtype=search, device=x.device)
    y[:, :d], y[:, d] = x, math.sqrt(t) * norms
    a = (torch.linalg.vector_norm(y[:, :d], dim=1, dtype=torch.float64) ** 2 - t * norms ** 2).to(search)
    best_v = torch.full((n, kk), math.inf, dtype=search, device=x.device)
    best_i = torch.zeros((n, kk), dtype=torch.long, device=x.device)
    edges = [*range(0, n, _BLOCK_ROWS), n]
    for bi, (lo, hi) in enumerate(zip(edges, edges[1:])):
        for lo2, hi2 in zip(edges[bi:], edges[bi + 1:]):
            if lo2 == lo and d >= _SYMMETRIC_MIN_D:
                bound = _symmetric_bound(y, a, lo, hi)
            else:
                bound = torch.addmm(a[None, lo2:hi2], y[lo:hi], y[lo2:hi2].T, alpha=-2.0).add_(a[lo:hi, None])
            if lo2 == lo:
                bound.fill_diagonal_(math.inf)  # a point is not its own neighbour
            vals, idx = torch.topk(bound, min(kk, hi2 - lo2), dim=1, largest=False)
            if lo2 == 0 and vals.shape[1] == kk:  # the first block of the first rows: nothing kept yet to merge
                best_v[lo:hi], best_i[lo:hi] = vals, idx
            else:
                _keep_smallest(best_v[lo:hi], best_i[lo:hi], vals, idx + lo2)
            if lo2 != lo:  # the same block serves the rows of the other side
                vals, idx = torch.topk(bound, min(kk, hi - lo), dim=0, largest=False)
                _keep_smallest(best_v[lo2:hi2], best_i[lo2:hi2], vals.T, idx.T + lo)
    r1, r2 = torch.empty_like(norms), torch.empty_like(norms)
    rows = torch.arange(n, device=x.device)
    for stage in range(2):
        if stage:  # the unsure rows again, with more candidates: their bounds against every point
            k, kk = min(_MORE_CANDIDATES, n - 1), min(_MORE_CANDIDATES + 1, n - 1)
            best_v = torch.empty(len(rows), kk, dtype=search, device=x.device)
            best_i = torch.empty(len(rows), kk, dtype=torch.long, device=x.device)
            for lo in range(0, len(rows), _BLOCK_ROWS):
                part = rows[lo:lo + _BLOCK_ROWS]
                bound = torch.addmm(a[None, :], y[part], y.T, alpha=-2.0).add_(a[part, None])
                bound[torch.arange(len(part), device=x.device), part] = math.inf
                best_v[lo:lo + len(part)], best_i[lo:lo + len(part)] = torch.topk(bound, kk, dim=1, largest=False)
        for band in torch.arange(len(rows), device=x.device).split(max(64, _BLOCK_BYTES // (8 * k * d))):
            near = _exact_distances(x, rows[band], best_i[band, :k]).sort(dim=1).values
            r1[rows[band]], r2[rows[band]] = near[:, 0], near[:, 1]
        if k >= n - 1:  # the candidates were every other point
            return r1, r2
        # unsure: a point outside the candidates may be nearer than r2 (unless r2 = 0)
        keep = (r2[rows] ** 2 > best_v[:, k]) & (r2[rows] > 0)
        rows = rows[keep]
        # which stage settles how many rows: a slow fall-through would still be exact (tests read this)
        log.debug("two_nearest: %d of %d rows unsure after search %d", len(rows), n, stage + 1)
        if not len(rows):
            return r1, r2
    for i in rows.tolist():  # ties at the rounding level beyond even the second stage's candidates
        dist = torch.linalg.vector_norm(x[i] - x, dim=1)
        dist[i] = math.inf
        r1[i], r2[i] = dist.topk(2, largest=False).values
    return r1, r2


def intrinsic_dimension(x: torch.Tensor, *, fraction: float = ID_FRACTION) -> float:
    """The authors' TwoNN estimate of the intrinsic dimension of the rows of the n x d matrix ``x`` (float64;
    NaN when fewer than two ratios are usable, e.g. every point has a duplicate). See the module docstring."""
    if not 0 < fraction <= 1:
        raise ValueError(f"intrinsic_dimension: fraction must be in (0, 1], got {fraction}")
    x = _float64(x, "intrinsic_dimension")
    n = x.shape[0]
    if n < 3:
        raise ValueError(f"intrinsic_dimension needs at least 3 tokens (two neighbours each), got {n}")
    xc = x - x.mean(dim=0, keepdim=True)
    xc /= torch.linalg.vector_norm(xc, dim=1).mean()
    r1, r2 = two_nearest(xc)
    bad = r1 < _ID_EPS
    mu = torch.where(bad, torch.full_like(r1, -1.0), r2 / r1.clamp(min=_ID_EPS)).sort().values
    useless = int((mu <= 1 + _ID_EPS).sum())
    kept = n - useless
    use = min(math.floor(Fraction(fraction).limit_denominator(10**6) * kept), kept - 1)
    if use < 1:
        return math.nan
    mu_log = mu[useless:useless + use].log()
    cdf = torch.arange(useless + 1, useless + use + 1, dtype=torch.float64, device=mu.device) / n
    dist_log = -torch.log1p(-cdf)
    return float((mu_log * dist_log).sum() / (mu_log * mu_log).sum())


def _unembedding(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    head = model.get_output_embeddings()
    if not isinstance(head, nn.Linear):
        raise ValueError(f"logit_lens needs an nn.Linear lm_head, {type(model).__name__} has {type(head).__name__}")
    weight = head.weight.detach().to(torch.float64)
    bias = None if head.bias is None else head.bias.detach().to(torch.float64)
    return weight, bias


def logit_lens(states: list[torch.Tensor], model: nn.Module, labels: torch.Tensor) -> dict[str, list[float]]:
    """Per-layer logit-lens statistics of the residual stream ``states`` = [h_0, ..., h_L] (each batch x seq x d,
    or seq x d for one sequence; h_L before the final norm, as ``model.capture.ResidualStream`` gives them).

    ``labels`` (batch x seq, or seq) are the input ids in HF's convention: position t is scored against
    labels[t + 1], and -100 marks positions not to predict (padding). Tokens of several sequences pooled into
    one seq x d state each need -100 on every sequence's first token, so that no position predicts across a
    boundary. Returns {"loss", "loss_no_norm", "neglogp_argmax"}: L + 1 floats each, means over the predicted
    tokens (definitions in the module docstring). The unembedding and final norm are read from ``model`` as
    they are: under ZeRO-3 call it inside ``deepspeed.zero.GatheredParameters`` of both.
    """
    if len(states) < 2:
        raise ValueError("logit_lens needs the states h_0..h_L (at least two)")
    states = [s.detach() for s in states]
    if states[0].dim() == 2:
        states, labels = [s[None] for s in states], labels[None]
    if any(s.shape != states[0].shape for s in states) or states[0].dim() != 3:
        raise ValueError(f"logit_lens: states must share one batch x seq x d shape, got "
                         f"{[tuple(s.shape) for s in states]}")
    if tuple(labels.shape) != tuple(states[0].shape[:2]):
        raise ValueError(f"logit_lens: labels of shape {tuple(labels.shape)} do not match states of shape "
                         f"{tuple(states[0].shape)}")
    weight, bias = _unembedding(model)
    norm = find_final_norm(model) or nn.Identity()
    target = labels[:, 1:].to(weight.device)
    where = (target != -100).nonzero(as_tuple=True)  # (sequence, position) of every predicted token
    if where[0].numel() == 0:
        raise ValueError("logit_lens: no position has a label to predict (all are -100)")
    target = target[where]
    last = len(states) - 1
    out: dict[str, list[float]] = {"loss": [], "loss_no_norm": [], "neglogp_argmax": []}
    with torch.no_grad():
        for i, h in enumerate(states):
            raw = h[:, :-1].to(weight.device)[where]
            normed = norm(raw)
            loss = loss_no_norm = confidence = 0.0
            for lo in range(0, raw.shape[0], _LENS_ROWS):
                sl, tgt = slice(lo, lo + _LENS_ROWS), target[lo:lo + _LENS_ROWS]
                picked_norm, lse_norm, top_norm = _readout(normed[sl], weight, bias, tgt)
                picked_raw, lse_raw, top_raw = _readout(raw[sl], weight, bias, tgt)
                loss += float((lse_norm - picked_norm).sum())
                loss_no_norm += float((lse_raw - picked_raw).sum())
                confidence += float((lse_norm - top_norm).sum() if i == last else (lse_raw - top_raw).sum())
            count = raw.shape[0]
            out["loss"].append(loss / count)
            out["loss_no_norm"].append(loss_no_norm / count)
            out["neglogp_argmax"].append(confidence / count)
    return out


def _readout(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
             target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row of h: (the target's logit, the log-sum-exp of the logits, their maximum), float64, so that
    -log p(target) = lse - logit and -log p(argmax) = lse - max. The logits are read, then exponentiated in place
    about the row maximum: no second rows x vocabulary array, as a log_softmax output would be."""
    logits = h.to(torch.float64) @ weight.T
    if bias is not None:
        logits += bias
    picked = logits.gather(1, target[:, None])[:, 0]
    top = logits.amax(dim=1)
    lse = logits.sub_(top[:, None]).exp_().sum(dim=1).log_().add_(top)
    return picked, lse, top
