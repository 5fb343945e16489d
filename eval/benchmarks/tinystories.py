"""TinyStories validation loss, bits per byte and perplexity.

The validation stories are tokenised without special tokens and joined into one stream with EOS before the first
story and after every story (``EOS s1 EOS s2 EOS ...``), the packing training uses. The stream is cut into windows
of ``seq_len + 1`` tokens that overlap by one token, so every story token and every story-ending EOS is predicted
exactly once, with the preceding tokens of its window as context (the first token of a window sees no earlier
window). Reported:

- ``loss``: mean cross-entropy (nats) over the predicted tokens; ``ppl = exp(loss)``;
- ``bpb``: total cross-entropy in bits / UTF-8 bytes of the stories (EOS predictions count in the numerator, no
  bytes in the denominator) -- comparable across tokenizers, unlike ``loss``;
- ``tokens``, ``bytes``: the counts behind them.

Data: ``<root>/tinystories/valid.txt`` (stories separated by ``<|endoftext|>`` lines) or, without a data root, the
``validation`` split of ``roneneldan/TinyStories`` (``text`` stripped, empty rows dropped). ``linreg data``
writes that split as ``valid.txt``; a ``valid.txt`` its manifest does not list (e.g. shared/data's 1,726-story
sample) is evaluated with a warning, which the results carry as a note.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from core import precision
from core.dist import all_reduce_sum
from eval.benchmarks.scorer import run_sharded
from eval.benchmarks.tasks.base import Task, TaskDataError, load_hub_split, require_file
from model.loss import causal_lm_loss

HUB_DATASET = "roneneldan/TinyStories"
LOCAL_FILE = "tinystories/valid.txt"


@dataclass
class LossData:
    windows: list[torch.Tensor]  # each seq_len + 1 tokens (the last may be shorter)
    num_docs: int
    num_bytes: int
    seq_len: int


class TinyStories(Task):
    """Loss and bits per byte of the TinyStories validation stories (metrics: loss, bpb, ppl)."""

    def documents(self) -> list[str]:
        if self.data.root is None:
            rows = load_hub_split(self.name, HUB_DATASET, None, "validation")
            return [r["text"].strip() for r in rows if r["text"].strip()]
        from data.prepare import MANIFEST, prepared
        from data.sources import read_txt_documents

        path = require_file(self.name, self.data.root / LOCAL_FILE)
        docs = read_txt_documents(path)
        if not docs:
            raise TaskDataError(f"task '{self.name}': no stories in {path}")
        if not prepared(self.data.root, LOCAL_FILE) and not self.notes:
            self.note(f"task '{self.name}': {path} ({len(docs):,} stories) is not the full validation split of "
                      f"{HUB_DATASET} (not in {MANIFEST}); its loss is not comparable with full-split numbers -- "
                      f"build the split with linreg data --root DIR --only tinystories")
        return docs

    def build(self, tokenizer, seq_len: int, limit: int | None = None) -> LossData:
        docs = self.documents()
        docs = docs[:limit] if limit else docs
        eos = tokenizer.eos_token_id
        stream = [eos]
        for ids in tokenizer(docs, add_special_tokens=False)["input_ids"]:
            stream += ids
            stream.append(eos)
        t = torch.tensor(stream, dtype=torch.long)
        windows = [t[i:i + seq_len + 1] for i in range(0, len(stream) - 1, seq_len)]
        return LossData(windows, len(docs), sum(len(d.encode("utf-8")) for d in docs), seq_len)


@torch.no_grad()
def evaluate_loss(model, data: LossData, *, device, autocast_dtype=None, batch_tokens: int = 16384, rank: int = 0,
                  world_size: int = 1, desc: str | None = None) -> dict[str, float]:
    """Cross-entropy over all windows (split across ranks, summed with all-reduce): loss, bpb, ppl, tokens, bytes."""
    device = torch.device(device)
    rows = max(1, batch_tokens // (data.seq_len + 1))
    full = [w for w in data.windows if len(w) == data.seq_len + 1]
    batches = [full[i:i + rows] for i in range(0, len(full), rows)]
    batches += [[w] for w in data.windows if len(w) != data.seq_len + 1]
    total = torch.zeros(2, dtype=torch.float64, device=device)  # [sum of token losses (nats), tokens]

    def autocast():
        return precision.autocast(device, autocast_dtype)

    def run(i: int) -> None:
        x = torch.stack(batches[i]).to(device)
        with autocast():
            logits = model(input_ids=x[:, :-1], use_cache=False).logits
        for b in range(x.shape[0]):  # one row at a time keeps the fp32 copy of the logits small
            total[0] += causal_lm_loss(logits[b], x[b, 1:], reduction="sum").double()
        total[1] += x[:, 1:].numel()

    def dummy() -> None:
        with autocast():
            model(input_ids=data.windows[0][None, :1].to(device), use_cache=False)

    run_sharded(len(batches), run, dummy, rank, world_size, desc)
    all_reduce_sum(total)
    nats, tokens = float(total[0]), int(total[1])
    loss = nats / tokens
    return {"loss": loss, "bpb": nats / math.log(2) / data.num_bytes, "ppl": math.exp(loss),
            "tokens": float(tokens), "bytes": float(data.num_bytes)}
