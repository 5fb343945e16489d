"""Calibration of ``sweep.compare``'s recipe test: simulated sweeps with a known truth.

    python bench/ablation_calibration.py [--reps 2000] [--power-reps 1000] [--seed 0]

Each simulated sweep has two variants (A, B) with ``n`` seeds each, scored on the same ``D`` documents (CB 56, COPA
100, RTE 277, BoolQ 3,270). Documents have a shared difficulty (logit ~ N(0.3, 1.5²), the same for every model:
paired, as on a real benchmark), each run has a seed effect (logit ~ N(0, σ²)), and variant A adds ``effect`` to
the logit. A run answers document d correctly with probability sigmoid(difficulty_d + seed effect + effect). Each
run's score is its accuracy, computed by ``sweep.stats.mean_metric`` as ``sweep.compare`` computes it, and the
difference is tested by ``sweep.stats.recipe_difference``: the function ``sweep.compare`` calls for every cell.

Prints two markdown tables for docs/ablations.md: the rate of p < 0.05 with no effect (the false-positive rate;
Welch's test on the same per-seed scores beside it, for comparison), and the power for several effects (with the
mean true difference in points). Monte Carlo standard error of a 5 % rate: √(0.05·0.95/reps) (0.5 points at 2,000).
Not a test: 13 s on the idle 2-core machine (2026-12-05; 27 s while it was shared, load average 7).
``tests/test_sweep_stats.py`` runs a small seeded no-effect version.
"""
from __future__ import annotations

import argparse
import sys
import warnings

import numpy as np
from scipy import stats as st

from sweep.stats import ALPHA, mean_metric, power, recipe_difference

TASKS = {"cb": 56, "copa": 100, "rte": 277, "boolq": 3270}
SEEDS = (2, 3, 5)
SIGMAS = (0.0, 0.25, 0.5)
EFFECTS = (0.1, 0.25, 0.5)  # logit shifts of variant A


def simulate(n_docs: int, seeds: int, sigma: float, effect: float, reps: int, rng: np.random.Generator,
             chunk: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Per-seed scores [reps, 2, seeds] (variant A, then B) and the true difference of expected accuracy [reps]."""
    scores, truth = [], []
    for start in range(0, reps, chunk):
        r = min(chunk, reps - start)
        difficulty = rng.normal(0.3, 1.5, size=(r, 1, 1, n_docs))
        shift = np.array([effect, 0.0])[None, :, None, None]
        seed_effect = rng.normal(0.0, sigma, size=(r, 2, seeds, 1))
        correct = rng.random((r, 2, seeds, n_docs)) < 1 / (1 + np.exp(-(difficulty + seed_effect + shift)))
        # one Metric over every run of the chunk: documents are its rows, runs its columns
        per_doc = correct.reshape(-1, n_docs).T.astype(np.float64)
        scores.append(mean_metric(per_doc).score().reshape(r, 2, seeds))
        expected = 1 / (1 + np.exp(-(difficulty + shift)))  # at the mean seed effect
        truth.append((expected[:, 0] - expected[:, 1]).mean(axis=(1, 2)))
    return np.concatenate(scores), np.concatenate(truth)


def rejection_rate(scores: np.ndarray, alpha: float = ALPHA) -> tuple[float, float]:
    """(rate of p < alpha of the recipe test, of Welch's test) over simulated sweeps [reps, 2, seeds]."""
    ours = [recipe_difference(s[0], s[1]).p for s in scores]
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        welch = np.nan_to_num(st.ttest_ind(scores[:, 0], scores[:, 1], axis=1, equal_var=False).pvalue, nan=1.0)
    return float(np.mean([p is not None and p < alpha for p in ours])), float(np.mean(welch < alpha))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=2000, help="simulated sweeps per no-effect cell")
    p.add_argument("--power-reps", type=int, default=1000, help="simulated sweeps per power cell")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    seeds_head = " | ".join(f"{n} seeds" for n in SEEDS)

    print(f"False-positive rate at nominal {ALPHA:.0%}, %: no effect, {args.reps} sweeps per cell; the recipe "
          "test (Welch's test on the same scores)\n")
    print(f"| task (documents) | seed sd σ (logit) | {seeds_head} |\n|---|---|" + "---|" * len(SEEDS))
    for task, d in TASKS.items():
        for s in SIGMAS:
            row = [rejection_rate(simulate(d, n, s, 0.0, args.reps, rng)[0]) for n in SEEDS]
            print(f"| {task} ({d}) | {s:g} | " + " | ".join(f"{100 * o:.1f} ({100 * w:.1f})" for o, w in row)
                  + " |", flush=True)

    sigma = 0.25
    print(f"\nPower at α = {ALPHA}, %: σ = {sigma}, {args.power_reps} sweeps per cell; the effect as a logit shift "
          "[the mean true difference in points]\n")
    print(f"| task (documents) | effect | {seeds_head} |\n|---|---|" + "---|" * len(SEEDS))
    analytic = []
    for task, d in TASKS.items():
        for e in EFFECTS:
            row, points = [], []
            for n in SEEDS:
                scores, truth = simulate(d, n, sigma, e, args.power_reps, rng)
                row.append(rejection_rate(scores)[0])
                points.append(100 * truth.mean())
            print(f"| {task} ({d}) | +{e:g} [{np.mean(points):.1f}] | " + " | ".join(f"{100 * r:.0f}" for r in row)
                  + " |", flush=True)
        # the largest effect at the most seeds: does the t power formula, fed the simulated seed spread, predict it?
        sd = 100 * np.sqrt(scores.var(axis=2, ddof=1).mean())
        analytic.append(f"{task}: seed sd {sd:.1f} points, analytic power for {points[-1]:.1f} points at {n} seeds "
                        f"{100 * power(points[-1], sd, n, n):.0f} % (simulated {100 * row[-1]:.0f} %)")
    print("\nThe seed-to-seed sd of a run's score (seed effect and document noise, pooled over both variants) and "
          "sweep.stats.power at it:\n" + "\n".join(analytic))
    return 0


if __name__ == "__main__":
    sys.exit(main())
