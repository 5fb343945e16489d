"""The ``eval:`` config section: one sub-section per in-loop evaluator (each owns its dataclass)."""
from __future__ import annotations

from dataclasses import dataclass, field

from eval.benchmarks import BenchmarksEvalConfig
from eval.linearity.evaluator import LinearityEvalConfig
from eval.val_loss import ValLossConfig


@dataclass
class EvalConfig:
    val_loss: ValLossConfig = field(default_factory=ValLossConfig)
    linearity: LinearityEvalConfig = field(default_factory=LinearityEvalConfig)
    benchmarks: BenchmarksEvalConfig = field(default_factory=BenchmarksEvalConfig)
