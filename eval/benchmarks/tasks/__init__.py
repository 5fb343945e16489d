"""Benchmark task registry. To add a task: write its class (a ``MultipleChoiceTask`` subclass, usually one file)
and add one line to ``TASKS`` (and to a group in ``GROUPS`` if it belongs to one).

Importing this module is cheap (no torch): configs validate task names through it before training starts.
"""
from __future__ import annotations

import difflib
import importlib

from eval.benchmarks.tasks.base import DataSource, Instance, MultipleChoiceTask, Task, TaskDataError, TaskResult
from eval.benchmarks.tasks.xstorycloze import LANGUAGES as XSTORYCLOZE_LANGUAGES

# task name -> "module:Class"; the class is constructed as Class(name, DataSource)
TASKS: dict[str, str] = {
    "boolq": "eval.benchmarks.tasks.superglue:BoolQ",
    "cb": "eval.benchmarks.tasks.superglue:CB",
    "copa": "eval.benchmarks.tasks.superglue:COPA",
    "multirc": "eval.benchmarks.tasks.superglue:MultiRC",
    "multirc_fixed": "eval.benchmarks.tasks.superglue:MultiRCFixed",
    "record": "eval.benchmarks.tasks.superglue:ReCoRD",
    "rte": "eval.benchmarks.tasks.superglue:RTE",
    "wic": "eval.benchmarks.tasks.superglue:WiC",
    "wsc": "eval.benchmarks.tasks.superglue:WSC",
    **{f"xstorycloze_{lang}": "eval.benchmarks.tasks.xstorycloze:XStoryCloze" for lang in XSTORYCLOZE_LANGUAGES},
    "tinystories": "eval.benchmarks.tinystories:TinyStories",
    "arc_easy": "eval.benchmarks.tasks.arc:ArcEasy",
}

GROUPS: dict[str, tuple[str, ...]] = {
    "superglue": ("boolq", "cb", "copa", "multirc", "record", "rte", "wic", "wsc"),
    "xstorycloze": tuple(f"xstorycloze_{lang}" for lang in XSTORYCLOZE_LANGUAGES),
}


def expand_task_names(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """'superglue,xstorycloze_en' or a list -> task names (groups expanded, duplicates dropped, order kept)."""
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    out: list[str] = []
    for item in items:
        if item in GROUPS:
            names = GROUPS[item]
        elif item in TASKS:
            names = (item,)
        else:
            close = difflib.get_close_matches(item, [*TASKS, *GROUPS], n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ValueError(f"unknown task '{item}'{hint}; tasks: {', '.join(TASKS)}; groups: {', '.join(GROUPS)}")
        out += [n for n in names if n not in out]
    if not out:
        raise ValueError("no tasks given")
    return out


def get_task(name: str, data: DataSource) -> Task:
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)(name, data)


__all__ = ["TASKS", "GROUPS", "DataSource", "Instance", "MultipleChoiceTask", "Task", "TaskDataError", "TaskResult",
           "expand_task_names", "get_task"]
