"""The fused regularizer path (regularizers/fused.py) against the reference ``token_loss`` path: values and
gradients to fp32 tolerance, what autograd keeps, a real model's training step, and torch.compile tracing."""
import copy

import pytest
import torch

from model.capture import ResidualStream
from model.loss import causal_lm_loss
from regularizers import build_regularizer
from regularizers.base import Regularizer, RegularizerConfig
from regularizers.fused import CosineKernel, MSEKernel, fused_token_losses


def _states(L=4, B=2, T=6, d=16, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    # A shared component makes consecutive states similar (cos near 1, small differences), as in a trained
    # residual stream: the regime where a careless formula cancels.
    base = torch.randn(B, T, d, generator=g)
    return [(3 * base + 0.5 * torch.randn(B, T, d, generator=g)).to(dtype).requires_grad_() for _ in range(L + 1)]


def _loss_and_grads(kind, states, fused, mask=None, **cfg):
    reg = build_regularizer(RegularizerConfig(name=kind, weight=0.7, fused=fused, **cfg))
    loss = reg(states, step=1, mask=mask)
    return loss, torch.autograd.grad(loss, states, allow_unused=True)


def _assert_grads_close(got, want, rtol, atol):
    for i, (a, b) in enumerate(zip(got, want)):
        if b is None:
            assert a is None or a.abs().max() == 0, f"state {i}: unexpected gradient"
            continue
        assert a.dtype == b.dtype, f"state {i}: {a.dtype} != {b.dtype}"
        torch.testing.assert_close(a.float(), b.float(), rtol=rtol, atol=atol, msg=lambda m: f"state {i}: {m}")


@pytest.mark.parametrize("kind", ["cosine", "mse"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("exclude_embedding", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_fused_equals_reference_fp32(kind, reduction, exclude_embedding, masked):
    states = _states()
    mask = None
    if masked:
        mask = torch.ones(2, 6)
        mask[0, 4:] = 0
        mask[1, :1] = 0
    opts = dict(mask=mask, reduction=reduction, exclude_embedding=exclude_embedding)
    ref, ref_g = _loss_and_grads(kind, states, fused=False, **opts)
    got, got_g = _loss_and_grads(kind, states, fused=True, **opts)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    _assert_grads_close(got_g, ref_g, rtol=1e-4, atol=1e-6)
    if exclude_embedding:  # h_0 takes part in no pair
        assert got_g[0] is None or got_g[0].abs().max() == 0


@pytest.mark.parametrize("kernel", [CosineKernel(1e-8), MSEKernel()])
def test_hand_written_backward_gradcheck(kernel):
    states = [s.detach().double().requires_grad_() for s in _states(L=3, B=1, T=3, d=5)]
    assert torch.autograd.gradcheck(lambda *hs: fused_token_losses(kernel, hs), states)


@pytest.mark.parametrize("kind", ["cosine", "mse"])
def test_fused_equals_reference_on_bf16_states(kind):
    """Same bf16 inputs: both paths compute in fp32 and round each state's gradient to bf16 once."""
    states = _states(d=64, dtype=torch.bfloat16)
    ref, ref_g = _loss_and_grads(kind, states, fused=False)
    got, got_g = _loss_and_grads(kind, states, fused=True)
    assert got.dtype == ref.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    # fp32 results that differ in the last bits may round to neighbouring bf16 values: one bf16 ulp (2^-8 rel).
    _assert_grads_close(got_g, ref_g, rtol=2 ** -7, atol=1e-6)


def test_states_without_grad_and_token_loss_only_regularizers():
    states = _states()
    states[0] = states[0].detach()  # e.g. a frozen embedding: the backward skips it
    for fused in (True, False):
        build_regularizer(RegularizerConfig(name="cosine", weight=1.0, fused=fused))(states, step=0).backward()
        if fused:
            got = [s.grad.clone() for s in states[1:]]
            for s in states[1:]:
                s.grad = None
    _assert_grads_close(got, [s.grad for s in states[1:]], rtol=1e-4, atol=1e-6)

    class L1(Regularizer):  # a new regularizer written with token_loss only keeps working with fused=True
        def token_loss(self, x, y):
            return (y - x).abs().sum(-1)

    loss = L1(RegularizerConfig(weight=1.0, fused=True))(states, step=0)
    expected = sum((b - a).abs().sum(-1).mean() for a, b in zip(states[:-1], states[1:]))
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("kind", ["cosine", "mse"])
def test_fused_saves_no_state_sized_copies(kind):
    """What autograd keeps for the backward: the fused path, only the states themselves (held by the model
    anyway) and per-token scalars; the reference, fp32 copies of the whole stack."""
    L, B, T, d = 4, 2, 6, 16

    def saved_tensors(fused):
        states = _states(L, B, T, d)
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            build_regularizer(RegularizerConfig(name=kind, weight=1.0, fused=fused))(states, step=0)
        own = {s.data_ptr() for s in states}
        return [t for t in saved if t.data_ptr() not in own]

    per_token = (L + 1) * B * T
    assert all(t.numel() <= per_token for t in saved_tensors(fused=True))
    assert sum(t.numel() for t in saved_tensors(fused=False)) >= L * B * T * d  # at least one fp32 stack


def _tiny_model(dtype=torch.float32):
    from transformers import MistralConfig, MistralForCausalLM

    cfg = MistralConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
                        use_cache=False)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return MistralForCausalLM(cfg).to(dtype)


def _train_step_grads(model, batch, kind, fused, **cfg):
    """train.py's micro-step: capture h_0..h_L with hooks, CE + regularizer, backward."""
    model.zero_grad(set_to_none=True)
    stream = ResidualStream(model)
    with stream:
        logits = model(input_ids=batch[:, :-1]).logits
    reg = build_regularizer(RegularizerConfig(name=kind, weight=0.5, fused=fused, **cfg))(stream.take(), step=0)
    (causal_lm_loss(logits, batch[:, 1:]) + reg).backward()
    stream.remove()
    return reg.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("kind,dtype", [("cosine", torch.float32), ("mse", torch.float32), ("cosine", torch.bfloat16)])
def test_real_model_training_step(kind, dtype):
    model = _tiny_model(dtype)
    batch = torch.randint(0, 128, (2, 17), generator=torch.Generator().manual_seed(1))
    ref_reg, ref = _train_step_grads(copy.deepcopy(model), batch, kind, fused=False, exclude_embedding=True)
    reg, got = _train_step_grads(model, batch, kind, fused=True, exclude_embedding=True)
    torch.testing.assert_close(reg, ref_reg, rtol=1e-5, atol=1e-6)
    for name, g in got.items():
        if dtype == torch.float32:
            torch.testing.assert_close(g, ref[name], rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")
        else:  # bf16 weights: a one-ulp difference in a state's gradient propagates through the layers below
            err = (g.float() - ref[name].float()).norm() / ref[name].float().norm().clamp_min(1e-12)
            assert err < 2e-2, f"{name}: relative gradient difference {err:.3g}"


@pytest.mark.parametrize("kind", ["cosine", "mse"])
def test_fused_traces_with_fullgraph_compile(kind):
    """The fused autograd.Function compiles as one graph (no graph breaks); ``regularizer.compile=true`` uses
    inductor, covered end to end by tests/test_compile.py; here aot_eager checks tracing fast."""
    states = _states()
    ref, ref_g = _loss_and_grads(kind, states, fused=True)
    reg = build_regularizer(RegularizerConfig(name=kind, weight=0.7))
    compiled = torch.compile(reg.token_losses, fullgraph=True, backend="aot_eager")
    loss = 0.7 * compiled(states).mean(dim=(1, 2)).sum()
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)
    _assert_grads_close(torch.autograd.grad(loss, states), ref_g, rtol=1e-5, atol=1e-6)
