"""The data sets a data root holds: where each comes from on the HF hub, and the file each split becomes.

A data root is the directory that ``$LINREG_DATA_ROOT`` / ``--data-root`` / ``data.root`` names. Training reads
``data.train_files`` / ``data.valid_files`` under it; the benchmarks, pruning and the analyses read fixed paths.
``linreg data`` builds every file below from the hub (see its docstring); ``../shared/data`` is a small
sample in the same layout.

- tinystories: ``roneneldan/TinyStories`` train, validation -> ``tinystories/{train,valid}.txt`` (stories
  separated by ``<|endoftext|>`` lines, the format of ``data.sources.read_txt_documents``);
- textbooks: ``nampdn-ai/tiny-textbooks`` train -> ``tiny-textbooks/train.jsonl`` (``{"text": <textbook column>}``);
- superglue: ``aps/super_glue`` (boolq, cb, copa, multirc, record, rte, wic, wsc.fixed) validation, train ->
  ``superglue/<Task>/{val,train}.jsonl`` in the original SuperGLUE v2 jsonl (below);
- xstorycloze: ``juletxara/xstory_cloze`` (11 languages) eval, train ->
  ``xstorycloze/spring2016.val.<lang>.tsv.split_20_80_{eval,train}.tsv``, the original tsv;
- wikitext2: ``Salesforce/wikitext`` (wikitext-2-raw-v1) test -> ``wikitext2/wiki.test.raw``, the rows joined;
- arc: ``allenai/ai2_arc`` (ARC-Easy) train, validation, test -> ``arc/ARC-Easy-<split>.jsonl``, the hub rows;
- hh-rlhf: ``Anthropic/hh-rlhf`` harmless-base test, helpful-base train and test ->
  ``hh-rlhf/<folder>-<split>.jsonl.gz``, the hub rows.

**SuperGLUE rows back to the original format.** The readers (``eval.benchmarks.tasks.superglue``) parse the
original SuperGLUE jsonl and map it onto the hub's rows, so the hub's rows are written back in the original form,
such that the readers' mapping gives the hub rows again: class indices become the original label strings (CB, RTE)
or booleans; WSC's span fields go back under ``target`` (HF's span repair is idempotent); MultiRC's answer rows
and ReCoRD's query rows are grouped back into their passages (consecutive rows with the same passage index, as the
hub stores them). A ReCoRD entity is written as the span of its first occurrence in the passage: the reader only
keeps the set of entity strings.

**XStoryCloze** is a script-based dataset on the hub, which ``datasets`` >= 4 does not run; its Parquet
conversion (revision ``refs/convert/parquet``, one folder per language) holds the same rows.
"""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import groupby

DOC_SEPARATOR = "<|endoftext|>"

Encoder = Callable[[Iterable[dict]], Iterator[str]]


@dataclass(frozen=True)
class Part:
    """One file of a set: the hub split it is made of and how each row is written."""
    path: str  # relative to the data root
    split: str
    encode: Encoder
    config: str | None = None
    data_dir: str | None = None
    data_files: dict[str, list[str]] | None = None  # split -> patterns, where the hub has no usable config


@dataclass(frozen=True)
class DataSet:
    name: str
    hub: str
    purpose: str
    parts: tuple[Part, ...]
    revision: str | None = None  # a branch; None = the default branch


# -- encoders: hub rows -> text of the file ------------------------------------------------------------------------

def stories(rows: Iterable[dict]) -> Iterator[str]:
    """``data.sources.read_txt_documents``' format; empty rows are dropped, as the hub readers drop them."""
    for row in rows:
        text = row["text"].strip()
        if text:
            yield f"{text}\n{DOC_SEPARATOR}\n"


def jsonl(rows: Iterable[dict]) -> Iterator[str]:
    for row in rows:
        yield json.dumps(row, ensure_ascii=False) + "\n"


def textbook_text(rows: Iterable[dict]) -> Iterator[str]:
    """Tiny-textbooks' ``textbook`` column (the synthetic textbook the set is named for) as the ``text`` field."""
    return jsonl({"text": row["textbook"]} for row in rows if row["textbook"])


def concatenated(rows: Iterable[dict]) -> Iterator[str]:
    """WikiText rows keep their line endings (an empty row is ``""``), so the file is the rows joined."""
    for row in rows:
        yield row["text"]


XSTORY_HEADER = ("InputStoryid", "InputSentence1", "InputSentence2", "InputSentence3", "InputSentence4",
                 "RandomFifthSentenceQuiz1", "RandomFifthSentenceQuiz2", "AnswerRightEnding")
XSTORY_FIELDS = ("story_id", "input_sentence_1", "input_sentence_2", "input_sentence_3", "input_sentence_4",
                 "sentence_quiz1", "sentence_quiz2", "answer_right_ending")


def xstory_tsv(rows: Iterable[dict]) -> Iterator[str]:
    """Every field quoted: the reader's ``QUOTE_ALL`` + ``skipinitialspace`` parse gives the strings back exactly."""
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter="\t", quotechar='"', quoting=csv.QUOTE_ALL, lineterminator="\n")
    writer.writerow(XSTORY_HEADER)
    for row in rows:
        writer.writerow([row[k] for k in XSTORY_FIELDS])
        yield buf.getvalue()
        buf.seek(0)
        buf.truncate()
    yield buf.getvalue()  # the header alone, for an empty split


def superglue_flat(keys: tuple[str, ...], label: Callable[[int], object] = bool) -> Encoder:
    """BoolQ, CB, COPA, RTE, WiC: one original row per hub row; ``label`` maps the class index back."""
    def encode(rows):
        for row in rows:
            out = {k: row[k] for k in keys}
            out["idx"], out["label"] = row["idx"], label(row["label"])
            yield json.dumps(out, ensure_ascii=False) + "\n"
    return encode


def superglue_wsc(rows: Iterable[dict]) -> Iterator[str]:
    for row in rows:
        target = {k: row[k] for k in ("span1_index", "span2_index", "span1_text", "span2_text")}
        yield json.dumps({"text": row["text"], "target": target, "idx": row["idx"], "label": bool(row["label"])},
                         ensure_ascii=False) + "\n"


def superglue_multirc(rows: Iterable[dict]) -> Iterator[str]:
    for paragraph, answers in groupby(rows, key=lambda r: r["idx"]["paragraph"]):
        answers = list(answers)
        questions = []
        for q_idx, group in groupby(answers, key=lambda r: r["idx"]["question"]):
            group = list(group)
            questions.append({"question": group[0]["question"], "idx": q_idx,
                              "answers": [{"text": r["answer"], "idx": r["idx"]["answer"], "label": int(r["label"])}
                                          for r in group]})
        passage = {"text": answers[0]["paragraph"], "questions": questions}
        yield json.dumps({"idx": paragraph, "passage": passage}, ensure_ascii=False) + "\n"


def superglue_record(rows: Iterable[dict]) -> Iterator[str]:
    for p_idx, queries in groupby(rows, key=lambda r: r["idx"]["passage"]):
        queries = list(queries)
        text = queries[0]["passage"]
        entities = []
        for name in sorted({e for q in queries for e in q["entities"]}):
            start = text.find(name)
            if start < 0:
                raise ValueError(f"ReCoRD passage {p_idx}: entity {name!r} is not in the passage")
            entities.append({"start": start, "end": start + len(name) - 1})  # the original end is inclusive
        qas = [{"idx": q["idx"]["query"], "query": q["query"], "answers": [{"text": a} for a in q["answers"]]}
               for q in queries]
        yield json.dumps({"idx": p_idx, "passage": {"text": text, "entities": entities}, "qas": qas},
                         ensure_ascii=False) + "\n"


# -- the sets --------------------------------------------------------------------------------------------------------

SUPERGLUE_TASKS: dict[str, tuple[str, Encoder]] = {  # folder -> (hub config, encoder)
    "BoolQ": ("boolq", superglue_flat(("question", "passage"))),
    "CB": ("cb", superglue_flat(("premise", "hypothesis"), ("entailment", "contradiction", "neutral").__getitem__)),
    "COPA": ("copa", superglue_flat(("premise", "choice1", "choice2", "question"), int)),
    "MultiRC": ("multirc", superglue_multirc),
    "ReCoRD": ("record", superglue_record),
    "RTE": ("rte", superglue_flat(("premise", "hypothesis"), ("entailment", "not_entailment").__getitem__)),
    "WiC": ("wic", superglue_flat(("word", "sentence1", "sentence2", "start1", "start2", "end1", "end2"))),
    "WSC": ("wsc.fixed", superglue_wsc),
}
XSTORY_LANGUAGES = ("ar", "en", "es", "eu", "hi", "id", "my", "ru", "sw", "te", "zh")


def _xstory_part(lang: str, split: str) -> Part:
    # the conversion branch has held both "<lang>/xstory_cloze-<split>.parquet" and "<lang>/<split>/NNNN.parquet"
    patterns = [f"{lang}/*-{split}.parquet", f"{lang}/{split}/*.parquet"]
    return Part(f"xstorycloze/spring2016.val.{lang}.tsv.split_20_80_{split}.tsv", split, xstory_tsv,
                data_files={split: patterns})


SETS: dict[str, DataSet] = {s.name: s for s in (
    DataSet("tinystories", "roneneldan/TinyStories", "training corpus; the TinyStories validation loss", (
        Part("tinystories/train.txt", "train", stories),
        Part("tinystories/valid.txt", "validation", stories))),
    DataSet("textbooks", "nampdn-ai/tiny-textbooks", "training corpus, the paper's second pretraining set", (
        Part("tiny-textbooks/train.jsonl", "train", textbook_text),)),
    DataSet("superglue", "aps/super_glue", "SuperGLUE benchmarks, probes and fine-tuning", tuple(
        Part(f"superglue/{folder}/{name}.jsonl", split, enc, config=config)
        for folder, (config, enc) in SUPERGLUE_TASKS.items()
        for split, name in (("validation", "val"), ("train", "train")))),
    DataSet("xstorycloze", "juletxara/xstory_cloze", "XStoryCloze benchmarks, 11 languages", tuple(
        _xstory_part(lang, split) for lang in XSTORY_LANGUAGES for split in ("eval", "train")),
        revision="refs/convert/parquet"),
    DataSet("wikitext2", "Salesforce/wikitext", "WikiText-2 perplexity of the pruning curves", (
        Part("wikitext2/wiki.test.raw", "test", concatenated, config="wikitext-2-raw-v1"),)),
    DataSet("arc", "allenai/ai2_arc", "ARC-Easy benchmark of the pruning curves", tuple(
        Part(f"arc/ARC-Easy-{split}.jsonl", split, jsonl, config="ARC-Easy")
        for split in ("train", "validation", "test"))),
    DataSet("hh-rlhf", "Anthropic/hh-rlhf", "reward-model fine-tuning: helpful-base, and harmless-base test", (
        Part("hh-rlhf/harmless-base-test.jsonl.gz", "test", jsonl, data_dir="harmless-base"),
        Part("hh-rlhf/helpful-base-train.jsonl.gz", "train", jsonl, data_dir="helpful-base"),
        Part("hh-rlhf/helpful-base-test.jsonl.gz", "test", jsonl, data_dir="helpful-base"))),
)}
