"""Rank-0 metric sinks: TensorBoard scalars and ``metrics.jsonl`` (one JSON object per logged step, with ``step``
and the same keys as the TensorBoard tags). Every line is flushed at once so a crash loses nothing."""
from __future__ import annotations

import json
import math
from pathlib import Path

from core.io import read_jsonl
from core.rundir import RunDir


class MetricsLogger:
    def __init__(self, run: RunDir, tensorboard: bool = True, purge_step: int | None = None):
        self.path = run.metrics
        self._file = self.path.open("a", encoding="utf-8")
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events a preempted run logged after its last checkpoint.
            self.tb = SummaryWriter(str(run.tb), purge_step=purge_step)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        if not scalars:
            return
        clean = {k: (float(v) if math.isfinite(float(v)) else str(float(v))) for k, v in scalars.items()}
        self._file.write(json.dumps({"step": step, **clean}) + "\n")
        self._file.flush()
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, float(v), step)

    def flush(self) -> None:
        self._file.flush()
        if self.tb is not None:
            self.tb.flush()

    def close(self) -> None:
        self.flush()
        self._file.close()
        if self.tb is not None:
            self.tb.close()


def read_metrics(path: str | Path) -> list[dict]:
    """All lines of a metrics.jsonl (for tests, plots and analysis)."""
    return read_jsonl(path)
