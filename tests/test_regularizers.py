"""Regularizer values against a float64 hand computation, pair selection, masking, warm-up, registry."""
import numpy as np
import pytest
import torch

from regularizers import REGISTRY, build_regularizer
from regularizers.base import RegularizerConfig


def _states(L=3, B=2, T=5, d=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, T, d, generator=g) for _ in range(L + 1)]


def _reference(states, kind, first=0, mask=None):
    """Plain float64 loops: per pair, mean over (unmasked) tokens of the per-token loss."""
    hs = [s.double().numpy() for s in states]
    pairs = []
    for i in range(first, len(hs) - 1):
        x, y = hs[i], hs[i + 1]
        vals, weights = [], []
        for b in range(x.shape[0]):
            for t in range(x.shape[1]):
                if kind == "cosine":
                    v = 1 - x[b, t] @ y[b, t] / (np.linalg.norm(x[b, t]) * np.linalg.norm(y[b, t]))
                else:
                    v = float(((x[b, t] - y[b, t]) ** 2).sum())
                w = 1.0 if mask is None else float(mask[b, t])
                vals.append(v * w)
                weights.append(w)
        pairs.append(sum(vals) / sum(weights))
    return np.array(pairs)


@pytest.mark.parametrize("kind", ["cosine", "mse"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_matches_float64_reference(kind, reduction):
    states = _states()
    reg = build_regularizer(RegularizerConfig(name=kind, weight=0.5, reduction=reduction))
    ref = _reference(states, kind)
    expected = 0.5 * (ref.sum() if reduction == "sum" else ref.mean())
    got = reg(states, step=10)
    assert abs(got.item() - expected) < 1e-5 * max(1.0, abs(expected))


@pytest.mark.parametrize("kind", ["cosine", "mse"])
def test_exclude_embedding_and_mask(kind):
    states = _states(L=4)
    mask = torch.ones(2, 5)
    mask[0, 3:] = 0  # padding
    reg = build_regularizer(RegularizerConfig(name=kind, weight=1.0, exclude_embedding=True))
    np.testing.assert_allclose(reg.pair_losses(states, mask).numpy(), _reference(states, kind, first=1, mask=mask),
                               rtol=1e-5)


def test_cosine_known_values():
    x = torch.tensor([[[1.0, 0.0]]])
    reg = build_regularizer(RegularizerConfig(name="cosine", weight=1.0))
    # identical -> 0, orthogonal -> 1, opposite -> 2; summed over the three pairs
    states = [x, x, torch.tensor([[[0.0, 3.0]]]), torch.tensor([[[0.0, -1.0]]])]
    assert reg(states, 0).item() == pytest.approx(0.0 + 1.0 + 2.0)


def test_warmup_and_gradient():
    states = [s.requires_grad_() for s in _states()]
    reg = build_regularizer(RegularizerConfig(name="mse", weight=2.0, warmup_steps=10))
    assert reg.weight_at(0) == 0.0 and reg.weight_at(5) == 1.0 and reg.weight_at(50) == 2.0
    reg(states, 5).backward()
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in states)


def test_none_and_registry():
    assert {"none", "cosine", "mse"} <= set(REGISTRY)
    reg = build_regularizer(RegularizerConfig(name="none"))
    assert reg(_states(), 0) is None and not reg.needs_states
