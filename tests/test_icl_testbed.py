"""The linear-Transformer testbed: the model against a float64 transcription of the paper's equations, the
one-layer model at the optimal preconditioned gradient step, the prompt stream, the tail-index estimator on
α-stable samples, and a short run through the Trainer (loss goes down, resume is bit-exact, measurements logged)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from references import lstsq_linearity
from scipy.stats import levy_stable

from core.io import read_jsonl as read_metrics
from core.rundir import RunDir
from data.icl_regression import ICLRegressionConfig, ICLRegressionStream, sample_prompts
from eval.linearity.score import linearity_profile
from linreg.config import load_config
from linreg.icl_trainer import ICLTrainer
from linreg.opt_measures import OptMeasureConfig, OptMeasurer, lanczos_extremes, tail_index
from model.capture import ResidualStream
from model.linear_attention import LinearAttentionTransformer, build_linear_attention

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "linear_attention" / "base.yaml"


def paper_forward(prompts: np.ndarray, ps: list[np.ndarray], qs: list[np.ndarray]) -> np.ndarray:
    """The paper's column form in float64: Z_{l+1} = Z_l + (1/n) P_l Z_l M (Z_l^T Q_l Z_l), y_hat = -[Z_L]_{d+1,n+1}."""
    out = []
    for prompt in prompts.astype(np.float64):
        z = prompt.T  # [d+1, n+1]
        n = z.shape[1] - 1
        m = np.diag([1.0] * n + [0.0])
        for p, q in zip(ps, qs):
            z = z + p @ z @ m @ (z.T @ q @ z) / n
        out.append(-z[-1, -1])
    return np.array(out)


def preconditioned_gd_step(dim: int, a: torch.Tensor) -> LinearAttentionTransformer:
    """The one-layer model that predicts x_q^T A (1/n) sum_i y_i x_i (A symmetric [d, d])."""
    model = build_linear_attention(dim, 1, 0.0)
    with torch.no_grad():
        model.layers[0].P.zero_()
        model.layers[0].P[dim, dim] = 1.0
        model.layers[0].Q.zero_()
        model.layers[0].Q[:dim, :dim] = -a
    return model


def test_forward_equals_the_papers_equations_in_float64():
    cfg = ICLRegressionConfig(dim=4, num_examples=9)
    prompts, _ = sample_prompts(cfg, np.random.default_rng(0), 16)
    model = build_linear_attention(4, 3, init_std=0.3, seed=0).double()
    ps = [blk.P.detach().numpy() for blk in model.layers]
    qs = [blk.Q.detach().numpy() for blk in model.layers]
    got = model(prompts.double()).detach().numpy()
    np.testing.assert_allclose(got, paper_forward(prompts.numpy(), ps, qs), rtol=1e-12, atol=1e-12)


def test_one_layer_at_the_optimal_preconditioned_gd_step_reaches_the_expected_loss():
    """x ~ N(0, I_d), w ~ N(0, I_d): one step y_hat = x_q^T (a I) (1/n) Σ y_i x_i has expected loss
    a^2 d (n+d+1)/n - 2ad + d (E[(X^T X)^2] = n(n+d+1) I for Gaussian X), minimal at a* = n/(n+d+1) with
    loss d(d+1)/(n+d+1) (Ahn et al. 2023, isotropic case)."""
    d, n, count = 5, 20, 60_000
    cfg = ICLRegressionConfig(dim=d, num_examples=n)
    prompts, targets = sample_prompts(cfg, np.random.default_rng(1), count)
    prompts, targets = prompts.double(), targets.double()

    def loss(a: float) -> float:
        model = preconditioned_gd_step(d, a * torch.eye(d)).double()
        with torch.no_grad():
            return float(((model(prompts) - targets) ** 2).mean())

    a_star = n / (n + d + 1)
    expected = d * (d + 1) / (n + d + 1)
    assert loss(a_star) == pytest.approx(expected, rel=0.03)
    for a in (0.8 * a_star, 1.2 * a_star):
        assert loss(a) == pytest.approx(a * a * d * (n + d + 1) / n - 2 * a * d + d, rel=0.03)
        assert loss(a) > loss(a_star)


def test_stream_is_seeded_resumable_and_split_over_ranks():
    cfg = ICLRegressionConfig(dim=3, num_examples=6, covariates="student_t", df=2.5, condition=10.0)
    a = ICLRegressionStream(cfg, 4, 0, 1, seed=3)
    first = [a.next_batch() for _ in range(3)]
    b = ICLRegressionStream(cfg, 4, 0, 1, seed=3)
    b.load_state_dict({"cursor": 2, "seed": 3})
    assert torch.equal(b.next_batch()[0], first[2][0])
    halves = [ICLRegressionStream(cfg, 2, r, 2, seed=3).next_batch()[0] for r in (0, 1)]
    assert torch.equal(torch.cat(halves), first[0][0])  # same prompts for any split over ranks
    prompts, targets = first[0]
    x, y = prompts[:, :, :3], prompts[:, :, 3]
    assert prompts.shape == (4, 7, 4) and torch.all(prompts[:, -1, -1] == 0)
    w = torch.linalg.lstsq(x[:, :-1].double(), y[:, :-1, None].double()).solution  # y_i = w^T x_i exactly
    torch.testing.assert_close((x[:, -1:].double() @ w).reshape(-1), targets.double(), rtol=1e-4, atol=1e-4)


def test_heavy_tails_and_anisotropy_of_the_covariates():
    rng = np.random.default_rng(2)
    gauss, _ = sample_prompts(ICLRegressionConfig(dim=4, num_examples=50), rng, 2000)
    heavy, _ = sample_prompts(ICLRegressionConfig(dim=4, num_examples=50, covariates="student_t", df=3.0), rng, 2000)
    aniso, _ = sample_prompts(ICLRegressionConfig(dim=4, num_examples=50, condition=100.0), rng, 2000)
    kurt = lambda t: float((t ** 4).mean() / (t ** 2).mean() ** 2)  # noqa: E731
    assert abs(kurt(gauss[:, :, 0]) - 3.0) < 0.1 and kurt(heavy[:, :, 0]) > 8.0  # t_3: infinite kurtosis
    var = aniso[:, :, :4].reshape(-1, 4).var(0).numpy()
    np.testing.assert_allclose(var, np.geomspace(1, 0.01, 4), rtol=0.05)


def test_gamma_covariates_the_papers_heavy_tails():
    """||x||^2 ~ Gamma(k, theta) with a uniform direction (Ahn et al., arXiv 2310.01082): at k = d/2 and the
    default theta = d/k it is the Gaussian case (||x||^2 ~ chi^2_d, scipy's KS test); at the paper's k = 0.1 the
    coordinates keep unit variance but have kurtosis 3d(k+1)/(k(d+2)); theta scales ||x||^2."""
    from scipy import stats

    d, rng = 5, np.random.default_rng(6)
    sample = lambda **kw: sample_prompts(ICLRegressionConfig(dim=d, num_examples=40, covariates="gamma", **kw),  # noqa: E731
                                         rng, 1000)[0][:, :, :d].reshape(-1, d).double()
    gauss_like = sample(gamma_shape=d / 2)
    assert stats.kstest((gauss_like ** 2).sum(1).numpy(), stats.chi2(d).cdf).pvalue > 0.01
    heavy = sample(gamma_shape=0.1)
    np.testing.assert_allclose(heavy.var(0).numpy(), 1.0, rtol=0.15)
    kurt = float((heavy[:, 0] ** 4).mean() / (heavy[:, 0] ** 2).mean() ** 2)
    assert kurt == pytest.approx(3 * d * 1.1 / (0.1 * (d + 2)), rel=0.25)  # 23.6
    direction = heavy / heavy.norm(dim=1, keepdim=True)
    np.testing.assert_allclose(direction.mean(0).numpy(), 0.0, atol=0.02)  # uniform on the sphere
    papers = sample(gamma_shape=0.1, gamma_scale=10.0)  # the paper's code: theta = sqrt(2d/k), E||x||^2 = 1
    assert float((papers ** 2).sum(1).mean()) == pytest.approx(1.0, rel=0.15)


@pytest.mark.parametrize("alpha", [1.2, 1.5, 1.8])
def test_tail_index_recovers_the_index_of_alpha_stable_samples(alpha):
    """Stated error: within 0.15 of α with 40 000 samples (K1 = 200 blocks of 200)."""
    x = levy_stable.rvs(alpha, 0.0, size=40_000, random_state=np.random.default_rng(int(alpha * 10)))
    assert abs(tail_index(x) - alpha) < 0.15
    assert tail_index(np.random.default_rng(0).standard_normal(40_000)) > 1.85  # Gaussian: α = 2
    assert np.isnan(tail_index(np.full(100, np.nan)))  # a diverged run's gradients: no index, no crash


def test_lanczos_hessian_extremes_match_the_explicit_hessian_in_float64():
    """λ_min and λ_max of the measurement's Hessian against eigvalsh of torch's explicit Hessian of the same loss
    (a 2-layer model, d = 2: 36 parameters). With as many Lanczos steps as parameters they are exact; with fewer
    they lie inside [λ_min, λ_max] (interlacing)."""
    data = ICLRegressionConfig(dim=2, num_examples=6)
    model = build_linear_attention(2, 2, init_std=0.5, seed=3).double()
    names = [k for k, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    measurer = OptMeasurer(OptMeasureConfig(full_batch=64, batch_size=8, noise_batches=8, hessian_iters=36),
                           data, model, torch.device("cpu"))
    measurer.before_update(1)
    theta, (prompts, targets) = measurer._theta, measurer._batch

    def flat_loss(flat):
        parts = torch.split(flat, [s.numel() for s in shapes])
        return measurer._loss({k: t.reshape(s) for k, t, s in zip(names, parts, shapes)}, prompts, targets)

    hessian = torch.autograd.functional.hessian(flat_loss, torch.cat([t.reshape(-1) for t in theta.values()]))
    eig = torch.linalg.eigvalsh(hessian)
    lo, hi = measurer.hessian_extremes(theta)
    assert lo == pytest.approx(float(eig[0]), rel=1e-8, abs=1e-10)
    assert hi == pytest.approx(float(eig[-1]), rel=1e-8)
    measurer.cfg.hessian_iters = 12
    lo12, hi12 = measurer.hessian_extremes(theta)
    assert float(eig[0]) - 1e-10 <= lo12 and hi12 <= float(eig[-1]) * (1 + 1e-10)
    nan = lanczos_extremes(lambda v: v * float("nan"), 4, 4, torch.Generator().manual_seed(0))
    assert all(np.isnan(nan))  # an overflowed loss (heavy-tailed prompts, deep models): reported, not raised


def _cfg(*overrides):
    return load_config(CONFIG, ["train.global_batch_size=32", "logging.every=1", "optim.lr=0.01",
                                "measure.every=5", "measure.full_batch=256", "measure.batch_size=16",
                                "measure.noise_batches=16", "measure.hessian_iters=5", *overrides])


def _losses(run: RunDir) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in read_metrics(run.metrics) if "train/loss" in r}


def test_trainer_decreases_the_loss_resumes_bit_exactly_and_logs_measurements(tmp_path):
    full = RunDir(tmp_path / "full")
    assert ICLTrainer(_cfg("train.max_steps=20"), full).fit() == 0
    curve = _losses(full)
    assert np.mean([curve[s] for s in range(16, 21)]) < np.mean([curve[s] for s in range(1, 6)]) - 0.5
    measured = {r["step"]: r for r in read_metrics(full.metrics) if "opt/tail_index" in r}
    assert sorted(measured) == [5, 10, 15, 20]
    for key in ("opt/grad_norm", "opt/sharpness", "opt/lambda_min", "opt/dir_sharpness", "opt/local_smoothness"):
        assert np.isfinite(measured[20][key])
    assert 0 < measured[20]["opt/tail_index"] <= 2
    from sweep.compare import scalar_columns, scalar_value
    from sweep.runs import find_runs

    run = find_runs([full.path]).runs[0]
    (source, key), = [(src, k) for c, src, k in scalar_columns([run]) if c == "icl-loss"]  # compare's testbed loss
    assert scalar_value(run, source, key) == measured[20]["opt/loss"]

    part = RunDir(tmp_path / "part")
    assert ICLTrainer(_cfg("train.max_steps=10"), part).fit() == 0
    assert ICLTrainer(_cfg("train.max_steps=20"), part, resume="auto").fit() == 0
    assert _losses(part) == curve  # bit-exact: same prompts, same weights, same optimizer state


def test_sgd_is_selectable():
    cfg = _cfg("optim.name=sgd", "optim.momentum=0.9")
    from linreg.engine import build_optimizer

    opt = build_optimizer(build_linear_attention(5, 2, 0.02), cfg.optim, "cpu")
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.9
    assert replace(cfg.optim, name="adamw").name == "adamw"


def residual_profile(model: torch.nn.Module, prompts: torch.Tensor) -> list[dict]:
    """The testbed's linearity profile: eval/linearity/score.py on the residual stream h_0..h_L captured by
    model/capture.py, every row of every prompt a "token" (per block: LS, LS without residual, norm ratio)."""
    stream = ResidualStream(model)
    try:
        with torch.no_grad(), stream:
            model(prompts)
        states = [h.reshape(-1, h.size(-1)) for h in stream.take()]
    finally:
        stream.remove()
    return [s.to_dict() for s in linearity_profile(states)]


def test_linearity_profile_and_regularizers_apply_to_the_testbed():
    from regularizers import RegularizerConfig, build_regularizer

    cfg = ICLRegressionConfig(dim=5, num_examples=20)
    prompts, _ = sample_prompts(cfg, np.random.default_rng(4), 64)
    model = build_linear_attention(5, 3, init_std=0.3, seed=1)
    profile = residual_profile(model, prompts)
    states = [prompts]  # the reference: the blocks called one by one (no hooks), the score by its definition
    with torch.no_grad():
        for layer in model.layers:
            states.append(layer(states[-1]))
    flat = [h.reshape(-1, h.size(-1)) for h in states]
    assert [p["linearity"] for p in profile] == pytest.approx(
        [lstsq_linearity(x, y) for x, y in zip(flat[:-1], flat[1:])], abs=1e-6)
    # One block with P = Q = 0 is the identity: perfectly linear, with a zero update (LS_wo undefined).
    identity = build_linear_attention(5, 1, init_std=0.0)
    assert residual_profile(identity, prompts)[0]["linearity"] == pytest.approx(1.0)

    stream = ResidualStream(model)
    reg = build_regularizer(RegularizerConfig(name="cosine", weight=1.0))
    with stream:
        model(prompts)
    reg(stream.take(), step=0).backward()
    assert all(torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in model.parameters())


def test_a_block_is_linear_within_a_prompt_and_not_across_prompts():
    """Row k of a block's update is (1/n) Σ_j (h_k^T Q^T h_j) P h_j = P S Q h_k with S = (1/n) Σ_j h_j h_j^T over the
    prompt's example rows: one linear map per prompt, so the linearity score is 1 on one prompt's rows and
    below 1 pooled over prompts (the map changes with S)."""
    from eval.linearity.score import linearity_score
    from model.capture import ResidualStream

    prompts, _ = sample_prompts(ICLRegressionConfig(dim=5, num_examples=40), np.random.default_rng(5), 32)
    model = build_linear_attention(5, 2, init_std=0.3, seed=2).double()
    stream = ResidualStream(model)
    with torch.no_grad(), stream:
        model(prompts.double())
    h0, h1, _ = stream.take()
    assert linearity_score(h0[0], h1[0]) == pytest.approx(1.0, abs=1e-9)
    assert linearity_score(h0.reshape(-1, 6), h1.reshape(-1, 6)) < 0.99


def test_trainer_registry_and_the_regularized_testbed_loss(tmp_path):
    from linreg.trainer import Trainer
    from linreg.trainers import trainer_class

    assert trainer_class(_cfg()) is ICLTrainer
    assert trainer_class(load_config(CONFIG.parents[1] / "tiny_cpu.yaml")) is Trainer
    run = RunDir(tmp_path / "reg")
    cfg = _cfg("train.max_steps=3", "measure=null", "regularizer.name=cosine", "regularizer.weight=0.5")
    assert ICLTrainer(cfg, run).fit() == 0
    rows = [r for r in read_metrics(run.metrics) if "train/loss" in r]
    assert len(rows) == 3
    for r in rows:  # the regularizer is computed on the testbed's states and logged apart from the squared error
        assert r["train/reg"] > 0 and r["train/loss"] == pytest.approx(r["train/task_loss"] + r["train/reg"], abs=1e-6)


def test_study_summary_gaps_and_divergence(tmp_path):
    """The study's summary: late loss = median of the last 5 rows, the SGD − Adam gaps of the late and the held-out
    loss equal scipy's Welch test, and a run that stopped early is counted as diverged and left out."""
    import json
    import shutil

    from scipy import stats

    from analysis.linear_attention import main as study

    rng = np.random.default_rng(7)
    held = {"adam": [0.5, 0.6, 0.55], "sgd": [0.7, 0.9, 0.8]}
    late: dict[str, list[float]] = {}
    for data in ("gauss", "heavy"):
        for opt in ("adam", "sgd"):
            for seed in range(1, 5):
                run = RunDir(tmp_path / "sweep" / f"{opt}_L2_{data}" / f"seed{seed}")
                run.path.mkdir(parents=True)
                run.config.write_text("train: {max_steps: 100}\n")
                last = 100 if seed < 4 else 60  # seed 4 stopped early: diverged
                losses = rng.uniform(0.1, 2.0, last // 10)
                rows = [{"step": 10 * (i + 1), "train/loss": float(v)} for i, v in enumerate(losses)]
                rows.append({"step": last, "opt/loss": held[opt][seed - 1] if seed < 4 else 9.0,
                             "opt/grad_norm": 1.0 + seed, "opt/local_smoothness": 2.0 + seed})
                run.metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
                if seed < 4:
                    late.setdefault(f"{opt}_{data}", []).append(float(np.median(losses[-5:])))
    assert study([str(tmp_path / "sweep"), "--out", str(tmp_path / "out")]) == 0
    cells = json.loads((tmp_path / "out" / "summary.json").read_text())["cells"]
    for cell in cells:
        data = cell["data"]
        assert (cell["adam:diverged"], cell["sgd:diverged"]) == (1, 1)
        assert cell["adam"]["values"] == pytest.approx(late[f"adam_{data}"])
        for key, (a, b) in (("sgd_minus_adam", (late[f"sgd_{data}"], late[f"adam_{data}"])),
                            ("sgd_minus_adam_heldout", (held["sgd"], held["adam"]))):
            assert cell[key]["diff"] == pytest.approx(np.mean(a) - np.mean(b))
            assert cell[key]["p"] == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)
    assert len(cells) == 2 and (tmp_path / "out" / "adam_vs_sgd.png").is_file()
    # A study of Gaussian data only: one cell, and the heavy-tailed panel is drawn empty instead of failing.
    for opt in ("adam", "sgd"):
        shutil.rmtree(tmp_path / "sweep" / f"{opt}_L2_heavy")
    assert study([str(tmp_path / "sweep"), "--out", str(tmp_path / "gauss_only")]) == 0
    assert [c["data"] for c in json.loads((tmp_path / "gauss_only" / "summary.json").read_text())["cells"]] == ["gauss"]
    assert (tmp_path / "gauss_only" / "adam_vs_sgd.png").is_file()
