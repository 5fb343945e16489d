"""Metric functions for the benchmark tasks, defined as lm-evaluation-harness (lme) computes them.

- ``mc_predictions``: argmax of the summed log-likelihoods (acc) and of log-likelihood / character length of the
  choice without the target delimiter (acc_norm); ties go to the first choice, as ``np.argmax`` does in lme.
- ``multiclass_mean_f1``: CB's F1 -- the unweighted mean over classes of the one-vs-rest F1 score,
  ``F1_c = 2 tp / (2 tp + fp + fn)`` and 0 when the class is neither predicted nor gold (scikit-learn's
  ``f1_score`` with its default ``zero_division``, which lme's ``cb_multi_fi`` calls once per class).
- ``squad_f1`` / ``squad_exact`` / ``max_over_ground_truths``: ReCoRD's per-example token F1 and exact match after
  SQuAD normalisation (lower-case, drop punctuation, drop the articles a/an/the, collapse whitespace), maximised
  over the gold answers (lme's ``record`` ``process_results`` with transformers' SQuAD metric functions).
"""
from __future__ import annotations

import collections
import re
import string
from collections.abc import Callable, Sequence

import numpy as np

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def mc_predictions(lls: Sequence[float], choices: Sequence[str]) -> tuple[int, int]:
    """(pred, pred_norm): argmax of log-likelihoods, and of log-likelihood per character of the choice."""
    lls = np.asarray(lls, dtype=np.float64)
    lengths = np.array([float(len(c)) for c in choices])
    return int(np.argmax(lls)), int(np.argmax(lls / lengths))


def multiclass_mean_f1(golds: Sequence[int], preds: Sequence[int], num_classes: int) -> float:
    """Mean over classes ``0..num_classes-1`` of the one-vs-rest F1 (lme's CB ``f1``)."""
    golds, preds = np.asarray(golds), np.asarray(preds)
    scores = []
    for c in range(num_classes):
        tp = int(np.sum((preds == c) & (golds == c)))
        fp = int(np.sum((preds == c) & (golds != c)))
        fn = int(np.sum((preds != c) & (golds == c)))
        denom = 2 * tp + fp + fn
        scores.append(2 * tp / denom if denom else 0.0)
    return float(np.mean(scores))


def normalize_squad(text: str) -> str:
    """SQuAD answer normalisation: lower-case, remove punctuation, remove articles, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _squad_tokens(text: str) -> list[str]:
    return normalize_squad(text).split() if text else []


def squad_exact(prediction: str, gold: str) -> int:
    return int(normalize_squad(prediction) == normalize_squad(gold))


def squad_f1(prediction: str, gold: str) -> float:
    """Token-level F1 between normalised strings (1/0 by equality when either side has no tokens)."""
    pred_toks, gold_toks = _squad_tokens(prediction), _squad_tokens(gold)
    if not pred_toks or not gold_toks:
        return float(pred_toks == gold_toks)
    same = sum((collections.Counter(pred_toks) & collections.Counter(gold_toks)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_toks), same / len(gold_toks)
    return 2 * precision * recall / (precision + recall)


def max_over_ground_truths(fn: Callable[[str, str], float], prediction: str, golds: Sequence[str]) -> float:
    if not golds:
        raise ValueError("no gold answers to score against")
    return float(max(fn(prediction, g) for g in golds))
