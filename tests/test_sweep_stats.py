"""sweep.stats against independent references: numpy/scipy formulas, scipy.stats.bootstrap, cases with known answers."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as st

from sweep.stats import (
    Metric,
    bootstrap_difference,
    bootstrap_replicates,
    combine,
    holm,
    macro_f1_metric,
    mean_metric,
    summarize,
    welch,
)


def test_summary_is_mean_std_and_t_interval():
    x = [0.61, 0.58, 0.66, 0.60]
    s = summarize(x)
    half = st.t.ppf(0.975, 3) * np.std(x, ddof=1) / 2
    assert s.n == 4 and s.mean == pytest.approx(np.mean(x)) and s.std == pytest.approx(np.std(x, ddof=1))
    assert s.ci95 == pytest.approx((np.mean(x) - half, np.mean(x) + half))
    one = summarize([0.5])
    assert (one.n, one.mean, one.std, one.ci95) == (1, 0.5, None, None)
    assert summarize([]) is None and summarize([None]) is None


def test_welch_matches_scipy_and_needs_two_seeds():
    a, b = [3.1, 3.3, 3.2], [3.6, 3.5, 3.9]
    d = welch(a, b)
    ref = st.ttest_ind(a, b, equal_var=False)
    assert d.delta == pytest.approx(np.mean(a) - np.mean(b)) and d.p == pytest.approx(ref.pvalue)
    assert d.ci95 == pytest.approx(tuple(ref.confidence_interval(0.95)))
    single = welch([3.0], [3.5, 3.6])
    assert single.p is None and single.ci95 is None and single.test.startswith("none")


def _acc(rng, n, p):
    return (rng.random(n) < p).astype(float)


def _diff(a_docs, b_docs, n_boot=4000, seed=0):
    """One column, one seed per model: the bootstrap difference a - b."""
    rng = np.random.default_rng(seed)
    metrics = [[mean_metric(a_docs), mean_metric(b_docs)]]
    reps = bootstrap_replicates(metrics, n_boot, rng)
    point = np.array([[m.score()[0] for m in metrics[0]]])  # [1 task col, models] -> reshape below
    pa, pb = point[:, :1].T, point[:, 1:].T
    return bootstrap_difference(pa, pb, reps[:, :1, :], reps[:, 1:, :], rng)[0]


def test_identical_scores_mean_no_difference():
    docs = _acc(np.random.default_rng(1), 300, 0.6)
    d = _diff(docs, docs.copy())
    assert d.delta == 0 and d.p == 1.0 and d.ci95 == (0.0, 0.0)


def test_clearly_better_model_is_significant():
    rng = np.random.default_rng(2)
    d = _diff(_acc(rng, 500, 0.8), _acc(rng, 500, 0.5))
    assert d.delta > 0.2 and d.p < 0.01 and d.ci95[0] > 0.15


def test_null_rejection_rate_is_about_five_percent():
    """Two models of equal accuracy, paired on 200 documents: p < 0.05 in about 5 % of 300 repetitions."""
    rng = np.random.default_rng(3)
    rejections = 0
    for rep in range(300):
        truth = rng.random(200) < 0.5
        a = np.where(rng.random(200) < 0.7, truth, ~truth).astype(float)  # both 70 % accurate, errors independent
        b = np.where(rng.random(200) < 0.7, truth, ~truth).astype(float)
        rejections += _diff(a, b, n_boot=400, seed=rep).p < 0.05
    assert 0.02 <= rejections / 300 <= 0.09, rejections


def test_interval_matches_scipy_paired_bootstrap():
    rng = np.random.default_rng(4)
    truth = rng.random(400) < 0.5
    a = np.where(rng.random(400) < 0.66, truth, ~truth).astype(float)
    b = np.where(rng.random(400) < 0.60, truth, ~truth).astype(float)
    ours = _diff(a, b, n_boot=20000, seed=5)
    ref = st.bootstrap((a, b), lambda x, y, axis=-1: x.mean(axis=axis) - y.mean(axis=axis), paired=True,
                       vectorized=True, n_resamples=20000, method="percentile", random_state=6)
    assert ours.delta == pytest.approx(a.mean() - b.mean())
    assert ours.ci95[0] == pytest.approx(ref.confidence_interval.low, abs=0.006)
    assert ours.ci95[1] == pytest.approx(ref.confidence_interval.high, abs=0.006)
    # and the width is the normal theory one for a paired mean difference
    se = np.std(a - b) / np.sqrt(a.size)
    assert ours.ci95[1] - ours.ci95[0] == pytest.approx(2 * 1.96 * se, rel=0.06)


def test_macro_f1_and_combined_columns():
    rng = np.random.default_rng(7)
    gold, pred = rng.integers(0, 3, 56), rng.integers(0, 2, 56)  # class 2 never predicted
    ref = []
    for c in range(3):
        tp = np.sum((pred == c) & (gold == c))
        fp = np.sum((pred == c) & (gold != c))
        fn = np.sum((pred != c) & (gold == c))
        ref.append(2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else 0.0)
    m = combine([mean_metric((pred == gold).astype(float)), macro_f1_metric(pred, gold, 3)])
    assert m.score() == pytest.approx([np.mean(pred == gold), np.mean(ref)])
    reps = bootstrap_replicates([[m]], 50, np.random.default_rng(0))
    assert reps.shape == (50, 1, 2) and np.all((reps >= 0) & (reps <= 1))


def test_seeds_are_resampled_where_there_are_several():
    """Two seeds that disagree widen the interval beyond the one that resamples documents only."""
    rng = np.random.default_rng(8)
    truth = rng.random(300) < 0.5

    def model(acc):
        return mean_metric(np.where(rng.random(300) < acc, truth, ~truth).astype(float))

    models = [model(0.60), model(0.75), model(0.66), model(0.68)]  # A: seeds far apart; B: close
    reps = bootstrap_replicates([models], 4000, np.random.default_rng(9))
    point = np.stack([m.score() for m in models])
    two = bootstrap_difference(point[:2], point[2:], reps[:, :2], reps[:, 2:], np.random.default_rng(10))[0]
    docs = bootstrap_difference(point[:2], point[2:], reps[:, :2], reps[:, 2:], np.random.default_rng(10),
                                resample_seeds=False)[0]
    assert two.test == "bootstrap (documents, seeds)" and docs.test == "bootstrap (documents)"
    assert two.delta == docs.delta == pytest.approx(point[:2, 0].mean() - point[2:, 0].mean())
    assert (two.ci95[1] - two.ci95[0]) > 1.3 * (docs.ci95[1] - docs.ci95[0])


def test_metric_is_a_function_of_document_sums():
    m = Metric(np.array([[1.0], [0.0], [1.0]]), lambda s, n: s / n)
    assert m.score() == pytest.approx([2 / 3])


def test_holm():
    assert holm([0.01, 0.04, None, 0.03]) == pytest.approx([0.03, 0.06, None, 0.06])
