"""Statistics for ablation tables: a difference between two variants asks two questions, and each gets its own test.

A variant is a training recipe run with several seeds; every run is scored on the same benchmark documents.

1. **Is the recipe different?** (``recipe_difference``; bold in the tables.) The seeds are the units: each run's
   score over all documents is one observation, so the documents are nested inside the seeds and their sampling
   noise is already part of the seed-to-seed spread. Student's two-sample t-test on the per-seed scores. Under the
   null hypothesis that the recipe changes nothing, the seeds of both variants come from one distribution, so one
   pooled variance with ``n_a + n_b − 2`` degrees of freedom is the exact normal-theory test: it is the F-test of
   the top factor in a balanced nested (seeds within variants) analysis of variance. Welch's version is not used:
   with equal variances its Satterthwaite degrees of freedom fall to 1–2 at two seeds and it rejects 2 % of the
   time, not 5 % (bench/ablation_calibration.py). The test rests on the per-seed scores being roughly normal
   (a mean over many documents is); no distribution-free test can do better at few seeds: an exact permutation
   test over the seed labels cannot go below ``p = 2 / C(n_a + n_b, n_a)`` (1/3 at 2 + 2 seeds, 1/10 at 3 + 3),
   ``min_permutation_p``.

   The null hypothesis includes equal spreads, so a recipe that only shrinks the seed-to-seed spread can be
   significant. Where p < alpha, Welch's p for the means alone (Welch 1947) is reported beside it (``welch_p``):
   where that one is not below alpha, the evidence is for "the recipe changes the scores", not for the size of the
   mean difference.

   Defined results where the t statistic is not: fewer than 2 seeds on a side gives no test (``p`` None; the seed
   spread of a recipe cannot be estimated from one run). No spread and no difference (every seed of both variants
   has the same value: constant answers, or identical scores) gives ``p = 1``. No spread within either variant but
   a difference gives the exact permutation test over seed labels (scipy), whose p is its floor above, never 0.

2. **Are these trained models different on these documents?** (``model_difference``; not bold.) Conditional on
   the seeds that were trained: a paired bootstrap over documents. The same documents are scored for every model,
   so one replicate draws one multiset of documents per task (with replacement) and rescores every model on it;
   the pairing removes the document-to-document variance that the models share. The difference is the mean over
   A's seeds minus the mean over B's, and the seeds are held fixed. Two-sided p of "no difference", from the
   replicates shifted to the null: ``p = (1 + #{|δ* − δ̂| ≥ |δ̂|}) / (B + 1)``; the interval is the 2.5/97.5
   percentiles of δ*. Identical per-document scores give δ* = δ̂ = 0 for every replicate, hence p = 1; models
   that differ the same way on every document give p = 1/(B + 1), the bootstrap's resolution, not 0.

3. **Planning** (``power``, ``detectable``, ``seeds_needed``): the power of the recipe test for a true difference
   δ is that of Student's t with noncentrality ``δ / (σ √(1/n_a + 1/n_b))``, where σ is the seed-to-seed standard
   deviation (``pooled_sd``: pooled over every variant of the sweep, which is the best estimate the sweep has).

**Spread over seeds**: ``core.stats.summarize`` (mean, sample standard deviation, 95 % Student-t interval; None
where n = 1 gives no estimate).

A benchmark score is ``finish(weights @ features)``: a function of per-document sums, so a bootstrap replicate is
one matrix product (``Metric``). Accuracy, ReCoRD F1/EM: features = the per-document scores, finish = divide by the
count. CB's F1 (mean over classes of one-vs-rest F1): features = per-class tp/fp/fn indicators.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import optimize, special
from scipy import stats as st

ALPHA = 0.05
POWER = 0.8


@dataclass
class Difference:
    """Variant minus baseline, with its 95 % interval and two-sided p-value (None where no test applies).
    ``min_p``: the smallest p this test could have given on data of this shape (0 for the t-test and the
    bootstrap's 1/(B+1) aside; the permutation floor; 1 where the result is p = 1 by definition)."""
    delta: float
    ci95: tuple[float, float] | None
    p: float | None
    test: str
    min_p: float | None = None
    welch_p: float | None = None  # beside a significant recipe test: Welch's p for the means alone

    def to_dict(self) -> dict:
        return {"delta": self.delta, "ci95": list(self.ci95) if self.ci95 else None, "p": self.p, "test": self.test,
                "min_p": self.min_p, "welch_p": self.welch_p}


# -- the recipe question: seeds are the units --------------------------------------------------------------------

def _constant(x: np.ndarray) -> bool:
    """No spread: equal up to float rounding (a score recomputed by another path may differ in the last bit)."""
    return x.size > 0 and float(np.ptp(x)) <= 1e-12 * max(1.0, float(np.abs(x).max()))


def min_permutation_p(n_a: int, n_b: int) -> float:
    """Smallest two-sided p of an exact permutation test of the difference of means over ``n_a + n_b`` seed labels:
    the observed split is the most extreme of the C(n_a + n_b, n_a) splits (and, for n_a = n_b, so is its mirror)."""
    return min(1.0, 2 / math.comb(n_a + n_b, n_a))


def recipe_difference(a, b) -> Difference:
    """mean(a) − mean(b) over per-seed values, tested with seeds as the units (see the module docstring)."""
    a = np.asarray([v for v in a if v is not None and np.isfinite(v)], dtype=np.float64)
    b = np.asarray([v for v in b if v is not None and np.isfinite(v)], dtype=np.float64)
    delta = float(a.mean() - b.mean())
    if a.size < 2 or b.size < 2:
        return Difference(delta, None, None, f"none: {a.size} vs {b.size} seeds (the seed spread needs 2 each)")
    if _constant(np.concatenate([a, b])):
        return Difference(0.0, (0.0, 0.0), 1.0, "t (no spread, no difference)", 1.0)
    if _constant(a) and _constant(b):  # every seed agrees within each variant: t is undefined (0 / 0 · ∞)
        res = st.permutation_test((a, b), lambda x, y, axis: x.mean(axis=axis) - y.mean(axis=axis),
                                  permutation_type="independent", vectorized=True, n_resamples=np.inf,
                                  alternative="two-sided")
        return Difference(delta, None, float(res.pvalue), "permutation (no spread within either variant)",
                          min_permutation_p(a.size, b.size))
    # Student's t by hand: the same numbers as scipy.stats.ttest_ind(a, b) (the tests check it) at a twentieth of
    # the cost, which the calibration bench's 100,000 simulated sweeps need
    df = a.size + b.size - 2
    pooled = (float(((a - a.mean()) ** 2).sum()) + float(((b - b.mean()) ** 2).sum())) / df
    se = math.sqrt(pooled * (1 / a.size + 1 / b.size))
    p = 2 * float(special.stdtr(df, -abs(delta) / se))
    half = float(special.stdtrit(df, 0.975)) * se
    if p >= ALPHA:
        return Difference(delta, (delta - half, delta + half), p, "t", 0.0)
    # Significant: is it so for the means alone, without the equal-spread part of the null? Welch's t with the
    # Welch-Satterthwaite degrees of freedom, by hand for the same reason (checked against scipy in the tests).
    va, vb = float(a.var(ddof=1)) / a.size, float(b.var(ddof=1)) / b.size
    df_w = (va + vb) ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1))
    welch = 2 * float(special.stdtr(df_w, -abs(delta) / math.sqrt(va + vb)))
    return Difference(delta, (delta - half, delta + half), p, "t", 0.0, welch)


def pooled_sd(groups) -> tuple[float | None, int]:
    """(seed-to-seed standard deviation pooled over groups, its degrees of freedom Σ(n_i − 1)); groups with one
    value contribute nothing; (None, 0) without any group of two."""
    ss, df = 0.0, 0
    for g in groups:
        x = np.asarray([v for v in g if v is not None and np.isfinite(v)], dtype=np.float64)
        if x.size >= 2:
            ss += float(((x - x.mean()) ** 2).sum())
            df += x.size - 1
    return (math.sqrt(ss / df), df) if df else (None, 0)


def power(delta: float, sd: float, n_a: int, n_b: int, alpha: float = ALPHA) -> float:
    """Probability that the recipe test (Student's t, two-sided) rejects at ``alpha`` when the true difference is
    ``delta`` and the seed standard deviation is ``sd``."""
    df = n_a + n_b - 2
    nc = abs(delta) / (sd * math.sqrt(1 / n_a + 1 / n_b))
    t = st.t.ppf(1 - alpha / 2, df)
    return float(st.nct.sf(t, df, nc) + st.nct.cdf(-t, df, nc))


def detectable(sd: float, n_a: int, n_b: int, alpha: float = ALPHA, target: float = POWER) -> float:
    """The smallest true difference the recipe test finds with probability ``target`` (n_a, n_b ≥ 2)."""
    hi = sd
    while power(hi, sd, n_a, n_b, alpha) < target:
        hi *= 2
    return float(optimize.brentq(lambda d: power(d, sd, n_a, n_b, alpha) - target, 0.0, hi, xtol=1e-12 * hi))


def seeds_needed(delta: float, sd: float, alpha: float = ALPHA, target: float = POWER,
                 most: int = 10_000) -> int | None:
    """Seeds per variant (the same for both) for the recipe test to find ``delta`` with probability ``target``
    (sd > 0); None beyond ``most``."""
    z = st.norm.ppf(1 - alpha / 2) + st.norm.ppf(target)
    n = max(2, int(2 * (z * sd / abs(delta)) ** 2) - 2)  # the normal approximation, from just below
    while power(delta, sd, n, n, alpha) < target:
        n += 1
        if n > most:
            return None
    return n


# -- benchmark metrics as functions of per-document sums ---------------------------------------------------------

@dataclass
class Metric:
    """A score over documents: ``finish(w @ features)`` for document weights w (all ones = the plain score;
    bootstrap counts = a replicate). ``finish`` maps sums [..., k] to scores [..., c] (c columns of one task)."""
    features: np.ndarray  # [n_docs, k]
    finish: Callable[[np.ndarray, float], np.ndarray]  # (sums [..., k], number of documents) -> [..., c]

    def score(self) -> np.ndarray:
        return self.finish(self.features.sum(axis=0), float(len(self.features)))


def mean_metric(per_doc: np.ndarray) -> Metric:
    """Columns that are plain means of per-document scores (accuracy, ReCoRD F1 and EM): per_doc [n_docs, c]."""
    per_doc = np.asarray(per_doc, dtype=np.float64)
    per_doc = per_doc[:, None] if per_doc.ndim == 1 else per_doc
    return Metric(per_doc, lambda sums, n: sums / n)


def macro_f1_metric(pred, gold, num_classes: int) -> Metric:
    """Mean over classes of the one-vs-rest F1 = 2tp / (2tp + fp + fn), 0 for a class neither predicted nor gold
    (CB's f1); features: the tp, fp, fn indicators of each class."""
    pred, gold = np.asarray(pred), np.asarray(gold)
    cols = []
    for c in range(num_classes):
        cols += [(pred == c) & (gold == c), (pred == c) & (gold != c), (pred != c) & (gold == c)]

    def finish(sums, n):
        tp, fp, fn = sums[..., 0::3], sums[..., 1::3], sums[..., 2::3]
        denom = 2 * tp + fp + fn
        return np.divide(2 * tp, denom, out=np.zeros_like(denom), where=denom > 0).mean(axis=-1, keepdims=True)

    return Metric(np.stack(cols, axis=1).astype(np.float64), finish)


def combine(parts: list[Metric]) -> Metric:
    """Several metrics of one task's documents as one (their columns side by side), so that a replicate resamples
    the documents once for all of them."""
    edges = np.cumsum([0, *(p.features.shape[1] for p in parts)])

    def finish(sums, n):
        return np.concatenate([p.finish(sums[..., a:b], n) for p, a, b in zip(parts, edges[:-1], edges[1:])], axis=-1)

    return Metric(np.concatenate([p.features for p in parts], axis=1), finish)


def bootstrap_replicates(tasks: list[list[Metric]], n_boot: int, rng: np.random.Generator,
                         chunk_elems: int = 4_000_000) -> np.ndarray:
    """Scores of every model on the same resampled documents: ``tasks[t][m]`` is model m's metric on task t (the
    same documents, in the same order, for every m). Returns [n_boot, models, columns], the columns of all tasks
    side by side (in task order)."""
    out = []
    for models in tasks:
        n_docs = models[0].features.shape[0]
        if any(m.features.shape[0] != n_docs for m in models):
            raise ValueError("paired bootstrap: the models were scored on different numbers of documents")
        feats = np.concatenate([m.features for m in models], axis=1)  # [n_docs, sum k]
        edges = np.cumsum([0, *(m.features.shape[1] for m in models)])
        per_chunk = max(1, chunk_elems // max(n_docs, 1))
        task_reps = []
        for start in range(0, n_boot, per_chunk):
            b = min(per_chunk, n_boot - start)
            draws = rng.integers(0, n_docs, size=(b, n_docs))
            counts = np.bincount((draws + n_docs * np.arange(b)[:, None]).ravel(), minlength=b * n_docs)
            sums = counts.reshape(b, n_docs).astype(np.float64) @ feats  # [b, sum k]
            task_reps.append(np.stack([m.finish(sums[:, lo:hi], float(n_docs))
                                       for m, lo, hi in zip(models, edges[:-1], edges[1:])], axis=1))
        out.append(np.concatenate(task_reps, axis=0))  # [n_boot, models, c_t]
    return np.concatenate(out, axis=2)


# -- the model question: these seeds, these documents --------------------------------------------------------------

def model_difference(point_a: np.ndarray, point_b: np.ndarray, reps_a: np.ndarray,
                     reps_b: np.ndarray) -> list[Difference]:
    """Per column: mean over A's seeds minus mean over B's, conditional on the seeds. ``point_*`` [seeds, columns]
    are the plain scores, ``reps_*`` [n_boot, seeds, columns] their replicates from one ``bootstrap_replicates``
    call (so documents are paired)."""
    delta = point_a.mean(axis=0) - point_b.mean(axis=0)
    boot = reps_a.mean(axis=1) - reps_b.mean(axis=1)  # [n_boot, columns]
    out = []
    for c in range(delta.shape[0]):
        d = boot[:, c]
        p = (1 + np.count_nonzero(np.abs(d - delta[c]) >= abs(delta[c]) - 1e-12)) / (d.size + 1)
        lo, hi = np.percentile(d, [2.5, 97.5])
        out.append(Difference(float(delta[c]), (float(lo), float(hi)), float(min(p, 1.0)), "bootstrap (documents)",
                              1 / (d.size + 1)))
    return out


def holm(pvalues: list[float | None]) -> list[float | None]:
    """Holm–Bonferroni adjusted p-values (family = the tests given; None stays None)."""
    idx = [i for i, p in enumerate(pvalues) if p is not None]
    order = sorted(idx, key=lambda i: pvalues[i])
    adjusted: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted
