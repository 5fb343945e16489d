"""Labelled train/test documents of benchmark tasks for the analyses that *train* on them (probes, fine-tuning).

Documents are the rows ``eval.benchmarks.tasks`` reads (HF format, local files parsed exactly as the hub
datasets; see docs/eval.md). Where the split to train on exists, it is used: XStoryCloze has its own 360-story train
split locally and on the hub; from the hub (no data root), SuperGLUE tasks use ``train`` and ``validation``.
In a root that ``linreg data`` built, SuperGLUE's ``train.jsonl`` files are the full train splits (its
manifest says so) and are used as they are. Elsewhere (shared/data) they are the 32-example FewGLUE subsets, too
few to train on, so the validation file is **carved** into a train part and a test part: a seeded permutation of
groups of documents, where the documents of one passage (BoolQ, MultiRC) or premise (CB, RTE, COPA) form a group,
so no passage is in both parts. Every result says which it used (``split_note``). Each task says whether its train
split is whole (``Task.full_train_split``) and which documents belong together (``Task.carve_field``).
"""
from __future__ import annotations

import random
from collections.abc import Callable, Hashable

from core.errors import ConfigError


def carve(docs: list[dict], test_fraction: float, seed: int,
          group: Callable[[dict], Hashable] | None = None) -> tuple[list[dict], list[dict]]:
    """Split ``docs`` into (train, test) by a seeded permutation of groups (``group(doc)``; each document its own
    group when None); the test part gets ``round(test_fraction * groups)`` groups. Document order is kept."""
    if not 0 < test_fraction < 1:
        raise ConfigError(f"test fraction must be in (0, 1), got {test_fraction}")
    keys = [group(d) if group else i for i, d in enumerate(docs)]
    unique = list(dict.fromkeys(keys))
    random.Random(seed).shuffle(unique)
    test_keys = set(unique[:round(test_fraction * len(unique))])
    if not test_keys or len(test_keys) == len(unique):
        raise ConfigError(f"cannot carve {len(docs)} documents ({len(unique)} groups) with test fraction "
                          f"{test_fraction}")
    return [d for d, k in zip(docs, keys) if k not in test_keys], [d for d, k in zip(docs, keys) if k in test_keys]


def field_of(path: str) -> Callable[[dict], Hashable]:
    """The value at a dotted path of a document ("idx.paragraph")."""
    def get(doc: dict) -> Hashable:
        for key in path.split("."):
            doc = doc[key]
        return doc
    return get


def task_splits(task, test_fraction: float = 0.5, seed: int = 0) -> tuple[list[dict], list[dict], str]:
    """(train documents, test documents, split note) of an ``eval.benchmarks.tasks`` task object."""
    if task.full_train_split():
        return task.docs("train"), task.docs("validation"), "official train / validation splits"
    grouped = task.carve_field is not None
    train, test = carve(task.docs("validation"), test_fraction, seed, field_of(task.carve_field) if grouped else None)
    return train, test, (f"local validation file carved into train/test ({len(train)}/{len(test)} documents, "
                         f"test fraction {test_fraction}, seed {seed}"
                         f"{', a passage or premise on one side only' if grouped else ''}): "
                         f"the local train file is the 32-example FewGLUE subset")
