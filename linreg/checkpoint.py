"""Checkpoints: DeepSpeed's own ``engine.save_checkpoint`` plus what it does not save.

Layout: ``run_dir/checkpoints/step_00000100/`` (DeepSpeed's files, our ``rng_rank<r>.pt`` per rank) and
``run_dir/checkpoints/latest`` naming the newest *complete* tag: it is rewritten atomically only after every rank
has finished writing, so a crash mid-save leaves the previous checkpoint as ``latest``. The client state holds
the step, tokens seen, the data position and the resolved config.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from linreg import dist

LATEST = "latest"


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


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


def save(engine, ckpt_root: Path, step: int, client_state: dict, keep_last: int, meta: dict | None = None) -> Path:
    """Save on all ranks (collective); returns the tag directory. ``meta`` (small, JSON) is written as meta.json
    and checked by ``check_compatible`` before a later load touches any weights."""
    tag = tag_for(step)
    engine.save_checkpoint(str(ckpt_root), tag=tag, client_state=client_state, save_latest=False)
    torch.save(_rng_to_tensors(dist.rng_state()), ckpt_root / tag / f"rng_rank{dist.rank()}.pt")
    dist.barrier()
    if dist.rank() == 0:
        (ckpt_root / tag / "meta.json").write_text(json.dumps({"step": step, **(meta or {})}, indent=1))
        tmp = ckpt_root / (LATEST + ".tmp")
        tmp.write_text(tag)
        os.replace(tmp, ckpt_root / LATEST)
        tags = sorted(p for p in ckpt_root.glob("step_*") if p.is_dir())
        for old in tags[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return ckpt_root / tag


def latest(ckpt_root: Path) -> Path | None:
    marker = Path(ckpt_root) / LATEST
    if not marker.is_file():
        return None
    path = Path(ckpt_root) / marker.read_text().strip()
    return path if path.is_dir() else None


def resolve(path: str | os.PathLike) -> Path:
    """A checkpoint tag directory from: a tag dir, a checkpoints dir (its latest) or a run dir (its latest)."""
    path = Path(path)
    for root in (path, path / "checkpoints"):
        found = latest(root)
        if found is not None:
            return found
    if any(path.glob("*mp_rank_00_model_states.pt")):  # stage 0-2: mp_rank_00_..., stage 3: zero_pp_rank_0_mp_rank_00_...
        return path
    raise FileNotFoundError(f"no checkpoint found at {path} (expected a run dir, its checkpoints/ or a step_* dir)")


def check_compatible(tag_dir: Path, meta: dict) -> None:
    """One-line error when the checkpoint was written for another tokenizer or model shape."""
    path = tag_dir / "meta.json"
    if not path.is_file():
        return
    saved = json.loads(path.read_text())
    for key, now in meta.items():
        if key in saved and saved[key] != now:
            raise ValueError(f"checkpoint {tag_dir} does not match this run: {key} was {saved[key]!r}, now {now!r}")


def load(engine, tag_dir: Path) -> dict:
    """Restore model, optimizer, scheduler and this rank's RNG; return the client state."""
    load_path, client_state = engine.load_checkpoint(str(tag_dir.parent), tag=tag_dir.name)
    if load_path is None:
        raise FileNotFoundError(f"DeepSpeed could not load the checkpoint {tag_dir}")
    rng_file = tag_dir / f"rng_rank{dist.rank()}.pt"
    if rng_file.is_file():
        dist.set_rng_state(_rng_from_tensors(torch.load(rng_file, weights_only=True)))
    return client_state
