"""Registry of in-loop evaluators and the runner the trainer calls.

To add an evaluator: write ``eval/<name>.py`` with a config dataclass (subclass of ``EvaluatorConfig``) and an
``Evaluator`` subclass, add its config field to ``eval/config.py`` and one line here.
"""
from __future__ import annotations

import importlib
import time

import torch

from eval.base import EvalContext, Evaluator

# config field name -> "module:Class"
EVALUATORS = {
    "val_loss": "eval.val_loss:ValLossEvaluator",
    "linearity": "eval.linearity.evaluator:LinearityEvaluator",
    "benchmarks": "eval.benchmarks:BenchmarksEvaluator",
}


def build_evaluators(eval_cfg, ctx: EvalContext) -> list[Evaluator]:
    out = []
    for name, target in EVALUATORS.items():
        cfg = getattr(eval_cfg, name)
        if not cfg.enabled:
            continue
        module, cls = target.split(":")
        out.append(getattr(importlib.import_module(module), cls)(cfg, ctx))
    return out


def run_evaluators(evaluators: list[Evaluator], model: torch.nn.Module, step: int, final: bool) -> dict[str, float]:
    """Run the evaluators due at ``step`` on this rank; return the scalars to log (with their wall times)."""
    scalars: dict[str, float] = {}
    due = [ev for ev in evaluators if ev.due(step, final)]
    if not due:
        return scalars
    was_training = model.training
    model.eval()
    try:
        for ev in due:
            t0 = time.perf_counter()
            with torch.no_grad():
                scalars.update(ev.evaluate(model, step))
            scalars[f"time/eval_{ev.name}"] = time.perf_counter() - t0
    finally:
        model.train(was_training)
    return scalars
