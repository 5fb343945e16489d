"""Pruning criteria against hand computations (numpy), and the least-squares fits against numpy's float64 lstsq."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from prune.criteria import CRITERIA, angular, cosine, get_criterion, linearity, linearity_wo_res
from prune.errors import PruneError
from prune.fit import fit_map, token_errors


def _states(n=400, d=16, layers=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    hs = [torch.randn(n, d, generator=g)]
    for i in range(layers):
        w = torch.eye(d) + 0.3 * (i + 1) * torch.randn(d, d, generator=g)
        hs.append(torch.tanh(hs[-1] @ w) + hs[-1] + 0.05 * torch.randn(n, d, generator=g))
    return hs


def _ls_numpy(x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    xc, yc = x - x.mean(0), y - y.mean(0)
    a = np.linalg.lstsq(xc / np.linalg.norm(xc), yc / np.linalg.norm(yc), rcond=None)[0]
    return 1 - np.linalg.norm(xc / np.linalg.norm(xc) @ a - yc / np.linalg.norm(yc)) ** 2


def _cos_numpy(x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return (x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)


def test_criteria_match_hand_computations():
    hs = _states()
    for i, (a, b) in enumerate(zip(hs[:-1], hs[1:])):
        assert linearity(hs)[i] == pytest.approx(_ls_numpy(a, b), abs=1e-10)
        assert linearity_wo_res(hs)[i] == pytest.approx(_ls_numpy(a, b.double() - a.double()), abs=1e-10)
        assert cosine(hs)[i] == pytest.approx(1 - _cos_numpy(a, b).mean(), abs=1e-12)
    for span in (1, 2, 3):
        got = angular(hs, span=span)
        assert len(got) == len(hs) - span
        for i, v in enumerate(got):
            ref = np.arccos(np.clip(_cos_numpy(hs[i], hs[i + span]), -1, 1)).mean() / math.pi
            assert v == pytest.approx(ref, abs=1e-12)


def test_ranking_directions():
    scores = {0: 0.5, 1: 0.9, 2: 0.1, 3: 0.9}
    assert CRITERIA["linearity"].ranking(scores) == [1, 3, 0, 2]  # most linear first, ties by index
    assert CRITERIA["cosine"].ranking(scores) == [2, 0, 1, 3]  # smallest block influence first
    assert CRITERIA["angular"].best(scores) == 2
    with pytest.raises(PruneError, match="unknown criterion 'cosin'"):
        get_criterion("cosin")


def test_fit_equals_float64_lstsq_with_bias():
    g = torch.Generator().manual_seed(1)
    n, d = 500, 24
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    x[:, 3] *= 300.0  # a "massive activation" feature
    y = torch.tanh(x @ torch.randn(d, d, generator=g, dtype=torch.float64) / 10) + 2.0
    fit = fit_map(x, y, bias=True)
    aug = np.hstack([x.numpy(), np.ones((n, 1))])
    ref = np.linalg.lstsq(aug, y.numpy(), rcond=None)[0]
    assert np.abs(fit.weight.numpy() - ref[:d].T).max() < 1e-8
    assert np.abs(fit.bias.numpy() - ref[d]).max() < 1e-8
    assert fit.rank == d
    nobias = fit_map(x, y, bias=False)
    ref0 = np.linalg.lstsq(x.numpy(), y.numpy(), rcond=None)[0]
    assert nobias.bias is None and np.abs(nobias.weight.numpy() - ref0.T).max() < 1e-8
    err = token_errors(fit, x, y).numpy()
    pred = aug @ ref
    ref_err = np.linalg.norm(pred - y.numpy(), axis=1) / np.linalg.norm(y.numpy(), axis=1)
    assert np.abs(err - ref_err).max() < 1e-10


def test_fit_rank_deficient_is_min_norm_and_small_probe_refused():
    g = torch.Generator().manual_seed(2)
    base = torch.randn(300, 5, generator=g, dtype=torch.float64)
    x = torch.cat([base, base[:, :2] * 2.0, torch.ones(300, 1, dtype=torch.float64)], 1)  # rank 5 after centring
    y = torch.randn(300, 8, generator=g, dtype=torch.float64)
    fit = fit_map(x, y)
    assert fit.rank == 5
    xc, yc = (x - x.mean(0)).numpy(), (y - y.mean(0)).numpy()
    ref = np.linalg.lstsq(xc, yc, rcond=None)[0]  # the minimum-norm solution on the centred data
    np.testing.assert_allclose(xc @ fit.weight.numpy().T, xc @ ref, atol=1e-10)
    with pytest.raises(PruneError, match="probe too small"):
        fit_map(torch.randn(16, 16), torch.randn(16, 16))
