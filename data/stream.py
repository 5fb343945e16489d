"""Packed, deterministic, resumable batches.

The token stream (documents separated by EOS) is cut into samples of ``seq_len + 1`` tokens with stride
``seq_len`` (inputs = sample[:-1], targets = sample[1:], so every token is a target exactly once).

Training order: epoch ``e`` visits samples in ``randperm(N, seed + e)``. A global cursor counts samples
consumed by all ranks together; each call of ``next_batch()`` takes the next ``world_size * micro_batch``
samples, of which rank ``r`` gets the slice ``[r * micro_batch, (r + 1) * micro_batch)``. One optimizer step of
``grad_accum`` micro-steps therefore sees the same samples for any split of the global batch into
micro-batches and ranks, and resuming only needs the cursor (``state_dict``): no replay, no skip.
"""
from __future__ import annotations

import numpy as np
import torch

from core.errors import CheckpointError, DataError


class PackedSamples:
    def __init__(self, tokens: np.ndarray, seq_len: int):
        self.tokens = tokens
        self.seq_len = seq_len
        self.num_samples = (len(tokens) - 1) // seq_len
        if self.num_samples < 1:
            raise DataError(f"dataset has {len(tokens)} tokens: fewer than one sequence of data.seq_len={seq_len} + 1")

    def __len__(self) -> int:
        return self.num_samples

    def get(self, indices) -> torch.Tensor:
        t = self.seq_len
        rows = [np.asarray(self.tokens[i * t: i * t + t + 1], dtype=np.int64) for i in indices]
        return torch.from_numpy(np.stack(rows))


class TrainStream:
    def __init__(self, samples: PackedSamples, micro_batch: int, rank: int, world_size: int, seed: int):
        self.samples = samples
        self.micro_batch = micro_batch
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.cursor = 0  # samples consumed globally
        self._perm_epoch, self._perm = -1, None

    def _order(self, epoch: int) -> torch.Tensor:
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self.seed + epoch)
            self._perm, self._perm_epoch = torch.randperm(len(self.samples), generator=g), epoch
        return self._perm

    def next_batch(self) -> torch.Tensor:
        """This rank's next micro-batch: LongTensor [micro_batch, seq_len + 1]."""
        n = len(self.samples)
        start = self.cursor + self.rank * self.micro_batch
        idx = [int(self._order(g // n)[g % n]) for g in range(start, start + self.micro_batch)]
        self.cursor += self.world_size * self.micro_batch
        return self.samples.get(idx)

    @property
    def epoch(self) -> float:
        return self.cursor / len(self.samples)

    def state_dict(self) -> dict:
        return {"cursor": self.cursor, "seed": self.seed, "num_samples": len(self.samples)}

    def load_state_dict(self, state: dict) -> None:
        if state["num_samples"] != len(self.samples):
            raise CheckpointError(f"data changed since the checkpoint: {len(self.samples)} training sequences now, "
                             f"{state['num_samples']} then (different data, tokenizer or data.seq_len?)")
        self.cursor = state["cursor"]


def validation_batches(samples: PackedSamples, micro_batch: int, num_batches: int, rank: int, world_size: int):
    """Fixed validation micro-batches for this rank: the first samples in file order, interleaved over ranks.
    Every rank yields the same number of batches (ZeRO-3 needs every rank in every forward)."""
    per_step = micro_batch * world_size
    steps = max(1, min(num_batches, len(samples) // per_step))
    for s in range(steps):
        base = s * per_step + rank * micro_batch
        yield samples.get([(base + j) % len(samples) for j in range(micro_batch)])
