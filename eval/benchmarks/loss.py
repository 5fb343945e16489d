"""Loss tasks: a model's cross-entropy on a token stream (TinyStories validation, WikiText-2 test).

A loss task turns its documents into one token stream (``LossTask.stream``: how is the task's own definition)
and scores it in the sliding windows of ``model.loss`` (``sliding_windows``, ``window_nll``): windows of
``seq_len + 1`` tokens starting every ``stride`` tokens, each scoring the targets the previous one did not. The
default stride, ``seq_len``, overlaps windows by one token, so every token after the first is predicted exactly
once. Reported (``metric_names`` picks which):

- ``loss``: mean cross-entropy (nats) over the predicted tokens; ``ppl = exp(loss)``; ``nll``: their sum;
- ``bpb``: total cross-entropy in bits / UTF-8 bytes of the scored text -- comparable across tokenizers;
- ``word_ppl = exp(nll / words)``, words being the whitespace-separated words of the scored text (tasks that
  count them);
- ``tokens``, ``bytes``: the counts behind them.

Windows are scored in batches of ``batch_tokens // (seq_len + 1)`` full windows (a shorter last window alone),
dealt round-robin to the ranks and summed with an all-reduce.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from core import precision
from core.dist import all_reduce_sum
from core.errors import ConfigError
from eval.benchmarks.scorer import run_sharded
from eval.benchmarks.tasks.base import Column, Group, Task
from model.loss import sliding_windows, window_nll

LOSS = Group("loss", "Language-model loss", split=True)


@dataclass
class Stream:
    """A task's scored token stream and the text it covers."""
    ids: list[int]
    num_docs: int
    num_bytes: int
    num_words: int | None = None  # None: the task does not count words
    settings: dict = field(default_factory=dict)  # how it was made (written next to the numbers)


@dataclass
class LossData:
    ids: torch.Tensor  # the scored token stream
    spans: list[tuple[int, int, int]]  # (begin, end, scored) per window
    num_docs: int
    num_bytes: int
    num_words: int | None
    seq_len: int  # predictions per full window: windows hold seq_len + 1 tokens
    stride: int
    settings: dict = field(default_factory=dict)


class LossTask(Task):
    """A task scored by its loss. Subclasses define ``stream`` and, where they differ, ``default_stride``."""
    group = LOSS
    metric_names: ClassVar[tuple[str, ...]] = ("loss", "bpb", "ppl", "tokens", "bytes")
    columns = (Column("loss", "loss", "nats"), Column("bpb", "bpb", "nats"),
               Column("ppl", "ppl", "ratio", compared=False))

    def stream(self, tokenizer, limit: int | None, max_tokens: int | None) -> Stream:
        """The token stream of the first ``limit`` documents, cut to its first ``max_tokens`` tokens."""
        raise NotImplementedError

    def default_stride(self, seq_len: int) -> int:
        return seq_len

    def build(self, tokenizer, seq_len: int, limit: int | None = None, *, stride: int | None = None,
              max_tokens: int | None = None) -> LossData:
        stride = stride or self.default_stride(seq_len)
        if not 1 <= stride <= seq_len + 1:
            raise ConfigError(f"task '{self.name}': stride {stride} must be in [1, window={seq_len + 1}]")
        s = self.stream(tokenizer, limit, max_tokens)
        ids = torch.tensor(s.ids, dtype=torch.long)
        return LossData(ids, sliding_windows(len(s.ids), seq_len + 1, stride), s.num_docs, s.num_bytes,
                        s.num_words, seq_len, stride, s.settings)


@torch.no_grad()
def evaluate_loss(model, data: LossData, *, device, autocast_dtype=None, batch_tokens: int = 16384, rank: int = 0,
                  world_size: int = 1, desc: str | None = None, per_window: list | None = None,
                  metrics: tuple[str, ...] = LossTask.metric_names) -> dict[str, float]:
    """The ``metrics`` of the module docstring over all windows. ``per_window`` (one rank only) receives (NLL,
    scored tokens) of each window in stream order, for paired comparisons."""
    device = torch.device(device)
    context = data.seq_len + 1
    rows = max(1, batch_tokens // context)
    full = [s for s in data.spans if s[1] - s[0] == context]
    batches = [full[i:i + rows] for i in range(0, len(full), rows)]
    batches += [[s] for s in data.spans if s[1] - s[0] != context]
    total = torch.zeros(2, dtype=torch.float64, device=device)  # [sum of token losses (nats), tokens]
    by_window: dict[int, tuple[float, int]] = {}

    def run(i: int) -> None:
        x = torch.stack([data.ids[b:e] for b, e, _ in batches[i]]).to(device)
        scored = [k for _, _, k in batches[i]]
        with precision.autocast(device, autocast_dtype):
            nll = window_nll(model, x, scored)
        total[0] += nll.sum()
        total[1] += sum(scored)
        if per_window is not None:
            by_window.update({b: (float(v), k) for (b, _, k), v in zip(batches[i], nll.tolist())})

    def dummy() -> None:
        with precision.autocast(device, autocast_dtype):
            model(input_ids=data.ids[None, :1].to(device), use_cache=False)

    run_sharded(len(batches), run, dummy, rank, world_size, desc)
    all_reduce_sum(total)
    if per_window is not None:
        per_window += [by_window[b] for b in sorted(by_window)]
    nats, tokens = float(total[0]), int(total[1])
    out = {"loss": nats / tokens, "nll": nats, "bpb": nats / math.log(2) / data.num_bytes,
           "ppl": math.exp(nats / tokens), "tokens": float(tokens), "bytes": float(data.num_bytes)}
    if data.num_words:
        out["word_ppl"] = math.exp(nats / data.num_words)
    return {k: out[k] for k in metrics}
