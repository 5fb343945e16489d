"""Held-out linearity against independent references: fold fits by numpy lstsq on explicit document splits, the
in-sample jackknife interval by an explicit refit loop, the bootstrap intervals by scipy.stats.bootstrap, the
chance level by a full refit on shuffled targets; the profile's in-sample scores unchanged by the held-out layout;
the pooled token order of the probe; the CLI's outputs and the pruning criterion; the toolkit's measurements as a
profile computes them."""
import csv
import json

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F
from figures import legend, lines
from threadpoolctl import threadpool_limits  # scikit-learn's dependency
from transformers import AutoModelForCausalLM

from eval.linearity import (
    HeldoutConfig,
    ProbeSetConfig,
    anisotropy,
    build_probe,
    heldout_linearity,
    intrinsic_dimension,
    linearity_profile,
    model_profile,
    probe_groups,
    profile_from_states,
    read_probe_text,
)
from eval.linearity.__main__ import main as cli_main
from eval.linearity.heldout import FoldPlan, count_sketch
from eval.linearity.plots import STATE_LABELS
from eval.linearity.profile import pool_order, probe_batches
from eval.linearity.state_measures import ToolkitConfig, pooled_labels
from prune.criteria import CRITERIA
from prune.errors import PruneError
from prune.plan import ProbeSet


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def documents(n, num_docs, seed=0):
    """Document ids of n pooled tokens: contiguous runs of uneven length, as a probe pools its sequences."""
    cuts = torch.sort(torch.randperm(n - 1, generator=torch.Generator().manual_seed(seed))[: num_docs - 1] + 1).values
    return torch.bucketize(torch.arange(n), cuts, right=True)


def doc_states(n, d, num_docs, seed=0):
    """x with a per-document offset (tokens of a document are correlated), y a nonlinear map of x plus noise."""
    groups = documents(n, num_docs, seed)
    offsets = 2 * randn(num_docs, d, seed=seed + 1)
    x = randn(n, d, seed=seed) * torch.logspace(0, 2, d, dtype=torch.float64) + offsets[groups]
    y = torch.tanh(x @ randn(d, d, seed=seed + 2) / (10 * d**0.5)) + 0.3 * randn(n, d, seed=seed + 3)
    return x, y, groups


def fold_of_tokens(groups, folds=5, seed=0):
    plan = FoldPlan(groups, folds, seed, d=1)
    fold = torch.empty(len(groups), dtype=torch.long)
    for f, (lo, hi) in enumerate(plan.spans()):
        fold[plan.order[lo:hi]] = f
    return fold.numpy()


@threadpool_limits.wrap(limits=1)  # small solves: OpenBLAS threads cost 100x on a busy 2-core machine
def reference(x, y, fold):
    """In-sample and pooled held-out R^2 by numpy lstsq with an intercept column, per explicit fold split."""
    x, y = np.asarray(x), np.asarray(y)
    ones = np.ones((len(x), 1))
    design = np.hstack([ones, x])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    insample = 1 - ((design @ coef - y) ** 2).sum() / ((y - y.mean(0)) ** 2).sum()
    rss = tot = 0.0
    for f in np.unique(fold):
        tr, te = fold != f, fold == f
        c, *_ = np.linalg.lstsq(design[tr], y[tr], rcond=None)
        rss += ((design[te] @ c - y[te]) ** 2).sum()
        tot += ((y[te] - y[tr].mean(0)) ** 2).sum()
    return insample, 1 - rss / tot


@threadpool_limits.wrap(limits=1)
def jackknife_reference(x, y, fold, level=0.95):
    """The delete-a-fold jackknife of the in-sample R^2 by an explicit loop in float64: numpy lstsq (with an
    intercept column) on the data without each fold, se^2 = (k - 1)/k sum (R^2_(-f) - mean)^2, the t quantile with
    k - 1 degrees of freedom. Returns (replicates, half-width)."""
    x, y = np.asarray(x), np.asarray(y)
    reps = []
    for f in np.unique(fold):
        xt, yt = x[fold != f], y[fold != f]
        design = np.hstack([np.ones((len(xt), 1)), xt])
        coef, *_ = np.linalg.lstsq(design, yt, rcond=None)
        reps.append(1 - ((design @ coef - yt) ** 2).sum() / ((yt - yt.mean(0)) ** 2).sum())
    reps = np.array(reps)
    k = len(reps)
    se = np.sqrt((k - 1) / k * ((reps - reps.mean()) ** 2).sum())
    return reps, scipy.stats.t.ppf(0.5 + level / 2, k - 1) * se


def test_folds_hold_whole_documents_of_balanced_size():
    groups = documents(3000, 40)
    fold = fold_of_tokens(groups)
    for doc in range(40):
        assert len(set(fold[groups.numpy() == doc])) == 1  # no document on both sides of a fit
    sizes = np.bincount(fold)
    assert len(sizes) == 5 and sizes.min() > 0.5 * 3000 / 5


def test_heldout_linearity_matches_lstsq_on_explicit_folds():
    x, y, groups = doc_states(2400, 30, 48)
    res = heldout_linearity(x, y[:, :20], groups)  # y may be narrower than x
    insample, heldout = reference(x, y[:, :20], fold_of_tokens(groups))
    assert abs(res.linearity - insample) < 1e-12 and abs(res.heldout - heldout) < 1e-12
    assert res.heldout < res.linearity  # fitted on other documents: lower
    assert res.linearity_ci[0] < res.linearity < res.linearity_ci[1]
    assert res.heldout_ci[0] < res.heldout < res.heldout_ci[1]
    assert res.folds == 5 and res.documents == 48


def test_insample_interval_is_the_delete_a_fold_jackknife():
    """The default in-sample interval against an explicit float64 jackknife loop over the same document folds
    (each replicate a numpy lstsq refit without one fold), in heldout_linearity and in a profile with and without
    residual; and the interval of the per-model mean from the means of the replicates."""
    x, y, groups = doc_states(2400, 30, 48, seed=1)
    fold = fold_of_tokens(groups)
    res = heldout_linearity(x, y, groups)
    _, half = jackknife_reference(x, y, fold)
    assert res.linearity_ci == pytest.approx((res.linearity - half, res.linearity + half), abs=1e-10)
    h2 = y + 0.5 * torch.tanh(y) + 0.1 * randn(*y.shape, seed=9)
    states = [x, x + y, h2]
    prof = profile_from_states(states, groups=groups)
    mean_reps = {"linearity": 0.0, "linearity_wo_res": 0.0}
    for i, pair in enumerate(prof.pairs):
        for key, target in (("linearity", states[i + 1]), ("linearity_wo_res", states[i + 1] - states[i])):
            reps, half = jackknife_reference(states[i], target, fold)
            score = getattr(pair, key)
            assert (getattr(pair.heldout, f"{key}_lo"), getattr(pair.heldout, f"{key}_hi")) == pytest.approx(
                (score - half, score + half), abs=1e-10)
            mean_reps[key] = mean_reps[key] + reps / len(prof.pairs)
    means = prof.means()
    for key, reps in mean_reps.items():
        half = scipy.stats.t.ppf(0.975, 4) * np.sqrt(0.8 * ((reps - reps.mean()) ** 2).sum())
        assert (means[f"{key}_lo"], means[f"{key}_hi"]) == pytest.approx((means[key] - half, means[key] + half),
                                                                          abs=1e-10)


@threadpool_limits.wrap(limits=1)
def test_bootstrap_interval_agrees_with_scipy():
    """The same cluster bootstrap by scipy (its own resamples): endpoints agree within Monte Carlo error."""
    x, y, groups = doc_states(2000, 20, 60, seed=3)
    res = heldout_linearity(x, y, groups, config=HeldoutConfig(bootstrap=4000))
    fold = fold_of_tokens(groups)
    xn, yn, g = x.numpy(), y.numpy(), groups.numpy()
    rss, tot = np.zeros(60), np.zeros(60)
    for f in range(5):  # per-document held-out residual and total energies from numpy fits
        tr, te = fold != f, fold == f
        design = np.hstack([np.ones((tr.sum(), 1)), xn[tr]])
        c, *_ = np.linalg.lstsq(design, yn[tr], rcond=None)
        r = ((np.hstack([np.ones((te.sum(), 1)), xn[te]]) @ c - yn[te]) ** 2).sum(1)
        t = ((yn[te] - yn[tr].mean(0)) ** 2).sum(1)
        np.add.at(rss, g[te], r)
        np.add.at(tot, g[te], t)
    # the in-sample fit's per-document energies, for the bootstrap option of the in-sample interval
    design = np.hstack([np.ones((len(xn), 1)), xn])
    c, *_ = np.linalg.lstsq(design, yn, rcond=None)
    rss_in, tot_in = np.zeros(60), np.zeros(60)
    np.add.at(rss_in, g, ((design @ c - yn) ** 2).sum(1))
    np.add.at(tot_in, g, ((yn - yn.mean(0)) ** 2).sum(1))
    boot_in = heldout_linearity(x, y, groups, config=HeldoutConfig(bootstrap=4000, insample_interval="bootstrap"))
    assert boot_in.heldout_ci == res.heldout_ci and boot_in.linearity == res.linearity
    for got, (r, t) in ((res.heldout_ci, (rss, tot)), (boot_in.linearity_ci, (rss_in, tot_in))):
        boot = scipy.stats.bootstrap((np.arange(60),), lambda i, axis=-1, r=r, t=t: 1 - r[i].sum(axis) / t[i].sum(axis),
                                     n_resamples=4000, method="percentile", random_state=0, vectorized=True)
        lo, hi = boot.confidence_interval
        width = hi - lo
        assert abs(got[0] - lo) < 0.1 * width and abs(got[1] - hi) < 0.1 * width


def test_chance_level_matches_a_full_shuffled_refit():
    """With d <= chance_columns the sketch only permutes and flips Y's columns, which leaves a pooled R^2 as it is:
    both chance levels are then a refit on every shuffled column, exactly; the in-sample one is near d / (n - 1)."""
    n, d = 3000, 60
    x, y, groups = doc_states(n, d, 50, seed=5)
    res = heldout_linearity(x, y, groups)
    plan = FoldPlan(groups, 5, 0, d)
    y_fold = y.index_select(0, plan.order)  # rows as the plan lays them out; shuffled the same way
    insample, heldout = reference(x.index_select(0, plan.order), y_fold.index_select(0, plan.shuffle),
                                  np.repeat(np.arange(5), np.diff(plan.edges)))
    assert abs(res.chance - insample) < 1e-10 and abs(res.chance_heldout - heldout) < 1e-10
    assert abs(res.chance - d / (n - 1)) < 0.2 * d / (n - 1) and res.chance_heldout < 0


def test_chance_levels_are_the_sketched_shuffled_fits():
    """Both chance levels equal numpy lstsq's in-sample and pooled held-out R^2 of their definition: Y_c times the
    seeded CountSketch (each column, signed, into one of 64 buckets of 3 or 4 columns), rows shuffled by documents,
    fitted on X (the API's and a profile's layout)."""
    n, d = 2400, 200
    x, y, groups = doc_states(n, d, 40, seed=11)
    plan = FoldPlan(groups, 5, 0, d)
    bucket, sign = count_sketch(d, HeldoutConfig.chance_columns, 1)
    assert sorted(torch.bincount(bucket).unique().tolist()) == [3, 4] and set(sign.tolist()) == {-1.0, 1.0}
    sketch = torch.zeros(d, HeldoutConfig.chance_columns, dtype=torch.float64)
    sketch[torch.arange(d), bucket] = sign
    target = ((y - y.mean(0)).index_select(0, plan.order) @ sketch).index_select(0, plan.shuffle)
    insample, heldout = reference(x.index_select(0, plan.order), target, np.repeat(np.arange(5), np.diff(plan.edges)))
    for stats in (heldout_linearity(x, y, groups), linearity_profile([x, y], groups=groups)[0].heldout):
        assert abs(stats.chance - insample) < 1e-10 and abs(stats.chance_heldout - heldout) < 1e-10


def test_profile_heldout_keeps_in_sample_scores_and_matches_lstsq():
    x, y, groups = doc_states(2000, 24, 40, seed=7)
    h2 = y + 0.5 * torch.tanh(y) + 0.1 * randn(*y.shape, seed=9)
    h2[:, 3] = 1.0  # a constant feature: zero coefficient in every fold
    states = [x, x + y, h2]
    plain = linearity_profile(states)
    held = linearity_profile(states, groups=groups, extra_y=h2 * 2 + 1)
    fold = fold_of_tokens(groups)
    for i, (a, b) in enumerate(zip(plain, held)):
        assert abs(a.linearity - b.linearity) < 1e-12 and abs(a.linearity_wo_res - b.linearity_wo_res) < 1e-12
        assert a.heldout is None and a.to_dict().keys() == {"linearity", "linearity_wo_res", "norm_ratio",
                                                             "rank_x", "solver"}
        assert abs(a.norm_ratio - b.norm_ratio) < 1e-12
        _, ho = reference(states[i], states[i + 1], fold)
        _, ho_wo = reference(states[i], states[i + 1] - states[i], fold)
        assert abs(b.heldout.heldout - ho) < 1e-10 and abs(b.heldout.heldout_wo_res - ho_wo) < 1e-10
        assert b.heldout.linearity_wo_res_lo < b.linearity_wo_res < b.heldout.linearity_wo_res_hi
    _, ho = reference(states[1], h2 * 2 + 1, fold)
    assert abs(held[-1].heldout.heldout - ho) < 1e-10  # the extra (final-norm) pair


def test_probe_groups_follow_the_pooled_token_order():
    probe = [[7] * 5, [1, 2, 3], [4] * 9, [5, 6, 8], [9]]
    pooled = torch.cat([ids[mask.bool()] for ids, mask in probe_batches(probe, 2, pad_id=0)])
    groups = probe_groups(probe)
    assert groups.tolist() == [2] * 9 + [0] * 5 + [1] * 3 + [3] * 3 + [4]
    for g, token in zip(groups.tolist(), pooled.tolist()):
        assert token in probe[g]


def test_refuses_too_few_documents():
    with pytest.raises(ValueError, match="at least 5 documents"):
        heldout_linearity(randn(200, 4), randn(200, 4), torch.arange(200) % 3)


def test_pruning_criterion_linearity_heldout():
    """The criterion fits on folds of whole probe sequences: no sequence has tokens on both sides of a fit, and its
    scores are lstsq's on those explicit document folds. The pruning probe gives the sequences of its pool."""
    x, y, groups = doc_states(1500, 16, 30, seed=11)
    states = [x, x + y, x + y + torch.tanh(3 * y)]
    crit = CRITERIA["linearity_heldout"]
    scores = crit(states, groups)
    fold = fold_of_tokens(groups)
    assert all(len(set(fold[groups.numpy() == doc])) == 1 for doc in range(30))
    assert crit.first == "highest" and len(scores) == 2
    for i, s in enumerate(scores):
        assert abs(s - reference(states[i], states[i + 1], fold)[1]) < 1e-10
    with pytest.raises(PruneError, match="probe sequences"):
        crit(states)
    tokens = [[5] * 4, [6] * 9, [7] * 2]
    assert ProbeSet(tokens).groups().tolist() == probe_groups(tokens).tolist() == [1] * 9 + [0] * 4 + [2] * 2


def test_cli_heldout_outputs(tiny_hf_model_dir, tinystories_valid, tmp_path, saved_figures):
    out = tmp_path / "out"
    # held-out statistics by default, no --heldout needed
    assert cli_main(["--model", str(tiny_hf_model_dir), "--text", str(tinystories_valid), "--out", str(out),
                     "--num-chunks", "24", "--bootstrap", "200", "--toolkit", "--id-tokens", "300"]) == 0
    result = json.loads((out / "linearity.json").read_text())
    assert result["heldout"]["folds"] == 5
    prof = result["models"][0]["profile"]
    for pair in prof["pairs"]:
        h = pair["heldout"]
        assert h["heldout"] < pair["linearity"] and h["linearity_lo"] <= pair["linearity"] <= h["linearity_hi"]
        assert h["chance"] > 0 > h["chance_heldout"]
    assert prof["means"]["heldout_lo"] <= prof["means"]["heldout"] <= prof["means"]["heldout_hi"]
    rows = list(csv.DictReader((out / "linearity.csv").open()))
    assert len(rows) == 2 and all(float(r["heldout"]) < float(r["linearity"]) for r in rows)
    assert {"heldout_wo_res", "heldout_wo_res_lo", "chance", "chance_heldout"} <= rows[0].keys()
    states = list(csv.DictReader((out / "linearity_states.csv").open()))  # --toolkit: one row per state h_0..h_L
    assert [int(r["state"]) for r in states] == [0, 1, 2]
    assert all(0 < float(r["anisotropy"]) <= 1 and float(r["intrinsic_dimension"]) > 0 and float(r["loss"]) > 0
               for r in states)
    assert prof["toolkit"]["neglogp_argmax"] == [float(r["neglogp_argmax"]) for r in states]
    state_axes = saved_figures["linearity_states.png"].axes  # one panel per measure, each labelled
    assert len(state_axes) == 5 and all(ax.get_xlabel() and ax.get_ylabel() for ax in state_axes)
    label = result["models"][0]["label"]
    extra = [f"{label}: {e}" for e in ("held-out", "95 % intervals", "chance (in-sample)", "chance (held-out)")]
    for ax, key in zip(saved_figures["linearity.png"].axes, ("linearity", "linearity_wo_res")):
        assert (ax.get_xlabel(), ax.get_ylabel()) == ("normalised depth (block index / (L - 1))", "score")
        assert sorted(legend(ax)) == sorted([label, *extra])  # every panel has its legend
        drawn = lines(ax)
        assert len(drawn) == 4 and drawn[label][0] == pytest.approx([0.0, 1.0])
        assert drawn[label][1] == pytest.approx([p[key] for p in prof["pairs"]])
        assert drawn[extra[0]][1] == pytest.approx([p["heldout"][key.replace("linearity", "heldout")]
                                                    for p in prof["pairs"]])


def test_zoom_inset_tells_chance_lines_by_their_mark_not_their_label():
    """The inset repeats the scores and bands of a panel whose scores sit far above its chance levels, whatever the
    models are called (a model named "chance-reg" is a score line, not a chance line)."""
    import matplotlib.pyplot as plt

    from eval.linearity.plots import heldout_lines, zoom_inset

    fig, ax = plt.subplots()
    x = [0.0, 0.5, 1.0]
    stats = [{"linearity_lo": v - 0.002, "linearity_hi": v + 0.002, "heldout": v - 0.01, "heldout_lo": v - 0.012,
              "heldout_hi": v - 0.008, "chance": 0.03, "chance_heldout": -0.02} for v in (0.97, 0.98, 0.99)]
    line, = ax.plot(x, [0.97, 0.98, 0.99], label="chance-reg")
    heldout_lines(ax, x, stats, "linearity", line.get_color(), "chance-reg")
    ax.set_ylim(-0.05, 1.05)
    assert zoom_inset(ax)
    inset = ax.child_axes[0]
    assert sorted(tuple(ln.get_ydata()) for ln in inset.lines) == sorted(
        [(0.97, 0.98, 0.99), tuple(st["heldout"] for st in stats)])  # the two score lines, no chance line
    assert inset.get_ylim()[0] > 0.9
    plt.close(fig)


def test_state_measures_match_the_toolkit():
    x, y, groups = doc_states(1200, 16, 30, seed=13)
    states = [x, x + y, x + y + torch.tanh(2 * y)]
    cfg = ToolkitConfig(anisotropy=True, intrinsic_dimension=True, id_tokens=None)
    for kwargs in ({}, {"groups": groups}):  # the Gram matrices of the plain and of the held-out layout
        prof = profile_from_states(states, toolkit=cfg, **kwargs)
        for i, s in enumerate(states):
            assert abs(prof.toolkit["anisotropy"][i] - anisotropy(s)) < 1e-12
            assert prof.toolkit["intrinsic_dimension"][i] == intrinsic_dimension(s)
    drawn = profile_from_states(states, toolkit=ToolkitConfig(intrinsic_dimension=True, id_tokens=500))
    rows = torch.randperm(1200, generator=torch.Generator().manual_seed(0))[:500].sort().values
    assert drawn.toolkit["intrinsic_dimension"][1] == intrinsic_dimension(states[1][rows])


def test_pooled_logit_lens_ends_at_the_models_loss(tiny_hf_model_dir, tinystories_valid, tiny_tokenizer):
    """At h_L with the final norm the lens is the model's own next-token loss: HF's loss on the padded batch."""
    model = AutoModelForCausalLM.from_pretrained(tiny_hf_model_dir, torch_dtype=torch.float32)
    probe = build_probe(read_probe_text(tinystories_valid), tiny_tokenizer, ProbeSetConfig(num_chunks=6))
    prof = model_profile(model, probe, toolkit=ToolkitConfig(logit_lens=True, lens_tokens=None), pad_id=0)
    (ids, mask), = probe_batches(probe, len(probe), pad_id=0)
    with torch.no_grad():
        loss = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
    assert len(prof.toolkit["loss"]) == 3 and abs(prof.toolkit["loss"][-1] - float(loss)) < 1e-5


def test_logit_lens_on_drawn_positions(tiny_hf_model_dir, tinystories_valid, tiny_tokenizer):
    """``lens_tokens`` positions drawn from the predicted ones: the lens's means over exactly those positions
    (cross-entropy of lm_head on h_t, with and without the final norm, against the next token of t's sequence)."""
    model = AutoModelForCausalLM.from_pretrained(tiny_hf_model_dir, torch_dtype=torch.float32)
    probe = build_probe(read_probe_text(tinystories_valid), tiny_tokenizer, ProbeSetConfig(num_chunks=6))
    drawn = model_profile(model, probe, toolkit=ToolkitConfig(logit_lens=True, lens_tokens=40), pad_id=0).toolkit
    whole = model_profile(model, probe, toolkit=ToolkitConfig(logit_lens=True, lens_tokens=None), pad_id=0).toolkit
    (ids, mask), = probe_batches(probe, len(probe), pad_id=0)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    states = [h[mask.bool()] for h in out.hidden_states]  # the batch holds the sequences in pool order
    labels = pooled_labels(probe, pool_order(probe))
    where = (labels[1:] != -100).nonzero().flatten()
    rows = where[torch.randperm(len(where), generator=torch.Generator().manual_seed(0))[:40].sort().values]
    head = model.get_output_embeddings().weight.double()
    final = model.model.norm
    with torch.no_grad():
        for i in (0, 1):  # h_0 and h_1 are pre-norm states, HF's last one is already normed
            h = states[i][rows]
            ref = F.cross_entropy(final(h).double() @ head.T, labels[rows + 1])
            ref_raw = F.cross_entropy(h.double() @ head.T, labels[rows + 1])
            assert abs(drawn["loss"][i] - float(ref)) < 1e-6 and abs(drawn["loss_no_norm"][i] - float(ref_raw)) < 1e-6
    assert all(a != b for a, b in zip(drawn["loss"], whole["loss"]))  # a subsample, not every position


def test_series_heldout_and_toolkit_outputs(tiny_hf_model_dir, tinystories_valid, tmp_path, saved_figures):
    from analysis.series import main as series_main

    out = tmp_path / "series"
    assert series_main(["--paths", str(tiny_hf_model_dir), "--label", "tiny", "--out", str(out), "--text",
                        str(tinystories_valid), "--num-chunks", "24", "--bootstrap", "200", "--toolkit",
                        "--id-tokens", "500", "--device", "cpu"]) == 0
    rows = list(csv.DictReader((out / "series.csv").open()))
    assert len(rows) == 2 and all(float(r["heldout_lo"]) <= float(r["heldout"]) <= float(r["heldout_hi"])
                                  for r in rows)
    states = list(csv.DictReader((out / "series_states.csv").open()))
    assert [int(r["state"]) for r in states] == [0, 1, 2] and all(float(r["anisotropy"]) > 0 for r in states)
    for ax in saved_figures["series.png"].axes:
        assert (ax.get_xlabel(), ax.get_ylabel()) == ("training step", "score (mean over blocks)")
        assert legend(ax)[:2] == ["tiny", "tiny: held-out"] and len(lines(ax)) == 4
    panels = saved_figures["series_states.png"].axes
    keys = [k for k in STATE_LABELS if k in states[0]]  # one panel per measurement in the CSV
    assert [ax.get_ylabel() for ax in panels] == [STATE_LABELS[k] for k in keys] and len(keys) >= 2
    for ax, key in zip(panels, keys):
        assert ax.get_xlabel() == "training step" and legend(ax) == ["$h_{0}$", "$h_{1}$", "$h_{2}$"]
        assert [y[0] for _, y in lines(ax).values()] == pytest.approx([float(r[key]) for r in states])
    assert (out / "series.png").is_file() and (out / "series_states.png").is_file()
