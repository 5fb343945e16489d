"""The plain-HF reference loop of issue 5: MistralForCausalLM, AdamW, bf16 autocast on GPU, no DeepSpeed.

It is what the project's step is compared against, in the same process as bench/train_throughput.py. The
'naive' cosine regularizer is the one issue 5 measured: ``output_hidden_states=True`` and one
``F.cosine_similarity`` per consecutive pair (its last state is HF's post-norm one, as in that measurement). Any
registered regularizer runs the same way: its reference ``token_loss`` once per pair (no stacking, no fused
kernel), weight 0.5 and the sum over pairs, as the bench's project setups.
No gradient clipping (a plain loop); the loss is the project's ``causal_lm_loss`` on the whole fp32 logits, as a
plain loop computes it. The project's step, with its default ``train.fused_loss``, never forms those logits whole
(``model.loss.linear_cross_entropy``); ``--set train.fused_loss=false`` gives both sides the same cross-entropy.
"""
from __future__ import annotations

import contextlib

import torch

from model.build import build_model
from model.loss import causal_lm_loss
from regularizers import RegularizerConfig, build_regularizer

NAIVE_WEIGHT = 0.5


class PlainHFLoop:
    def __init__(self, cfg, tokenizer, stream, device: torch.device, compile: bool, naive: str = "none"):
        self.model = build_model(cfg.model, tokenizer, seed=cfg.train.seed).to(device)  # fp32 weights
        if compile:
            self.model.compile()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
                                     fused=device.type == "cuda")
        self.stream, self.device = stream, device
        # the regularizer's per-token loss of a consecutive pair (x = h_i, y = h_{i+1}); None: no regularizer
        self.pair_loss = None if naive == "none" else build_regularizer(RegularizerConfig(name=naive)).token_loss
        self.accum = cfg.train.split(world_size=1)[1]
        self.autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" \
            else contextlib.nullcontext

    def step(self) -> None:
        for _ in range(self.accum):
            batch = self.stream.next_batch().to(self.device, non_blocking=True)
            with self.autocast():
                out = self.model(input_ids=batch[:, :-1], output_hidden_states=self.pair_loss is not None)
                loss = causal_lm_loss(out.logits, batch[:, 1:])
                if self.pair_loss is not None:
                    hs = out.hidden_states
                    loss = loss + NAIVE_WEIGHT * sum(
                        self.pair_loss(hs[i], hs[i + 1]).mean() for i in range(len(hs) - 1))
            (loss / self.accum).backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
