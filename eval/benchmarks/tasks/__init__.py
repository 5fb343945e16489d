"""Benchmark task registry. To add a task: write its class (a ``MultipleChoiceTask`` or ``LossTask`` subclass,
usually one file; it says how it is reported, probed and fine-tuned, see ``Task``) and add one line to ``TASKS``.
Its results then appear in results.md, compare.md and the analyses' task lists. ``GROUPS`` are names that expand
to several tasks on the command line and in configs.

Importing this module is cheap (no torch): configs and sweep files validate task names through it before training
starts.
"""
from __future__ import annotations

import difflib
import importlib

from eval.benchmarks.tasks.base import (
    Column,
    DataSource,
    Group,
    Instance,
    MultipleChoiceTask,
    Task,
    TaskDataError,
    TaskResult,
)
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
    "wikitext2": "eval.benchmarks.wikitext2:WikiText2",
    "arc_easy": "eval.benchmarks.tasks.arc:ArcEasy",
}

GROUPS: dict[str, tuple[str, ...]] = {
    "superglue": ("boolq", "cb", "copa", "multirc", "record", "rte", "wic", "wsc"),
    "xstorycloze": tuple(f"xstorycloze_{lang}" for lang in XSTORYCLOZE_LANGUAGES),
}

# What `linreg eval`, the in-loop evaluator and a sweep's final benchmarks score unless told otherwise: the
# paper's Table 2 tasks and the TinyStories loss.
DEFAULT_TASKS: tuple[str, ...] = ("superglue", "xstorycloze_en", "tinystories")


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


def describe(name: str) -> Task:
    """The task ``name`` unbound to any data (constructing a task reads nothing): its columns, group, probe kind
    and classification framing."""
    return get_task(name, DataSource(None))


def registered() -> list[Task]:
    """Every registered task, in registry order, unbound to data."""
    return [describe(n) for n in TASKS]


def base_name(logged: str) -> str:
    """'record_dev32_first100' -> 'record': the longest task or group name the logged name starts with."""
    names = [n for n in (*TASKS, *GROUPS) if logged == n or logged.startswith(n + "_")]
    return max(names, key=len) if names else logged


def lookup(results: dict[str, dict] | None, task: str, metric: str | None = None) -> tuple[str | None, dict | None]:
    """(logged name, metrics) of ``task`` in a results.json (``{logged name: {metric: value}}``), or (None, None).
    The full-split result wins over subset and fallback ones (``<task>_first<N>``, ``record_dev32``); with
    ``metric``, only results that have it count."""
    if not results:
        return None, None
    candidates = [task] if task in results else []
    candidates += [logged for logged in results if logged != task and base_name(logged) == task]
    for logged in candidates:
        if metric is None or metric in results[logged]:
            return logged, results[logged]
    return None, None


__all__ = ["TASKS", "GROUPS", "DEFAULT_TASKS", "Column", "DataSource", "Group", "Instance", "MultipleChoiceTask",
           "Task", "TaskDataError", "TaskResult", "base_name", "describe", "expand_task_names", "get_task", "lookup",
           "registered"]
