"""sweep.stats against independent references: scipy and scikit-learn, enumeration, textbook power tables, cases
with known answers, and a seeded simulation of sweeps with no effect (bench/ablation_calibration.py at scale)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats as st
from sklearn.metrics import f1_score

from bench.ablation_calibration import rejection_rate, simulate
from core.stats import summarize
from sweep.stats import (
    bootstrap_replicates,
    combine,
    detectable,
    holm,
    macro_f1_metric,
    mean_metric,
    min_permutation_p,
    model_difference,
    pooled_sd,
    power,
    recipe_difference,
    seeds_needed,
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


# -- the recipe question -------------------------------------------------------------------------------------------

def test_recipe_test_is_students_t_and_the_nested_anova_f_test():
    a, b = [3.1, 3.3, 3.2], [3.6, 3.5, 3.9]
    d = recipe_difference(a, b)
    ref = st.ttest_ind(a, b, equal_var=True)
    assert d.test == "t" and d.delta == pytest.approx(np.mean(a) - np.mean(b)) and d.p == pytest.approx(ref.pvalue)
    assert d.ci95 == pytest.approx(tuple(ref.confidence_interval(0.95)))
    # the F-test of the variant factor, seeds as the error term: one-way ANOVA of the per-seed values
    assert d.p == pytest.approx(st.f_oneway(a, b).pvalue)


def test_a_significant_recipe_test_has_welchs_p_for_the_means_beside_it():
    """Losses of a regularized variant that barely move between seeds against a baseline that does: Student's p
    tests "no change at all", spread included; Welch's (beside it, scipy's value) the means alone."""
    for a, b in (([4.3754, 4.3762], [4.598, 4.668]), ([3.1, 3.3, 3.2], [3.6, 3.5, 3.9]), ([1.0, 1.0], [1.2, 1.3])):
        d = recipe_difference(a, b)
        assert d.test == "t" and d.p == pytest.approx(st.ttest_ind(a, b).pvalue) and d.p < 0.05
        with np.errstate(all="ignore"):
            assert d.welch_p == pytest.approx(st.ttest_ind(a, b, equal_var=False).pvalue)
    assert recipe_difference([4.3754, 4.3762], [4.598, 4.668]).welch_p > 0.05  # significant only with the spreads
    assert recipe_difference([4.37, 4.40], [4.40, 4.46]).welch_p is None  # not significant: nothing to add


def _enumerated_permutation_p(a, b):
    """Two-sided exact permutation p of the difference of means, by listing every split of the seed labels."""
    pooled, n = np.concatenate([a, b]), len(a)
    observed = np.mean(a) - np.mean(b)
    splits = np.array([pooled[list(i)].mean() - np.delete(pooled, list(i)).mean()
                       for i in itertools.combinations(range(len(pooled)), n)])
    return min(1.0, 2 * min(np.mean(splits >= observed - 1e-12), np.mean(splits <= observed + 1e-12)))


@pytest.mark.parametrize("n_a,n_b,floor", [(2, 2, 1 / 3), (3, 3, 0.1), (5, 5, 2 / 252), (2, 3, 0.2)])
def test_zero_spread_on_both_sides_is_the_exact_permutation_floor_never_zero(n_a, n_b, floor):
    d = recipe_difference([0.572] * n_a, [0.428] * n_b)
    assert d.test.startswith("permutation") and d.delta == pytest.approx(0.144)
    assert d.p == pytest.approx(floor) == pytest.approx(_enumerated_permutation_p([0.572] * n_a, [0.428] * n_b))
    assert d.p == pytest.approx(min_permutation_p(n_a, n_b)) and d.min_p == d.p > 0


def test_a_single_seed_has_no_recipe_test():
    for a, b in (([0.5], [0.4, 0.45]), ([0.5], [0.4]), ([0.5, 0.6], [0.4])):
        d = recipe_difference(a, b)
        assert d.p is None and d.ci95 is None and d.test.startswith("none:")
        assert d.delta == pytest.approx(np.mean(a) - np.mean(b))


def test_rounding_noise_is_no_spread():
    """A score that differs from another only in the last bit (recomputed another way) is not a seed spread:
    scipy's t-test would give p ≈ 0 on it."""
    x = 4 / 7
    d = recipe_difference([x, x + 1e-16], [3 / 7, 3 / 7])
    assert d.test.startswith("permutation") and d.p == pytest.approx(1 / 3)


def _both(a_docs: list[np.ndarray], b_docs: list[np.ndarray], n_boot=2000, seed=0):
    """Both questions for one accuracy column: per-seed per-document scores of A and of B."""
    models = [mean_metric(x) for x in [*a_docs, *b_docs]]
    reps = bootstrap_replicates([models], n_boot, np.random.default_rng(seed))
    point = np.stack([[x.mean()] for x in [*a_docs, *b_docs]])  # accuracy: numpy, not Metric.score
    k = len(a_docs)
    model = model_difference(point[:k], point[k:], reps[:, :k], reps[:, k:])[0]
    return recipe_difference(point[:k, 0], point[k:, 0]), model


def test_constant_answers():
    """Models that give one answer to every document: the same answer everywhere is no difference (p = 1 for both
    questions); another constant answer is a real difference between these models, and a permutation floor for
    the recipe (1/3 at 2 + 2 seeds), never p = 0."""
    rng = np.random.default_rng(11)
    gold = rng.random(120) < 0.6
    yes, no = gold.astype(float), (~gold).astype(float)
    recipe, model = _both([yes, yes], [yes, yes])
    assert (recipe.p, model.p, recipe.delta, model.delta) == (1.0, 1.0, 0.0, 0.0)
    recipe, model = _both([yes, yes], [no, no], n_boot=999)
    assert recipe.test.startswith("permutation") and recipe.p == pytest.approx(1 / 3)
    assert model.delta == pytest.approx(yes.mean() - no.mean()) and 1 / 1000 <= model.p < 0.01


def test_all_identical_scores():
    docs = (np.random.default_rng(1).random(300) < 0.6).astype(float)
    recipe, model = _both([docs, docs, docs], [docs, docs, docs])
    assert recipe.p == model.p == 1.0 and recipe.test == "t (no spread, no difference)"
    assert recipe.ci95 == model.ci95 == (0.0, 0.0) and recipe.min_p == 1.0


def test_recipe_test_false_positive_rate_is_nominal_at_two_and_three_seeds():
    """Simulated sweeps with no effect (RTE-sized, seed effects of logit sd 0.4, paired documents), through the
    scores and the test sweep.compare uses: 400 sweeps per cell tell 5 % (SE 1.1 %) from 15 %."""
    rng = np.random.default_rng(2024)
    for seeds in (2, 3):
        rate, _ = rejection_rate(simulate(277, seeds, 0.4, 0.0, 400, rng)[0])
        assert 0.02 <= rate <= 0.09, (seeds, rate)
    rate, _ = rejection_rate(simulate(277, 3, 0.4, 1.0, 400, rng)[0])
    assert rate > 0.4  # and it does find a real difference (of about 16 points)


# -- planning ------------------------------------------------------------------------------------------------------

def test_seeds_needed_reproduces_cohens_table():
    """Cohen (1988), Table 2.4.1: two-sided α = 0.05, power 0.8: n = 26, 64, 394 per group for d = 0.8, 0.5, 0.2."""
    assert [seeds_needed(d, 1.0) for d in (0.8, 0.5, 0.2)] == [26, 64, 394]
    assert seeds_needed(3.0, 1.0) == 4 and power(3.0, 1.0, 3, 3) < 0.8 <= power(3.0, 1.0, 4, 4)


def test_power_and_detectable_against_simulated_t_tests():
    rng = np.random.default_rng(5)
    for n, delta in ((2, 6.0), (3, 2.5), (5, 1.5)):
        a, b = rng.normal(delta, 1.0, (40000, n)), rng.normal(0.0, 1.0, (40000, n))
        simulated = np.mean(st.ttest_ind(a, b, axis=1).pvalue < 0.05)
        assert power(delta, 1.0, n, n) == pytest.approx(simulated, abs=0.01)
    for n in (2, 3, 5):
        assert power(detectable(0.7, n, n), 0.7, n, n) == pytest.approx(0.8)
    assert detectable(2.0, 3, 3) == pytest.approx(2 * detectable(1.0, 3, 3))


def test_pooled_sd_is_the_anova_residual_sd():
    groups = [[0.61, 0.58], [0.66, 0.60, 0.64], [0.5], [0.7, 0.71]]
    sd, df = pooled_sd(groups)
    used = [g for g in groups if len(g) > 1]
    y = np.concatenate(used)
    x = np.zeros((y.size, len(used)))
    x[np.arange(y.size), np.repeat(np.arange(len(used)), [len(g) for g in used])] = 1
    rss = np.linalg.lstsq(x, y, rcond=None)[1][0]
    assert df == y.size - len(used) == 4 and sd == pytest.approx(np.sqrt(rss / df))
    assert pooled_sd([[0.5], [0.4]]) == (None, 0)


# -- the model question ------------------------------------------------------------------------------------------

def test_clearly_better_model_is_significant():
    rng = np.random.default_rng(2)
    a, b = (rng.random(500) < 0.8).astype(float), (rng.random(500) < 0.5).astype(float)  # per-document correct
    _, d = _both([a], [b], n_boot=4000)
    assert d.delta > 0.2 and d.p < 0.01 and d.ci95[0] > 0.15


def test_model_question_null_rejection_rate_is_about_five_percent():
    """Two models of equal accuracy, paired on 200 documents: p < 0.05 in about 5 % of 300 repetitions."""
    rng = np.random.default_rng(3)
    rejections = 0
    for rep in range(300):
        truth = rng.random(200) < 0.5
        a = np.where(rng.random(200) < 0.7, truth, ~truth).astype(float)  # both 70 % accurate, errors independent
        b = np.where(rng.random(200) < 0.7, truth, ~truth).astype(float)
        rejections += _both([a], [b], n_boot=400, seed=rep)[1].p < 0.05
    assert 0.02 <= rejections / 300 <= 0.09, rejections


def test_model_question_holds_the_seeds_fixed_and_matches_scipys_paired_bootstrap():
    """With two seeds a side, the difference of seed means, resampling documents only: scipy's bootstrap of the
    per-document difference of the seed-mean scores."""
    rng = np.random.default_rng(4)
    easy = rng.random(400)  # shared difficulty: a document is answered when the model's skill exceeds it
    a = [(easy < acc + 0.3 * rng.random(400) - 0.15).astype(float) for acc in (0.62, 0.70)]
    b = [(easy < acc + 0.3 * rng.random(400) - 0.15).astype(float) for acc in (0.60, 0.61)]
    _, ours = _both(a, b, n_boot=20000, seed=5)
    per_doc = np.mean(a, axis=0) - np.mean(b, axis=0)
    ref = st.bootstrap((per_doc,), np.mean, n_resamples=20000, method="percentile", random_state=6)
    assert ours.test == "bootstrap (documents)" and ours.delta == pytest.approx(per_doc.mean())
    assert ours.ci95[0] == pytest.approx(ref.confidence_interval.low, abs=0.004)
    assert ours.ci95[1] == pytest.approx(ref.confidence_interval.high, abs=0.004)
    se = np.std(per_doc) / np.sqrt(per_doc.size)  # the normal-theory width of a paired mean difference
    assert ours.ci95[1] - ours.ci95[0] == pytest.approx(2 * 1.96 * se, rel=0.06)


def test_macro_f1_replicates_match_scikit_learn_with_resampling_weights():
    rng = np.random.default_rng(7)
    gold, pred = rng.integers(0, 3, 56), rng.integers(0, 2, 56)  # class 2 never predicted
    m = combine([mean_metric((pred == gold).astype(float)), macro_f1_metric(pred, gold, 3)])
    assert m.score() == pytest.approx([np.mean(pred == gold),
                                       f1_score(gold, pred, labels=[0, 1, 2], average="macro", zero_division=0)])
    # a replicate is the metric under document weights = how often each document was drawn
    for _ in range(5):
        counts = np.bincount(rng.integers(0, 56, 56), minlength=56).astype(float)
        replicate = m.finish(counts @ m.features, 56.0)
        ref = [np.average(pred == gold, weights=counts),
               f1_score(gold, pred, labels=[0, 1, 2], average="macro", zero_division=0, sample_weight=counts)]
        assert replicate == pytest.approx(ref)
    reps = bootstrap_replicates([[m]], 50, np.random.default_rng(0))
    assert reps.shape == (50, 1, 2) and np.all((reps >= 0) & (reps <= 1))


def test_holm():
    assert holm([0.01, 0.04, None, 0.03]) == pytest.approx([0.03, 0.06, None, 0.06])
