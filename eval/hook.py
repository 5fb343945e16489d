"""The in-loop evaluators of a run, as one component the trainer asks "is anything due?" and "run what is due".

Evaluators are built from the ``eval:`` config section (each config field builds its evaluator) on every rank and
run on every rank: under ZeRO-3 each forward gathers parameters collectively. They run with the model in eval mode,
under ``torch.no_grad()`` and with torch.compile disabled (``force_eager``): their batch shapes vary, and a module
compiled in place for training would otherwise recompile for each new shape.
"""
from __future__ import annotations

import time

import torch

from eval.base import EvalContext, Evaluator


class Evaluators:
    def __init__(self, eval_cfg, ctx: EvalContext):
        self.ctx = ctx
        self.evaluators: list[Evaluator] = [c.build(ctx) for c in eval_cfg.sections() if c.enabled]

    def due(self, step: int, final: bool = False) -> list[Evaluator]:
        return [ev for ev in self.evaluators if ev.due(step, final)]

    def run(self, model: torch.nn.Module, step: int, final: bool = False) -> dict[str, float]:
        """Run the evaluators due at ``step`` on this rank; return the scalars to log, with ``time/eval_<name>``."""
        scalars: dict[str, float] = {}
        due = self.due(step, final)
        if not due:
            return scalars
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), torch.compiler.set_stance("force_eager"):
                for ev in due:
                    t0 = time.perf_counter()
                    scalars.update(ev.evaluate(model, step))
                    scalars[f"time/eval_{ev.name}"] = time.perf_counter() - t0
        finally:
            model.train(was_training)
        return scalars

    def finish(self, step: int) -> None:
        for ev in self.evaluators:
            ev.finish(step)
