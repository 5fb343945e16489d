"""Per-state measurements of a profile: the authors' toolkit (``eval.linearity.toolkit``) on each of h_0..h_L.

- ``anisotropy``: of each pooled state, from the Gram matrix the linearity profile computes anyway (the largest
  eigenvalue of X_c^T X_c over its trace: the toolkit's definition, without a second n x d x d product).
- ``intrinsic_dimension``: the toolkit's TwoNN estimate (regression fraction ``id_fraction``, the authors' 1/5)
  on ``id_tokens`` tokens drawn once per profile (seeded; the same tokens for every state). Its nearest-neighbour
  search costs O(n^2 d) per state against the profile's O(n d^2) per pair, so at the paper's probe size (n ~ 15k)
  all tokens would cost several profiles; 1024 tokens add a fraction of one (docs/PERFORMANCE.md).
  ``id_tokens: null`` uses all.
- ``logit_lens``: the toolkit's per-layer losses ("loss", "loss_no_norm", "neglogp_argmax") of the model's own
  unembedding on the pooled states, each probe sequence's first token unpredicted.

Each is a list of L + 1 floats, index i = state h_i.
"""
from __future__ import annotations

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
    id_fraction: float = ID_FRACTION
    seed: int = 0

    def validate(self, p: str) -> None:
        if self.id_tokens is not None:
            check(self.id_tokens >= 3, f"{p}.id_tokens", self.id_tokens, "must be >= 3 or null")
        check(0 < self.id_fraction <= 1, f"{p}.id_fraction", self.id_fraction, "must be in (0, 1]")

    @classmethod
    def all(cls, id_tokens: int | None = 1024) -> ToolkitConfig:
        return cls(anisotropy=True, intrinsic_dimension=True, logit_lens=True, id_tokens=id_tokens)

    def enabled(self) -> bool:
        return self.anisotropy or self.intrinsic_dimension or self.logit_lens


def add_measure_arguments(ap) -> None:
    """The options of every command that profiles models and may add held-out scores and the toolkit."""
    ap.add_argument("--heldout", action="store_true",
                    help="also held-out scores over folds of documents, 95%% intervals and chance levels")
    ap.add_argument("--folds", type=int, default=HeldoutConfig.folds, help="document folds of --heldout")
    ap.add_argument("--bootstrap", type=int, default=HeldoutConfig.bootstrap,
                    help="document resamples of the --heldout intervals")
    ap.add_argument("--insample-interval", choices=INSAMPLE_INTERVALS, default=HeldoutConfig.insample_interval,
                    help="interval of the in-sample score: the delete-a-fold jackknife or the document bootstrap")
    ap.add_argument("--toolkit", action="store_true",
                    help="also anisotropy, intrinsic dimension and the logit lens of every state h_0..h_L")
    ap.add_argument("--id-tokens", type=int, default=ToolkitConfig.id_tokens,
                    help="tokens drawn for the --toolkit intrinsic dimension (0: all)")


def measures_from_args(args) -> tuple[HeldoutConfig | None, ToolkitConfig | None]:
    """(held-out settings, toolkit settings) of ``add_measure_arguments``' options, validated; None when off."""
    heldout = HeldoutConfig(folds=args.folds, bootstrap=args.bootstrap,
                            insample_interval=args.insample_interval) if args.heldout else None
    toolkit = ToolkitConfig.all(args.id_tokens or None) if args.toolkit else None
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
        n = states[0].shape[0]
        rows = None
        if cfg.id_tokens is not None and cfg.id_tokens < n:
            g = torch.Generator().manual_seed(cfg.seed)
            rows = torch.randperm(n, generator=g)[: cfg.id_tokens].sort().values
        out["intrinsic_dimension"] = [
            intrinsic_dimension(s if rows is None else s.index_select(0, rows.to(s.device)), fraction=cfg.id_fraction)
            for s in states]
    if cfg.logit_lens and model is not None and labels is not None:
        out.update(logit_lens(states, model, labels))
    return out
