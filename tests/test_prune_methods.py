"""The newer methods against independent references on a tiny GQA Llama: ReplaceMe's fold is the original model
with the span skipped and the map applied to the preceding MLP output (hooks); magnitude compensation is removal
with the residual stream scaled at the gap; sublayer removal is the original with that sublayer's output zeroed;
SLEB picks the block whose deletion gives the lowest probe NLL computed by HF's own loss; reverse order drops the
tail; the cosine solver lowers the cosine loss from the identity it starts at."""
from __future__ import annotations

import pytest
import torch
from prune_models import logits, sample_ids, small_probe, tiny_model

from prune import replaceme, surgery
from prune.criteria import get_criterion
from prune.methods import METHODS, Context
from prune.plan import ProbeSet, Pruned, Selector
from prune.states import last_token_rows


@pytest.fixture(scope="module")
def probe(tiny_tokenizer, tinystories_valid):
    return small_probe(tiny_tokenizer, tinystories_valid)


@pytest.fixture(scope="module")
def setup(tiny_tokenizer, probe):
    model = tiny_model("llama-gqa", tiny_tokenizer)
    return model, Context(Selector(get_criterion("cosine"), "cosine", 4), model, probe, probe.collect(model)[0])


@pytest.fixture(scope="module")
def ids(tiny_tokenizer, tinystories_valid):
    return sample_ids(tiny_tokenizer, tinystories_valid)



def close(a, b, rel):
    assert float((a - b).abs().max()) <= rel * max(float(b.abs().max()), 1.0), float((a - b).abs().max())


def built(name, ctx, k):
    return next(p for kk, p, _ in METHODS[name].build(ctx, k) if kk == k)


def skip(block):
    return block, lambda m, a, o: (a[0], *o[1:]) if isinstance(o, tuple) else a[0]


def test_last_token_rows_pick_each_sequences_last_state(setup, probe):
    model, ctx = setup
    rows = last_token_rows(probe.tokens)
    seqs = sorted(probe.tokens, key=len, reverse=True)
    with torch.no_grad():
        ref = torch.stack([model(input_ids=torch.tensor([s]), output_hidden_states=True).hidden_states[2][0, -1]
                           for s in seqs])
    close(ctx.states[2][rows].double(), ref.double(), 1e-5)


def test_replaceme_is_the_skipped_span_with_the_map_on_the_mlp_output(setup, ids):
    model, ctx = setup
    rec = list(METHODS["replaceme"].build(ctx, 2))[-1][2]
    pruned = built("replaceme", ctx, 2)
    span = rec["spans"][-1]["blocks"]
    assert pruned.changed == span and span[0] >= 1 and len(pruned.alive) == 2
    # the span minimises the last-token angular distance, computed here in numpy
    rows = last_token_rows(ctx.probe.tokens).numpy()
    hs = [h.double().numpy()[rows] for h in ctx.states]

    def dist(i):
        a, b = hs[i], hs[i + 2]
        cos = (a * b).sum(1) / (torch.tensor(a).norm(dim=1) * torch.tensor(b).norm(dim=1)).numpy()
        return float(torch.arccos(torch.tensor(cos).clamp(-1, 1)).mean() / torch.pi)
    assert span[0] == min((1, 2), key=dist)
    layers = surgery.blocks(model)
    proj = surgery.mlp_output_projection(layers[span[0] - 1])
    m = ctx.probe.collect(model, modules=(proj,))[1][0]
    fit = replaceme.fit_map(m, ctx.states[span[-1] + 1] - (ctx.states[span[0]] - m), bias=False)
    w = fit.weight.float()
    ref = logits(model, ids, [(proj, lambda mod, a, o: o @ w.T)] + [skip(layers[b]) for b in span])
    close(logits(pruned.model, ids), ref, 1e-4)


def test_cosine_solver_improves_on_the_identity():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3000, 16, generator=g, dtype=torch.float64)
    y = x @ (torch.eye(16, dtype=torch.float64) + 0.3 * torch.randn(16, 16, generator=g, dtype=torch.float64))

    def loss(t):
        return float(1 - torch.nn.functional.cosine_similarity(x @ t.T, y, dim=1).mean())
    fit = replaceme.cosine_map(x, y)
    # 30 Adam steps at the authors' learning rate of 1e-4 move each entry by at most ~3e-3, yet the loss falls
    assert loss(fit.weight) < loss(torch.eye(16, dtype=torch.float64)) - 5e-3
    assert float((fit.weight - torch.eye(16, dtype=torch.float64)).abs().max()) <= 30 * 1e-4 * 1.01


def test_comp_is_removal_with_the_residual_scaled_at_the_gap(setup, ids):
    model, ctx = setup
    pruned = built("remove+comp", ctx, 1)
    (block,) = pruned.changed
    a = pruned.fits[block]["comp_factor"]
    hs = ctx.states
    assert a == pytest.approx(float(hs[block + 1].double().norm(dim=1).mean() / hs[block].double().norm(dim=1).mean()))
    layers = surgery.blocks(model)
    ref = logits(model, ids, [(layers[block], lambda m, args, o: (args[0] * a, *o[1:]) if isinstance(o, tuple)
                               else args[0] * a)])
    close(logits(pruned.model, ids), ref, 1e-4)  # equal up to the norms' epsilon
    plain = built("remove", ctx, 1)
    assert plain.changed == pruned.changed
    assert float((logits(plain.model, ids) - ref).abs().max()) > 1e-3  # compensation changed the function


def test_sublayer_removal_zeroes_what_the_sublayer_adds(setup, ids):
    model, ctx = setup
    pruned = built("sublayer", ctx, 1)
    assert len(pruned.changed) == 2
    hooks = []
    for name in pruned.changed:
        block, which = name.split(".")
        sub = surgery.contributions(surgery.blocks(model)[int(block)])[("attn", "mlp").index(which)]
        hooks.append((sub, lambda m, a, o: torch.zeros_like(o)))
    close(logits(pruned.model, ids), logits(model, ids, hooks), 1e-5)


def test_sleb_picks_the_block_whose_deletion_costs_least(setup, probe):
    from prune.sleb import probe_nll

    model, ctx = setup
    rec = list(METHODS["sleb"].build(ctx, 1))[-1][2]

    def hf_nll(b):  # an independent deletion, scored by HF's own loss on each probe sequence
        import copy

        m = copy.deepcopy(model)
        surgery.remove_blocks(m, [b])
        total = count = 0
        with torch.no_grad():
            for s in probe.tokens:
                x = torch.tensor([s])
                total += float(m(input_ids=x, labels=x).loss) * (len(s) - 1)
                count += len(s) - 1
        return total / count
    ref = {b: hf_nll(b) for b in range(4)}
    assert rec["order"][0]["block"] == min(ref, key=ref.get)
    for b, v in rec["order"][0]["scores"].items():
        assert v == pytest.approx(ref[int(b)], rel=1e-5)
    assert probe_nll(model, probe) < max(ref.values())


def test_reverse_drops_the_tail(setup):
    _, ctx = setup
    assert [p.changed[:] for _, p, _ in METHODS["reverse"].build(ctx, 2)] == [[3], [3, 2]]


class CountingProbe(ProbeSet):
    """The study's probe, counting its collects (each one a full probe forward of some model)."""
    calls: int = 0

    def collect(self, model, modules=()):
        self.calls += 1
        return super().collect(model, modules)


def test_each_build_collects_only_what_a_changed_model_needs(setup, probe):
    """The original model's states come from the context: a change collects the current model's states only when
    the model has changed since, or when it needs module outputs the shared states lack."""
    model, ctx = setup
    counting = CountingProbe(probe.tokens, probe.batch_size, probe.device, probe.pad_id)
    ctx = Context(ctx.selector, model, counting, ctx.states)
    need = {"remove": 0, "reverse": 0, "sleb": 0, "streamline": 0,
            "linear": 2, "remove+comp": 2, "sleb+comp": 2,  # k = 2, 3 change an already changed model
            "merged": 3,  # every fold needs the preceding MLP's output
            "sublayer": 1}  # the attention outputs of the original model, once (one-shot)
    for name, want in need.items():
        counting.calls = 0
        list(METHODS[name].build(ctx, 3))
        assert counting.calls == want, name
    counting.calls = 0
    spans = list(METHODS["replaceme"].build(ctx, 3))[-1][2]["spans"]
    assert counting.calls == len({s["blocks"][0] for s in spans})  # one MLP-output collect per span start


def test_a_study_collects_the_unpruned_model_once(setup, probe, tiny_tokenizer, tmp_path):
    from prune.evaluate import Evaluation
    from prune.pipeline import Study, run_study

    model, _ = setup
    counting = CountingProbe(probe.tokens, probe.batch_size, probe.device, probe.pad_id)
    evaluation = Evaluation(tiny_tokenizer, tasks=("arc_easy",), limit=4, context=64, wikitext_max_tokens=300,
                            max_length=256)
    study = Study(criterion="cosine", methods=["remove", "linear", "remove+comp", "reverse"], ks=[1, 2])
    record = run_study(model, tiny_tokenizer, study, counting, evaluation, tmp_path, log=lambda *_: None)
    # the unpruned model once (selection, first fits, fit errors); then linear's and remove+comp's k = 2
    assert counting.calls == 1 + 1 + 1
    assert all(record["results"][m][0] == record["results"]["remove"][0] for m in study.methods)
    assert all(record["details"][m]["2"]["build_seconds"] >= 0 for m in study.methods)


def test_sleb_and_sleb_comp_share_their_first_step(setup):
    from prune.sleb import Perplexity

    model, ctx = setup
    ctx = Context(ctx.selector, model, ctx.probe, ctx.states)
    plain = list(METHODS["sleb"].build(ctx, 2))[-1][2]["order"]
    comp = list(METHODS["sleb+comp"].build(ctx, 2))[-1][2]["order"]
    fresh = Perplexity(comp=True).scores(ctx, Pruned.of(model, "remove", comp=True))  # not shared
    assert comp[0] == plain[0] and comp[0]["scores"] == {str(b): v for b, v in fresh.items()}
