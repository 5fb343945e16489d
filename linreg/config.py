"""The root config of a run: every component's section plus the training-loop sections, loaded from YAML.

The machinery (``extends:``, dotted overrides, strict typed validation) is ``core.config``'s. Each component owns
its section: ``model/config.py``, ``data/config.py``, ``regularizers/base.py``, ``eval/config.py``; the sections
of the loop itself (optim, schedule, train, checkpoint, logging) are defined here.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from core.config import apply_overrides, check, first_difference, from_dict, load_yaml_tree
from core.errors import ConfigError
from core.io import write_atomic
from data.config import DataConfig, TokenizerConfig
from eval.config import EvalConfig
from linreg.opt_measures import OptMeasureConfig
from model.config import ModelConfig
from regularizers.base import RegularizerConfig


@dataclass
class OptimConfig:
    name: Literal["adamw", "sgd"] = "adamw"  # sgd: torch SGD with ``momentum`` (betas and eps unused)
    momentum: float = 0.0
    lr: float = 3e-4
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # 0 disables clipping (DeepSpeed's gradient_clipping)
    fused: bool | None = None  # torch AdamW fused kernel: None = on for CUDA, off on CPU

    def validate(self, p: str) -> None:
        check(self.lr > 0, f"{p}.lr", self.lr, "must be > 0")
        check(self.weight_decay >= 0, f"{p}.weight_decay", self.weight_decay, "must be >= 0")
        betas = (self.beta1, self.beta2)
        check(all(0 <= b < 1 for b in betas), f"{p}.beta1/beta2", betas, "must be in [0, 1)")
        check(self.grad_clip >= 0, f"{p}.grad_clip", self.grad_clip, "must be >= 0")
        check(0 <= self.momentum < 1, f"{p}.momentum", self.momentum, "must be in [0, 1)")


@dataclass
class ScheduleConfig:
    """Learning-rate schedule: linear warm-up, then cosine decay or WSD (warmup-stable-decay)."""
    kind: Literal["cosine", "wsd", "constant"] = "cosine"
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # final lr = lr * min_lr_ratio
    decay_fraction: float = 0.2  # WSD: fraction of max_steps spent in the final (linear) decay

    def validate(self, p: str) -> None:
        check(self.warmup_steps >= 0, f"{p}.warmup_steps", self.warmup_steps, "must be >= 0")
        check(0 <= self.min_lr_ratio <= 1, f"{p}.min_lr_ratio", self.min_lr_ratio, "must be in [0, 1]")
        check(0 < self.decay_fraction <= 1, f"{p}.decay_fraction", self.decay_fraction, "must be in (0, 1]")


@dataclass
class TrainConfig:
    """The batch contract: ``global_batch_size`` sequences per optimizer step, over all ranks together, whatever
    the number of ranks. ``micro_batch_size`` is what one rank runs per forward/backward (what fits in memory;
    null = global / ranks, no accumulation). The accumulation follows from both and the world size (``split``), as
    nanoGPT, litgpt and torchtitan derive it, so one config trains the same tokens per step on 1 or 8 GPUs."""
    max_steps: int = 1000
    global_batch_size: int = 8  # sequences per optimizer step, all ranks together
    micro_batch_size: int | None = 8  # sequences per rank per forward/backward; null = global / ranks
    grad_accum_steps: int | None = None  # derived; set it only to assert the split (a mismatch is an error)
    seed: int = 1234
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    zero_stage: int = 0
    gradient_checkpointing: bool = False
    compile: bool = False  # torch.compile the module before deepspeed.initialize
    # next-token loss from the head's input in row chunks, never the whole [B, T, V] logits (model.loss.
    # linear_cross_entropy); ZeRO-3 keeps the logits path: its partitioned head weight exists only in the forward
    fused_loss: bool = True

    def validate(self, p: str) -> None:
        for k in ("max_steps", "global_batch_size", "micro_batch_size", "grad_accum_steps"):
            if getattr(self, k) is not None:
                check(getattr(self, k) >= 1, f"{p}.{k}", getattr(self, k), "must be >= 1")
        check(self.zero_stage in (0, 1, 2, 3), f"{p}.zero_stage", self.zero_stage, "must be 0, 1, 2 or 3")

    def split(self, world_size: int) -> tuple[int, int]:
        """(micro-batch, micro-steps) of one optimizer step on ``world_size`` ranks: the micro-steps are
        global / (micro × world_size), which must be a whole number (DeepSpeed's ``train_batch_size =
        train_micro_batch_size_per_gpu × gradient_accumulation_steps × world_size``)."""
        g, w = self.global_batch_size, world_size
        if self.micro_batch_size is None and g % w:
            raise ConfigError(f"train.global_batch_size={g} cannot be split over {w} rank(s) "
                              f"(train.micro_batch_size=null): set train.global_batch_size to a multiple of {w}")
        m = self.micro_batch_size if self.micro_batch_size is not None else g // w
        if g % (m * w):
            fix = (f"set train.micro_batch_size to a divisor of {g // w} (global / ranks)" if g % w == 0 else
                   f"set train.global_batch_size to a multiple of {m * w}")
            raise ConfigError(f"train.global_batch_size={g} is not divisible by train.micro_batch_size {m} × "
                              f"{w} rank(s) = {m * w}: {fix}")
        accum = g // (m * w)
        if self.grad_accum_steps is not None and self.grad_accum_steps != accum:
            raise ConfigError(f"train.grad_accum_steps={self.grad_accum_steps} disagrees with train.global_batch_size "
                              f"{g} / (micro_batch_size {m} × {w} rank(s)) = {accum}: drop it, it is derived")
        return m, accum


@dataclass
class CheckpointConfig:
    every: int = 500  # steps between checkpoints (0 = only at the end / on preemption)
    keep_last: int = 2
    export_at_end: bool = True  # write run_dir/export (HF save_pretrained format)

    def validate(self, p: str) -> None:
        check(self.every >= 0, f"{p}.every", self.every, "must be >= 0")
        check(self.keep_last >= 1, f"{p}.keep_last", self.keep_last, "must be >= 1")


@dataclass
class WandbConfig:
    """Weights & Biases: every scalar of metrics.jsonl, under the same names, from rank 0 (``pip install wandb``).
    ``mode: offline`` writes the run under ``$WANDB_DIR`` (default: the run dir) with no network; ``wandb sync``
    uploads it later. A sweep sets ``group`` to its name and ``job_type`` to the variant."""
    project: str = "linreg"
    entity: str | None = None
    group: str | None = None
    job_type: str | None = None
    name: str | None = None  # None: the run dir's name
    mode: Literal["online", "offline", "disabled"] = "online"

    def validate(self, p: str) -> None:
        import importlib.util

        # Checked with the config, before any data or model work, not when the first scalar is logged.
        if self.mode != "disabled" and importlib.util.find_spec("wandb") is None:
            raise ConfigError(f"{p} is set but the wandb package is not installed: pip install wandb")


@dataclass
class LoggingConfig:
    every: int = 10  # steps between log lines (loss is synchronised to the host only here)
    tensorboard: bool = True
    progress_bar: bool = True
    peak_tflops: float | None = None  # per-device peak for MFU; None = look up the GPU model, no MFU on CPU
    wandb: WandbConfig | None = None  # Weights & Biases logging (off unless set)

    def validate(self, p: str) -> None:
        check(self.every >= 1, f"{p}.every", self.every, "must be >= 1")


@dataclass
class Config:
    name: str = "run"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    regularizer: RegularizerConfig = field(default_factory=RegularizerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    deepspeed: dict = field(default_factory=dict)  # merged over the generated DeepSpeed config
    measure: OptMeasureConfig | None = None  # optimisation measurements (linreg/opt_measures.py); testbed runs

    def validate(self, p: str) -> None:
        check(self.model.max_seq_len >= self.data.seq_len, "data.seq_len", self.data.seq_len,
              f"exceeds model.max_seq_len={self.model.max_seq_len}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_config(path: str | os.PathLike | None, overrides: list[str] = (), tree: dict | None = None) -> Config:
    """Load a config file (with ``extends``) plus dotted overrides into a validated ``Config``."""
    if tree is None:
        tree = load_yaml_tree(path) if path is not None else {}
    tree = apply_overrides(tree, list(overrides))
    if "name" not in tree and path is not None:
        tree["name"] = Path(path).stem
    return from_dict(Config, tree)


def to_yaml(cfg: Config) -> str:
    """The resolved config as YAML: every key with its value (``--print-config``, a run's config.yaml)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write atomically: a crash never leaves a torn config.yaml for the next resume to read."""
    write_atomic(path, to_yaml(cfg))


def resolve_run(config: str | None, run_dir: str | None, resume: str | None, overrides: list[str] = ()):
    """The config to run with and its ``RunDir``, from the command line. A resume reads back the run dir's
    config.yaml (dotted overrides still apply); without ``run_dir`` the run dir is ``runs/<config name>``, or the
    run a ``--resume PATH`` checkpoint belongs to."""
    from core.rundir import RunDir, find_checkpoint

    if config is None and resume is None:
        raise ConfigError("--config is required (or --resume with an existing run dir)")
    run = RunDir(run_dir) if run_dir else None
    if resume not in (None, "auto") and run is None:
        run = RunDir.of_checkpoint(find_checkpoint(resume))
    if run is None:
        run = RunDir(Path("runs") / load_config(config, overrides).name)
    if resume is not None and run.config.is_file():
        cfg = load_config(run.config, overrides)
        if config is not None:  # the run's own config.yaml wins; a --config that says otherwise is refused
            diff = first_difference(load_config(config, overrides).to_dict(), cfg.to_dict())
            if diff is not None:
                raise ConfigError(f"--config {config} differs from the run's {run.config} at {diff}: a resume uses "
                                  f"the run's config; drop --config, or pass the change as a dotted override")
        return cfg, run
    if config is None:
        raise ConfigError(f"--resume {resume}: no config.yaml in {run.path}; pass --config")
    return load_config(config, overrides), run
