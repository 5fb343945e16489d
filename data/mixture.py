"""Weighted data mixtures: which documents of each source a mixed split holds, and in what order.

A mixture of sources with weights ``w_i`` (normalised to sum to 1) has as many tokens as its sources together,
``T = sum_i T_i``, of which source ``i`` gives ``w_i T``: each of its documents appears ``r_i = w_i T / T_i`` times
on average -- ``floor(r_i)`` full passes in file order, then the fraction ``r_i - floor(r_i)`` of the documents
spread evenly through the file (the floor rule of ``data.sources.held_out``). A source above its share is cut
evenly, one below it is repeated. The documents of all sources are then interleaved so that every prefix of the
mixture holds each source in proportion to its weight: a document's key is the number of its source's tokens before
it divided by the weight, and the mixture is sorted by key (ties by source order). No random numbers: the mixture
is a function of the documents' token counts and the weights, the same on every machine.

The mixed token stream is packed and shuffled like any other (``data.stream``), so windows of the sources are
drawn in proportion to the weights, and a validation split made this way begins with a proportional mix.
"""
from __future__ import annotations

import numpy as np

from core.errors import DataError


def mixture_order(lengths: list[np.ndarray], weights: list[float], names: list[str] | None = None):
    """(source index, document index) of each document copy of the mixture, in mixture order.

    ``lengths[i]``: the token count of each document of source ``i``; ``weights``: one positive weight each."""
    from data.sources import held_out

    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    sizes = [int(n.sum()) for n in lengths]
    total = sum(sizes)
    sources, docs, keys = [], [], []
    for i, (n, size) in enumerate(zip(lengths, sizes)):
        if size == 0:
            raise DataError(f"mixture source {names[i] if names else i} has no documents")
        full, frac = divmod(w[i] * total / size, 1.0)
        every = np.arange(len(n))
        picked = np.concatenate([np.tile(every, int(full)), np.flatnonzero(held_out(every, frac))])
        before = np.cumsum(n[picked]) - n[picked]
        sources.append(np.full(len(picked), i, dtype=np.int64))
        docs.append(picked)
        keys.append(before / w[i])
    sources, docs, keys = np.concatenate(sources), np.concatenate(docs), np.concatenate(keys)
    order = np.lexsort((sources, keys))
    return sources[order], docs[order]


def mixture_summary(lengths: list[np.ndarray], sources: np.ndarray, docs: np.ndarray, names: list[str]) -> str:
    """One line: each source's share of the mixture's tokens and how many passes over the source that is."""
    tokens = [int(n[docs[sources == i]].sum()) for i, n in enumerate(lengths)]
    total = max(1, sum(tokens))
    return "mixture: " + ", ".join(f"{name} {100 * t / total:.1f} % ({t / max(1, int(n.sum())):.2f} passes)"
                                   for name, t, n in zip(names, tokens, lengths))
