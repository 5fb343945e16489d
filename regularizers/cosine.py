"""``cosine``: λ · Σ_i mean_tokens (1 − cos(h_i, h_{i+1})) -- the paper's regularizer (λ = 0.5 there)."""
import torch

from regularizers.base import Regularizer
from regularizers.fused import CosineKernel


class CosineRegularizer(Regularizer):
    eps = 1e-8

    def token_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 1.0 - torch.nn.functional.cosine_similarity(x, y, dim=-1, eps=self.eps)

    def fused_kernel(self):
        return CosineKernel(self.eps)
