"""Validation loss on the run's own validation split: the first evaluator on the eval hook.

Uses the same packing as training (sequences of ``data.seq_len`` tokens, EOS between documents) over a fixed
set of ``data.val_batches`` global batches: the first ``val_batches × train.global_batch_size`` sequences in file
order, split over the ranks in micro-batches as training splits a step. The packed sequences are the windows of
``model.loss.sliding_windows`` that overlap by one token, scored by its ``window_nll``. The set, and so the loss,
is the same on any number of ranks; the mean is over all its tokens.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from core import dist
from data.cache import tokenized_split
from data.stream import PackedSamples, validation_batches
from eval.base import EvalContext, Evaluator, EvaluatorConfig
from model.loss import window_nll


@dataclass
class ValLossConfig(EvaluatorConfig):
    every: int = 200


class ValLossEvaluator(Evaluator, config=ValLossConfig):
    name = "val_loss"

    def __init__(self, cfg: ValLossConfig, ctx: EvalContext):
        super().__init__(cfg, ctx)
        data_cfg = ctx.config.data
        tokens = tokenized_split(data_cfg, "valid", ctx.tokenizer, ctx.rank, dist.barrier)
        self.samples = PackedSamples(tokens, data_cfg.seq_len)
        self.micro_batch, accum = ctx.config.train.split(ctx.world_size)
        self.num_batches = data_cfg.val_batches * accum  # micro-batches per rank

    def evaluate(self, model: torch.nn.Module, step: int) -> dict[str, float]:
        total = torch.zeros(2, dtype=torch.float64, device=self.ctx.device)  # [sum of token losses, tokens]
        for batch in validation_batches(self.samples, self.micro_batch, self.num_batches, self.ctx.rank,
                                        self.ctx.world_size):
            batch = batch.to(self.ctx.device, non_blocking=True)
            with self.ctx.autocast():
                total[0] += window_nll(model, batch).sum()
            total[1] += batch[:, 1:].numel()
        dist.all_reduce_sum(total)
        loss = (total[0] / total[1]).item()
        return {"val/loss": loss, "val/ppl": math.exp(min(loss, 50.0))}
