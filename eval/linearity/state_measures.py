"""Per-state measurements of a profile: the authors' toolkit (``eval.linearity.toolkit``) on each of h_0..h_L.

- ``anisotropy``: of each pooled state, from the Gram matrix the linearity profile computes anyway (the largest
  eigenvalue of X_c^T X_c over its trace: the toolkit's definition, without a second n x d x d product).
- ``intrinsic_dimension``: the toolkit's TwoNN estimate (regression fraction ``id_fraction``, the authors' 1/5)
  on ``id_tokens`` tokens drawn once per profile (seeded; the same tokens for every state). Its nearest-neighbour
  search costs O(n^2 d) per state against the profile's O(n d^2) per pair, so at the paper's probe size (n ~ 15k)
  all tokens would cost several profiles; 1024 tokens add a fraction of one (docs/PERFORMANCE.md).
  ``id_tokens: null`` uses all.
- ``logit_lens``: the toolkit's per-layer losses ("loss", "loss_no_norm", "neglogp_argmax") of the model's own
  unembedding on the pooled states, each probe sequence's first token unpredicted, as means over ``lens_tokens``
  predicted positions drawn once per profile (seeded; the same positions for every state, so differences between
  states, and between checkpoints on one probe, are paired). Each state costs two n x d x vocabulary products in
  float64, more than the whole profile wherever the vocabulary outweighs the blocks (per token 2 (L + 1) d V
  multiply-adds against the forward's ~12 L d^2 + d V): at the paper's probe size 1024 positions keep the lens
  within a forward's cost (docs/PERFORMANCE.md). ``lens_tokens: null`` uses every position.

Each is a list of L + 1 floats, index i = state h_i.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

from core.config import check
from eval.linearity.heldout import INSAMPLE_INTERVALS, HeldoutConfig
from eval.linearity.toolkit import ID_FRACTION, intrinsic_dimension, logit_lens, top_eigenvalue

LENS_KEYS = ("loss", "loss_no_norm", "neglogp_argmax")
STATE_KEYS = ("anisotropy", "intrinsic_dimension", *LENS_KEYS)


@dataclass
class ToolkitConfig:
    anisotropy: bool = False
    intrinsic_dimension: bool = False
    logit_lens: bool = False
    id_tokens: int | None = 1024  # tokens drawn for the intrinsic dimension; null = all
    lens_tokens: int | None = 1024  # predicted positions drawn for the logit lens; null = all
    id_fraction: float = ID_FRACTION
    seed: int = 0

    def validate(self, p: str) -> None:
        if self.id_tokens is not None:
            check(self.id_tokens >= 3, f"{p}.id_tokens", self.id_tokens, "must be >= 3 or null")
        if self.lens_tokens is not None:
            check(self.lens_tokens >= 1, f"{p}.lens_tokens", self.lens_tokens, "must be >= 1 or null")
        check(0 < self.id_fraction <= 1, f"{p}.id_fraction", self.id_fraction, "must be in (0, 1]")

    @classmethod
    def all(cls, id_tokens: int | None = 1024, lens_tokens: int | None = 1024) -> ToolkitConfig:
        return cls(anisotropy=True, intrinsic_dimension=True, logit_lens=True, id_tokens=id_tokens,
                   lens_tokens=lens_tokens)

    def enabled(self) -> bool:
        return self.anisotropy or self.intrinsic_dimension or self.logit_lens


def add_measure_arguments(ap) -> None:
    """The options of every command that profiles models and may add held-out scores and the toolkit."""
    # on by default, as in the loop: next to every in-sample score its held-out one, for 1.2-1.4x a model's profile
    ap.add_argument("--heldout", action=argparse.BooleanOptionalAction, default=True,
                    help="held-out scores over folds of documents, 95%% intervals and chance levels (default: on; "
                         "--no-heldout: the in-sample scores alone)")
    ap.add_argument("--folds", type=int, default=HeldoutConfig.folds, help="document folds of --heldout")
    ap.add_argument("--bootstrap", type=int, default=HeldoutConfig.bootstrap,
                    help="document resamples of the --heldout intervals")
    ap.add_argument("--insample-interval", choices=INSAMPLE_INTERVALS, default=HeldoutConfig.insample_interval,
                    help="interval of the in-sample score: the delete-a-fold jackknife or the document bootstrap")
    ap.add_argument("--toolkit", action="store_true",
                    help="also anisotropy, intrinsic dimension and the logit lens of every state h_0..h_L")
    ap.add_argument("--id-tokens", type=int, default=ToolkitConfig.id_tokens,
                    help="tokens drawn for the --toolkit intrinsic dimension (0: all)")
    ap.add_argument("--lens-tokens", type=int, default=ToolkitConfig.lens_tokens,
                    help="predicted positions drawn for the --toolkit logit lens (0: all)")


def measures_from_args(args) -> tuple[HeldoutConfig | None, ToolkitConfig | None]:
    """(held-out settings, toolkit settings) of ``add_measure_arguments``' options, validated; None when off."""
    heldout = HeldoutConfig(folds=args.folds, bootstrap=args.bootstrap,
                            insample_interval=args.insample_interval) if args.heldout else None
    toolkit = ToolkitConfig.all(args.id_tokens or None, args.lens_tokens or None) if args.toolkit else None
    if heldout is not None:
        heldout.validate("heldout")
    if toolkit is not None:
        toolkit.validate("toolkit")
    return heldout, toolkit


def anisotropy_of_gram(gram: torch.Tensor) -> float:
    """lambda_max / trace of the centred Gram matrix X_c^T X_c (NaN for a constant state)."""
    total = float(gram.diagonal().sum())
    return top_eigenvalue(gram) / total if total > 0 else float("nan")


def pooled_labels(probe: list[list[int]], order: list[int]) -> torch.Tensor:
    """The pooled token ids in pool ``order``, -100 on each sequence's first token: the logit lens then scores
    every position against the next token of its own sequence only."""
    labels = []
    for i in order:
        labels.extend([-100, *probe[i][1:]])
    return torch.tensor(labels, dtype=torch.long)


def state_measures(states: list[torch.Tensor], cfg: ToolkitConfig, anisotropy: list[float] | None = None,
                   model=None, labels: torch.Tensor | None = None) -> dict[str, list[float]]:
    """The enabled measurements of each state (``anisotropy``: already computed from the profile's Gram
    matrices; ``model`` and ``labels``: for the logit lens)."""
    out: dict[str, list[float]] = {}
    if cfg.anisotropy and anisotropy is not None:
        out["anisotropy"] = list(anisotropy)
    if cfg.intrinsic_dimension:
        rows = drawn_rows(states[0].shape[0], cfg.id_tokens, cfg.seed)
        out["intrinsic_dimension"] = [
            intrinsic_dimension(s if rows is None else s.index_select(0, rows.to(s.device)), fraction=cfg.id_fraction)
            for s in states]
    if cfg.logit_lens and model is not None and labels is not None:
        drawn, drawn_labels = lens_sample(states, labels, cfg)
        out.update(logit_lens(drawn, model, drawn_labels))
    return out


def drawn_rows(n: int, count: int | None, seed: int) -> torch.Tensor | None:
    """``count`` of n rows drawn without replacement (seeded, in increasing order), or None for all of them
    (``count`` None or not below n): the toolkit's token samples."""
    if count is None or count >= n:
        return None
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:count].sort().values


def lens_sample(states: list[torch.Tensor], labels: torch.Tensor,
                cfg: ToolkitConfig) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(states, labels) for ``logit_lens``: the pooled ones, or with ``cfg.lens_tokens`` below the number of
    predicted positions t (labels[t + 1] != -100), those positions drawn (seeded by ``cfg.seed``, in pool order),
    each as a two-token sequence (h_t, any) whose label is labels[t + 1]."""
    where = (labels[1:] != -100).nonzero().flatten()
    picked = drawn_rows(len(where), cfg.lens_tokens, cfg.seed)
    if picked is None:
        return states, labels
    rows = where[picked]
    pairs = torch.full((len(rows), 2), -100, dtype=labels.dtype)
    pairs[:, 1] = labels[rows + 1]
    return [s.index_select(0, rows.to(s.device))[:, None].expand(-1, 2, -1) for s in states], pairs
