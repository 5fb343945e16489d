"""Optimisation measurements of a training run, logged in the loop on their own cadence (``measure:``).

At a measured step t, on one fixed set of ``full_batch`` prompts drawn for that step (``f_B`` below; drawn from
another seed than the training stream, which they never move):

- ``opt/loss``, ``opt/grad_norm``: f_B(θ_t) and ‖∇f_B(θ_t)‖;
- ``opt/tail_index``: the tail index α of the stochastic gradient noise ξ = g_b(θ_t) − ∇f_B(θ_t), g_b the gradient
  of a ``batch_size`` minibatch, estimated as Simsekli, Sagun and Gürbüzbalaban (ICML 2019) do, with the estimator
  of Mohammadi, Mohammadpour and Ogata (2015) on the pooled noise coordinates (``tail_index`` below). α = 2 is
  Gaussian-like noise, smaller is heavier-tailed. Each coordinate is divided by its median |ξ| first, so that the
  pooled samples share one scale (the estimator assumes i.i.d. samples; this changes no coordinate's tail), and
  coordinates without any noise (parameters the loss does not depend on) are left out;
- ``opt/sharpness``, ``opt/lambda_min``: the largest and smallest eigenvalues λ_max, λ_min of the Hessian
  ∇²f_B(θ_t), the extreme Ritz values of ``hessian_iters`` steps of Lanczos with Hessian-vector products (double
  backward; ``lanczos_extremes``). Lanczos rather than power iteration: one Krylov space gives both ends of the
  spectrum, and its extreme Ritz values converge much faster than power iteration on an ill-conditioned matrix
  (which would need a second run on λ_max I − H for λ_min). The cost is ``hessian_iters`` HVPs per measurement.
  λ_min ≤ 0 is expected whenever some parameter does not reach the loss (its Hessian rows are zero), and < 0 at
  points with negative curvature; λ_max / |λ_min| is then a spread of curvatures, not a convex condition number;
- ``opt/dir_sharpness``: the curvature along the update Δ = θ_{t+1} − θ_t, Δᵀ∇²f_B(θ_t)Δ / ‖Δ‖² (the directional
  sharpness of Pan and Li, 2023);
- ``opt/local_smoothness``: ‖∇f_B(θ_{t+1}) − ∇f_B(θ_t)‖ / ‖Δ‖, the smoothness constant seen along the step; its
  relation to ``opt/grad_norm`` over training is the (L0, L1) generalised smoothness of Zhang et al. (ICLR 2020).

Everything is computed with ``torch.func.functional_call`` on copies of the parameters: the model is not touched.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.func import functional_call, grad

from core.config import check


@dataclass
class OptMeasureConfig:
    every: int = 50  # steps between measurements
    batch_size: int = 64  # prompts in one minibatch gradient (the noise's batch)
    noise_batches: int = 64  # minibatch gradients whose noise feeds the tail index
    full_batch: int = 4096  # prompts of f_B
    hessian_iters: int = 20  # Lanczos steps (= Hessian-vector products) of λ_max and λ_min
    seed: int = 7919  # of the measurement prompts (combined with the step)

    def validate(self, p: str) -> None:
        for k in ("every", "batch_size", "noise_batches", "full_batch", "hessian_iters"):
            check(getattr(self, k) >= 1, f"{p}.{k}", getattr(self, k), "must be >= 1")
        check(self.noise_batches * self.batch_size <= self.full_batch, f"{p}.noise_batches", self.noise_batches,
              f"× batch_size {self.batch_size} must be <= full_batch {self.full_batch} (minibatches are drawn "
              f"from the full batch)")


def tail_index(samples: np.ndarray) -> float:
    """α̂ of i.i.d. symmetric α-stable ``samples`` (Mohammadi et al. 2015): with K = K1·K2 samples X_k and the
    block sums Y_i = Σ_{j=1..K1} X_{(i−1)K1+j},  1/α̂ = (mean log|Y_i| − mean log|X_k|) / log K1,  K1 = ⌊√K⌋.
    Its error shrinks as K grows (tests/test_icl_testbed.py states the error it meets); clipped to (0, 2]."""
    x = np.asarray(samples, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size < 4:
        return math.nan  # no noise to speak of (e.g. a diverged run's NaN gradients)
    k1 = int(math.isqrt(x.size))
    k2 = x.size // k1
    x = x[:k1 * k2]
    y = x.reshape(k2, k1).sum(axis=1)
    inv = (np.log(np.abs(y) + 1e-300).mean() - np.log(np.abs(x) + 1e-300).mean()) / math.log(k1)
    return float(min(2.0, 1.0 / max(inv, 0.5)))


def lanczos_extremes(hvp, dim: int, iters: int, generator: torch.Generator, dtype=torch.float64,
                     device=None) -> tuple[float, float]:
    """(λ_min, λ_max) of the symmetric operator ``hvp`` on R^dim: the extreme eigenvalues of the Lanczos tridiagonal
    T_k = Vᵀ H V after k = min(iters, dim) steps from a random unit vector, with full reorthogonalisation (dim is
    small here, and without it lost orthogonality produces spurious copies of the extreme Ritz values). Exact
    (up to rounding) once k = dim or the Krylov space closes; below that, λ_min(T) ≥ λ_min(H) and
    λ_max(T) ≤ λ_max(H) (Cauchy interlacing), so both are conservative."""
    from scipy.linalg import eigh_tridiagonal

    v = torch.randn(dim, generator=generator, dtype=dtype).to(device)
    basis = [v / v.norm()]
    alphas, betas = [], []
    for _ in range(min(iters, dim)):
        w = hvp(basis[-1]).to(dtype)
        alphas.append(float(w @ basis[-1]))
        vs = torch.stack(basis)
        w = w - vs.T @ (vs @ w)
        w = w - vs.T @ (vs @ w)  # twice is enough (Kahan-Parlett)
        beta = float(w.norm())
        if not math.isfinite(beta):
            return math.nan, math.nan
        if len(alphas) == min(iters, dim) or beta <= 1e-12 * max(1.0, max(abs(a) for a in alphas)):
            break  # invariant subspace found: T's eigenvalues are eigenvalues of H
        betas.append(beta)
        basis.append(w / beta)
    if not np.all(np.isfinite(alphas)):
        return math.nan, math.nan  # the loss overflowed on these prompts: no curvature to report, no crash
    ritz = eigh_tridiagonal(np.asarray(alphas), np.asarray(betas), eigvals_only=True)
    return float(ritz[0]), float(ritz[-1])


def _flat(tree: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tree.values()])


class OptMeasurer:
    def __init__(self, cfg: OptMeasureConfig, data_cfg, module: torch.nn.Module, device: torch.device):
        self.cfg, self.data_cfg, self.module, self.device = cfg, data_cfg, module, device

    def due(self, step: int) -> bool:
        return step % self.cfg.every == 0

    def _loss(self, params, prompts, targets):
        pred = functional_call(self.module, params, (prompts,))
        if pred.dtype in (torch.float16, torch.bfloat16):
            pred = pred.float()
        return torch.nn.functional.mse_loss(pred, targets.to(pred.dtype))

    def _params(self) -> dict[str, torch.Tensor]:
        return {k: p.detach().clone() for k, p in self.module.named_parameters()}

    def _hvp(self, params):
        """v -> ∇²f_B(params) · v by double backward: the gradient's graph is built once and every product
        (a Lanczos run makes ``hessian_iters`` of them) differentiates it again."""
        leaves = {k: t.detach().requires_grad_(True) for k, t in params.items()}
        with torch.enable_grad():
            g = _flat(dict(zip(leaves, torch.autograd.grad(self._loss(leaves, *self._batch), list(leaves.values()),
                                                            create_graph=True))))

        def product(vec: torch.Tensor) -> torch.Tensor:
            with torch.enable_grad():
                return torch.cat([h.reshape(-1) for h in torch.autograd.grad(g @ vec, list(leaves.values()),
                                                                              retain_graph=True)])
        return product

    def before_update(self, step: int) -> None:
        """Record θ_t and draw the prompts of the measurement logged at ``step`` (call before the update)."""
        from data.icl_regression import sample_prompts

        self._theta = self._params()
        rng = np.random.default_rng(np.random.SeedSequence([self.cfg.seed, step]))
        dtype = next(self.module.parameters()).dtype  # prompts in the model's dtype (float64 in the tests)
        self._batch = tuple(t.to(self.device, dtype) for t in sample_prompts(self.data_cfg, rng, self.cfg.full_batch))

    def after_update(self, step: int) -> dict[str, float]:
        """All measurements of this step, as ``opt/...`` scalars (call after the optimizer step)."""
        theta, prompts, targets = self._theta, *self._batch
        full = grad(self._loss)(theta, prompts, targets)
        g_t = _flat(full)
        b = self.cfg.batch_size
        noise = torch.stack([_flat(grad(self._loss)(theta, prompts[i * b:(i + 1) * b], targets[i * b:(i + 1) * b]))
                             - g_t for i in range(self.cfg.noise_batches)]).double()
        scale = noise.abs().median(dim=0).values
        noise = noise[:, scale > 0] / scale[scale > 0]  # coordinates without noise carry no tail
        perm = torch.randperm(noise.numel(), generator=torch.Generator().manual_seed(step))
        out = {"opt/loss": float(self._loss(theta, prompts, targets)), "opt/grad_norm": float(g_t.norm()),
               "opt/tail_index": tail_index(noise.reshape(-1)[perm].cpu().numpy())}
        out["opt/lambda_min"], out["opt/sharpness"] = self.hessian_extremes(theta)
        after = self._params()
        delta = _flat(after) - _flat(theta)
        dn = float(delta.norm())
        if dn > 0:
            g_next = _flat(grad(self._loss)(after, prompts, targets))
            out["opt/local_smoothness"] = float((g_next - g_t).norm()) / dn
            out["opt/dir_sharpness"] = float(delta @ self._hvp(theta)(delta)) / dn ** 2
        self._theta = self._batch = None
        return out

    def hessian_extremes(self, params) -> tuple[float, float]:
        """(λ_min, λ_max) of ∇²f_B(params) on this step's prompts (``lanczos_extremes``)."""
        dim = sum(t.numel() for t in params.values())
        dtype = next(iter(params.values())).dtype
        hvp = self._hvp(params)
        return lanczos_extremes(lambda v: hvp(v.to(dtype)), dim, self.cfg.hessian_iters,
                                torch.Generator().manual_seed(0), device=self.device)
