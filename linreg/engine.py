"""Everything handed to ``deepspeed.initialize``: the DeepSpeed config dict, the optimizer and its schedule.

The DeepSpeed config is generated from the typed sections (batch sizes, clipping, precision, ZeRO stage) and
then deep-merged with the YAML ``deepspeed:`` block, or with ``--deepspeed_config file.json`` when the launcher
passes one (the file wins over the block). The batch is ``train.global_batch_size`` on any number of ranks:
``gradient_accumulation_steps`` (and the micro-batch, when null) are derived (``TrainConfig.split``), and a block or
file that sets DeepSpeed's batch keys must agree with them.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from core import precision as core_precision
from core.config import deep_merge
from core.errors import ConfigError


def precision(cfg) -> str:
    """The run's training precision, ``fp32`` or ``bf16`` (``train.precision=auto``: bf16 on CUDA)."""
    return core_precision.resolve(cfg.train.precision)


def ds_config(cfg, world_size: int, override_file: str | None = None) -> dict:
    derived_micro, derived_accum = cfg.train.split(world_size)
    generated = {
        "train_batch_size": cfg.train.global_batch_size,
        "train_micro_batch_size_per_gpu": derived_micro,
        "gradient_accumulation_steps": derived_accum,
        "gradient_clipping": cfg.optim.grad_clip,
        "bf16": {"enabled": precision(cfg) == "bf16"},
        "zero_optimization": {"stage": cfg.train.zero_stage},
        "steps_per_print": 10**9,  # we log ourselves
        "wall_clock_breakdown": False,
    }
    merged = deep_merge(generated, cfg.deepspeed)
    if override_file:
        path = Path(override_file)
        if not path.is_file():
            raise ConfigError(f"--deepspeed_config: file not found: {path}")
        try:
            given = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"--deepspeed_config {path}: invalid JSON: {e}") from None
        if not isinstance(given, dict):
            raise ConfigError(f"--deepspeed_config {path}: expected a JSON object, got {type(given).__name__}")
        merged = deep_merge(merged, given)
    for section in ("fp16", "bf16", "zero_optimization"):
        if not isinstance(merged.get(section, {}), dict):
            example = "stage=2" if section == "zero_optimization" else "enabled=true"
            raise ConfigError(f"deepspeed.{section}={merged[section]!r}: expected a mapping, e.g. "
                              f"deepspeed.{section}.{example}")
    micro = merged.get("train_micro_batch_size_per_gpu")
    accum = merged.get("gradient_accumulation_steps")
    total = merged.get("train_batch_size")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (micro, accum, total)):
        raise ConfigError(f"DeepSpeed batch sizes must be integers: train_batch_size={total!r}, "
                          f"train_micro_batch_size_per_gpu={micro!r}, gradient_accumulation_steps={accum!r}")
    if (total, micro, accum) != (cfg.train.global_batch_size, derived_micro, derived_accum):
        raise ConfigError(
            f"DeepSpeed batch sizes disagree: train_batch_size {total}, train_micro_batch_size_per_gpu {micro}, "
            f"gradient_accumulation_steps {accum} on {world_size} rank(s) must be train.global_batch_size "
            f"{cfg.train.global_batch_size}, micro-batch {derived_micro} and {derived_accum} micro-steps (the "
            f"train section's): set the batch in the train section only")
    if merged.get("fp16", {}).get("enabled"):
        if not torch.cuda.is_available():
            raise ConfigError("deepspeed.fp16.enabled=true is not supported on CPU; use train.precision=fp32 or bf16")
        if merged.get("bf16", {}).get("enabled"):
            raise ConfigError("deepspeed.fp16.enabled=true and bf16 (train.precision) are both on: set "
                              "train.precision=fp32 with fp16, or drop deepspeed.fp16")
    return merged


def build_optimizer(model: torch.nn.Module, optim_cfg, device_type: str) -> torch.optim.Optimizer:
    """AdamW (or SGD, ``optim.name``) with weight decay on matrices (embeddings included, as nanoGPT), none on
    norms and biases. A client optimizer rather than DeepSpeed's FusedAdam/CPUAdam: no JIT build, and it works
    on CPU."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": optim_cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]  # DeepSpeed drops an empty group; the scheduler must agree
    if optim_cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=optim_cfg.lr, momentum=optim_cfg.momentum)
    fused = optim_cfg.fused if optim_cfg.fused is not None else device_type == "cuda"
    return torch.optim.AdamW(groups, lr=optim_cfg.lr, betas=(optim_cfg.beta1, optim_cfg.beta2), eps=optim_cfg.eps,
                             fused=fused)


_PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0, "A800": 312.0, "L40S": 362.0,
                     "A6000": 155.0, "4090": 165.0}


def peak_tflops(configured: float | None) -> float | None:
    """Dense bf16 peak of this device for MFU (None on CPU unless configured)."""
    if configured is not None:
        return configured
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in _PEAK_BF16_TFLOPS.items() if k in name), None)
