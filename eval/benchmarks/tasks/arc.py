"""ARC-Easy (Clark et al. 2018) as lm-evaluation-harness's ``arc_easy`` task defines it.

Evaluated split: ``test`` (2,376 questions); few-shot examples: ``train``. Prompt ``Question: {question}\\nAnswer:``;
choices: ``choices.text`` (3-5 of them), each scored as ``" " + text``; gold: ``choices.label.index(answerKey)``
(labels are A-E or 1-4); metrics acc and acc_norm (log-likelihood per character of the choice). lme sets a test
split for this task and no few-shot split, so its sampler draws exactly k examples per document
(``rnd.sample(train, k)``), not the k + 1 of the SuperGLUE tasks.

Data: ``<root>/arc/ARC-Easy-{test,train}.jsonl`` (HF ``allenai/ai2_arc`` rows, one JSON object a line) or, without
a data root, the hub's ``allenai/ai2_arc`` config ``ARC-Easy``.
"""
from __future__ import annotations

from eval.benchmarks.tasks.base import Column, Group, MultipleChoiceTask, load_hub_split, read_jsonl

HUB_DATASET, HUB_CONFIG = "allenai/ai2_arc", "ARC-Easy"
_SPLITS = {"validation": "test", "train": "train"}  # the evaluated split is lme's test split
ARC = Group("arc", "ARC", split=True)


class ArcEasy(MultipleChoiceTask):
    """3-5 choices: neither a pair nor a label set, so not probed and not a classification task."""
    title, group = "ARC-Easy", ARC
    columns = (Column("acc", "acc"), Column("acc_norm", "acc_norm"))
    def load_split(self, split):
        name = _SPLITS[split]
        if self.data.root is None:
            return load_hub_split(self.name, HUB_DATASET, HUB_CONFIG, name)
        return read_jsonl(self.name, self.data.root / "arc" / f"ARC-Easy-{name}.jsonl")

    def doc_to_text(self, doc):
        return f"Question: {doc['question']}\nAnswer:"

    def doc_to_choice(self, doc):
        return list(doc["choices"]["text"])

    def doc_to_target(self, doc):
        return doc["choices"]["label"].index(doc["answerKey"])

    def draw_shots(self, rnd, pool, k, doc):
        return rnd.sample(pool, k)
