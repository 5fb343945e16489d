"""Statistics for ablation tables: spread over seeds, Welch's test, and a paired bootstrap over benchmark documents
(and over seeds).

- **Spread over seeds** (``summarize``): mean, sample standard deviation (ddof 1) and the 95 % Student-t interval
  ``mean ± t(0.975, n−1) · std / √n``. With n = 1 there is no spread and no interval.
- **Welch's t-test** (``welch``): for a scalar per run (validation loss, linearity), the difference of means
  between two variants with the Welch–Satterthwaite interval; needs n ≥ 2 on both sides.
- **Paired hierarchical bootstrap** (``bootstrap_replicates`` + ``bootstrap_difference``): the same documents are
  scored for every model, so one replicate draws one multiset of documents per task (with replacement) and scores
  every model on it — the pairing removes the document-to-document variance that two models share. Where a
  variant has several seeds, each replicate also draws that variant's seeds with replacement (independently for
  the two variants: seed k of one variant is not a matched pair of seed k of another) and averages them, so the
  interval covers training noise as well as the finite test set. Two-sided p-value of "no difference", from the
  replicates shifted to the null: ``p = (1 + #{|δ* − δ̂| ≥ |δ̂|}) / (B + 1)``; the interval is the 2.5/97.5
  percentiles of δ*. Identical per-document scores give δ* = δ̂ = 0 for every replicate, hence p = 1.

A benchmark score is ``finish(weights @ features)``: a function of per-document sums, so a replicate is one matrix
product (``Metric``). Accuracy, ReCoRD F1/EM: features = the per-document scores, finish = divide by the count.
CB's F1 (mean over classes of one-vs-rest F1): features = per-class tp/fp/fn indicators.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import stats as st


@dataclass
class Summary:
    n: int
    mean: float
    std: float | None  # None for n = 1
    ci95: tuple[float, float] | None

    def to_dict(self) -> dict:
        return {"n": self.n, "mean": self.mean, "std": self.std, "ci95": list(self.ci95) if self.ci95 else None}


def summarize(values) -> Summary | None:
    x = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if x.size == 0:
        return None
    if x.size == 1:
        return Summary(1, float(x[0]), None, None)
    std = float(x.std(ddof=1))
    half = float(st.t.ppf(0.975, x.size - 1)) * std / np.sqrt(x.size)
    return Summary(int(x.size), float(x.mean()), std, (float(x.mean() - half), float(x.mean() + half)))


@dataclass
class Difference:
    """Variant minus baseline, with its 95 % interval and two-sided p-value (None where no test applies)."""
    delta: float
    ci95: tuple[float, float] | None
    p: float | None
    test: str  # "bootstrap (documents, seeds)", "bootstrap (documents)", "welch", or "none: <why>"

    def to_dict(self) -> dict:
        return {"delta": self.delta, "ci95": list(self.ci95) if self.ci95 else None, "p": self.p, "test": self.test}


def welch(a, b) -> Difference:
    """mean(a) − mean(b) with Welch's t-test over seeds."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    delta = float(a.mean() - b.mean())
    if a.size < 2 or b.size < 2:
        return Difference(delta, None, None, f"none: n = {a.size} vs {b.size} seeds (a test over seeds needs 2 each)")
    if a.std(ddof=1) == 0 and b.std(ddof=1) == 0:  # no spread at all: the t statistic is undefined
        return Difference(delta, (delta, delta), 1.0 if delta == 0 else 0.0, "welch (no spread)")
    res = st.ttest_ind(a, b, equal_var=False)
    ci = res.confidence_interval(0.95)
    return Difference(delta, (float(ci.low), float(ci.high)), float(res.pvalue), "welch")


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


def seed_means(reps: np.ndarray, rng: np.random.Generator, resample: bool) -> np.ndarray:
    """[n_boot, seeds, columns] -> [n_boot, columns]: the mean over seeds, drawn with replacement if ``resample``."""
    if not resample or reps.shape[1] == 1:
        return reps.mean(axis=1)
    idx = rng.integers(0, reps.shape[1], size=reps.shape[:2])
    return np.take_along_axis(reps, idx[:, :, None], axis=1).mean(axis=1)


def bootstrap_difference(point_a: np.ndarray, point_b: np.ndarray, reps_a: np.ndarray, reps_b: np.ndarray,
                         rng: np.random.Generator, resample_seeds: bool = True) -> list[Difference]:
    """Per column: mean over A's seeds minus mean over B's. ``point_*`` [seeds, columns] are the plain scores,
    ``reps_*`` [n_boot, seeds, columns] their replicates from one ``bootstrap_replicates`` call (so documents are
    paired); seeds are resampled where there are several (unless ``resample_seeds`` is False)."""
    delta = point_a.mean(axis=0) - point_b.mean(axis=0)
    boot = seed_means(reps_a, rng, resample_seeds) - seed_means(reps_b, rng, resample_seeds)  # [n_boot, columns]
    seeds = resample_seeds and (reps_a.shape[1] > 1 or reps_b.shape[1] > 1)
    test = "bootstrap (documents, seeds)" if seeds else "bootstrap (documents)"
    out = []
    for c in range(delta.shape[0]):
        d = boot[:, c]
        p = (1 + np.count_nonzero(np.abs(d - delta[c]) >= abs(delta[c]) - 1e-12)) / (d.size + 1)
        lo, hi = np.percentile(d, [2.5, 97.5])
        out.append(Difference(float(delta[c]), (float(lo), float(hi)), float(min(p, 1.0)), test))
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
