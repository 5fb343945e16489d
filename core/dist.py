"""Distributed set-up that works the same under the DeepSpeed launcher, torchrun, or a plain ``python train.py``.

The launcher sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT and appends ``--local_rank=N``;
without one we set the single-process defaults ourselves, otherwise ``deepspeed.init_distributed`` falls back to
MPI discovery and fails on a missing ``mpi4py``.
"""
from __future__ import annotations

import os
import random
import socket

import numpy as np
import torch
import torch.distributed as dist


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_SINGLE = "LINREG_SINGLE_PROCESS"


def setup_env(local_rank: int | None = None) -> None:
    if local_rank is not None and local_rank >= 0:
        os.environ.setdefault("LOCAL_RANK", str(local_rank))
    # No launcher: a single process. Variables a parent process set for itself this way (marked with its port)
    # are not a launcher's either: a child (a test, a sweep) must not reuse the parent's rendezvous port. A
    # launcher's children have the launcher's MASTER_PORT, never the marked one.
    marked = os.environ.get(_SINGLE)
    inherited = marked is not None and marked == os.environ.get("MASTER_PORT") and not dist.is_initialized()
    if "RANK" not in os.environ or inherited:
        port = str(_free_port())
        os.environ.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                           "MASTER_PORT": port, _SINGLE: port})
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # silences DeepSpeed's accelerator probe on CPU machines


def skip_inference_comm_op() -> None:
    """On CPU, mark DeepSpeed's shared-memory communication op unbuildable, so no C++ is compiled at run time.

    DeepSpeed's ``TorchBackend`` JIT-builds ``deepspeed_shm_comm`` (a minute of g++ on a small CPU, once per
    ``TORCH_EXTENSIONS_DIR``) on the first ``init_distributed`` whenever its compatibility table allows it. The op
    serves only ``inference_all_reduce`` (tensor-parallel inference); training collectives go through
    ``torch.distributed`` (gloo) either way, so runs are unchanged with it marked incompatible, in one process or
    many. On GPU the CPU accelerator's builder does not exist and nothing needs doing.
    """
    if torch.cuda.is_available():
        return
    import deepspeed.ops
    from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder

    deepspeed.ops.__compatible_ops__[ShareMemCommBuilder.NAME] = False


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", 0))


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", 1))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t




def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
