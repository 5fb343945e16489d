"""The methods of ``python -m prune --methods``: a name, how its pruned models k = 1..K are built, and how they are
healed. One registry line per method; what each does is in its build's module (and in docs/pruning.md).

A *build* turns the original model into the pruned models k = 1..K (``k`` = blocks fewer than the original, or for
sublayer pruning 2k sublayers), with a record of what it chose and why. Builds are values: methods whose builds
are equal share one pass (``linear`` and ``linear+distill`` change the same blocks at every k). A *heal* trains a
copy of a built model through linreg's ``Trainer`` (``prune.distill``). The original model's probe states are
collected once per study and handed to every build (``Context.states``).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from prune import distill, replaceme, reverse, sleb, streamline, sublayer
from prune.errors import PruneError
from prune.plan import ProbeSet, Pruned, Selector, build


@dataclass
class Context:
    """What every build gets: the selection rule of ``--criterion``, the original model and its probe states."""
    selector: Selector
    model: nn.Module
    probe: ProbeSet
    states: list[torch.Tensor]  # h_0..h_L of the original model on the probe
    iterative: bool = False
    seed: int = 0
    progress: object = None


@dataclass(frozen=True)
class Stepwise:
    """One block at a time by ``--criterion`` (one-shot or ``--iterative``), changed by a base method of
    ``prune.plan``, optionally with magnitude compensation after each removal."""
    change: str
    comp: bool = False

    def check(self, selector: Selector, k_max: int) -> None:
        selector.check_k(self.change, k_max)

    def __call__(self, ctx: Context, k_max: int) -> Iterator[tuple[int, Pruned, dict]]:
        return build(ctx.selector, ctx.model, ctx.probe, self.change, k_max, ctx.iterative, ctx.progress, ctx.states,
                     self.comp)


@dataclass(frozen=True)
class Method:
    build: Callable  # (Context, k_max) -> iterator of (k, Pruned, record); has .check(selector, k_max)
    heal: Callable | None = None  # (Pruned, distill.Healing) -> (Pruned, info)


METHODS: dict[str, Method] = {
    "remove": Method(Stepwise("remove")),
    "linear": Method(Stepwise("linear")),
    "merged": Method(Stepwise("merged")),
    "linear+distill": Method(Stepwise("linear"), distill.maps_only),
    "remove+distill": Method(Stepwise("remove"), distill.all_params),
    "remove+comp": Method(Stepwise("remove", comp=True)),
    "replaceme": Method(replaceme.Span("lstsq")),
    "replaceme_cos": Method(replaceme.Span("cosine")),
    "reverse": Method(reverse.LastN()),
    "reverse+finetune": Method(reverse.LastN(), reverse.finetune_last),
    "sleb": Method(sleb.Perplexity()),
    "sleb+comp": Method(sleb.Perplexity(comp=True)),
    "sublayer": Method(sublayer.Sublayers()),
    "streamline": Method(streamline.SpanBlock(), streamline.train_block),
}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise PruneError(f"unknown method '{name}' (one of {', '.join(METHODS)})")
    return METHODS[name]
