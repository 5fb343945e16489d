"""The headline comparisons of a study: the share of the unpruned score each pruned model retains, and paired
bootstrap intervals of each method's difference from plain ``remove`` at the same k.

- **Retained** (the field's headline unit): 100 * s_k / s_0 for a score where higher is better (accuracy), and
  100 * s_0 / s_k where lower is better (loss, perplexity, bits per byte), so 100 % is the unpruned model and
  less is worse either way.
- **Paired bootstrap over documents** (``scipy.stats.bootstrap`` with ``paired=True``, percentile intervals,
  2,000 resamples, the study's seed): both models are scored on the same documents, and the documents are
  resampled together. WikiText-2: the documents are the evaluation windows, the statistic is the difference of
  mean NLL per token, sum_w (NLL_a,w - NLL_b,w) / sum_w tokens_w (nats/token; negative = ``a`` predicts better);
  multiple-choice tasks: the questions, the difference of mean accuracy.
"""
from __future__ import annotations

import numpy as np
from scipy import stats

LOWER_IS_BETTER = ("ppl", "loss", "bpb")
N_RESAMPLES = 2000


def retained(value: float, unpruned: float, metric: str) -> float:
    if metric.endswith(LOWER_IS_BETTER):
        return 100.0 * unpruned / value
    return 100.0 * value / unpruned if unpruned else float("nan")


def paired_difference(key: str, a: list, b: list, seed: int = 0) -> dict:
    """{"diff", "lo", "hi"}: the statistic of the module docstring for ``a`` minus ``b`` with its 95 % interval."""
    rng = np.random.default_rng(seed)
    if key == "wikitext2":
        nll_a, tok = np.array([w[0] for w in a]), np.array([w[1] for w in a], dtype=float)
        nll_b = np.array([w[0] for w in b])
        data = (nll_a, nll_b, tok)

        def stat(x, y, t, axis=-1):
            return (x.sum(axis) - y.sum(axis)) / t.sum(axis)
    else:
        data = (np.asarray(a, float), np.asarray(b, float))

        def stat(x, y, axis=-1):
            return x.mean(axis) - y.mean(axis)
    point = float(stat(*data))
    if np.array_equal(data[0], data[1]):  # the same model: no spread to resample
        return {"diff": point, "lo": point, "hi": point}
    res = stats.bootstrap(data, stat, paired=True, vectorized=True, n_resamples=N_RESAMPLES, method="percentile",
                          rng=rng)
    return {"diff": point, "lo": float(res.confidence_interval.low), "hi": float(res.confidence_interval.high)}


def against(docs: dict[str, dict[int, dict[str, list]]], reference: str = "remove", seed: int = 0) -> dict:
    """comparison[method][k][doc key] for every method but ``reference``, at every k both have (k >= 1)."""
    if reference not in docs:
        return {}
    out: dict = {}
    for method, per_k in docs.items():
        if method == reference:
            continue
        for k, keyed in per_k.items():
            ref = docs[reference].get(k)
            if k == 0 or ref is None:
                continue
            out.setdefault(method, {})[k] = {key: paired_difference(key, v, ref[key], seed)
                                             for key, v in keyed.items() if key in ref}
    return out
