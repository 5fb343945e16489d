"""The linearity score against independent references (float64 numpy lstsq), its invariances and identities,
and the paper's probe recipe."""
import contextlib
import math
import random

import numpy as np
import pytest
import torch

from eval.linearity import ProbeSetConfig, build_probe, linearity_profile, linearity_score, pair_stats, sample_chunks
from eval.linearity.probe import read_probe_text

TOL = 1e-8  # the issue asks for 1e-6; the implementation reaches float64 rounding on these problems


@contextlib.contextmanager
def torch_threads(n):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def lstsq_score(x, y) -> float:
    """The definition, literally: centre, divide by the Frobenius norm, unrestricted LS with numpy's SVD lstsq."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    xt, yt = x - x.mean(0), y - y.mean(0)
    xt, yt = xt / np.linalg.norm(xt), yt / np.linalg.norm(yt)
    coef, *_ = np.linalg.lstsq(xt, yt, rcond=None)
    return 1.0 - float(((xt @ coef - yt) ** 2).sum())


def ols_r2(x, y) -> float:
    """Second reference: the pooled R^2 of OLS of y on [1, x] (intercept instead of centring)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    design = np.hstack([np.ones((len(x), 1)), x])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    return 1.0 - float(((design @ coef - y) ** 2).sum() / ((y - y.mean(0)) ** 2).sum())


def rng(seed):
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=rng(seed), dtype=torch.float64)


def nonlinear_target(x, seed=1):
    """Y = a nonlinear function of X plus noise: the noise has energy along *every* direction, including X's
    weakest ones, so a solver that mishandles those directions misses the reference by ~1/n, not 1e-12."""
    d = x.shape[1]
    return torch.tanh(x @ randn(d, d, seed=seed) / d**0.5) + 0.3 * randn(*x.shape, seed=seed + 1)


def collinear(n, d, log_cond, seed=0):
    """X = U diag(s) V^T with singular values from 1 down to 10^-log_cond, plus a large offset."""
    u, _ = torch.linalg.qr(randn(n, d, seed=seed))
    v, _ = torch.linalg.qr(randn(d, d, seed=seed + 1))
    return (u * torch.logspace(0, -log_cond, d, dtype=torch.float64)) @ v.T + 3.0


@pytest.mark.parametrize("n,d", [(500, 16), (2000, 64), (500, 120)])
def test_matches_lstsq_on_random_data(n, d):
    # Columns on scales 1..1e4 (like massive activations) and a non-zero mean.
    x = randn(n, d) * torch.logspace(0, 4, d, dtype=torch.float64) + 7.0
    y = nonlinear_target(x)
    ref = lstsq_score(x, y)
    assert abs(linearity_score(x, y) - ref) < TOL
    assert 0.0 < ref < 1.0
    if d == 16:
        assert abs(ols_r2(x, y) - ref) < TOL  # the two readings of the definition agree


@pytest.mark.parametrize("log_cond,solver", [(3, "gram"), (4, "gram"), (4.5, "cholesky"), (5, "cholesky"), (7, "rsvd"),
                                             (10, "rsvd")])
def test_matches_lstsq_on_nearly_collinear_data(log_cond, solver):
    x = collinear(1500, 48, log_cond)
    y = nonlinear_target(x)
    stats = pair_stats(x, y)
    assert stats.solver == solver  # each path: Gram formula, explicit residual (some columns, all), R-SVD
    assert stats.rank_x == 48
    assert abs(linearity_score(x, y) - lstsq_score(x, y)) < TOL
    assert abs(stats.linearity - lstsq_score(x, y)) < TOL
    assert abs(stats.linearity_wo_res - lstsq_score(x, y - x)) < TOL


def test_rank_deficient_x_uses_numerical_rank():
    # Like h_0 of a model whose probe has fewer distinct tokens than d: 40 distinct rows, plus a constant
    # column and a duplicated one. An unthresholded pseudo-inverse would invent 24 more directions.
    n, d = 1500, 64
    x = randn(40, d)[torch.randint(0, 40, (n,), generator=rng(3))]
    x[:, 5] = 2.5
    x[:, 7] = 3 * x[:, 6]
    y = x @ randn(d, d, seed=4) + randn(n, d, seed=5)
    stats = pair_stats(x, y)
    assert stats.solver == "rsvd"
    assert stats.rank_x == np.linalg.matrix_rank(x.numpy() - x.numpy().mean(0)) == 39
    assert abs(stats.linearity - lstsq_score(x, y)) < TOL
    assert abs(stats.linearity_wo_res - lstsq_score(x, y - x)) < TOL


def test_exact_linear_maps_score_one():
    x = randn(1000, 32) + 1.0
    for seed, a in enumerate([randn(32, 32, seed=9), collinear(32, 32, 4, seed=10)]):
        assert abs(torch.linalg.matrix_rank(a).item() - 32) == 0
        assert abs(linearity_score(x, x @ a) - 1.0) < 1e-12
        assert abs(linearity_score(x, x @ a + randn(1, 32, seed=seed)) - 1.0) < 1e-12  # plus a bias


def test_invariant_to_scaling_and_shifting():
    x = randn(1200, 48)
    y = nonlinear_target(x)
    base = linearity_score(x, y)
    variants = [(3.7 * x, y), (x, 0.01 * y), (x + randn(1, 48, seed=7), y), (x, y - 100.0),
                (x @ randn(48, 48, seed=8), y)]  # any invertible map of X spans the same space
    for xv, yv in variants:
        assert abs(linearity_score(xv, yv) - base) < 1e-10
    assert abs(linearity_score(x, 2 * y) - linearity_score(x, -y)) < 1e-10


def test_residual_identity():
    """With X_c, Y_c the centred (not normalised) states: 1 - LS(X, Y - X) = (1 - LS(X, Y)) ||Y_c||^2 / ||Y_c - X_c||^2.

    Derivation: LS(X, Z) = 1 - RSS(Z_c | X_c) / ||Z_c||^2, and RSS(Y_c - X_c | X_c) = RSS(Y_c | X_c) because X_c
    lies in its own column space. It does not hold with the Frobenius-normalised matrices in place of X_c, Y_c."""
    x = randn(1500, 40) * 2.0 + 1.0
    y = 1.5 * x + 0.3 * nonlinear_target(x)  # a residual block whose update is small against the stream
    ls, ls_wo = lstsq_score(x, y), lstsq_score(x, y - x)  # the independent reference for both sides
    xc, yc = x - x.mean(0), y - y.mean(0)
    rhs = (1 - ls) * (yc.norm() ** 2 / (yc - xc).norm() ** 2).item()
    assert abs((1 - ls_wo) - rhs) < 1e-10
    xn, yn = xc / xc.norm(), yc / yc.norm()
    assert abs((1 - ls_wo) - (1 - ls) / ((yn - xn).norm() ** 2).item()) > 1e-3
    # pair_stats gets both from one solve; they equal the separate definitions.
    stats = pair_stats(x, y)
    assert abs(stats.linearity - ls) < TOL and abs(stats.linearity_wo_res - ls_wo) < TOL
    assert abs(linearity_score(x, y - x) - ls_wo) < TOL


def test_norm_ratio_and_profile_pairs():
    states = [randn(600, 24, seed=s) + s for s in range(4)]
    prof = linearity_profile(states)
    assert len(prof) == 3
    for i, stats in enumerate(prof):
        want = ((states[i + 1] - states[i]).norm(dim=1) / states[i + 1].norm(dim=1)).mean().item()
        assert abs(stats.norm_ratio - want) < 1e-12
        assert abs(stats.linearity - lstsq_score(states[i], states[i + 1])) < TOL
        assert abs(stats.linearity_wo_res - lstsq_score(states[i], states[i + 1] - states[i])) < TOL


def test_norm_ratio_where_tokens_stay_put():
    """The ratio's numerator comes from the centred difference plus the mean shift; tokens the block leaves alone
    while the mean moves (a cancelling sum) must still get their raw ||y - x||, here 0 and 1e-9 * sqrt(d)."""
    x = randn(1500, 48) + 3.0
    update = 5.0 + 0.3 * nonlinear_target(x)
    update[:50], update[50:60] = 0.0, 1e-9
    y = x + update
    want = ((y - x).norm(dim=1) / y.norm(dim=1)).mean().item()
    assert abs(pair_stats(x, y).norm_ratio - want) < 1e-15
    assert abs(linearity_profile([x, y, 2 * y])[0].norm_ratio - want) < 1e-15


def hidden_like(n, d, seed=0):
    """Like residual-stream states: anisotropic spectrum, three massive-activation features, a mean offset."""
    rot, _ = torch.linalg.qr(randn(d, d, seed=seed + 1))
    x = (randn(n, d, seed=seed) * torch.logspace(0, -2, d, dtype=torch.float64)) @ rot
    x[:, :3] *= 50.0
    return x + randn(1, d, seed=seed + 2)


def test_long_profile_matches_lstsq_on_every_pair():
    """A profile walks the states through reused buffers with one Gram matrix per state; every score of every pair
    must still be the definition's, whichever solver the pair's X needs."""
    n, d = 1500, 48
    states = [hidden_like(n, d)]
    for i in range(1, 10):
        h = states[-1] + 0.3 * nonlinear_target(states[-1], seed=10 + i)
        if i == 3:  # like h_0 of a probe with few distinct tokens: 30 distinct rows, rank 29 after centring
            h = h[torch.randint(0, 30, (n,), generator=rng(i))]
        elif i == 5:  # a constant feature (dropped from the solve) in an otherwise well-conditioned state
            h[:, 7] = 4.0
        elif i == 7:  # nearly collinear, and a constant feature: some target columns need the explicit residual
            h = collinear(n, d, 4.5, seed=i)
            h[:, 0] = 2.0
        states.append(h)
    before = [s.clone() for s in states]
    prof = linearity_profile(states)
    assert all(torch.equal(a, b) for a, b in zip(states, before))  # the float64 inputs are not centred in place
    assert len(prof) == 9
    assert [p.solver for p in prof] == ["gram", "gram", "gram", "rsvd", "gram", "gram", "gram", "cholesky", "gram"]
    assert prof[3].rank_x == 29 and prof[5].rank_x == prof[7].rank_x == d - 1
    for x, y, stats in zip(states, states[1:], prof):
        assert abs(stats.linearity - lstsq_score(x, y)) < TOL
        assert abs(stats.linearity_wo_res - lstsq_score(x, y - x)) < TOL
        assert abs(stats.norm_ratio - ((y - x).norm(dim=1) / y.norm(dim=1)).mean().item()) < 1e-12
        single = pair_stats(x, y)  # the same pair on its own
        assert abs(single.linearity - stats.linearity) < 1e-12
        assert abs(single.linearity_wo_res - stats.linearity_wo_res) < 1e-12
    # An extra pair on the last X (as the final-norm pair is): the same as on its own.
    normed = states[-1] / states[-1].norm(dim=1, keepdim=True)
    *pairs, extra = linearity_profile(states, extra_y=normed)
    assert pairs == prof
    single = pair_stats(states[-2], normed)
    assert abs(extra.linearity - single.linearity) < 1e-12 and abs(extra.norm_ratio - single.norm_ratio) < 1e-12


@pytest.mark.parametrize("n,d", [(1500, 48), (3200, 320)])
@pytest.mark.parametrize("decay,massive", [(2, True), (2, False), (4, True), (0, False)])
def test_profile_matches_lstsq_across_spectra(decay, massive, n, d):
    """The spectra of bench/profile_robustness.py (logspace(0, -decay) singular values, isotropic for 0; massive
    features x50 or not), float32 states as a model returns them: every score of a short profile equals lstsq on
    the same float32 values, whichever share of the columns the Gram formula's error budget lets through. At
    3200 x 320 the Gram matrices come from BLAS's syrk (eval/linearity/blas.py), at 1500 x 48 from torch."""
    from eval.linearity import blas

    probe = torch.empty(d, n, dtype=torch.float64).T  # the layout of the profile's centred states
    rot, _ = torch.linalg.qr(randn(d, d, seed=1))
    h = (randn(n, d) * torch.logspace(0, -decay, d, dtype=torch.float64)) @ rot
    if massive:
        h[:, :4] *= 50.0
    states = [h + randn(1, d, seed=2)]
    for i in range(3):
        states.append(states[-1] + 0.5 * (torch.tanh(states[-1] @ randn(d, d, seed=10 + i) / d**0.5)
                                          + 0.1 * randn(n, d, seed=20 + i)))
    states = [s.float() for s in states]
    with torch_threads(2):
        assert (blas.upper_gram(probe) is not None) == (d == 320)
        prof = linearity_profile(states)
    assert {p.solver for p in prof} <= {"gram", "cholesky"}
    for x, y, stats in zip(states, states[1:], prof):
        x, y = x.double(), y.double()
        assert abs(stats.linearity - lstsq_score(x, y)) < TOL
        assert abs(stats.linearity_wo_res - lstsq_score(x, y - x)) < TOL


@pytest.mark.parametrize("case", ["hidden", "massive", "collinear4", "collinear5"])
def test_gram_error_estimate_bounds_the_gram_formula(case):
    """The estimate that decides where the Gram formula ||t_k||^2 - ||L^{-1} b_k||^2 may stand in for the explicit
    residual must bound its actual error, column by column (the explicit residual serves as the reference: its
    error is second order in that of the coefficients)."""
    from eval.linearity.score import _design, gram_error_estimate, symmetric_gram

    n, d = 1500, 48
    x = {"hidden": hidden_like(n, d), "massive": randn(n, d) * torch.logspace(0, 4, d, dtype=torch.float64) + 7.0,
         "collinear4": collinear(n, d, 4), "collinear5": collinear(n, d, 5)}[case]
    xc = x - x.mean(0)
    update = 0.1 * nonlinear_target(x)
    for t in (x + update, update):  # Y = X + update of a residual block (mostly explained), and its Z = Y - X
        t = t - t.mean(0)
        design = _design(xc, symmetric_gram(xc))
        w = torch.linalg.solve_triangular(design.chol, (xc.T @ t) * design.inv[:, None], upper=False)
        a = torch.linalg.solve_triangular(design.chol.mT, w, upper=True)
        gram_rss = (t * t).sum(0) - (w * w).sum(0)
        resid = t - xc @ (a * design.inv[:, None])
        err = (gram_rss - (resid * resid).sum(0)).abs()
        est = gram_error_estimate(a, (t * t).sum(0), n)
        assert (err <= est).all(), float((err / est).max())


@pytest.mark.parametrize("layout", ["row-major", "column-major", "column-major rows 100:2900"])
@pytest.mark.parametrize("threads", [1, 2])
def test_symmetric_gram_is_the_gram_matrix(layout, threads):
    """Row-major: torch's block rows; column-major (whole, or a row slice with its storage offset and leading
    dimension, as the held-out folds pass it): BLAS's syrk in one band per thread."""
    from eval.linearity import blas
    from eval.linearity.score import symmetric_gram

    x = hidden_like(3000, 600)
    if layout != "row-major":
        x = x.T.contiguous().T
    if "rows" in layout:
        x = x[100:2900]
    with torch_threads(threads):
        assert (blas.upper_gram(x) is None) == (layout == "row-major")
        g = symmetric_gram(x)
    assert torch.equal(g, g.T)
    assert (g - x.T @ x).abs().max() < 1e-12 * g.diagonal().max()
    assert blas.upper_gram(x.float()) is None and blas.upper_gram(x[:50]) is None  # float32; a small product
    with torch_threads(8):  # 8 bands of 600 x 600 would hold more than x itself: torch's product instead
        assert blas.upper_gram(x) is None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_low_precision_inputs_are_upcast_exactly(dtype):
    x = (randn(900, 32) * 4).to(dtype)
    y = nonlinear_target(x.double()).to(dtype)
    assert linearity_score(x, y) == linearity_score(x.double(), y.double())
    assert abs(linearity_score(x, y) - lstsq_score(x.double(), y.double())) < TOL
    prof = linearity_profile([x, y])
    assert prof[0].linearity == pair_stats(x.double(), y.double()).linearity


def test_refuses_underdetermined_and_flags_nonfinite():
    d = 32
    with pytest.raises(ValueError, match="trivially 1"):
        linearity_score(randn(d + 1, d), randn(d + 1, d, seed=1))
    assert linearity_score(randn(d + 2, d), randn(d + 2, d, seed=1)) < 1.0
    with pytest.raises(ValueError, match="same tokens"):
        linearity_score(randn(100, 4), randn(99, 4))
    x = randn(200, 8)
    x[3, 2] = float("nan")
    with pytest.warns(UserWarning, match="non-finite"):
        stats = pair_stats(x, randn(200, 8, seed=1))
    assert stats.solver == "nonfinite" and math.isnan(stats.linearity)


def test_probe_is_the_papers_recipe(tinystories_valid, tiny_tokenizer):
    text = read_probe_text(tinystories_valid)
    assert "<|endoftext|>" not in text and len(text) > 512 * 128
    state = random.getstate()
    random.seed(0)  # the notebook, verbatim
    starts = [512 * i for i in random.sample(range(len(text) // 512), 128)]
    random.setstate(state)
    want = [text[s:s + 512] for s in starts]
    before = random.random()
    random.setstate(state)
    assert sample_chunks(text) == want
    assert random.random() == before  # the global random state is left alone

    probe = build_probe(text, tiny_tokenizer)
    assert len(probe) == 128
    assert all(ids[0] == tiny_tokenizer.bos_token_id for ids in probe)  # default special tokens: BOS per chunk
    assert probe[5] == tiny_tokenizer(want[5])["input_ids"]
    with pytest.warns(UserWarning, match="longer than the model's 40 positions"):
        capped = build_probe(text, tiny_tokenizer,
                             ProbeSetConfig(num_chunks=16, chunk_chars=256, seed=3, max_tokens=500), max_len=40)
    assert sum(map(len, capped)) == 500 and max(map(len, capped)) <= 40
    with pytest.warns(UserWarning, match="only 2 chunks"):
        assert len(sample_chunks(text[:1100], ProbeSetConfig(num_chunks=8))) == 2


def test_probe_text_from_a_dataset(tmp_path, tinystories_valid):
    import json

    from data.sources import read_txt_documents
    from eval.linearity.probe import read_probe_dataset

    with (tmp_path / "valid.jsonl").open("w") as f:  # a local HF dataset directory (works offline)
        for doc in read_txt_documents(tinystories_valid)[:50]:
            f.write(json.dumps({"story": doc}) + "\n")
    text = read_probe_dataset(str(tmp_path), "validation", text_field="story")
    assert text == read_probe_text(tmp_path / "valid.jsonl", "story")
    assert text.startswith(read_txt_documents(tinystories_valid)[0])
