"""Checkpoints: DeepSpeed's own ``engine.save_checkpoint`` plus what it does not save, in one symmetric mechanism.

Components with state (the train state, the step meter, the data stream) register with the ``Checkpointer``;
``save`` writes each one's ``state_dict()`` into DeepSpeed's client state and ``load`` hands it back to the same
component's ``load_state_dict``. Per rank it adds ``rng_rank<r>.pt`` (plain tensors: loads with
``weights_only=True``) and, on rank 0, ``meta.json`` (tokenizer fingerprint, vocabulary, model shape), which
``load`` checks before any weights are read.

Layout (``core.rundir``): ``checkpoints/step_00000100/`` and ``checkpoints/latest`` naming the newest *complete*
tag: it is rewritten atomically only after every rank has finished writing, so a crash mid-save leaves the
previous checkpoint as ``latest``.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from core import dist
from core.errors import CheckpointError
from core.rundir import LATEST, RunDir, tag_for


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
        client = {**self.extra, **{name: obj.state_dict() for name, obj in self.stateful.items()}}
        self.engine.save_checkpoint(str(root), tag=tag, client_state=client, save_latest=False)
        torch.save(_rng_to_tensors(dist.rng_state()), root / tag / f"rng_rank{dist.rank()}.pt")
        dist.barrier()
        if dist.rank() == 0:
            (root / tag / "meta.json").write_text(json.dumps({"step": step, **self.meta}, indent=1))
            tmp = root / (LATEST + ".tmp")
            tmp.write_text(tag)
            os.replace(tmp, root / LATEST)
            for old in self.run.checkpoint_dirs()[:-self.keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        dist.barrier()
        return root / tag

    def check_compatible(self, tag_dir: Path) -> None:
        """One-line error when the checkpoint was written for another tokenizer or model shape."""
        path = tag_dir / "meta.json"
        if not path.is_file():
            return
        saved = json.loads(path.read_text())
        for key, now in self.meta.items():
            if key in saved and saved[key] != now:
                raise CheckpointError(f"checkpoint {tag_dir} does not match this run: {key} was {saved[key]!r}, "
                                      f"now {now!r}")

    def load(self, tag_dir: Path) -> dict[str, Any]:
        """Restore model, optimizer, scheduler, this rank's RNG and every registered component."""
        self.check_compatible(tag_dir)
        load_path, client = self.engine.load_checkpoint(str(tag_dir.parent), tag=tag_dir.name)
        if load_path is None:
            raise CheckpointError(f"DeepSpeed could not load the checkpoint {tag_dir}")
        rng_file = tag_dir / f"rng_rank{dist.rank()}.pt"
        if rng_file.is_file():
            dist.set_rng_state(_rng_from_tensors(torch.load(rng_file, weights_only=True)))
        for name, obj in self.stateful.items():
            if name not in client:
                raise CheckpointError(f"checkpoint {tag_dir} has no '{name}' state (written by another version?)")
            obj.load_state_dict(client[name])
        return client
