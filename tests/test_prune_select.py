"""Block selection: one-shot vs iterative on a constructed case where they must differ, protection, bad k."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from prune_models import probe_tokens, tiny_model
from references import lstsq_linearity
from torch import nn

from prune.criteria import get_criterion
from prune.errors import PruneError
from prune.plan import ProbeSet, Selector, build


class Add(nn.Module):
    def __init__(self, vec):
        super().__init__()
        self.vec = nn.Parameter(vec, requires_grad=False)

    def forward(self, h, *args, **kwargs):
        return h + self.vec


class Reflect(nn.Module):
    """Flips the sign of coordinate 0."""
    def __init__(self, d):
        super().__init__()
        self.sign = nn.Parameter(torch.ones(d), requires_grad=False)
        self.sign.data[0] = -1.0

    def forward(self, h, *args, **kwargs):
        return h * self.sign


class Toy(nn.Module):
    """Embedding rows of norm 3 with coordinates 0 and 1 zero, then four blocks:
    0: h + 0.5 e0    block influence ~ 0.014
    1: reflect e0    on h + 0.5 e0 ~ 0.054 -- but 0 when block 0 is gone (nothing left to reflect)
    2: h + 0.75 e1   ~ 0.029
    3: h + 5 e2      large
    One-shot cosine ranking: 0, 2, 1, 3. Iterative: 0, then block 1 (now the identity), then 2."""

    def __init__(self, vocab, d=8):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        w = torch.randn(vocab, d, generator=g)
        w[:, :2] = 0
        self.embed = nn.Embedding.from_pretrained(3 * w / w.norm(dim=1, keepdim=True))
        e = torch.eye(d)
        self.layers = nn.ModuleList([Add(0.5 * e[0]), Reflect(d), Add(0.75 * e[1]), Add(5 * e[2])])
        self.config = SimpleNamespace(hidden_size=d, num_hidden_layers=4, max_position_embeddings=4096)

    def forward(self, input_ids, attention_mask=None, **kwargs):
        h = self.embed(input_ids)
        for layer in self.layers:
            h = layer(h)
        return SimpleNamespace(logits=h)


@pytest.fixture(scope="module")
def probe(tiny_tokenizer, tinystories_valid):
    return ProbeSet(probe_tokens(tiny_tokenizer, tinystories_valid, num_chunks=8), pad_id=tiny_tokenizer.pad_token_id)


def orders(model, probe, criterion="cosine", method="remove", k=3, **kw):
    sel = Selector(get_criterion(criterion), criterion, 4, **kw)
    one = [p.changed[:] for _, p, _ in build(sel, model, probe, method, k, iterative=False)]
    it_records = [r for _, _, r in build(sel, model, probe, method, k, iterative=True)]
    return one, it_records[-1]["order"]


def test_iterative_and_one_shot_differ_where_they_should(tiny_tokenizer, probe):
    toy = Toy(len(tiny_tokenizer))
    one, iterative = orders(toy, probe)
    assert one == [[0], [0, 2], [0, 2, 1]]
    assert [step["block"] for step in iterative] == [0, 1, 2]
    assert iterative[1]["score"] == pytest.approx(0.0, abs=1e-12)  # block 1 became the identity
    assert iterative[0]["scores"]["2"] < iterative[0]["scores"]["1"]  # one-shot's view of blocks 1 and 2


def test_real_model_orders_and_protection(tiny_tokenizer, probe):
    model = tiny_model("llama", tiny_tokenizer)
    sel = Selector(get_criterion("linearity"), "linearity", 4)
    steps = list(build(sel, model, probe, "linear", 2, iterative=False))
    ranking = [o["block"] for o in steps[-1][2]["order"]]
    # Reference: HF's own hidden states (final norm replaced by the identity, so the last one is h_L), one unpadded
    # forward per probe chunk, every token pooled, and the score by its definition in float64
    plain = copy.deepcopy(model)
    plain.model.norm = nn.Identity()
    with torch.no_grad():
        per_chunk = [plain(torch.tensor([ids]), output_hidden_states=True).hidden_states for ids in probe.tokens]
    states = [torch.cat([hs[i][0] for hs in per_chunk]) for i in range(5)]
    ref = [lstsq_linearity(states[i], states[i + 1]) for i in range(4)]
    assert [steps[-1][2]["scores"][str(b)] for b in range(4)] == pytest.approx(ref, abs=1e-8)
    assert ranking == [int(b) for b in np.argsort(ref)[::-1][:2]]  # the most linear blocks first
    assert steps[-1][1].changed == ranking
    one, _ = orders(model, probe, "linearity", "remove", 2, protect_first=True, protect_last=True)
    assert all(b not in (0, 3) for b in one[-1])
    spans = list(build(Selector(get_criterion("angular"), "angular", 4), model, probe, "remove", 2, False))
    # the span of 2 blocks whose end states point closest to their start states: Gromov et al.'s angular distance,
    # mean over tokens of arccos(cos(h_i, h_{i+2})) / pi, on the same reference states
    h = [s.double().numpy() for s in states]
    cosines = [(h[i] * h[i + 2]).sum(1) / np.linalg.norm(h[i], axis=1) / np.linalg.norm(h[i + 2], axis=1)
               for i in range(3)]
    distance = [np.arccos(np.clip(c, -1, 1)).mean() / np.pi for c in cosines]
    start = int(np.argmin(distance))
    assert spans[-1][1].changed == [start, start + 1]


def test_bad_k(tiny_tokenizer, probe):
    model = tiny_model("mistral", tiny_tokenizer)
    with pytest.raises(PruneError, match="k=4 must be smaller than the model's 4 blocks"):
        next(build(Selector(get_criterion("cosine"), "cosine", 4), model, probe, "remove", 4, False))
    with pytest.raises(PruneError, match="exceeds the 2 blocks"):
        next(build(Selector(get_criterion("cosine"), "cosine", 4, True, True), model, probe, "remove", 3, False))
