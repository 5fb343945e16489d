"""Checkpoints: DeepSpeed's own ``engine.save_checkpoint`` plus what it does not save, in one symmetric mechanism.

Components with state (the train state, the step meter, the data stream) register with the ``Checkpointer``;
``save`` writes each one's ``state_dict()`` into DeepSpeed's client state and ``load`` hands it back to the same
component's ``load_state_dict``. Per rank it adds ``rng_rank<r>.pt`` (plain tensors: loads with
``weights_only=True``) and, on rank 0, ``meta.json`` (tokenizer fingerprint, vocabulary, model shape), which
``load`` checks before any weights are read.

Layout (``core.rundir``): ``checkpoints/step_00000100/``. A save is complete when its ``manifest.json`` exists:
rank 0 writes it (every file with its size, fsync'ed) after every rank has written and fsync'ed its files, and only
then moves ``checkpoints/latest``. ``--resume auto`` takes the newest checkpoint whose manifest checks out, so a
crash at any moment of a save leaves the previous checkpoint in charge, and a truncated or missing file is found
and named before DeepSpeed reads anything. A complete checkpoint is never written into again; the debris of an
interrupted save of the same step is removed first.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from core import dist
from core.errors import CheckpointError
from core.io import fsync_file, write_atomic
from core.rundir import LATEST, RunDir, tag_for, verify_checkpoint, write_manifest
from linreg import universal


class Stateful(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def _rng_to_tensors(state: dict) -> dict:
    # Plain tensors/ints only, so the file loads with torch.load(weights_only=True).
    py_version, py_state, py_gauss = state["python"]
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    out = {"python": torch.tensor(py_state, dtype=torch.int64), "python_version": py_version,
           "python_gauss": py_gauss, "numpy_keys": torch.from_numpy(np_keys.astype(np.int64)),
           "numpy_pos": int(np_pos), "numpy_has_gauss": int(np_has_gauss), "numpy_gauss": float(np_gauss),
           "torch": state["torch"]}
    if "cuda" in state:
        out["cuda"] = state["cuda"]
    return out


def _rng_from_tensors(t: dict) -> dict:
    state = {"python": (t["python_version"], tuple(int(x) for x in t["python"]), t["python_gauss"]),
             "numpy": ("MT19937", t["numpy_keys"].numpy().astype(np.uint32), t["numpy_pos"], t["numpy_has_gauss"],
                       t["numpy_gauss"]),
             "torch": t["torch"]}
    if "cuda" in t:
        state["cuda"] = t["cuda"]
    return state


_FAILPOINT_HITS: dict[str, int] = {}


def failpoint(name: str) -> None:
    """Fault injection for tests: ``LINREG_FAILPOINT=<name>[@N]`` kills this process with SIGKILL (as ``kill -9``
    or a node failure would) the N-th time (default: the first) it passes the point ``name``;
    ``<name>[@N]:sigterm`` sends it SIGTERM there instead (a preemption at a known moment), and
    ``<name>:sleep=S`` waits S seconds there every time (a slow disk)."""
    spec, _, action = os.environ.get("LINREG_FAILPOINT", "").partition(":")
    target, _, nth = spec.partition("@")
    if target != name:
        return
    if action.startswith("sleep="):
        time.sleep(float(action.removeprefix("sleep=")))
        return
    _FAILPOINT_HITS[name] = _FAILPOINT_HITS.get(name, 0) + 1
    if _FAILPOINT_HITS[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGTERM if action == "sigterm" else signal.SIGKILL)


class Checkpointer:
    def __init__(self, engine, run: RunDir, every: int, keep_last: int, meta: dict, extra: dict | None = None):
        """``meta``: small JSON written as meta.json and checked on load; ``extra``: more client state to save
        (e.g. the resolved config), never loaded back."""
        self.engine, self.run = engine, run
        self.every, self.keep_last = every, keep_last
        self.meta, self.extra = meta, extra or {}
        self.stateful: dict[str, Stateful] = {}

    def register(self, name: str, obj: Stateful) -> None:
        self.stateful[name] = obj

    def due(self, step: int) -> bool:
        """A periodic checkpoint is due (the final one and preemption saves are the trainer's decision)."""
        return self.every > 0 and step % self.every == 0

    def save(self, step: int) -> Path:
        """Save on all ranks (collective); returns the tag directory."""
        root, tag = self.run.checkpoints, tag_for(step)
        tag_dir = root / tag
        if verify_checkpoint(tag_dir) is None:  # already complete (a requeued run): never rewrite it
            return tag_dir
        if dist.rank() == 0 and tag_dir.exists():  # debris of a save of this step that did not finish
            shutil.rmtree(tag_dir)
        dist.barrier()
        started = time.perf_counter()
        client = {**self.extra, **{name: obj.state_dict() for name, obj in self.stateful.items()}}
        failpoint("before_save")
        self.engine.save_checkpoint(str(root), tag=tag, client_state=client, save_latest=False)
        failpoint("after_engine_save")
        rng_file = tag_dir / f"rng_rank{dist.rank()}.pt"
        torch.save(_rng_to_tensors(dist.rng_state()), rng_file)
        for f in tag_dir.rglob("*"):  # this rank's files (a shared filesystem lists the others' too: harmless)
            if f.is_file():
                fsync_file(f)
        dist.barrier()
        if dist.rank() == 0:
            # save_seconds: what a stop save costs, known before the next stop (launch.py kills after 30 s)
            (tag_dir / "meta.json").write_text(json.dumps({"step": step, "world_size": dist.world_size(),
                                                           "save_seconds": round(time.perf_counter() - started, 2),
                                                           **self.meta}, indent=1))
            failpoint("before_manifest")
            write_manifest(tag_dir)
            failpoint("before_latest")
            write_atomic(root / LATEST, tag)
            complete = [d for d in self.run.checkpoint_dirs() if verify_checkpoint(d) is None]
            for old in complete[:-self.keep_last]:
                if old != tag_dir:
                    shutil.rmtree(old, ignore_errors=True)
        dist.barrier()
        return tag_dir

    @staticmethod
    def save_seconds(tag_dir: Path) -> float | None:
        """How long writing the checkpoint ``tag_dir`` took (its meta.json), or None where it is not recorded."""
        try:
            return float(json.loads((tag_dir / "meta.json").read_text())["save_seconds"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def check_compatible(self, tag_dir: Path) -> None:
        """One-line error when the checkpoint is damaged or was written for another tokenizer, model shape or
        (ZeRO stages 1-3, whose optimizer state is partitioned by rank) another number of ranks."""
        problem = verify_checkpoint(tag_dir)
        if problem is not None:
            raise CheckpointError(problem)
        path = tag_dir / "meta.json"
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            raise CheckpointError(f"{path} is not readable JSON") from None
        stage = self.engine.zero_optimization_stage()
        if (universal.needs_universal(saved.get("world_size"), stage, dist.world_size())
                and not self.engine.load_universal_checkpoint()):
            raise CheckpointError(
                f"checkpoint {tag_dir} was written by {saved['world_size']} ranks with ZeRO-{stage}, this run has "
                f"{dist.world_size()}: ZeRO partitions the optimizer state by rank. Resume with "
                f"{saved['world_size']} ranks, or convert it first: linreg universal --run {tag_dir}")
        for key, now in self.meta.items():
            if key in saved and saved[key] != now:
                raise CheckpointError(f"checkpoint {tag_dir} does not match this run: {key} was {saved[key]!r}, "
                                      f"now {now!r}")

    def load(self, tag_dir: Path) -> dict[str, Any]:
        """Restore model, optimizer, scheduler, this rank's RNG and every registered component."""
        self.check_compatible(tag_dir)
        # A universal copy (linreg.universal) sits inside its checkpoint; meta.json, RNG files and the manifest
        # checked above are the checkpoint's own.
        load_dir, tag = ((tag_dir, universal.UNIVERSAL) if self.engine.load_universal_checkpoint()
                         else (tag_dir.parent, tag_dir.name))
        try:
            load_path, client = self.engine.load_checkpoint(str(load_dir), tag=tag)
        except (RuntimeError, EOFError, OSError, KeyError) as e:  # torch.load of a damaged file
            raise CheckpointError(f"checkpoint {tag_dir} could not be loaded: {type(e).__name__}: "
                                  f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}") from None
        if load_path is None:
            raise CheckpointError(f"DeepSpeed could not load the checkpoint {tag_dir}")
        rng_file = tag_dir / f"rng_rank{dist.rank()}.pt"
        if rng_file.is_file():
            try:
                dist.set_rng_state(_rng_from_tensors(torch.load(rng_file, weights_only=True)))
            except Exception as e:  # a truncated or foreign file: name it
                raise CheckpointError(f"{rng_file} could not be loaded: {type(e).__name__}") from None
        for name, obj in self.stateful.items():
            if name not in client:
                raise CheckpointError(f"checkpoint {tag_dir} has no '{name}' state (written by another version?)")
            obj.load_state_dict(client[name])
        return client
