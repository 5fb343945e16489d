"""XStoryCloze (11 languages) as lm-evaluation-harness's ``xstorycloze_<lang>`` tasks define it.

Prompt: the four story sentences joined by single spaces; choices: the two candidate endings; gold:
``answer_right_ending - 1``; metric: acc. Local files ``<root>/xstorycloze/spring2016.val.<lang>.tsv.split_20_80_
{eval,train}.tsv`` are parsed as HF's ``juletxara/xstory_cloze`` loader parses them (tab-separated, quotechar '"',
QUOTE_ALL, skipinitialspace, header skipped, rows of exactly 8 fields kept) so the strings are identical. Without
a data root the rows come from the hub dataset's Parquet conversion (revision ``refs/convert/parquet``).
"""
from __future__ import annotations

import csv

from core.errors import one_line
from data.catalog import SETS, XSTORY_LANGUAGES
from data.prepare import load_part
from data.sources import ENV_DATA_ROOT
from eval.benchmarks.tasks.base import Column, Group, MultipleChoiceTask, TaskDataError, require_file

LANGUAGES = XSTORY_LANGUAGES
XSTORYCLOZE = Group("xstorycloze", "XStoryCloze accuracy per language (%)", mean=True)
PAPER_LANGUAGE = "en"  # the paper's Table 2 reports the English set
_SPLIT_FILES = {"validation": "eval", "train": "train"}
_FIELDS = ("story_id", "input_sentence_1", "input_sentence_2", "input_sentence_3", "input_sentence_4",
           "sentence_quiz1", "sentence_quiz2")


def read_xstorycloze_tsv(task: str, path) -> list[dict]:
    with require_file(task, path).open(encoding="utf-8") as f:
        reader = csv.reader(f, quotechar='"', delimiter="\t", quoting=csv.QUOTE_ALL, skipinitialspace=True)
        next(reader, None)
        return [{**dict(zip(_FIELDS, row[:7])), "answer_right_ending": int(row[7])}
                for row in reader if row and len(row) == 8]


class XStoryCloze(MultipleChoiceTask):
    """Two endings, one right: probed as a pair (``probe_kind``); its own 360-story train split is whole."""
    group, probe_kind = XSTORYCLOZE, "two_choice"

    def __init__(self, name, data):
        super().__init__(name, data)
        self.lang = name.rsplit("_", 1)[-1]
        if self.lang not in LANGUAGES:
            raise ValueError(f"task '{name}': unknown XStoryCloze language '{self.lang}' "
                             f"(one of {', '.join(LANGUAGES)})")
        self.title = f"XStoryCloze-{self.lang}"
        self.columns = (Column(self.lang, "acc"),)
        self.paper_columns = (Column(f"xstorycloze-{self.lang}", "acc"),) if self.lang == PAPER_LANGUAGE else ()

    def load_split(self, split):
        if self.data.root is None:
            return self.hub_rows(_SPLIT_FILES[split])
        name = f"spring2016.val.{self.lang}.tsv.split_20_80_{_SPLIT_FILES[split]}.tsv"
        path = self.data.root / "xstorycloze" / name
        return read_xstorycloze_tsv(self.name, path)

    def hub_rows(self, split: str) -> list[dict]:
        """The hub's rows from its Parquet conversion (the default branch holds a loading script that ``datasets``
        >= 4 refuses), located as ``linreg data`` locates them."""
        spec = SETS["xstorycloze"]
        part = next(p for p in spec.parts if p.path.endswith(f".{self.lang}.tsv.split_20_80_{split}.tsv"))
        try:
            return [dict(row) for row in load_part(part, spec.hub, spec.revision, streaming=False)]
        except Exception as e:
            raise TaskDataError(f"task '{self.name}': cannot load HF dataset '{spec.hub}' (revision "
                                f"{spec.revision}, {part.data_files[split][0]}): {type(e).__name__}: {one_line(e)} "
                                f"-- no data root is set (--data-root / ${ENV_DATA_ROOT})") from None

    def doc_to_text(self, doc):
        return " ".join(doc[f"input_sentence_{i}"] for i in range(1, 5))

    def doc_to_choice(self, doc):
        return [doc["sentence_quiz1"], doc["sentence_quiz2"]]

    def doc_to_target(self, doc):
        return doc["answer_right_ending"] - 1
