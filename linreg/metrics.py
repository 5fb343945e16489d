"""Rank-0 metric sinks: TensorBoard scalars and ``metrics.jsonl`` (one JSON object per logged step, with ``step``
and the same keys as the TensorBoard tags), and Weights & Biases when the run's config sets ``logging.wandb``.
Every line is flushed at once so a crash loses nothing."""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from core.errors import ConfigError
from core.io import read_jsonl
from core.rundir import RunDir


class MetricsLogger:
    def __init__(self, run: RunDir, tensorboard: bool = True, purge_step: int | None = None,
                 wandb: dict | None = None, config: dict | None = None):
        """``wandb``: the ``logging.wandb`` section (None: no W&B); ``config``: the resolved config it records."""
        self.path = run.metrics
        self._file = self.path.open("a", encoding="utf-8")
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events a preempted run logged after its last checkpoint.
            self.tb = SummaryWriter(str(run.tb), purge_step=purge_step)
        self.wandb = start_wandb(run, wandb, config)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        if not scalars:
            return
        clean = {k: (float(v) if math.isfinite(float(v)) else str(float(v))) for k, v in scalars.items()}
        self._file.write(json.dumps({"step": step, **clean}) + "\n")
        self._file.flush()
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, float(v), step)
        if self.wandb is not None:
            self.wandb.log({k: float(v) for k, v in scalars.items()}, step=step)

    def flush(self) -> None:
        self._file.flush()
        if self.tb is not None:
            self.tb.flush()

    def close(self) -> None:
        self.flush()
        self._file.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def start_wandb(run: RunDir, spec: dict | None, config: dict | None = None):
    """The W&B run of this run dir for the ``logging.wandb`` section ``spec``, or None when it is unset or
    disabled. The W&B run id is derived from the run dir's path, so a resumed run continues its W&B run."""
    if not spec or spec.get("mode") == "disabled":
        return None
    try:
        import wandb
    except ImportError:
        raise ConfigError("logging.wandb is set but the wandb package is not installed: pip install wandb") from None
    return wandb.init(project=spec.get("project"), entity=spec.get("entity"), group=spec.get("group"),
                      job_type=spec.get("job_type"), name=spec.get("name") or run.path.name, mode=spec.get("mode"),
                      id=wandb_run_id(run), resume="allow", config=config)


def wandb_run_id(run: RunDir) -> str:
    return hashlib.sha1(str(run.path.resolve()).encode()).hexdigest()[:16]


def read_metrics(path: str | Path) -> list[dict]:
    """All lines of a metrics.jsonl (for tests, plots and analysis)."""
    return read_jsonl(path)
