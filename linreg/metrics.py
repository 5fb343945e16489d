"""Rank-0 metric sinks: TensorBoard scalars and ``metrics.jsonl`` (one JSON object per logged step, with ``step``
and the same keys as the TensorBoard tags), and Weights & Biases when the run's config sets ``logging.wandb``.

Every jsonl line is flushed at once; before each checkpoint the trainer calls ``sync`` (TensorBoard's queue too,
fsync'ed), so whatever a checkpoint says was logged is on disk before the checkpoint is complete. A resume from that
checkpoint trims what was logged after it: ``RunDir.trim_logs`` the jsonl files, ``trim_tensorboard`` the event
files, with one rule (``core.rundir.log_filter``), so each (step, tag) is in every sink exactly once.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
from collections.abc import Callable
from pathlib import Path

from core.errors import ConfigError
from core.io import fsync_file, read_jsonl, write_atomic
from core.rundir import RunDir


class MetricsLogger:
    def __init__(self, run: RunDir, tensorboard: bool = True, wandb: dict | None = None, config: dict | None = None):
        """``wandb``: the ``logging.wandb`` section (None: no W&B); ``config``: the resolved config it records."""
        self.path, self.tb_dir, self.linearity = run.metrics, run.tb, run.linearity
        self._file = self.path.open("a", encoding="utf-8")
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run.tb))
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

    def sync(self) -> None:
        """Flush every sink and fsync its files (before a checkpoint: the logs must be as durable as it is)."""
        self.flush()
        os.fsync(self._file.fileno())
        if self.linearity.is_file():  # appended by its evaluator, closed after each row
            fsync_file(self.linearity)
        for events in self.tb_dir.glob("events.out.tfevents.*") if self.tb is not None else ():
            fsync_file(events)

    def close(self) -> None:
        self.flush()
        self._file.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


_TRIMMING = "trimming.tmp"  # not "*tfevents*": TensorBoard would read a half-written copy as events


def trim_tensorboard(tb_dir: Path, keep: Callable[[int, str], bool]) -> int:
    """Drop the summary values whose (step, tag) ``keep`` rejects from every event file under ``tb_dir`` (and a
    record torn by a crash); returns how many records were dropped. Each file is replaced atomically. Readers then
    see each (step, tag) once, without relying on their support for TensorBoard's purge events."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.summary.writer.record_writer import RecordWriter

    dropped = 0
    for leftover in Path(tb_dir).rglob(_TRIMMING):  # a trim killed midway; its source file is intact
        leftover.unlink()
    for path in sorted(Path(tb_dir).rglob("events.out.tfevents.*")):
        records = list(RawEventFileLoader(str(path)).Load())  # stops at a torn last record
        kept, changed = [], 0
        for raw in records:
            event = Event.FromString(raw)
            values = [v for v in event.summary.value if keep(event.step, v.tag)]
            if len(values) == len(event.summary.value):
                kept.append(raw)
                continue
            changed += 1
            if values:
                del event.summary.value[:]
                event.summary.value.extend(values)
                kept.append(event.SerializeToString())
        torn = path.stat().st_size != sum(len(r) + 16 for r in records)  # 16 bytes of length and checksums
        if not (changed or torn):
            continue
        dropped += changed
        buf = io.BytesIO()
        writer = RecordWriter(buf)
        for raw in kept:
            writer.write(raw)
        write_atomic(path, buf.getvalue(), tmp_name=_TRIMMING)
    return dropped


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
