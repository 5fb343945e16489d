"""The benchmark suite: tasks prepared once, scored with any model, results written as json/markdown/jsonl.

``BenchmarkSuite`` prepares the tasks once -- documents, prompts, token ids -- and ``run`` scores them with a model
through the batched ``Scorer`` (multiple-choice tasks) or ``evaluate_loss`` (loss tasks: TinyStories, WikiText-2).
The CLI (``linreg eval``) and the in-loop ``BenchmarksEvaluator`` both use it, so a checkpoint scored either way gets
the same numbers (up to bf16 autocast on GPU).

Every rank may take part (``rank``/``world_size``): batches are dealt round-robin to ranks and the results
all-reduced, as ZeRO-3 needs. With ``limit`` each task is scored on its first ``limit`` documents and is logged as
``<task>_first<limit>``, so that subset numbers are never mistaken for full-split ones.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from data.tokenizer import tokenizer_fingerprint
from eval.benchmarks.loss import LossData, evaluate_loss
from eval.benchmarks.report import paper_mean, render_report
from eval.benchmarks.scorer import Plan, Scorer, encode_pairs
from eval.benchmarks.tasks import (
    GROUPS,
    DataSource,
    Instance,
    MultipleChoiceTask,
    TaskResult,
    expand_task_names,
    get_task,
)
from eval.benchmarks.token_cache import cached_encode

MAX_LOSS_WINDOW = 2048  # loss tasks' window cap when it is taken from the model's max length


def default_batch_tokens(device: torch.device) -> int:
    """Tokens per forward: large batches on GPU; on CPU small ones run faster (activations stay in cache)."""
    return 32768 if device.type == "cuda" else 4096


@dataclass
class _Prepared:
    task: Any
    logged_name: str
    instances: list[Instance] = field(default_factory=list)
    requests: list = field(default_factory=list)  # token pairs, instance by instance, choice by choice
    plans: dict = field(default_factory=dict)  # (max_length, batch_tokens, share_context) -> Plan
    loss_data: dict = field(default_factory=dict)  # seq_len -> LossData


class BenchmarkSuite:
    """Tasks prepared for repeated scoring: data loading, prompts and tokenisation happen here, once."""

    def __init__(self, tasks: str | list[str] | tuple[str, ...], tokenizer, *, data_root=None, num_fewshot: int = 0,
                 limit: int | None = None, fewshot_seed: int = 1234, cache_dir=None):
        """``cache_dir``: where tokenised requests are kept between runs (``token_cache``); None: no cache."""
        self.tokenizer = tokenizer
        self.data = data_root if isinstance(data_root, DataSource) else DataSource.resolve(data_root)
        self.num_fewshot, self.limit, self.fewshot_seed = num_fewshot, limit, fewshot_seed
        self.task_names = expand_task_names(tasks)
        self.items: list[_Prepared] = []
        fingerprint = tokenizer_fingerprint(tokenizer) if cache_dir is not None else ""
        for name in self.task_names:
            task = get_task(name, self.data)
            item = _Prepared(task, "")
            if isinstance(task, MultipleChoiceTask):
                item.instances = task.build_instances(limit, num_fewshot, fewshot_seed)
                pairs = [r for inst in item.instances for r in inst.requests]
                item.requests = cached_encode(cache_dir, fingerprint, pairs, partial(encode_pairs, tokenizer))
            item.logged_name = task.logged_name(limit)  # after loading: a fallback split changes the name
            self.items.append(item)

    def run(self, model, *, device=None, autocast_dtype: torch.dtype | None = None, max_length: int | None = None,
            seq_len: int | None = None, batch_tokens: int | None = None, rank: int = 0, world_size: int = 1,
            progress: bool = False, log_samples: bool = False,
            share_context: bool = True) -> dict[str, TaskResult]:
        """Score every task; results keyed by logged name (plus the ``xstorycloze`` group when complete)."""
        device = torch.device(device) if device is not None else next(model.parameters()).device
        batch_tokens = batch_tokens or default_batch_tokens(device)
        scorer = Scorer(model, self.tokenizer, device=device, autocast_dtype=autocast_dtype, max_length=max_length,
                        batch_tokens=batch_tokens, rank=rank, world_size=world_size, progress=progress,
                        share_context=share_context)
        window = seq_len or min(scorer.max_length, MAX_LOSS_WINDOW)
        results: dict[str, TaskResult] = {}
        for item in self.items:
            t0 = time.perf_counter()
            desc = item.logged_name if progress else None
            if isinstance(item.task, MultipleChoiceTask):
                result = self._run_choice(item, scorer, desc, log_samples)
            else:  # a LossTask
                if window not in item.loss_data:
                    item.loss_data[window] = item.task.build(self.tokenizer, window, self.limit)
                data: LossData = item.loss_data[window]
                metrics = evaluate_loss(model, data, device=device, autocast_dtype=autocast_dtype,
                                        batch_tokens=batch_tokens, rank=rank, world_size=world_size, desc=desc,
                                        metrics=item.task.metric_names)
                result = TaskResult(item.task.name, item.logged_name, metrics, data.num_docs)
            result.seconds = time.perf_counter() - t0
            result.notes = list(item.task.notes)
            results[result.logged_name] = result
        group = xstorycloze_group(results, self.limit)
        if group is not None:
            results[group.logged_name] = group
        return results

    def _run_choice(self, item: _Prepared, scorer: Scorer, desc: str | None, log_samples: bool) -> TaskResult:
        key = (scorer.max_length, scorer.batch_tokens, scorer.share_context)
        if key not in item.plans:
            item.plans[key] = scorer.plan(item.requests)
        plan: Plan = item.plans[key]
        lls, greedy = scorer.score_tokens(item.requests, plan, desc=desc or "")
        task: MultipleChoiceTask = item.task
        scored, samples, offset = [], [], 0
        for inst in item.instances:
            k = len(inst.choices)
            s = task.score_instance(inst, lls[offset:offset + k])
            scored.append(s)
            if log_samples:
                samples.append({
                    "doc_id": inst.doc_id, "doc": inst.doc, "target": inst.gold, "context": inst.context,
                    "continuations": [cont for _, cont in inst.requests],
                    "loglikelihoods": lls[offset:offset + k].tolist(),
                    "is_greedy": greedy[offset:offset + k].tolist(), **s,
                })
            offset += k
        return TaskResult(task.name, item.logged_name, task.aggregate(item.instances, scored), len(item.instances),
                          samples=samples)


def xstorycloze_group(results: dict[str, TaskResult], limit: int | None) -> TaskResult | None:
    """lme's ``xstorycloze`` group: acc averaged over the 11 languages weighted by their sizes."""
    members = [r for r in results.values() if r.name in GROUPS["xstorycloze"]]
    if len(members) != len(GROUPS["xstorycloze"]):
        return None
    n = sum(r.n for r in members)
    metrics = {m: sum(r.metrics[m] * r.n for r in members) / n for m in ("acc", "acc_norm")}
    return TaskResult("xstorycloze", "xstorycloze" + (f"_first{limit}" if limit else ""), metrics, n,
                      seconds=sum(r.seconds for r in members))


def results_to_scalars(results: dict[str, TaskResult], prefix: str = "eval") -> dict[str, float]:
    scalars = {f"{prefix}/{name}/{m}": float(v) for name, r in results.items() for m, v in r.metrics.items()}
    mean = paper_mean({name: r.metrics for name, r in results.items()})
    if mean is not None:
        scalars[f"{prefix}/table2_mean"] = mean
    return scalars


def write_results(out_dir: Path, results: dict[str, TaskResult], meta: dict, log_samples: bool = False,
                  label: str = "model") -> str:
    """results.json ({task: {metric: value}}), meta.json, results.md and, with samples, samples_<task>.jsonl."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table = {name: r.metrics for name, r in results.items()}
    (out_dir / "results.json").write_text(json.dumps(table, indent=2) + "\n")
    meta = {**meta, "tasks": {name: {"task": r.name, "n": r.n, "seconds": round(r.seconds, 3), "notes": r.notes}
                              for name, r in results.items()}}
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    report = render_report({label: table}, notes=[n for r in results.values() for n in r.notes])
    (out_dir / "results.md").write_text(report)
    if log_samples:
        for name, r in results.items():
            if r.samples:
                with (out_dir / f"samples_{name}.jsonl").open("w", encoding="utf-8") as f:
                    for s in r.samples:
                        f.write(json.dumps(s, ensure_ascii=False) + "\n")
    return report
