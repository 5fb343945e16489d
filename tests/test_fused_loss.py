"""The chunked next-token loss (``model.loss.linear_cross_entropy``) against the logits path in float64: loss and
gradients for uneven chunks, tied weights and bf16; and the Trainer with ``train.fused_loss`` on and off: the same
losses and weights after a few steps."""
import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from core.io import read_jsonl
from core.rundir import RunDir
from linreg.config import load_config
from linreg.trainer import Trainer
from model.loss import causal_lm_loss, linear_cross_entropy

TINY = Path(__file__).resolve().parent / "tiny.yaml"


def _inputs(B=3, T=200, d=16, V=97, dtype=torch.float32, seed=0):  # 600 rows: several chunks of >= 256
    g = torch.Generator().manual_seed(seed)
    hidden = (2 * torch.randn(B, T, d, generator=g)).to(dtype)
    weight = (torch.randn(V, d, generator=g) / d ** 0.5).to(dtype)
    return hidden, weight, torch.randint(0, V, (B, T), generator=g)


def _grads(loss_fn, hidden, weight, targets):
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss = loss_fn(h, w, targets)
    loss.backward()
    return loss.detach(), h.grad, w.grad


def _logits_path(h, w, t):
    """The trainer's logits path (float32 logits); in float64 for float64 inputs, the reference."""
    logits = h @ w.t()
    if logits.dtype == torch.float64:
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), t.reshape(-1))
    return causal_lm_loss(logits, t)


@pytest.mark.parametrize("chunk_elements", [1, 97 * 300, 1 << 30])  # 256-row chunks (the floor), 300, one chunk
def test_equals_the_logits_path_in_float64(chunk_elements):
    hidden, weight, targets = _inputs()
    want = _grads(_logits_path, hidden.double(), weight.double(), targets)
    got = _grads(lambda h, w, t: linear_cross_entropy(h, w, t, chunk_elements), hidden, weight, targets)
    for a, b, what in zip(got, want, ("loss", "hidden grad", "weight grad")):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-7, msg=lambda m: f"{what}: {m}")


def test_scaled_backward_and_tied_weight():
    """A scaled loss (as gradient accumulation divides it) scales both gradients; a weight used twice (tied
    embeddings) gets the sum of both uses."""
    hidden, weight, targets = _inputs(d=8, V=31)
    w = weight.clone().requires_grad_()
    h = hidden.clone().requires_grad_()
    (0.25 * linear_cross_entropy(h + w[:1], w, targets, 31 * 256)).backward()  # w also feeds the input
    w_ref, h_ref = weight.double().requires_grad_(), hidden.double().requires_grad_()
    (0.25 * _logits_path(h_ref + w_ref[:1], w_ref, targets)).backward()
    torch.testing.assert_close(w.grad.double(), w_ref.grad, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(h.grad.double(), h_ref.grad, rtol=1e-5, atol=1e-8)


def test_bf16_weights_and_no_grad():
    hidden, weight, targets = _inputs(dtype=torch.bfloat16)
    want = _grads(_logits_path, hidden.float(), weight.float(), targets)
    got = _grads(linear_cross_entropy, hidden, weight, targets)
    assert got[1].dtype == got[2].dtype == torch.bfloat16 and got[0].dtype == torch.float32
    torch.testing.assert_close(got[0], want[0], rtol=1e-4, atol=1e-4)
    for a, b in zip(got[1:], want[1:]):
        assert (a.float() - b).norm() / b.norm() < 1e-2
    with torch.no_grad():  # evaluation: the loss only
        torch.testing.assert_close(linear_cross_entropy(hidden, weight, targets), got[0])


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fused_loss_cache")


def test_trainer_fused_loss_matches_the_logits_path(tmp_path, cache_dir):
    """Five optimizer steps with the cosine regularizer: the same logged losses and weights either way."""
    results = {}
    for fused in (True, False):
        cfg = load_config(TINY, [f"data.cache_dir={cache_dir}", "eval.linearity.enabled=false",
                                 "eval.val_loss.enabled=false", "checkpoint.every=0",
                                 "checkpoint.export_at_end=false", "train.max_steps=5", "logging.every=1",
                                 f"train.fused_loss={str(fused).lower()}"])
        run = RunDir(tmp_path / f"fused_{fused}")
        trainer = Trainer(cfg, run)
        assert trainer.fused_loss is fused
        assert trainer.fit() == 0
        losses = [r["train/task_loss"] for r in read_jsonl(run.metrics) if "train/task_loss" in r]
        assert len(losses) == 5
        results[fused] = losses, copy.deepcopy(trainer.model.state_dict())
    (fused_losses, fused_w), (ref_losses, ref_w) = results[True], results[False]
    assert fused_losses == pytest.approx(ref_losses, rel=1e-5)
    for name, w in ref_w.items():
        torch.testing.assert_close(fused_w[name], w, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")
