"""The batched scorer against the one-request-at-a-time reference, on the real validation files and a tiny model."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from bench.eval_bench import naive_loglikelihood
from eval.benchmarks.scorer import Row, Scorer, encode_pairs
from eval.benchmarks.tasks import DataSource, get_task

TASKS = ["boolq", "cb", "copa", "multirc", "record", "rte", "wic", "wsc", "xstorycloze_en", "xstorycloze_zh",
         "xstorycloze_my"]
LIMIT = {"record": 2}  # about a dozen entities per query; other tasks: 3 documents


@pytest.fixture(scope="module")
def tokenizer(tiny_hf_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_hf_model_dir)


@pytest.fixture(scope="module")
def model64(tiny_hf_model_dir):
    """Float64 copy: batched and naive then agree to rounding far below 1e-5, so any difference is a bug."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_hf_model_dir, dtype=torch.float64).eval()


@pytest.fixture(scope="module")
def instances(shared_data):
    data = DataSource(shared_data)
    return {name: get_task(name, data).build_instances(limit=LIMIT.get(name, 3)) for name in TASKS}


def naive_encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """One pair at a time, written like lme's ``_encode_pair`` + ``tok_encode``: the context's trailing spaces
    move to the continuation, context + continuation is encoded whole and the context's tokens cut off its start
    (the tokenizer's own special tokens, none for a string that already starts with the BOS text)."""
    if context == "":
        return encode_pairs(tokenizer, [(context, continuation)])[0]
    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation

    def enc(s):
        return tokenizer.encode(s, add_special_tokens=not (tokenizer.bos_token and s.startswith(tokenizer.bos_token)))

    whole, ctx = enc(context + continuation), enc(context)
    return ctx, whole[len(ctx):]


def pairs_of(insts):
    return [r for inst in insts for r in inst.requests]


def test_encoding_matches_lme_reference(tokenizer, instances):
    for name, insts in instances.items():
        pairs = pairs_of(insts)
        assert encode_pairs(tokenizer, pairs) == [naive_encode_pair(tokenizer, c, k) for c, k in pairs], name
    bos = tokenizer.bos_token_id
    ctx, cont = encode_pairs(tokenizer, [("Once upon a time ", "there")])[0]
    assert ctx[0] == bos and bos not in cont  # our tokenizer prepends BOS to the context, like lme's default
    assert tokenizer.decode(cont) == " there"  # the context's trailing space moved to the continuation
    assert tokenizer.decode(ctx[1:]) == "Once upon a time"
    ctx, _ = encode_pairs(tokenizer, [(tokenizer.bos_token + "Once", " upon")])[0]
    assert ctx.count(bos) == 1  # a string that already starts with BOS gets no second one
    ctx, cont = encode_pairs(tokenizer, [("", "Once upon")])[0]
    assert ctx == [bos] and tokenizer.decode(cont) == "Once upon"


def test_token_cache_returns_the_encoding(tmp_path, tokenizer, instances):
    from data.tokenizer import tokenizer_fingerprint
    from eval.benchmarks.token_cache import cached_encode

    pairs = pairs_of(instances["boolq"]) + pairs_of(instances["record"])
    fp, cache = tokenizer_fingerprint(tokenizer), tmp_path / "bench"
    reference = encode_pairs(tokenizer, pairs)
    assert cached_encode(cache, fp, pairs, lambda p: encode_pairs(tokenizer, p)) == reference
    (entry,) = cache.glob("*.npz")

    def must_not_run(_):
        raise AssertionError("a cached entry was encoded again")

    assert cached_encode(cache, fp, pairs, must_not_run) == reference  # read back, as another run of a sweep would
    assert cached_encode(cache, fp + "x", pairs, lambda p: encode_pairs(tokenizer, p)) == reference  # new key
    assert cached_encode(cache, fp, pairs[1:], lambda p: encode_pairs(tokenizer, p)) == reference[1:]
    assert len(list(cache.glob("*.npz"))) == 3 and not list(cache.glob("*.tmp"))
    entry.write_bytes(entry.read_bytes()[:100])  # damaged: recomputed and replaced
    assert cached_encode(cache, fp, pairs, lambda p: encode_pairs(tokenizer, p)) == reference
    assert cached_encode(cache, fp, pairs, must_not_run) == reference


@pytest.mark.parametrize("name", TASKS)
def test_batched_equals_naive(name, model64, tokenizer, instances):
    insts = instances[name]
    reqs = encode_pairs(tokenizer, pairs_of(insts))
    # 512: the model's length (choices that fit share their context in packed rows, longer ones are truncated);
    # 96: every context truncated from the left (rows whose cuts start at the same token packed together)
    for max_length, share in ((512, True), (96, True)):
        scorer = Scorer(model64, tokenizer, max_length=max_length, batch_tokens=1024, share_context=share)
        plan = scorer.plan(reqs)
        lls, greedy = scorer.score_tokens(reqs, plan)
        ref = naive_loglikelihood(model64, reqs, max_length)
        np.testing.assert_allclose(lls, [r[0] for r in ref], rtol=0, atol=1e-5)
        assert greedy.tolist() == [r[1] for r in ref]
        o = 0
        for inst in insts:  # identical predictions
            k = len(inst.choices)
            assert np.argmax(lls[o:o + k]) == np.argmax([r[0] for r in ref[o:o + k]])
            o += k
        assert len(plan.batches) > 1 or plan.num_tokens <= 1024


def test_fp32_close_to_reference(tiny_hf_model_dir, tokenizer, instances):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_hf_model_dir).eval()
    reqs = encode_pairs(tokenizer, pairs_of(instances["record"][:1] + instances["copa"]))
    lls, _ = Scorer(model, tokenizer, max_length=160).score_tokens(reqs)
    ref = np.array([r[0] for r in naive_loglikelihood(model, reqs, 160)])
    np.testing.assert_allclose(lls, ref, rtol=2e-6)  # fp32 rounding of sums of ~60 token log-probs


def test_packed_rows_share_the_context(model64, tokenizer, instances):
    inst = instances["record"][0]  # one query, one request per candidate entity
    reqs = encode_pairs(tokenizer, inst.requests)
    plan = Scorer(model64, tokenizer, max_length=2048).plan(reqs)
    plain = Scorer(model64, tokenizer, max_length=2048, share_context=False).plan(reqs)
    assert len(plain.rows) == len(reqs) > 5 and len(plan.rows) == 1 and plan.rows[0].needs_mask
    assert plan.num_tokens < plain.num_tokens / 4
    assert len({plan.req_pos[i][0] for i in range(len(reqs))}) == 1  # the context's last position, shared
    lls, greedy = Scorer(model64, tokenizer, max_length=2048).score_tokens(reqs, plan)
    ref = naive_loglikelihood(model64, reqs, 2048)
    np.testing.assert_allclose(lls, [r[0] for r in ref], rtol=0, atol=1e-5)
    assert greedy.tolist() == [r[1] for r in ref]


def test_questions_on_one_passage_share_it(model64, tokenizer, instances, monkeypatch):
    import eval.benchmarks.tree_attention as TA
    from eval.benchmarks.tree_attention import tree_attention

    # MultiRC asks several questions about one paragraph: the paragraph runs once, each question's tail and each
    # answer below it (a three-level tree), plus a context equal to the shared prefix itself
    ctx = instances["multirc"][0].context.split("\nQuestion:")[0]
    pairs = [(ctx + q, k) for q in ("\nQuestion: Who?\nAnswer:", "\nQuestion: Why did it happen?\nAnswer:", "")
             for k in (" they were there\nIs the answer correct? yes", " they were there\nIs the answer correct? no")]
    reqs = encode_pairs(tokenizer, pairs)
    scorer = Scorer(model64, tokenizer, max_length=2048)
    plan = scorer.plan(reqs)
    (row,) = plan.rows
    assert any(row.parents[p] > 0 for p in row.parents) and row.needs_mask  # answers under a question's tail
    assert plan.num_tokens < Scorer(model64, tokenizer, max_length=2048, share_context=False).plan(reqs).num_tokens / 2
    calls = []
    monkeypatch.setattr(TA, "tree_attention", lambda *a, **k: calls.append(1) or tree_attention(*a, **k))
    assert scorer.own_attention  # on CPU the packed row's attention is the tree's
    lls, greedy = scorer.score_tokens(reqs, plan)
    assert len(calls) == model64.config.num_hidden_layers
    ref = naive_loglikelihood(model64, reqs, 2048)
    np.testing.assert_allclose(lls, [r[0] for r in ref], rtol=0, atol=1e-5)
    assert greedy.tolist() == [r[1] for r in ref]
    scorer.own_attention = False  # the dense mask: the same numbers to float64 rounding
    np.testing.assert_allclose(scorer.score_tokens(reqs, plan)[0], lls, rtol=0, atol=1e-11)


def test_cut_requests_that_start_alike_share_a_row(model64, tokenizer, instances):
    """At a length that cuts every context from the left, answers of one length to one question start their cut
    at the same token: one packed row holds that window once and each answer's tokens once ("... yes" and "... no"
    differ only in the scored last token), and the scores are the naive reference's."""
    ctx, _ = encode_pairs(tokenizer, pairs_of(instances["multirc"][:1]))[0]
    yes, no = [ctx[-1]], [ctx[-2]]  # two one-token endings
    assert len(ctx) > 80 and yes != no
    answers = [ctx[5:17], ctx[40:52], ctx[70:75]]  # two of 12 tokens, one of 5
    reqs = [(ctx, a + t) for a in answers for t in (yes, no)]
    max_length = 64
    assert all(len(c) + len(k) > max_length + 1 for c, k in reqs)
    scorer = Scorer(model64, tokenizer, max_length=max_length)
    plan = scorer.plan(reqs)
    assert len(plan.rows) == 2  # the 5-token answer's " yes" and " no" share a plain row, as before
    (packed,) = [row for row in plan.rows if row.segments is not None]
    assert len(packed.tokens) == (max_length + 1 - 13) + 2 * 12  # the window before the answers, each answer once
    lls, greedy = scorer.score_tokens(reqs, plan)
    ref = naive_loglikelihood(model64, reqs, max_length)
    np.testing.assert_allclose(lls, [r[0] for r in ref], rtol=0, atol=1e-5)
    assert greedy.tolist() == [r[1] for r in ref]


def test_the_last_block_runs_only_the_scored_rows(model64, tokenizer, instances, monkeypatch):
    """Only the positions whose logits are read go through the last block's output projection and MLP (and, where
    that is cheaper, its attention's queries); the scores stay the naive reference's."""
    import eval.benchmarks.tree_attention as TA

    reqs = encode_pairs(tokenizer, pairs_of(instances["boolq"] + instances["multirc"] + instances["copa"]))
    scorer = Scorer(model64, tokenizer, max_length=512, batch_tokens=1024)
    assert scorer.own_attention
    plan = scorer.plan(reqs)
    mlp = model64.model.layers[-1].mlp
    rows, attended, forward = [], [], mlp.forward
    monkeypatch.setattr(mlp, "forward", lambda x: rows.append(x.shape[:-1].numel()) or forward(x))
    scored_attention = TA._scored_attention
    monkeypatch.setattr(TA, "_scored_attention", lambda *a: attended.append(1) or scored_attention(*a))
    lls, greedy = scorer.score_tokens(reqs, plan)
    scored = sum(len({p for i, r in enumerate(plan.req_row) if r == j for p in plan.req_pos[i]})
                 for j in range(len(plan.rows)))
    assert sum(rows) == scored < plan.num_tokens / 5
    assert 0 < len(attended) <= len(plan.batches)
    ref = naive_loglikelihood(model64, reqs, 512)
    np.testing.assert_allclose(lls, [r[0] for r in ref], rtol=0, atol=1e-5)
    assert greedy.tolist() == [r[1] for r in ref]


def test_many_scored_queries_keep_the_usual_attention(model64, tokenizer, instances, monkeypatch):
    """Long continuations under a short context: almost every position of the packed row is scored, so one masked
    kernel over them and every key would cost more than the tree's partials. The last block's attention then runs
    all queries (its MLP still only the scored rows), with the naive reference's scores."""
    import eval.benchmarks.tree_attention as TA

    ctx, _ = encode_pairs(tokenizer, pairs_of(instances["multirc"][:1]))[0]
    reqs = [(ctx[:40], ctx[a:a + 60]) for a in (40, 100, 160, 220)]
    scorer = Scorer(model64, tokenizer, max_length=512)
    plan = scorer.plan(reqs)
    (row,) = plan.rows
    assert row.needs_mask and len(row.tokens) == 40 + 4 * 59
    calls = []
    monkeypatch.setattr(TA, "_scored_attention", lambda *a: calls.append(1))
    lls, greedy = scorer.score_tokens(reqs, plan)
    assert not calls
    ref = naive_loglikelihood(model64, reqs, 512)
    np.testing.assert_allclose(lls, [r[0] for r in ref], rtol=0, atol=1e-5)
    assert greedy.tolist() == [r[1] for r in ref]


def test_a_last_block_that_wants_whole_rows_runs_whole(model64, tokenizer, instances):
    """An MLP that unpacks [batch, seq, hidden] (as mixture-of-experts blocks do) fails on the scored rows alone:
    the check row catches it, and the scorer runs the model as it is, with the same scores."""
    class WholeRows(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            b, s, d = x.shape
            return self.inner(x.reshape(b * s, d)).reshape(b, s, d)

    block = model64.model.layers[-1]
    mlp, block.mlp = block.mlp, WholeRows(block.mlp)  # by hand: monkeypatch would delete a submodule on undo
    try:
        reqs = encode_pairs(tokenizer, pairs_of(instances["copa"] + instances["boolq"]))
        scorer = Scorer(model64, tokenizer, max_length=512)
        assert scorer.share_context and not scorer.own_attention
        lls, _ = scorer.score_tokens(reqs)
        np.testing.assert_allclose(lls, [r[0] for r in naive_loglikelihood(model64, reqs, 512)], rtol=0, atol=1e-5)
    finally:
        block.mlp = mlp


def random_tree_row(rng, length: int) -> Row:
    """A packed row as ``_packed_rows`` lays one out: a prefix, context tails under it, continuations under those
    or under the prefix (a three-level tree)."""
    segs, parents = [0] * int(rng.integers(1, 40)), [-1]
    while len(segs) < length:
        owner = 0
        if rng.random() < 0.7:
            owner = len(parents)
            parents.append(0)
            segs += [owner] * int(rng.integers(1, 20))
        for _ in range(int(rng.integers(1, 4))):
            parents.append(owner)
            segs += [len(parents) - 1] * int(rng.integers(1, 7))
    return Row(tuple(range(len(segs))), tuple(segs), None, tuple(parents))


def test_tree_attention_is_the_masked_attention():
    """Each segment's partial (its subtree's queries against its keys) merged by log-sum-exp equals SDPA under the
    dense ancestry mask, in float64, for padded rows of three-level trees and grouped-query heads."""
    import torch.nn.functional as F

    from eval.benchmarks.scorer import _packed_inputs
    from eval.benchmarks.tree_attention import tree_attention

    rng = np.random.default_rng(0)
    rows = [random_tree_row(rng, n) for n in (150, 90, 40)]
    width = max(len(r.tokens) for r in rows)
    tree = _packed_inputs(rows, width, "cpu", tree=True)["tree"]
    mask = _packed_inputs(rows, width, "cpu")["attention_mask"]
    assert tree.depths == 3
    g = torch.Generator().manual_seed(0)
    q = torch.randn(3, 4, width, 16, generator=g, dtype=torch.float64)
    k, v = (torch.randn(3, 2, width, 16, generator=g, dtype=torch.float64) for _ in range(2))

    class Attention:  # what transformers passes as the module
        num_key_value_groups = 2

    got, _ = tree_attention(Attention(), q, k, v, None, scaling=0.3, tree=tree)
    ref = F.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), attn_mask=mask,
                                         scale=0.3).transpose(1, 2)
    for b, row in enumerate(rows):
        n = len(row.tokens)
        assert torch.allclose(got[b, :n], ref[b, :n], rtol=0, atol=1e-13)
    assert torch.isfinite(got).all()  # padding queries included


def test_layouts_tree_attention_cannot_take_keep_the_mask():
    from eval.benchmarks.scorer import _packed_inputs
    from eval.benchmarks.tree_attention import row_partials

    assert row_partials((0, 0, 1, 2, 2), (-1, 0, 1), 5) == [(0, 0, 2, 5), (1, 2, 3, 5), (2, 3, 5, 5)]
    assert row_partials(None, None, 7) == [(0, 0, 7, 7)]
    assert row_partials((0, 1, 0, 2), None, 4) is None  # a segment in two pieces
    assert row_partials((0, 1, 1, 2), (-1, 2, 0), 4) is None  # a child before its parent
    assert row_partials((0, 1, 2, 3), (-1, 0, 0, 1), 4) is None  # a stranger (2) inside 1's subtree
    odd = Row((5, 6, 7, 8), (0, 1, 2, 3), None, (-1, 0, 0, 1))
    inputs = _packed_inputs([odd], 4, "cpu", tree=True)
    assert "tree" not in inputs and inputs["attention_mask"].shape == (1, 1, 4, 4)


def test_a_row_the_tree_cannot_take_keeps_its_mask_under_the_scorers_attention(model64, tokenizer):
    """A packed row whose layout the tree attention cannot take gets the dense mask even while every forward runs
    the scorer's attention: the same scores as the model's own attention under that mask."""
    from eval.benchmarks.scorer import Plan

    odd = Row((5, 6, 7, 8, 9), (0, 1, 2, 3, 3), (0, 1, 1, 2, 3), (-1, 0, 0, 1))  # 3 under 1, after 2
    plan = Plan([odd], [[0]], [0, 0], [[3, 4], [1]], [[10, 11], [12]])
    scorer = Scorer(model64, tokenizer, max_length=512)
    assert scorer.own_attention
    own = scorer.score_tokens([([], [10, 11]), ([], [12])], plan)[0]
    scorer.own_attention = False
    dense = scorer.score_tokens([([], [10, 11]), ([], [12])], plan)[0]
    np.testing.assert_allclose(own, dense, rtol=0, atol=1e-11)


def test_a_model_that_would_not_take_the_tree_keeps_the_mask(model64, tokenizer, instances, monkeypatch):
    """An attention that ignores the tree (as a model whose layers do not look attention up by name would: causal
    over the whole row) changes the check row's logits, so the scorer keeps the dense mask, and the same scores."""
    import torch.nn.functional as F

    import eval.benchmarks.tree_attention as TA

    def causal_only(module, q, k, v, mask, scaling=None, **kwargs):
        g = q.shape[1] // k.shape[1]
        out = F.scaled_dot_product_attention(q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1),
                                             is_causal=True, scale=scaling)
        return out.transpose(1, 2), None

    reqs = encode_pairs(tokenizer, pairs_of(instances["copa"]))
    honest = Scorer(model64, tokenizer, max_length=512)
    assert honest.own_attention
    want = honest.score_tokens(reqs)[0]
    monkeypatch.setattr(TA, "tree_attention", causal_only)
    scorer = Scorer(model64, tokenizer, max_length=512)
    assert scorer.share_context and not scorer.own_attention
    np.testing.assert_allclose(scorer.score_tokens(reqs)[0], want, rtol=0, atol=1e-11)


def test_shared_rows_and_length_sorting(model64, tokenizer, instances):
    reqs = encode_pairs(tokenizer, pairs_of(instances["boolq"]))
    plan = Scorer(model64, tokenizer, share_context=False).plan(reqs)
    # " no" / " yes" share their document's forward row unless truncation shifts the rows differently
    fits = [len(reqs[i][0]) + max(len(reqs[i][1]), len(reqs[i + 1][1])) <= 513 for i in range(0, 6, 2)]
    assert len(reqs) == 6 and len(plan.rows) == sum(1 if f else 2 for f in fits) and sum(fits) >= 1
    lengths = [len(r.tokens) for r in plan.rows]
    assert lengths == sorted(lengths, reverse=True)


def test_long_continuation_is_cut_not_fatal(model64, tokenizer):
    ctx, cont = [tokenizer.bos_token_id] + list(range(10, 20)), list(range(30, 50))
    scorer = Scorer(model64, tokenizer, max_length=8)
    lls, _ = scorer.score_tokens([(ctx, cont)])
    ref = naive_loglikelihood(model64, [(ctx, cont[-8:])], 8)[0][0]
    assert lls[0] == pytest.approx(ref, abs=1e-9)


# ----------------------------------------------------------------------------------------------------------------
# Two ranks (gloo): same numbers as one process, and the same number of forward calls on every rank (ZeRO-3)
# ----------------------------------------------------------------------------------------------------------------

def _dist_worker(rank: int, world: int, model_dir: str, data_root: str, port: int, out: str) -> None:
    import json

    import torch.distributed as dist
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from eval.benchmarks import BenchmarkSuite

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    tok = AutoTokenizer.from_pretrained(model_dir)
    suite = BenchmarkSuite("copa,wsc,tinystories", tok, data_root=data_root, limit=7)
    res = suite.run(model, batch_tokens=1024, seq_len=64, rank=rank, world_size=world)
    with open(f"{out}.{rank}", "w") as f:
        json.dump({"metrics": {k: r.metrics for k, r in res.items()}, "calls": len(calls)}, f)
    # Both ranks reach the end before either tears its group down: rank 0 hosts the store, and once (1 CI run in
    # 31) it aborted in teardown while rank 1 was still running ("terminate called without an active exception").
    dist.barrier()
    dist.destroy_process_group()


def test_two_ranks_match_one(tmp_path, tiny_hf_model_dir, shared_data):
    import json
    import socket

    import torch.multiprocessing as mp
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from eval.benchmarks import BenchmarkSuite

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "rank")
    mp.spawn(_dist_worker, args=(2, str(tiny_hf_model_dir), str(shared_data), port, out), nprocs=2, join=True)
    ranks = [json.loads(open(f"{out}.{r}").read()) for r in range(2)]
    assert ranks[0]["calls"] == ranks[1]["calls"] > 0
    model = AutoModelForCausalLM.from_pretrained(tiny_hf_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_hf_model_dir)
    single = BenchmarkSuite("copa,wsc,tinystories", tok, data_root=shared_data, limit=7).run(
        model, batch_tokens=1024, seq_len=64)
    for r in ranks:
        assert r["metrics"].keys() == single.keys()
        for name, res in single.items():
            for m, v in res.metrics.items():
                assert r["metrics"][name][m] == pytest.approx(v, rel=1e-9, abs=1e-12), (name, m)
