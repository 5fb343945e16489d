"""The Trainer on the in-context regression testbed (``model.arch: linear_attention`` with ``data.icl``).

Same loop, engine, checkpoints, resume, regularizers and logging as a language model; what differs is only what
the loop is fed and how a loss is made: the model is ``model/linear_attention.py``'s linear Transformer, the stream
``data/icl_regression.py``'s prompts, the task loss the squared error (y_hat - y_q)^2 averaged over prompts
(``train/task_loss``), and no tokenizer or HF export. A "token" in the throughput
columns is one row of a prompt (n+1 per prompt).

With ``measure:`` set, the optimisation measurements of ``linreg/opt_measures.py`` are logged on their own
cadence; they draw their own prompts (another seed), so they never move the training stream.
"""
from __future__ import annotations

import dataclasses

import torch

from core.errors import ConfigError
from linreg.trainer import Trainer


def build_testbed(cfg, rank: int, world: int):
    """(model, stream) of a linear-attention config."""
    from data.icl_regression import ICLRegressionStream
    from model.linear_attention import build_linear_attention

    if cfg.data.icl is None:
        raise ConfigError("model.arch=linear_attention needs data.icl (the in-context regression prompts)")
    for name in ("val_loss", "linearity", "benchmarks"):  # text evaluators: they need a tokenizer
        if getattr(cfg.eval, name).enabled:
            raise ConfigError(f"eval.{name}.enabled=true: the text evaluators do not apply to "
                              f"model.arch=linear_attention (set eval.{name}.enabled=false)")
    model = build_linear_attention(cfg.data.icl.dim, cfg.model.num_layers, cfg.model.init_std, seed=cfg.train.seed)
    stream = ICLRegressionStream(cfg.data.icl, cfg.train.split(world)[0], rank, world, cfg.train.seed)
    return model, stream


class ICLTrainer(Trainer):
    def __init__(self, cfg, run, **kwargs):
        from core import dist

        model, stream = build_testbed(cfg, dist.rank(), dist.world_size())
        self.measurer = None
        super().__init__(cfg, run, model=model, stream=stream, **kwargs)
        if cfg.measure is not None:
            from linreg.opt_measures import OptMeasurer

            self.measurer = OptMeasurer(cfg.measure, cfg.data.icl, self.engine.module, self.device)

    def _build_tokenizer(self, given=None):
        return None  # real-valued prompts

    def _checkpoint_meta(self) -> dict:
        return {"tokenizer": None, "vocab_size": 0,
                "model": {"architecture": "linear_attention", "num_layers": self.cfg.model.num_layers,
                          "data": dataclasses.asdict(self.cfg.data.icl)}}

    @property
    def seq_len(self) -> int:
        return self.cfg.data.icl.seq_len

    def forward_loss(self, batch, step: int):
        prompts, targets = (t.to(self.device, non_blocking=True) for t in batch)
        pred, reg = self.forward_regularized(step, prompts)
        return torch.nn.functional.mse_loss(pred.float(), targets.float()), reg

    def train_step(self) -> None:
        due = self.measurer is not None and self.measurer.due(self.state.step + 1)
        if due:
            self.measurer.before_update(self.state.step + 1)
        super().train_step()
        if due:
            self.log(self.state.step, self.measurer.after_update(self.state.step))
