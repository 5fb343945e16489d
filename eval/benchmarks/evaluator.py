"""The in-loop benchmark evaluator (``eval.benchmarks`` in the run config; off by default).

    eval:
      benchmarks: {enabled: true, every: 500, tasks: [superglue, xstorycloze_en, tinystories], limit: 200}

Every rank runs ``evaluate`` (ZeRO-3 needs all ranks in every forward). Scalars ``eval/<task>/<metric>`` go to
TensorBoard and metrics.jsonl through the trainer; rank 0 also writes ``<run_dir>/benchmarks/step_<step>/``
(results.json, results.md, meta.json), the same files ``linreg eval`` writes. Tokenised requests are cached in
``<data.cache_dir>/benchmarks`` (``token_cache``), so the runs of a sweep tokenise the tasks once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from core.config import check
from core.errors import ConfigError
from data.sources import data_root
from eval.base import EvalContext, Evaluator, EvaluatorConfig
from eval.benchmarks.scorer import resolve_max_length
from eval.benchmarks.suite import BenchmarkSuite, results_to_scalars, write_results
from eval.benchmarks.tasks import DEFAULT_TASKS, expand_task_names


@dataclass
class BenchmarksEvalConfig(EvaluatorConfig):
    enabled: bool = False  # tasks take minutes on a real model: turn on explicitly (the quick start does)
    tasks: list[str] = field(default_factory=lambda: list(DEFAULT_TASKS))  # names and groups, see docs/eval.md
    limit: int | None = None  # score the first N documents per task (logged as <task>_first<N>)
    num_fewshot: int = 0
    fewshot_seed: int = 1234
    batch_tokens: int | None = None  # tokens (rows x padded length) per forward; None: 32768 on GPU, 4096 on CPU
    max_length: int | None = None  # None: the model's (lme rule: config.max_position_embeddings)
    seq_len: int | None = None  # loss tasks' window; None: min(max_length, 2048)
    share_context: bool = True  # one copy of a context shared by its choices (SDPA models; same numbers)

    def validate(self, p: str) -> None:
        super().validate(p)
        try:
            expand_task_names(self.tasks)
        except ValueError as e:
            raise ConfigError(f"{p}.tasks: {e}") from None
        check(self.limit is None or self.limit >= 1, f"{p}.limit", self.limit, "must be >= 1 or null")
        check(self.num_fewshot >= 0, f"{p}.num_fewshot", self.num_fewshot, "must be >= 0")
        for k in ("batch_tokens", "max_length", "seq_len"):
            v = getattr(self, k)
            check(v is None or v >= 1, f"{p}.{k}", v, "must be >= 1 or null")


class BenchmarksEvaluator(Evaluator, config=BenchmarksEvalConfig):
    name = "benchmarks"

    def __init__(self, cfg: BenchmarksEvalConfig, ctx: EvalContext):
        super().__init__(cfg, ctx)
        self.suite = BenchmarkSuite(cfg.tasks, ctx.tokenizer, data_root=data_root(ctx.config.data.root),
                                    num_fewshot=cfg.num_fewshot, limit=cfg.limit, fewshot_seed=cfg.fewshot_seed,
                                    cache_dir=Path(ctx.config.data.cache_dir) / "benchmarks")

    def evaluate(self, model: torch.nn.Module, step: int) -> dict[str, float]:
        cfg, ctx = self.cfg, self.ctx
        max_length = cfg.max_length or resolve_max_length(getattr(model, "config", None), ctx.tokenizer)
        results = self.suite.run(model, device=ctx.device, autocast_dtype=ctx.autocast_dtype, max_length=max_length,
                                 seq_len=cfg.seq_len, batch_tokens=cfg.batch_tokens, rank=ctx.rank,
                                 world_size=ctx.world_size, share_context=cfg.share_context)
        if ctx.is_main:
            meta = {"step": step, "data": self.suite.data.describe(), "num_fewshot": cfg.num_fewshot,
                    "limit": cfg.limit, "fewshot_seed": cfg.fewshot_seed, "max_length": max_length}
            write_results(ctx.run_dir.benchmarks(step), results, meta, label=f"step {step}")
        return results_to_scalars(results)
