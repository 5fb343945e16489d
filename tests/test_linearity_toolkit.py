"""Anisotropy, intrinsic dimension, the logit lens and the score without residual against the authors' own package
(``llm-microscope`` 0.0.7, a test-only dependency) on identical activations, in float64.

The package's ``__init__`` imports its ``logit_lens`` module by an absolute name that does not resolve, so its two
modules are loaded from their files. Its functions are run with one torch thread: its intrinsic dimension makes
n small tensor operations per point, which the OpenMP pool makes ~1000x slower on a loaded two-core machine.
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import read_stories
from transformers import AutoModelForCausalLM

from eval.linearity import linearity_score, pair_stats
from eval.linearity.toolkit import (
    _MORE_CANDIDATES,
    anisotropy,
    intrinsic_dimension,
    logit_lens,
    top_eigenvalue,
    two_nearest,
)
from model.capture import ResidualStream

TOL = 1e-6  # the requirement; the float64 comparisons below reach ~1e-12


def authors_module(name: str):
    spec = importlib.util.find_spec("llm_microscope")
    assert spec is not None, "llm-microscope 0.0.7 is a test dependency: pip install -c requirements/cpu.txt " \
                             "--no-deps llm-microscope==0.0.7"
    path = Path(spec.submodule_search_locations[0]) / f"{name}.py"
    module_spec = importlib.util.spec_from_file_location(f"llm_microscope_{name}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def authors():
    return authors_module("functions")


@contextlib.contextmanager
def one_thread(default_dtype=torch.float32):
    threads, dtype = torch.get_num_threads(), torch.get_default_dtype()
    torch.set_num_threads(1)
    torch.set_default_dtype(default_dtype)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.set_default_dtype(dtype)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def manifold(n, d, dim, seed=0):
    """Points near a curved ``dim``-dimensional manifold in d dimensions, with an offset and uneven column scales,
    two exact duplicates (r1 = 0, discarded by both) and a noise floor."""
    z = randn(n, dim, seed=seed)
    x = torch.tanh(z @ randn(dim, d, seed=seed + 1)) * torch.logspace(0, 2, d, dtype=torch.float64) + 5.0
    x += 1e-3 * randn(n, d, seed=seed + 2)
    x[7], x[n // 2] = x[3], x[n // 3]
    return x


@pytest.mark.parametrize("n,d", [(300, 16), (40, 100), (500, 64), (600, 160)])  # the last by Lanczos
def test_anisotropy_equals_authors(authors, n, d):
    for x in (manifold(n, d, 4), randn(n, d, seed=5) * torch.logspace(0, 3, d, dtype=torch.float64)):
        with one_thread():
            ref, ref32 = (authors.calculate_anisotropy_torch(t) for t in (x, x.float().double()))
        assert abs(anisotropy(x) - ref) < 1e-12
        assert abs(anisotropy(x.float()) - ref32) < 1e-12  # a float32 state is upcast exactly


def test_top_eigenvalue_equals_eigvalsh():
    """Lanczos against LAPACK: a gapped spectrum, a cluster at the top, a gapless one (the fallback), small orders."""
    x = randn(500, 200) * torch.logspace(0, -2, 200, dtype=torch.float64)
    x[:, :3] *= 50  # massive features, as in hidden states
    cluster = torch.diag(torch.cat([torch.full((5,), 3.0, dtype=torch.float64), torch.rand(195, dtype=torch.float64)]))
    gapless = torch.diag(torch.linspace(0, 1, 300, dtype=torch.float64))
    for a in (x.T @ x, cluster, gapless, x[:, :40].T @ x[:, :40], x[:80, :100].T @ x[:80, :100]):
        ref = float(torch.linalg.eigvalsh(a)[-1])
        assert abs(top_eigenvalue(a) - ref) <= 1e-13 * ref


def test_anisotropy_limits():
    assert abs(anisotropy(randn(200, 1) * randn(1, 30, seed=1) + 2.0) - 1.0) < 1e-12  # one line through the mean
    assert math.isnan(anisotropy(torch.ones(10, 4)))


@pytest.mark.parametrize("n,d,dim", [(300, 24, 3), (257, 8, 6)])
def test_intrinsic_dimension_equals_authors(authors, n, d, dim):
    x = manifold(n, d, dim)
    # Their empirical CDF is built in torch's default dtype (float32); under a float64 default it is float64 too,
    # and every other step of theirs is float64 already.
    with one_thread(torch.float64):
        ref = authors.intrinsic_dimension(x, "cpu")
        ref_half = authors.intrinsic_dimension(x, "cpu", reduction_factor=2)
    assert abs(intrinsic_dimension(x) - ref) < 1e-12
    assert abs(intrinsic_dimension(x, fraction=0.5) - ref_half) < 1e-12
    with one_thread():  # as they ship it: the float32 CDF moves the estimate by ~1e-7
        assert abs(intrinsic_dimension(x) - authors.intrinsic_dimension(x, "cpu")) < TOL


def test_intrinsic_dimension_ties_and_duplicates(authors):
    # A jittered integer lattice: exact ties r2 = r1 on the lattice points, many duplicates (beyond the number of
    # candidate neighbours, so some rows take the full recomputation) and points off the lattice.
    grid = torch.cartesian_prod(*[torch.arange(6, dtype=torch.float64)] * 3)
    x = torch.cat([grid, grid[:20].repeat(12, 1), grid[:60] + 0.3 * randn(60, 3, seed=3)])
    with one_thread(torch.float64):
        ref = authors.intrinsic_dimension(x, "cpu")
    assert abs(intrinsic_dimension(x) - ref) < 1e-12


@pytest.mark.parametrize("n, d", [(700, 12), (1300, 200)])  # one block; two, with symmetric diagonal blocks
def test_two_nearest_equals_brute_force(n, d, caplog):
    x = manifold(n, d, 3)
    x[100:120] = x[5]  # 21 copies of one point: more than the candidates checked per row
    # a point with one duplicate whose nearest other point has three copies: tied bounds beyond the first
    # candidates, settled by the second search
    x[200] = x[201]
    x[300:303] = x[200] + 1e-3 * torch.linspace(1, 2, d, dtype=torch.float64)
    x[1030:1040] = x[17]  # copies in the second block of rows
    dist = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")
    dist.fill_diagonal_(math.inf)
    ref = dist.topk(2, dim=1, largest=False).values
    with caplog.at_level(logging.DEBUG, logger="eval.linearity.toolkit"):
        r1, r2 = two_nearest(x)
    assert torch.equal(r1 == 0, ref[:, 0] == 0)
    assert torch.allclose(r1, ref[:, 0], rtol=1e-14, atol=0) and torch.allclose(r2, ref[:, 1], rtol=1e-14, atol=0)
    # and by the stage meant to: the tied bounds go to the second search, which settles every row but those with
    # more points within r2 > 0 than its candidates (the 21 copies' neighbours); only those fall through to the slow
    # search against every point, which would be exact too, and unseen by the asserts above
    unsure = [r.args[0] for r in caplog.records if r.msg.startswith("two_nearest:")]
    crowded = int((((dist <= ref[:, 1:]).sum(dim=1) > _MORE_CANDIDATES) & (ref[:, 1] > 0)).sum())
    assert len(unsure) == 2 and unsure[0] > unsure[1] == crowded, (unsure, crowded)


def test_intrinsic_dimension_recovers_known_dimension():
    # Uniform points on a flat 5-dimensional cube embedded in 40 dimensions: TwoNN's estimate is close to 5.
    x = torch.rand(3000, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64) @ randn(5, 40)
    assert abs(intrinsic_dimension(x, fraction=0.9) - 5.0) < 0.5


def test_intrinsic_dimension_rejects_bad_arguments():
    with pytest.raises(ValueError, match="fraction"):
        intrinsic_dimension(randn(10, 3), fraction=0.0)
    with pytest.raises(ValueError, match="at least 3"):
        intrinsic_dimension(randn(2, 3))
    assert math.isnan(intrinsic_dimension(torch.ones(10, 3)))  # every point has duplicates


def score_without_residual(authors, x, y) -> float:
    """What the authors' procrustes_similarity_centered would return with its missing ``return``: its local
    ``y_error`` when it returns, read with a profiler hook (0.0.7 ends with ``sim = float`` and returns None)."""
    seen = {}

    def hook(frame, event, arg):
        if event == "return" and frame.f_code is authors.procrustes_similarity_centered.__code__:
            seen.update(frame.f_locals)

    previous = sys.getprofile()
    sys.setprofile(hook)
    try:
        returned = authors.procrustes_similarity_centered(x, y)
    finally:
        sys.setprofile(previous)
    assert returned is None  # if a later version returns the score, compare with it instead
    return float(1 - seen["y_error"])


@pytest.mark.parametrize("n,d", [(400, 16), (300, 48)])
def test_scores_equal_authors(authors, n, d):
    x = manifold(n, d, 6)
    x[7] += 0.01  # no duplicate rows: a rank-deficient X would expose their threshold-free pseudo-inverse
    y = x + torch.tanh(x @ randn(d, d, seed=9) / d) + 0.1 * randn(n, d, seed=10)
    with one_thread():
        ref_wo = score_without_residual(authors, x, y)
        ref_wo_plain, ref = authors.procrustes_similarity(x, y - x), authors.procrustes_similarity(x, y)
    assert abs(ref_wo - ref_wo_plain) < 1e-12  # their "centered" score is the plain one of (x, y - x)
    stats = pair_stats(x, y)
    assert abs(stats.linearity_wo_res - ref_wo) < 1e-10
    assert abs(linearity_score(x, y - x) - ref_wo) < 1e-10
    assert abs(stats.linearity - ref) < 1e-10


@pytest.fixture(scope="module")
def lens_model(tiny_hf_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_hf_model_dir).double().eval()


def capture(model, ids, mask=None):
    stream = ResidualStream(model)
    try:
        with torch.no_grad(), stream:
            out = model(ids, attention_mask=mask, labels=ids if mask is None else None)
        return stream.take(), out
    finally:
        stream.remove()


def test_logit_lens_equals_authors_and_hf(lens_model, tiny_tokenizer, tinystories_valid):
    text = read_stories(tinystories_valid, limit=1)[0][:600]
    with one_thread():
        _, per_token, _ = authors_module("logit_lens").logit_lens(lens_model, tiny_tokenizer, text)
    ids = tiny_tokenizer(text, return_tensors="pt")["input_ids"]
    states, out = capture(lens_model, ids)
    lens = logit_lens(states, lens_model, ids)
    assert set(lens) == {"loss", "loss_no_norm", "neglogp_argmax"}
    assert all(len(v) == len(states) == lens_model.config.num_hidden_layers + 1 for v in lens.values())
    # Theirs casts the logits to float32: agreement to float32 rounding, well inside 1e-6.
    for ours, theirs in zip(lens["neglogp_argmax"], per_token.mean(axis=1)):
        assert abs(ours - float(theirs)) < TOL
    # The model's own loss at the last layer (from its float64 logits: HF's loss upcasts them to float32 only).
    assert abs(lens["loss"][-1] - float(F.cross_entropy(out.logits[0, :-1], ids[0, 1:]))) < 1e-12
    assert abs(lens["loss"][-1] - float(out.loss)) < TOL
    head = lens_model.get_output_embeddings()
    for i, h in enumerate(states):
        with torch.no_grad():
            ref = F.cross_entropy(head(h)[0, :-1], ids[0, 1:])
        assert abs(lens["loss_no_norm"][i] - float(ref)) < 1e-12


def test_logit_lens_skips_padding(lens_model, tiny_tokenizer, tinystories_valid):
    texts = [s[:300] for s in read_stories(tinystories_valid, limit=2)]
    seqs = [tiny_tokenizer(t, return_tensors="pt")["input_ids"][0] for t in texts]
    width = max(len(s) for s in seqs)
    ids = torch.full((2, width), tiny_tokenizer.pad_token_id)
    mask = torch.zeros(2, width, dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, :len(s)], mask[row, :len(s)] = s, 1
    labels = ids.masked_fill(mask == 0, -100)
    pooled = logit_lens(capture(lens_model, ids, mask)[0], lens_model, labels)
    runs = [capture(lens_model, s[None])[0] for s in seqs]
    alone = [logit_lens(states, lens_model, s[None]) for states, s in zip(runs, seqs)]
    weights = [len(s) - 1 for s in seqs]  # predicted tokens per sequence
    # The same tokens pooled into one seq x d state per layer, each sequence's first label -100.
    flat = [torch.cat([r[i][0] for r in runs]) for i in range(len(runs[0]))]
    flat_labels = torch.cat([s.clone().index_fill_(0, torch.tensor([0]), -100) for s in seqs])
    concatenated = logit_lens(flat, lens_model, flat_labels)
    for key, values in pooled.items():
        for i, v in enumerate(values):
            ref = sum(w * a[key][i] for w, a in zip(weights, alone)) / sum(weights)
            assert abs(v - ref) < 1e-9 and abs(concatenated[key][i] - ref) < 1e-9, (key, i)


def test_logit_lens_rejects_mismatched_labels(lens_model):
    states = [torch.zeros(1, 5, lens_model.config.hidden_size, dtype=torch.float64)] * 3
    with pytest.raises(ValueError, match="labels"):
        logit_lens(states, lens_model, torch.zeros(1, 4, dtype=torch.long))
