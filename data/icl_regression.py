"""In-context linear regression prompts: an infinite, seeded, resumable stream.

Each prompt draws a fresh task w ~ N(0, I_d), n examples x_i and a query x_q i.i.d. from the covariate
distribution, and y_i = w^T x_i (+ optional N(0, noise_std^2) label noise). Covariates:

- ``gaussian``: x = Sigma^{1/2} g, g ~ N(0, I_d);
- ``student_t``: x = Sigma^{1/2} t, the coordinates of t i.i.d. Student-t with ``df`` degrees of freedom
  (heavy-tailed: moments of order >= df are infinite), rescaled to unit variance when df > 2 so that only the
  tails, not the scale, differ from the Gaussian case. With df <= 4 the prediction's square (a polynomial of
  degree 2*3^L in x, already degree 6 at L = 1) has an infinite mean: the population loss does not exist, and one
  large covariate makes a minibatch loss astronomically large;
- ``gamma``: the heavy-tailed covariates of Ahn et al. (arXiv 2310.01082): x = Sigma^{1/2} sqrt(G) u, u uniform on
  the unit sphere, ||x||^2 = G ~ Gamma(shape k = ``gamma_shape``, scale theta = ``gamma_scale``). The default
  theta = d/k keeps E x x^T = I as in the other two cases; then k = d/2 gives G ~ chi^2_d, exactly the Gaussian
  case. A small k makes most norms tiny and a few large (coordinate kurtosis 3d(k+1)/(k(d+2)) for any theta:
  23.6 at the paper's k = 0.1, d = 5, against 3 for Gaussian x), yet every moment is finite, so the loss is a
  proper expectation at any depth. The paper's code takes theta = sqrt(2d/k) (10 at k = 0.1, d = 5), which agrees
  with d/k at k = d/2 only: its heavy-tailed covariates are also smaller, E||x||^2 = sqrt(2dk) = 1 against d = 5.

Sigma is diagonal with eigenvalues geometric from 1 down to 1/``condition`` (``condition = 1``: isotropic).

A prompt is the row layout of the paper's Z_0 (see model/linear_attention.py): [n+1, d+1], rows [x_i, y_i] then
[x_q, 0]; the target y_q = w^T x_q is returned beside it.

Order and resume: the global batch of optimizer micro-step k (``world_size x micro_batch`` prompts) is drawn from
its own generator, seeded by (seed, k) through numpy's SeedSequence; rank r takes rows [r*micro, (r+1)*micro).
The stream's whole state is the counter k, so a resume continues with exactly the prompts it would have seen,
and a given step sees the same prompts for any number of ranks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from core.config import check


@dataclass
class ICLRegressionConfig:
    dim: int = 5  # d
    num_examples: int = 20  # n
    covariates: Literal["gaussian", "student_t", "gamma"] = "gaussian"
    df: float = 3.0  # Student-t degrees of freedom
    gamma_shape: float = 0.1  # k of ``gamma``: ||x||^2 ~ Gamma(k, theta); smaller is heavier-tailed
    gamma_scale: float | None = None  # theta of ``gamma``; None = d/k (unit-variance coordinates)
    condition: float = 1.0  # condition number of the covariance Sigma
    noise_std: float = 0.0  # label noise

    def validate(self, p: str) -> None:
        check(self.dim >= 1, f"{p}.dim", self.dim, "must be >= 1")
        check(self.num_examples >= 1, f"{p}.num_examples", self.num_examples, "must be >= 1")
        check(self.df > 0, f"{p}.df", self.df, "must be > 0")
        check(self.gamma_shape > 0, f"{p}.gamma_shape", self.gamma_shape, "must be > 0")
        check(self.gamma_scale is None or self.gamma_scale > 0, f"{p}.gamma_scale", self.gamma_scale,
              "must be > 0 (or null: d / gamma_shape)")
        check(self.condition >= 1, f"{p}.condition", self.condition, "must be >= 1")
        check(self.noise_std >= 0, f"{p}.noise_std", self.noise_std, "must be >= 0")

    @property
    def seq_len(self) -> int:
        return self.num_examples + 1


def covariance_scales(cfg: ICLRegressionConfig) -> np.ndarray:
    """Sigma^{1/2}'s diagonal: sqrt of eigenvalues geometric from 1 to 1/condition."""
    return np.sqrt(np.geomspace(1.0, 1.0 / cfg.condition, cfg.dim)) if cfg.dim > 1 else np.ones(1)


def sample_prompts(cfg: ICLRegressionConfig, rng: np.random.Generator, batch: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompts [batch, n+1, d+1] float32, targets [batch] float32) from ``rng``."""
    n, d = cfg.num_examples, cfg.dim
    if cfg.covariates == "gaussian":
        x = rng.standard_normal((batch, n + 1, d))
    elif cfg.covariates == "gamma":
        u = rng.standard_normal((batch, n + 1, d))
        u /= np.linalg.norm(u, axis=-1, keepdims=True)
        scale = cfg.gamma_scale if cfg.gamma_scale is not None else d / cfg.gamma_shape
        x = u * np.sqrt(rng.gamma(cfg.gamma_shape, scale, (batch, n + 1, 1)))
    else:
        x = rng.standard_t(cfg.df, (batch, n + 1, d))
        if cfg.df > 2:
            x /= np.sqrt(cfg.df / (cfg.df - 2))
    x *= covariance_scales(cfg)
    w = rng.standard_normal((batch, d))
    y = np.einsum("bnd,bd->bn", x, w)
    if cfg.noise_std > 0:
        y += cfg.noise_std * rng.standard_normal(y.shape)
    prompts = np.concatenate([x, y[..., None]], axis=-1)
    target = y[:, n].copy()
    prompts[:, n, d] = 0.0
    return torch.from_numpy(prompts.astype(np.float32)), torch.from_numpy(target.astype(np.float32))


class ICLRegressionStream:
    """The Trainer's stream interface: ``next_batch()`` -> (prompts, targets), ``state_dict``, ``epoch``."""

    def __init__(self, cfg: ICLRegressionConfig, micro_batch: int, rank: int, world_size: int, seed: int):
        self.cfg, self.micro_batch, self.rank, self.world_size, self.seed = cfg, micro_batch, rank, world_size, seed
        self.cursor = 0  # global micro-steps drawn

    def draw(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole global batch of micro-step ``index`` (all ranks' prompts)."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, index]))
        return sample_prompts(self.cfg, rng, self.world_size * self.micro_batch)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        prompts, targets = self.draw(self.cursor)
        self.cursor += 1
        rows = slice(self.rank * self.micro_batch, (self.rank + 1) * self.micro_batch)
        return prompts[rows], targets[rows]

    @property
    def epoch(self) -> float:
        return 0.0  # infinite: every prompt is new

    def state_dict(self) -> dict:
        return {"cursor": self.cursor, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.cursor = int(state["cursor"])
