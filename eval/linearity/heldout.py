"""Held-out linearity: the score of a map fitted on other documents, with intervals over documents and a chance
level measured on the data.

The in-sample score LS(X, Y) fits A on the n tokens it then scores, so even unrelated X and Y score about
d / (n - 1): at the paper's probe size for a 7B model (n ~ 15k, d = 4096) that is ~0.27 of pure fitting. The
held-out score removes it:

- Folds of documents. Each document (a probe chunk; ``groups`` gives every token's document id) goes whole to
  one of k folds: the documents in a seeded random order, cut into k runs of about n / k tokens. Tokens of one
  document are strongly correlated, so a token-level split would leak a document's own tokens into its fit.
- For each fold f, A_f and the intercept are the least-squares fit of Y on X over the other k - 1 folds (centred
  with those folds' means). The held-out score pools the k left-out folds:

      LS_ho = 1 - sum_f ||Y_f - m_f(Y) - (X_f - m_f(X)) A_f||^2 / sum_f ||Y_f - m_f(Y)||^2,

  m_f the training folds' column means (predictive R^2, "Q^2"). Without residual the target is Z = Y - X; its
  fits are A_f - I, so the residuals are the same and only the denominator changes (as in-sample).
- Computed from per-fold sums, in float64: G_f = X_f^T X_f and C_f = X_f^T T_f. Their sums over folds are the
  in-sample Gram and cross products (so the in-sample score costs nothing extra), and the training products are
  G - G_f and C - C_f, corrected for the training means (exact). Each fold then costs one d x d solve; the
  held-out residuals are explicit (one product X_f A_f per fold), which the bootstrap needs per document anyway.
- 95 % intervals (``level``) over documents. Held-out scores: percentile bootstrap over documents (the cluster
  bootstrap: documents are resampled whole, since tokens within one are not independent) of the ratio of summed
  per-document residual and total energies, with the fitted maps held fixed: intervals for the score of *these*
  fits on new documents of the same kind (docs/linearity.md measures their coverage). In-sample scores
  (``insample_interval``): by default the delete-a-group jackknife over the k folds, whose replicates are the
  in-sample scores of the k fold fits on their own training folds, RSS_(-f) = E_train(T) - <C_train, A_f> from the
  products at hand (it cancels, but only against an interval width, not the score itself), and the interval
  LS +- t_{k-1} se_jack (refitting variability included; k - 1 degrees of freedom); or, as for the held-out scores,
  the document bootstrap of the fixed in-sample fit, which needs every token's in-sample residual (one more
  n x d x d product per pair).
- Chance level, measured: the same fits with the targets shuffled by documents (Y's documents laid end to end in a
  seeded random order against X's rows, so the rows of X and Y come from different documents almost everywhere
  while each keeps its own token structure). To keep it cheap the shuffled target is sketched to
  ``chance_columns`` = m columns by a CountSketch (Clarkson & Woodruff 2013): each of Y's d columns goes, with a
  random sign, to one of m buckets (d / m columns each, balanced), and a bucket is the signed sum of its columns.
  A pooled R^2 is a ratio of two quadratic forms in the sketch, tr(S^T M S) / tr(S^T N S) (M = Y^T P_X Y the
  explained, N = Y^T Y the total energy per column pair); E[S S^T] = I, so both sums keep their expectations (the
  ratio is unbiased up to a small ratio bias). Each sum's variance comes from the off-diagonal entries alone,
  2/m sum_{j != j'} M_jj'^2 against 2/m tr(M^2) for m Gaussian directions; the ratio's error, where the two sums'
  errors partly cancel, measured about the same as with Gaussian directions (docs/linearity.md), and the sketch is
  exact for d <= m. It costs one pass over Y instead of an n x d x m product. In-sample chance is ~d / (n - 1)
  for independent tokens, more when the tokens of a document are correlated; held-out chance is negative.

What the held-out score estimates: the R^2 on new documents of a map fitted on (k - 1) / k of the probe. For a
linear population it sits *below* the population R^2 by about (1 - R^2) d / (n_train - d), as the in-sample
score sits above it by about (1 - R^2) d / n: the two bracket it.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, fields

import torch

from core.config import check

_EPS = torch.finfo(torch.float64).eps
_PIVOT_TOL = math.sqrt(_EPS)
_ROW_SQ_WHOLE = 1 << 21  # values up to which ``row_sq`` takes one call
_ROW_SQ_BAND = 256  # rows per call beyond

SCORES = ("linearity", "linearity_wo_res", "heldout", "heldout_wo_res")  # each gets a (lo, hi) interval
INSAMPLE_INTERVALS = ("jackknife", "bootstrap")


@dataclass
class HeldoutConfig:
    folds: int = 5  # k-fold over documents; 5 or 10 are the usual bias/variance compromise (Hastie et al. 7.10)
    bootstrap: int = 1000  # document resamples for the percentile intervals
    level: float = 0.95
    # in-sample interval: "jackknife" (delete-a-fold, from the fold fits; no extra product) or "bootstrap" (the
    # documents' in-sample residuals: one more n x d x d product per pair); docs/linearity.md says why
    insample_interval: str = "jackknife"
    chance_columns: int = 64  # CountSketch buckets of the shuffled target for the chance level (docs/linearity.md)
    seed: int = 0

    def validate(self, p: str) -> None:
        check(self.folds >= 2, f"{p}.folds", self.folds, "must be >= 2")
        check(self.bootstrap >= 10, f"{p}.bootstrap", self.bootstrap, "must be >= 10")
        check(0.5 < self.level < 1, f"{p}.level", self.level, "must be in (0.5, 1)")
        check(self.insample_interval in INSAMPLE_INTERVALS, f"{p}.insample_interval", self.insample_interval,
              f"must be one of {', '.join(INSAMPLE_INTERVALS)}")
        check(self.chance_columns >= 1, f"{p}.chance_columns", self.chance_columns, "must be >= 1")


@dataclass
class HeldoutStats:
    """Held-out scores, intervals of the in-sample and held-out scores, and the chance levels of one pair."""
    heldout: float
    heldout_wo_res: float
    linearity_lo: float
    linearity_hi: float
    linearity_wo_res_lo: float
    linearity_wo_res_hi: float
    heldout_lo: float
    heldout_hi: float
    heldout_wo_res_lo: float
    heldout_wo_res_hi: float
    chance: float  # in-sample score of document-shuffled targets
    chance_heldout: float  # held-out score of document-shuffled targets
    level: float = 0.95
    # per score of SCORES, the replicates of its interval: ("bootstrap", one per document resample; the resamples
    # are the same for every pair of a profile) or ("jackknife", the k delete-a-fold scores; the folds are the same
    # for every pair), so a mean over pairs has its own interval (``mean_interval``)
    draws: dict[str, tuple[str, torch.Tensor]] | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "draws"}


def percentile_intervals(draws: torch.Tensor, level: float) -> list[tuple[float, float]]:
    """The percentile interval of each row of replicates of ``draws`` (rows x replicates), in one quantile call."""
    tail = (1 - level) / 2
    lo, hi = torch.quantile(draws, torch.tensor([tail, 1 - tail], dtype=draws.dtype), dim=1).tolist()
    return list(zip(lo, hi))


def jackknife_interval(estimate: float, replicates: torch.Tensor, level: float) -> tuple[float, float]:
    """estimate +- t_{g-1} se of the delete-a-group jackknife with g = len(replicates) groups (the scores without
    each group): se^2 = (g - 1) / g * sum_j (theta_(j) - mean)^2, whose g - 1 degrees of freedom the t quantile
    accounts for (random-group variance estimation, Wolter 2007, ch. 2 and 4)."""
    g = replicates.numel()
    reps = replicates.to(torch.float64)
    se = math.sqrt((g - 1) / g * float(((reps - reps.mean()) ** 2).sum()))
    half = _t_quantile(0.5 + level / 2, g - 1) * se
    return estimate - half, estimate + half


@functools.lru_cache(maxsize=16)
def _t_quantile(p: float, dof: int) -> float:
    from scipy.stats import t  # a scipy call costs ~0.1 ms: once per profile, not per pair and score

    return float(t.ppf(p, dof))


def mean_interval(stats: list[HeldoutStats], means: dict[str, float]) -> dict[str, float]:
    """Intervals of the mean over pairs of each of SCORES (``<score>_lo``, ``<score>_hi``), from the pairs'
    shared resamples or folds; ``means``: the mean over pairs of every score (a jackknife interval's centre)."""
    out = {}
    for q in SCORES:
        kind = stats[0].draws[q][0]
        reps = torch.stack([s.draws[q][1] for s in stats]).mean(0)
        lo_hi = percentile_intervals(reps[None], stats[0].level)[0] if kind == "bootstrap" else \
            jackknife_interval(means[q], reps, stats[0].level)
        out[f"{q}_lo"], out[f"{q}_hi"] = lo_hi
    return out


@dataclass
class HeldoutResult:
    """``heldout_linearity``: in-sample and held-out score of y on x, their intervals and chance levels."""
    linearity: float
    heldout: float
    linearity_ci: tuple[float, float]
    heldout_ci: tuple[float, float]
    chance: float
    chance_heldout: float
    folds: int
    documents: int


class FoldPlan:
    """Which fold each document goes to, and the token order that makes every fold a contiguous run of rows.

    ``order``: row indices of the pooled tokens sorted by fold (documents stay contiguous and in pool order);
    ``edges``: fold f is rows edges[f]:edges[f+1] of the reordered tokens; ``doc``: the document index
    (0..documents-1) of every reordered row; ``shuffle``: the reordered rows of Y that the chance level pairs
    with each reordered row of X (Y's documents in a random order)."""

    def __init__(self, groups: torch.Tensor, folds: int, seed: int, d: int, device=None):
        groups = torch.as_tensor(groups).reshape(-1).to("cpu")
        n = groups.numel()
        _, doc = torch.unique(groups, return_inverse=True)
        num_docs = int(doc.max()) + 1 if n else 0
        if num_docs < folds:
            raise ValueError(f"held-out linearity needs at least {folds} documents (one per fold), got {num_docs}")
        g = torch.Generator().manual_seed(seed)
        sizes = torch.bincount(doc, minlength=num_docs)
        perm = torch.randperm(num_docs, generator=g)
        ends = torch.cumsum(sizes[perm], 0)
        # a document goes to the fold its middle token falls in, so folds hold ~n / k tokens each
        fold_of_doc = torch.empty(num_docs, dtype=torch.long)
        fold_of_doc[perm] = ((ends - sizes[perm] / 2) * folds / n).long().clamp(max=folds - 1)
        if torch.bincount(fold_of_doc, minlength=folds).min() == 0:  # a few huge documents: deal them out instead
            fold_of_doc[perm] = torch.arange(num_docs) % folds
        fold = fold_of_doc[doc]
        order = torch.sort(fold * num_docs + doc, stable=True).indices  # fold, then document, then pool order
        counts = torch.bincount(fold, minlength=folds)
        self.edges = [0, *torch.cumsum(counts, 0).tolist()]
        small = int((n - counts.max()).item())
        if small <= d + 1:
            raise ValueError(f"held-out linearity: a fold's training set has {small} tokens for d={d}; it needs "
                             f"more than d + 1 (a longer probe or more folds)")
        self.folds, self.num_docs, self.n = folds, num_docs, n
        self.doc = doc[order]
        # chance pairing: Y's documents in a random order, laid end to end against X's reordered rows
        doc_perm = torch.randperm(num_docs, generator=g)
        starts = torch.full((num_docs,), n, dtype=torch.long).scatter_reduce_(0, self.doc, torch.arange(n), "amin")
        self.shuffle = torch.cat([torch.arange(int(starts[j]), int(starts[j]) + int(sizes[j])) for j in doc_perm])
        self.order = order
        self.generator_seed = seed
        self.to(device)

    def to(self, device) -> FoldPlan:
        if device is not None:
            self.order, self.doc, self.shuffle = (t.to(device) for t in (self.order, self.doc, self.shuffle))
        return self

    def spans(self) -> list[tuple[int, int]]:
        return list(zip(self.edges, self.edges[1:]))


def fold_grams(x: torch.Tensor, plan: FoldPlan, gram) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(X^T X, [X_f^T X_f per fold]) with ``gram`` the symmetric product of one fold's rows."""
    parts = [gram(x[lo:hi]) for lo, hi in plan.spans()]
    total = parts[0].clone()
    for p in parts[1:]:
        total += p
    return total, parts


def fold_cross(x: torch.Tensor, t: torch.Tensor, plan: FoldPlan) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(X^T T, [X_f^T T_f per fold])."""
    parts = [x[lo:hi].T @ t[lo:hi] for lo, hi in plan.spans()]
    total = parts[0].clone()
    for p in parts[1:]:
        total += p
    return total, parts


def row_sq(v: torch.Tensor) -> torch.Tensor:
    """||v_i||^2 of every row: dot products (~3x faster than a norm squared on a column-major v of 4000 x 256), in
    bands of 256 rows beyond 2M values, where one call's temporary leaves the cache (one thread, 15,000 x 768:
    11.6 ms in bands, 58 ms in one call, 16 ms as a norm squared)."""
    if v.numel() <= _ROW_SQ_WHOLE or v.device.type != "cpu":
        return torch.linalg.vecdot(v, v, dim=1)
    out = torch.empty(v.shape[0], dtype=v.dtype)
    for lo in range(0, v.shape[0], _ROW_SQ_BAND):
        band = v[lo:lo + _ROW_SQ_BAND]
        out[lo:lo + _ROW_SQ_BAND] = torch.linalg.vecdot(band, band, dim=1)
    return out


def _times(x: torch.Tensor, a: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x a (+ ``bias`` on every row, in the product's own pass), in x's column-major layout when x has it (the
    profile's buffers): BLAS runs as fast, and the residual t - x a is then taken between operands of one layout."""
    if x.stride(0) == 1 and x.shape[1] > 1:
        return (a.T @ x.T).T if bias is None else torch.addmm(bias[:, None], a.T, x.T).T
    return x @ a if bias is None else torch.addmm(bias, x, a)


def fit(gram: torch.Tensor, cross: torch.Tensor, n: int,
        factor: tuple[torch.Tensor, torch.Tensor] | None = None, scratch: bool = False) -> torch.Tensor:
    """argmin_A ||X A - T||^2 from X^T X and X^T T (centred). Columns are scaled to unit norm first (the
    correlation matrix is immune to massive-activation features); Cholesky when every pivot exceeds sqrt(eps),
    else an eigendecomposition with eigenvalues below max(n, d) eps lambda_max dropped (constant columns, and
    columns constant on the training folds, get zero coefficients). ``factor``: (L, s), that Cholesky factor of
    this Gram matrix and its scaling 1 / ||x_k||, when the caller has them (no column constant, every pivot
    above sqrt(eps)): the solve alone. ``scratch``: gram and cross are the caller's temporaries, scaled in place
    (the same arithmetic, two d x d arrays fewer)."""
    if factor is not None:
        chol, s = factor
        return torch.cholesky_solve(cross * s[:, None], chol) * s[:, None]
    diag = gram.diagonal()
    live = diag > 0
    s = torch.where(live, diag.clamp(min=torch.finfo(torch.float64).tiny).rsqrt(), torch.zeros_like(diag))
    gs = gram.mul_(s[:, None]).mul_(s[None, :]) if scratch else gram * s[:, None] * s[None, :]
    gs.diagonal().masked_fill_(~live, 1.0)  # a dead column: unit pivot, zero right-hand side, zero coefficient
    cs = cross.mul_(s[:, None]) if scratch else cross * s[:, None]
    factor, info = torch.linalg.cholesky_ex(gs)
    if int(info) == 0 and float(factor.diagonal().min()) ** 2 > _PIVOT_TOL:
        return torch.cholesky_solve(cs, factor).mul_(s[:, None])
    w, v = torch.linalg.eigh(gs)
    keep = w > w[-1] * max(n, gs.shape[0]) * _EPS
    v = v[:, keep]
    return (v @ ((v.T @ cs) / w[keep, None])) * s[:, None]


def train_means(v: torch.Tensor, plan: FoldPlan) -> torch.Tensor:
    """Column means of the training folds of each fold (k x d), for a column-centred v: -(fold sum) / n_train."""
    return torch.stack([v[lo:hi].sum(0) / -(plan.n - (hi - lo)) for lo, hi in plan.spans()])


def doc_sums(rows: torch.Tensor, plan: FoldPlan) -> torch.Tensor:
    return torch.zeros(plan.num_docs, dtype=rows.dtype, device=rows.device).index_add_(0, plan.doc, rows)


def heldout_energy(v: torch.Tensor, rows: torch.Tensor, means: torch.Tensor, plan: FoldPlan) -> torch.Tensor:
    """Per document, sum over its tokens of ||v_i - m_f||^2 = ||v_i||^2 - 2 v_i.m_f + ||m_f||^2 (m_f: the training
    mean of the token's fold; ``rows``: the ||v_i||^2). v is centred, so m_f is small against the rows and the
    expansion does not cancel; it spares an n x d difference."""
    about = torch.empty_like(rows)
    for f, (lo, hi) in enumerate(plan.spans()):
        m = means[f]
        about[lo:hi] = rows[lo:hi] - 2 * (v[lo:hi] @ m) + m @ m
    return doc_sums(about, plan)


def train_energy(rows: torch.Tensor, means: torch.Tensor, plan: FoldPlan) -> torch.Tensor:
    """Per fold f, sum over the training folds' tokens of ||v_i - m_f||^2 = sum ||v_i||^2 - n_train ||m_f||^2 (m_f
    their mean; ``rows``: the ||v_i||^2 of a column-centred v; ``means``: ``train_means(v)``), a k-vector."""
    folds = torch.stack([rows[lo:hi].sum() for lo, hi in plan.spans()])
    n_train = plan.n - torch.tensor([hi - lo for lo, hi in plan.spans()], dtype=rows.dtype, device=rows.device)
    return (rows.sum() - folds) - n_train * (means * means).sum(1)


@dataclass
class Fits:
    """Per-document held-out residual energies of one target, what each fold fit explains on its own training
    folds (the delete-a-fold in-sample fits), and the chance levels."""
    rss_ho: torch.Tensor  # (documents,)
    explained: torch.Tensor  # (k,) <C_train, A_f>: RSS_(-f) = train_energy(T) - explained
    t_means: torch.Tensor  # training means of the target (k x d_t)
    chance: float
    chance_heldout: float
    rss_in: torch.Tensor | None = None  # (documents,) in-sample residual energies, for a bootstrap in-sample interval
    x_means: torch.Tensor | None = None  # training means of x (k x d)


def count_sketch(d: int, m: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(bucket, sign) of a seeded CountSketch of d columns into m = min(m, d) buckets: a random permutation dealt
    round-robin (so every bucket holds floor or ceil of d / m columns) and a random sign per column."""
    g = torch.Generator().manual_seed(seed)
    bucket = torch.randperm(d, generator=g) % min(m, d)
    sign = torch.randint(0, 2, (d,), generator=g, dtype=torch.float64).mul_(2).sub_(1)
    return bucket, sign


def chance_target(y: torch.Tensor, plan: FoldPlan, cfg: HeldoutConfig) -> torch.Tensor:
    """Y (centred, reordered) sketched to ``chance_columns`` columns (``count_sketch``, seed + 1), rows
    document-shuffled: column b is sum over the columns j of bucket b of sign_j y_j."""
    d = y.shape[1]
    m = min(cfg.chance_columns, d)
    bucket, sign = count_sketch(d, m, cfg.seed + 1)
    # the positive and negative columns of each bucket summed apart (2m rows of Y^T, row-major when Y is stored
    # column-major, as the profile's buffers are): one index_add over Y, no product and no signed copy of it
    sums = torch.zeros(2 * m, y.shape[0], dtype=y.dtype, device=y.device)
    sums.index_add_(0, (bucket + m * (sign < 0)).to(y.device), y.T)
    # the shuffle as a gather of rows of the n x m sketch, read from the transposed view: a row-major copy first
    # costs more than the gather (0.6 against 1.2-5.8 ms at 4500 x 128, 11 against 27 ms at 15000 x 768; one
    # thread), and gathering columns of the m x n sums is slower still
    return sums[:m].sub_(sums[m:]).T.index_select(0, plan.shuffle)


def chance_rss(gram: torch.Tensor, cross: torch.Tensor, energy: float, coef: torch.Tensor,
               mean_x: torch.Tensor | None = None, mean_p: torch.Tensor | None = None, weight: int = 0) -> float:
    """||P - X A||^2 = ||P||^2 - 2 <X^T P, A> + <X^T X A, A> of a thin target P (the chance level's): from the
    products at hand, with no n-row product. A shuffled target is barely explained, so the sum hardly cancels.

    With ``mean_x``, ``mean_p`` and ``weight`` = w, the rows are taken about those means, whose products differ
    from the raw ones (``gram``, ``cross``) by rank-one terms: for a fold f of centred X and P, whose sums are
    minus the training sums (-n_train m_x, -n_train m_p), X_f - m_x has X_f^T X_f + w m_x m_x^T and cross product
    X_f^T P_f + w m_x m_p^T with w = 2 n_train + n_f. So the d x d matrices about the means are never formed:
    <(G + w m_x m_x^T) A, A> = <G A, A> + w ||m_x^T A||^2, <C + w m_x m_p^T, A> = <C, A> + w (m_x^T A) . m_p."""
    gain = float((cross * coef).sum())
    fit_sq = float(((gram @ coef) * coef).sum())
    if mean_x is not None:
        u = mean_x @ coef
        gain += weight * float(u @ mean_p)
        fit_sq += weight * float(u @ u)
    return energy - 2 * gain + fit_sq


def fold_fits(x: torch.Tensor, gram: torch.Tensor, gram_parts: list[torch.Tensor], t: torch.Tensor,
              cross: torch.Tensor, cross_parts: list[torch.Tensor], chance_y: torch.Tensor, plan: FoldPlan,
              insample_rows: bool = False, factor: tuple[torch.Tensor, torch.Tensor] | None = None) -> Fits:
    """Fold fits of the centred, fold-ordered target t (and of the chance target) on x.

    x, t: column-centred over all n tokens, rows in fold order; gram, cross: X^T X and X^T T with their per-fold
    parts. One solve per fold with [C_train | C_chance_train] as right-hand side, and per fold one product X_f A_f
    for the held-out residuals of T. Fit f is also the in-sample fit of the data without fold f: what it explains
    there, <C_train, A_f>, is the jackknife's. With ``insample_rows``, the in-sample residuals of every token too
    (the product is then X_f [A | A_f]). The chance target's residual energies come from its (fold) cross products
    and the Gram matrices instead (``chance_rss``): it needs no per-document energies, only sums. ``factor``: the
    Cholesky factor of the scaled X^T X, if at hand (``fit``)."""
    n, dt = x.shape[0], t.shape[1]
    p_cross, p_parts = fold_cross(x, chance_y, plan)
    if insample_rows:  # in-sample maps of T and of the chance target
        coef = fit(gram, torch.cat([cross, p_cross], 1), n, factor)
        coef_p = coef[:, dt:]
    else:
        coef_p = fit(gram, p_cross, n, factor)
    x_means, t_means, p_means = (train_means(v, plan) for v in (x, t, chance_y))
    rows_in = torch.empty(n, dtype=x.dtype, device=x.device) if insample_rows else None
    rows_ho = torch.empty(n, dtype=x.dtype, device=x.device)
    explained = torch.empty(plan.folds, dtype=x.dtype, device=x.device)
    p_energy = float(torch.linalg.vector_norm(chance_y)) ** 2
    chance_in = chance_rss(gram, p_cross, p_energy, coef_p)
    chance_ho = chance_tot = 0.0
    for f, (lo, hi) in enumerate(plan.spans()):
        n_f = hi - lo
        n_tr, mx = n - n_f, x_means[f]
        g_tr = torch.sub(gram, gram_parts[f]).addr_(mx, mx, alpha=-n_tr)
        c_tr = torch.sub(cross, cross_parts[f]).addr_(mx, t_means[f], alpha=-n_tr)
        coef_f = fit(g_tr, torch.cat([c_tr, torch.sub(p_cross, p_parts[f]).addr_(mx, p_means[f], alpha=-n_tr)], 1),
                     n_tr, scratch=True)
        a_f = coef_f[:, :dt]
        explained[f] = (c_tr * a_f).sum()
        # intercepts: the in-sample fit has none (everything centred); fold f's is m_f(T) - m_f(X) A_f
        intercept = t_means[f] - mx @ a_f
        xf, tf = x[lo:hi], t[lo:hi]
        if insample_rows:
            pred = _times(xf, torch.cat([coef[:, :dt], a_f], 1))  # n_f x 2 d_t, turned into residuals in place
            rows_in[lo:hi] = row_sq(pred[:, :dt].sub_(tf))
            pred = pred[:, dt:].add_(intercept)
        else:
            pred = _times(xf, a_f, intercept)
        rows_ho[lo:hi] = row_sq(pred.sub_(tf))
        del pred
        # the chance target's fold f about the training means: sums of X_f - m, P_f - m_p and their products
        mp = p_means[f]
        energy = float(torch.linalg.vector_norm(chance_y[lo:hi])) ** 2 + (2 * n_tr + n_f) * float(mp @ mp)
        chance_ho += chance_rss(gram_parts[f], p_parts[f], energy, coef_f[:, dt:], mx, mp, 2 * n_tr + n_f)
        chance_tot += energy
    return Fits(doc_sums(rows_ho, plan), explained, t_means, 1.0 - chance_in / p_energy, 1.0 - chance_ho / chance_tot,
                None if rows_in is None else doc_sums(rows_in, plan), x_means)


def bootstrap_draws(pairs: list[tuple[torch.Tensor, torch.Tensor]], cfg: HeldoutConfig,
                    num_docs: int) -> torch.Tensor:
    """1 - sum(rss) / sum(tot) for each (rss, tot) per-document pair (rows) over ``bootstrap`` resamples of the
    documents (columns; the same seeded resamples for every pair and every call with as many documents)."""
    weights = resample_counts(cfg.seed + 2, cfg.bootstrap, num_docs)
    return torch.stack([1.0 - (weights @ rss.cpu()) / (weights @ tot.cpu()) for rss, tot in pairs])


@functools.lru_cache(maxsize=8)
def resample_counts(seed: int, resamples: int, num_docs: int) -> torch.Tensor:
    """How often each document is drawn in each resample (resamples x documents, float64; seeded). The same for
    every pair of a profile, so it is drawn once: read only."""
    g = torch.Generator().manual_seed(seed)
    picks = torch.randint(num_docs, (resamples, num_docs), generator=g)
    return torch.zeros(resamples, num_docs, dtype=torch.float64).scatter_add_(
        1, picks, torch.ones(resamples, num_docs, dtype=torch.float64))


@dataclass
class Target:
    """A target whose energy is the denominator of a pair of scores (in-sample and held-out): the column-centred,
    fold-ordered v (Y, or Z = Y - X for the scores without residual), its ||v_i||^2 and training means, and its
    in-sample score (the profile's, or ``linearity_score``'s computation)."""
    insample: float
    v: torch.Tensor
    rows: torch.Tensor
    means: torch.Tensor


def score_intervals(plan: FoldPlan, cfg: HeldoutConfig, fits: Fits, t_rows: torch.Tensor,
                    targets: list[Target]) -> tuple[list[float], list[tuple[float, float]], dict]:
    """(held-out score of each target, the intervals of the in-sample scores of each target then of the held-out
    ones, their replicates in the order of the intervals as ``HeldoutStats.draws`` values). ``t_rows``: the
    ||t_i||^2 of the regressed target (its residuals are those of every target)."""
    held = [heldout_energy(tg.v, tg.rows, tg.means, plan) for tg in targets]
    rss_ho = float(fits.rss_ho.sum())
    heldout = [1.0 - rss_ho / float(h.sum()) for h in held]
    pairs = [(fits.rss_ho, h) for h in held]
    boot_in = cfg.insample_interval == "bootstrap"
    if boot_in:
        pairs = [(fits.rss_in, doc_sums(tg.rows, plan)) for tg in targets] + pairs
    stacked = bootstrap_draws(pairs, cfg, plan.num_docs)
    intervals = percentile_intervals(stacked, cfg.level)
    draws = list(stacked)
    if boot_in:
        reps = [("bootstrap", d) for d in draws[:len(targets)]]
        ci = intervals[:len(targets)]
        draws, intervals = draws[len(targets):], intervals[len(targets):]
    else:  # the in-sample scores of the data without each fold, from fit f
        rss_train = train_energy(t_rows, fits.t_means, plan) - fits.explained
        reps = [("jackknife", 1.0 - rss_train / train_energy(tg.rows, tg.means, plan)) for tg in targets]
        ci = [jackknife_interval(tg.insample, r, cfg.level) for tg, (_, r) in zip(targets, reps)]
    ci += intervals
    return heldout, ci, [*reps, *(("bootstrap", d) for d in draws)]


def pair_heldout(plan: FoldPlan, cfg: HeldoutConfig, x: torch.Tensor, gram: torch.Tensor,
                 gram_parts: list[torch.Tensor], t: torch.Tensor, cross: torch.Tensor,
                 cross_parts: list[torch.Tensor], y: torch.Tensor, z: torch.Tensor, use_z: bool,
                 z_rows: torch.Tensor, insample: tuple[float, float],
                 factor: tuple[torch.Tensor, torch.Tensor] | None = None) -> HeldoutStats:
    """HeldoutStats of the pair (X, Y) of a profile, whose regressed target t is Z = Y - X (``use_z``) or Y;
    ``insample``: the pair's in-sample scores with and without residual; ``factor``: as ``fit``'s, of X^T X."""
    fits = fold_fits(x, gram, gram_parts, t, cross, cross_parts, chance_target(y, plan, cfg), plan,
                     insample_rows=cfg.insample_interval == "bootstrap", factor=factor)
    t_means = fits.t_means
    # the other target's training means from the two at hand: Y = Z + X, so m(Y) = m(Z) + m(X) (fold sums are
    # linear; this spares a pass over n x d)
    other_means = t_means + fits.x_means if use_z else t_means - fits.x_means
    y_means, z_means = (other_means, t_means) if use_z else (t_means, other_means)
    y_rows = row_sq(y)
    targets = [Target(insample[0], y, y_rows, y_means), Target(insample[1], z, z_rows, z_means)]
    heldout, ci, reps = score_intervals(plan, cfg, fits, z_rows if use_z else y_rows, targets)
    return HeldoutStats(
        heldout=heldout[0], heldout_wo_res=heldout[1],
        linearity_lo=ci[0][0], linearity_hi=ci[0][1], linearity_wo_res_lo=ci[1][0], linearity_wo_res_hi=ci[1][1],
        heldout_lo=ci[2][0], heldout_hi=ci[2][1], heldout_wo_res_lo=ci[3][0], heldout_wo_res_hi=ci[3][1],
        chance=fits.chance, chance_heldout=fits.chance_heldout, level=cfg.level, draws=dict(zip(SCORES, reps)))
