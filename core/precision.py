"""One vocabulary for numeric precision: ``auto`` | ``fp32`` | ``bf16``.

``auto`` is bf16 on CUDA and fp32 elsewhere (CPU bf16 matmuls are slow and not what users measure). Training runs
bf16 through DeepSpeed (bf16 weights, fp32 master copy); evaluation runs fp32 weights under ``torch.autocast`` to
bf16, so a checkpoint scores the same in the loop and from the command line.
"""
from __future__ import annotations

import contextlib
from typing import Literal

import torch

Precision = Literal["auto", "fp32", "bf16"]
CHOICES = ("auto", "fp32", "bf16")


def resolve(precision: str, device: torch.device | str | None = None) -> str:
    """``fp32`` or ``bf16`` for ``precision`` on ``device`` (default: CUDA when available)."""
    if precision not in CHOICES:
        from core.errors import ConfigError

        raise ConfigError(f"precision {precision!r} is not one of {list(CHOICES)}")
    if precision != "auto":
        return precision
    on_cuda = torch.device(device).type == "cuda" if device is not None else torch.cuda.is_available()
    return "bf16" if on_cuda else "fp32"


def autocast_dtype(precision: str, device: torch.device | str | None = None) -> torch.dtype | None:
    """The autocast dtype for evaluation at ``precision`` (None = plain fp32)."""
    return torch.bfloat16 if resolve(precision, device) == "bf16" else None


def autocast(device: torch.device | str, dtype: torch.dtype | None):
    """A context manager: autocast to ``dtype`` on ``device``'s type, or nothing when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)
