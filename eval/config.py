"""The ``eval:`` config section: one field per in-loop evaluator. Each field's dataclass builds its evaluator
(``build(ctx)``), so adding an evaluator is its file plus one line here."""
from __future__ import annotations

from dataclasses import dataclass, field, fields

from eval.benchmarks.evaluator import BenchmarksEvalConfig
from eval.linearity.evaluator import LinearityEvalConfig
from eval.val_loss import ValLossConfig


@dataclass
class EvalConfig:
    val_loss: ValLossConfig = field(default_factory=ValLossConfig)
    linearity: LinearityEvalConfig = field(default_factory=LinearityEvalConfig)
    benchmarks: BenchmarksEvalConfig = field(default_factory=BenchmarksEvalConfig)

    def sections(self):
        """The evaluator configs, in declaration order (the order evaluators run in)."""
        return [getattr(self, f.name) for f in fields(self)]
