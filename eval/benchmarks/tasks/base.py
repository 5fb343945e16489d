"""Task base classes: data sources, lme-style few-shot prompts, and multiple-choice scoring of one document.

A multiple-choice task turns each document (a row in the HF dataset's format) into a context string and a list of
choices; each choice becomes one log-likelihood request ``(context, target_delimiter + choice)``, exactly as
lm-evaluation-harness's ``ConfigurableTask`` builds ``multiple_choice`` requests. Few-shot contexts are
``text(shot) + target_delimiter + answer(shot) + fewshot_delimiter`` for each of the ``k`` shots, then
``text(doc)``; the shots are drawn from the training split with one ``random.Random(seed)`` per task that advances
document by document (lme's ``ContextSampler``, seed 1234 by default; see ``sample_shots``).
"""
from __future__ import annotations

import logging
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from core.errors import ConfigError, DataError, MissingDataError
from core.io import read_jsonl as core_read_jsonl
from data.sources import ENV_DATA_ROOT, data_root
from data.sources import load_hub_split as data_load_hub_split
from eval.benchmarks.metrics import mc_predictions, mean

log = logging.getLogger("eval")

@dataclass(frozen=True)
class Column:
    """One column of the result tables: ``label`` over the task's ``metric``, written as ``fmt`` says."""
    label: str
    metric: str
    fmt: str = "percent"  # percent: 100 x, one decimal; nats: four decimals; ratio: two decimals
    compared: bool = True  # tested by sweep.compare; ppl is exp(loss): its seed mean is not exp(mean loss)

    def show(self, value: float | None) -> str:
        if value is None or math.isnan(value):
            return "–"
        return {"percent": f"{100 * value:.1f}", "nats": f"{value:.4f}", "ratio": f"{value:.2f}"}[self.fmt]


@dataclass(frozen=True)
class Group:
    """A family of tasks and its table in results.md: one table over all members (with their plain mean when
    ``mean``), or one table per member (``split``: members whose metrics differ, titled by the task's ``title``)."""
    name: str
    title: str
    mean: bool = False
    split: bool = False


class TaskDataError(MissingDataError):
    """Data for a requested task is missing: the message names the task and the path or hub dataset tried."""


@dataclass(frozen=True)
class DataSource:
    """Where task data comes from: a local directory in the layout of ``shared/data`` or, with no root, the hub."""
    root: Path | None = None

    @classmethod
    def resolve(cls, root: str | os.PathLike | None = None) -> DataSource:
        """``root`` if given (a --data-root flag), else ``$LINREG_DATA_ROOT``, else the hub (``data_root``'s rule)."""
        return cls(data_root(cli=root))

    def describe(self) -> str:
        return str(self.root) if self.root else "hub"


def require_file(task: str, path: Path) -> Path:
    if not path.is_file():
        raise TaskDataError(f"task '{task}': data file not found: {path}")
    return path


def read_jsonl(task: str, path: Path) -> list[dict]:
    return core_read_jsonl(require_file(task, path))


def load_hub_split(task: str, path: str, name: str | None, split: str) -> list[dict]:
    """Rows of an HF hub dataset split, or a TaskDataError naming the task when it cannot be loaded."""
    try:
        ds = data_load_hub_split(path, name, split, hint=f"no data root is set (--data-root / ${ENV_DATA_ROOT})")
    except DataError as e:
        raise TaskDataError(f"task '{task}': {e}") from None
    return [dict(row) for row in ds]


def sample_shots(rnd: random.Random, pool: list[dict], k: int, doc: dict) -> list[dict]:
    """lme 0.4's draw: none of our tasks sets a few-shot split or a test split, and lme compares the two (``None ==
    None``), so it draws ``k + 1`` documents, drops any equal to the evaluated one and keeps the first ``k``
    (resampling from the pool without it if that leaves fewer than ``k``)."""
    shots = [d for d in rnd.sample(pool, k + 1) if d != doc][:k]
    if len(shots) < k:
        shots = rnd.sample([d for d in pool if d != doc], k)
    return shots


@dataclass
class Instance:
    """One evaluation document with its prompt: ``len(choices)`` log-likelihood requests."""
    doc_id: int  # index of the document in the evaluated split (after flattening, for MultiRC/ReCoRD)
    doc: dict
    context: str
    choices: list[str]
    gold: int  # index into choices; -100 when the target is not among the choices (as lme)
    target_delimiter: str = " "

    @property
    def requests(self) -> list[tuple[str, str]]:
        return [(self.context, self.target_delimiter + c) for c in self.choices]


@dataclass
class TaskResult:
    name: str  # registry name, e.g. "record"
    logged_name: str  # name results are logged under, e.g. "record_dev32_first100"
    metrics: dict[str, float]
    n: int  # documents evaluated
    seconds: float = 0.0
    samples: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class Task:
    """A named evaluation task bound to a data source, and what the rest of linreg needs to know about it:

    - ``group`` and ``columns``: its table in results.md and compare.md and its columns there; ``paper_columns``:
      its columns in the paper's Table 2 layout (and its plain mean), where it has any;
    - ``probe_kind``: how ``analysis.probes`` reads it -- "two_choice" (a pair of endings, which one is right),
      "classification" (the prompt and the document's label) or None (not probed);
    - ``labels`` and ``classification_template``: the classification framing that ``analysis.finetune`` trains a
      sequence classifier on -- the label names in label order, and the text it reads, formatted with the
      document's fields (the passage last, so that truncation cuts it, not the question); None: not framed;
    - ``carve_field``: the document field (dotted) whose equal values stay on one side when ``analysis.taskdata``
      carves a validation file into train and test parts (None: each document on its own).

    Constructing a task reads no data, so these can be asked of any registered name.
    """
    title: ClassVar[str] = ""  # how tables and plots name it (default: its registry name)
    group: ClassVar[Group]
    columns: ClassVar[tuple[Column, ...]] = ()
    paper_columns: ClassVar[tuple[Column, ...]] = ()
    probe_kind: ClassVar[str | None] = None
    labels: ClassVar[tuple[str, ...] | None] = None
    classification_template: ClassVar[str | None] = None
    carve_field: ClassVar[str | None] = None

    def __init__(self, name: str, data: DataSource):
        self.name = name
        self.data = data
        self.split_tag = ""  # set when the evaluated split is not the canonical one (e.g. ReCoRD's "dev32")
        self.notes: list[str] = []

    @property
    def display_name(self) -> str:
        return self.title or self.name

    @property
    def classifiable(self) -> bool:
        return self.labels is not None and self.classification_template is not None

    def classification_text(self, doc: dict) -> str:
        if not self.classifiable:
            raise ConfigError(f"task '{self.name}' has no classification framing")
        return self.classification_template.format_map(doc)

    def full_train_split(self) -> bool:
        """Whether ``docs("train")`` is a whole training split (not a few-shot sample too small to train on)."""
        return True

    def logged_name(self, limit: int | None = None) -> str:
        """Results are logged under this name: any fallback split and any document limit are part of it."""
        name = self.name + (f"_{self.split_tag}" if self.split_tag else "")
        return name + (f"_first{limit}" if limit else "")

    def note(self, message: str) -> None:
        log.warning(message)
        self.notes.append(message)


class MultipleChoiceTask(Task):
    """Log-likelihood multiple choice. Subclasses define the data (``load_split``) and the prompt functions."""
    target_delimiter: ClassVar[str] = " "
    fewshot_delimiter: ClassVar[str] = "\n\n"
    metric_names: ClassVar[tuple[str, ...]] = ("acc", "acc_norm")

    def __init__(self, name: str, data: DataSource):
        super().__init__(name, data)
        self._docs: dict[str, list[dict]] = {}

    # -- data ------------------------------------------------------------------------------------------------------
    def load_split(self, split: str) -> list[dict]:
        """Documents of ``split`` ("validation" or "train") in the HF dataset's row format."""
        raise NotImplementedError

    def process_docs(self, docs: list[dict]) -> list[dict]:
        return docs

    def docs(self, split: str) -> list[dict]:
        if split not in self._docs:
            self._docs[split] = self.process_docs(self.load_split(split))
        return self._docs[split]

    # -- prompt ----------------------------------------------------------------------------------------------------
    def doc_to_text(self, doc: dict) -> str:
        raise NotImplementedError

    def doc_to_choice(self, doc: dict) -> list[str]:
        raise NotImplementedError

    def doc_to_target(self, doc: dict) -> int | str:
        return doc["label"]

    def gold_index(self, doc: dict, choices: list[str]) -> int:
        target = self.doc_to_target(doc)
        if isinstance(target, str):
            return choices.index(target) if target in choices else -100
        return target if target < len(choices) else -100

    def answer_text(self, doc: dict) -> str:
        """The answer written after a few-shot example: the gold choice, or the target string itself."""
        target = self.doc_to_target(doc)
        return self.doc_to_choice(doc)[target] if isinstance(target, int) else target

    def fewshot_context(self, doc: dict, shots: list[dict]) -> str:
        parts = [self.doc_to_text(s) + self.target_delimiter + self.answer_text(s) + self.fewshot_delimiter
                 for s in shots]
        return "".join(parts) + self.doc_to_text(doc)

    def draw_shots(self, rnd: random.Random, pool: list[dict], k: int, doc: dict) -> list[dict]:
        """The few-shot examples of ``doc`` (lme's draw for tasks whose few-shot and test splits are both unset)."""
        return sample_shots(rnd, pool, k, doc)

    def build_instances(self, limit: int | None = None, num_fewshot: int = 0, seed: int = 1234) -> list[Instance]:
        docs = self.docs("validation")
        docs = docs[:limit] if limit else docs
        pool = self.docs("train") if num_fewshot > 0 else []
        if num_fewshot and num_fewshot >= len(pool):
            raise ConfigError(f"task '{self.name}': {num_fewshot}-shot needs more than {num_fewshot} training "
                              f"examples, the training split has {len(pool)}")
        rnd = random.Random(seed)
        out = []
        for i, doc in enumerate(docs):
            shots = self.draw_shots(rnd, pool, num_fewshot, doc) if num_fewshot > 0 else []
            choices = self.doc_to_choice(doc)
            out.append(Instance(i, doc, self.fewshot_context(doc, shots), choices, self.gold_index(doc, choices),
                                self.target_delimiter))
        return out

    # -- scoring ---------------------------------------------------------------------------------------------------
    def score_instance(self, inst: Instance, lls: np.ndarray) -> dict[str, Any]:
        """Per-document metric values (and the prediction) from the choices' summed log-likelihoods."""
        pred, pred_norm = mc_predictions(lls, inst.choices)
        return {"pred": pred, "acc": float(pred == inst.gold), "acc_norm": float(pred_norm == inst.gold)}

    def aggregate(self, instances: list[Instance], scored: list[dict[str, Any]]) -> dict[str, float]:
        return {m: mean([s[m] for s in scored]) for m in self.metric_names}
