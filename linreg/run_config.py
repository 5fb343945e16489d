"""The root config of a run: every component's section, loaded from YAML by ``linreg.config``'s machinery.

Kept apart from ``linreg/config.py`` because it imports each component's config module, and those import
``linreg.config`` for ``check``/``ConfigError``.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from data.config import DataConfig, TokenizerConfig
from eval.config import EvalConfig
from linreg.config import (CheckpointConfig, LoggingConfig, OptimConfig, ScheduleConfig, TrainConfig,
                           apply_overrides, check, from_dict, load_yaml_tree)
from model.config import ModelConfig
from regularizers.base import RegularizerConfig


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


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
