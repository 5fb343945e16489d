"""The linear Transformer of in-context linear regression: L layers of linear self-attention, no softmax, no MLP,
no normalisation, with residual connections (Ahn, Cheng, Song, Yun, Jadbabaie, Sra, arXiv 2310.01082; the
same model as Ahn et al., arXiv 2306.00297, and von Oswald et al., ICML 2023).

Definitions (the paper's, in its column layout). A prompt of n examples (x_i, y_i) and a query x_q in R^d is

    Z_0 = [[x_1 ... x_n  x_q],
           [y_1 ... y_n  0  ]]                      in R^{(d+1) x (n+1)},

each layer is, with P_l, Q_l in R^{(d+1) x (d+1)} and the mask M = diag(1, ..., 1, 0) in R^{(n+1) x (n+1)},

    Z_{l+1} = Z_l + (1/n) P_l Z_l M (Z_l^T Q_l Z_l),

and the prediction is the negated bottom-right entry, y_hat = -[Z_L]_{d+1, n+1}. The loss is the squared error
(y_hat - w^T x_q)^2. M drops the query column as a key/value: the query reads the examples but nobody reads it.

Here the states are stored transposed, H = Z^T [batch, n+1, d+1] (one row per "token"), so that the residual
stream has the [batch, seq, hidden] shape the rest of linreg (capture, regularizers, linearity scores) expects.
Transposing the update gives H_{l+1} = H_l + (1/n) (H_l Q_l^T H_l^T) M H_l P_l^T: scores between every row and
every example row, then a value map P_l. Each block is therefore linear in its values (fixed scores) and cubic
in its input.

The parameters are the full matrices P_l, Q_l (the paper's dense parameterisation), initialised i.i.d.
N(0, init_std^2). With L = 1, P = [[0, 0], [0, 1]], Q = [[-A, 0], [0, 0]] the prediction is
x_q^T A (1/n) sum_i y_i x_i: one step of preconditioned gradient descent from w = 0 on the prompt's least squares.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import PretrainedConfig


class LinearAttentionConfig(PretrainedConfig):
    """The model's shape in the HF form (``num_hidden_layers``, ``hidden_size`` = d + 1) that the Trainer's
    checkpoint metadata and FLOP count read."""
    model_type = "icl_linear_attention"

    def __init__(self, dim: int = 5, num_hidden_layers: int = 3, init_std: float = 0.02, **kwargs):
        super().__init__(**kwargs)
        self.dim = dim
        self.num_hidden_layers = num_hidden_layers
        self.hidden_size = dim + 1
        self.init_std = init_std
        self.vocab_size = 0  # no tokens: the prompt is real-valued


class LinearAttentionBlock(nn.Module):
    def __init__(self, width: int, init_std: float):
        super().__init__()
        self.P = nn.Parameter(torch.randn(width, width) * init_std)
        self.Q = nn.Parameter(torch.randn(width, width) * init_std)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h [B, n+1, d+1] -> h + (1/n) (h Q^T h^T) M h P^T."""
        n = h.size(1) - 1
        keys = h[:, :n]  # M: only example rows are keys and values
        scores = (h @ self.Q.T) @ keys.transpose(1, 2)  # [B, n+1, n]
        return h + (scores @ (keys @ self.P.T)) / n


class LinearAttentionTransformer(nn.Module):
    """``model(prompts)`` with prompts [B, n+1, d+1] (the query row's last entry 0) returns y_hat [B]."""

    def __init__(self, config: LinearAttentionConfig):
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList(LinearAttentionBlock(config.dim + 1, config.init_std)
                                    for _ in range(config.num_hidden_layers))

    def get_input_embeddings(self):
        return None  # the prompt enters as it is: no embedding table

    def get_output_embeddings(self):
        return None

    def forward(self, prompts: torch.Tensor) -> torch.Tensor:
        h = prompts
        for layer in self.layers:
            h = layer(h)
        return -h[:, -1, -1]


def build_linear_attention(dim: int, num_layers: int, init_std: float, seed: int | None = None
                           ) -> LinearAttentionTransformer:
    if seed is not None:
        torch.manual_seed(seed)
    return LinearAttentionTransformer(LinearAttentionConfig(dim=dim, num_hidden_layers=num_layers, init_std=init_std))
