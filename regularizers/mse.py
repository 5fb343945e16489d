"""``mse``: λ · Σ_i mean_tokens ‖h_i − h_{i+1}‖² (squared L2 over the hidden dimension, summed, not averaged)."""
import torch

from regularizers.base import Regularizer
from regularizers.fused import MSEKernel


class MSERegularizer(Regularizer):
    def token_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (y - x).pow(2).sum(dim=-1)

    def fused_kernel(self):
        return MSEKernel()
