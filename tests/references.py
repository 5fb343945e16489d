"""Independent references shared by several test files: the definitions written out literally, in float64."""
from __future__ import annotations

import itertools

import numpy as np


def enumerated_permutation_p(a, b) -> float:
    """Two-sided exact permutation p of the difference of means, by listing every split of the seed labels."""
    pooled, n = np.concatenate([a, b]).astype(np.float64), len(a)
    observed = np.mean(a) - np.mean(b)
    splits = np.array([pooled[list(i)].mean() - np.delete(pooled, list(i)).mean()
                       for i in itertools.combinations(range(len(pooled)), n)])
    return min(1.0, 2 * min(np.mean(splits >= observed - 1e-12), np.mean(splits <= observed + 1e-12)))


def lstsq_linearity(x, y) -> float:
    """The linearity score by its definition: centre, divide by the Frobenius norm, unrestricted least squares
    (numpy's SVD lstsq), one minus the squared residual norm."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    xc, yc = x - x.mean(0), y - y.mean(0)
    xt, yt = xc / np.linalg.norm(xc), yc / np.linalg.norm(yc)
    a = np.linalg.lstsq(xt, yt, rcond=None)[0]
    return 1 - np.linalg.norm(xt @ a - yt) ** 2
