"""The eval hook: the small interface through which evaluators run inside training.

An evaluator is one file: a config dataclass (a subclass of ``EvaluatorConfig``) and an ``Evaluator`` subclass that
names it, ``class ValLossEvaluator(Evaluator, config=ValLossConfig)``, so that the config's ``build(ctx)`` returns
the evaluator; the config becomes one field of ``eval/config.py``. The trainer builds every
enabled evaluator once (after ``deepspeed.initialize``) and, every ``every`` steps and at the end of the run, calls
``evaluate(model, step)`` **on all ranks** -- under ZeRO-3 every rank must take part in
each forward, because parameters are gathered collectively. ``model`` is the engine's module (an HF
``MistralForCausalLM``), already in ``eval()`` mode and under ``torch.no_grad()``; the trainer puts it back into
``train()`` afterwards. Return the scalars to log (``{"val/loss": 2.1}``); the trainer logs rank 0's dict to
TensorBoard and metrics.jsonl at ``step``, plus ``time/eval_<name>`` (seconds) so the cost of each evaluator is
visible. Files (plots, jsonl) go under ``ctx.run_dir``, written by rank 0 only (``ctx.is_main``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from core import precision
from core.config import check
from core.rundir import RunDir


@dataclass
class EvaluatorConfig:
    """Fields every evaluator's config section has."""
    enabled: bool = True
    every: int = 0  # steps between runs; 0 = only at the end of training (when at_end)
    at_end: bool = True

    def validate(self, p: str) -> None:
        check(self.every >= 0, f"{p}.every", self.every, "must be >= 0")

    evaluator: ClassVar[type[Evaluator] | None] = None  # set by the Evaluator subclass that names this config

    def build(self, ctx: EvalContext) -> Evaluator:
        if self.evaluator is None:
            raise NotImplementedError(f"no Evaluator subclass names {type(self).__name__} (config=...)")
        return self.evaluator(self, ctx)


@dataclass
class EvalContext:
    run_dir: RunDir
    tokenizer: Any  # a transformers PreTrainedTokenizerFast
    device: torch.device
    autocast_dtype: torch.dtype | None  # bf16 on GPU runs, None (fp32) on CPU
    rank: int
    world_size: int
    seq_len: int
    config: Any  # the resolved linreg.config.Config
    tb_writer: Any = None  # torch.utils.tensorboard.SummaryWriter on rank 0 (for images), else None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def autocast(self):
        return precision.autocast(self.device, self.autocast_dtype)


class Evaluator:
    name: ClassVar[str] = "evaluator"

    def __init_subclass__(cls, config: type[EvaluatorConfig] | None = None, **kwargs):
        super().__init_subclass__(**kwargs)
        if config is not None:
            config.evaluator = cls

    def __init__(self, cfg: EvaluatorConfig, ctx: EvalContext):
        self.cfg = cfg
        self.ctx = ctx

    def due(self, step: int, final: bool) -> bool:
        if final:
            return self.cfg.at_end
        return self.cfg.every > 0 and step % self.cfg.every == 0

    def evaluate(self, model: torch.nn.Module, step: int) -> dict[str, float]:
        raise NotImplementedError

    def finish(self, step: int) -> None:
        """Called once on every rank after the final evaluation (draw plots, close files)."""
