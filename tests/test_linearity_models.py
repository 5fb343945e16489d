"""Linearity profiles of real (tiny, random) models: hooks vs an independent forward for five decoder families,
the CLI on an HF directory and a linreg checkpoint, and the in-loop evaluator in a real training run."""
import copy
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO
from figures import colorbar_labels, legend, lines, panels
from prune_models import tiny_model
from torch import nn
from transformers import AutoModelForCausalLM

from eval.linearity import ProbeSetConfig, build_probe, linearity_profile, model_profile, pair_stats, read_probe_text
from eval.linearity.__main__ import main as cli_main
from eval.linearity.plots import TITLES, read_history, training_figures

FINAL_NORMS = {"llama": "model.norm", "gpt2": "transformer.ln_f", "opt": "model.decoder.final_layer_norm",
               "pythia": "gpt_neox.final_layer_norm"}  # family -> attribute path of the final norm (3 blocks each)


@pytest.fixture(scope="module")
def probe_text(tinystories_valid):
    return read_probe_text(tinystories_valid)


def without_final_norm(model, path):
    ref = copy.deepcopy(model)
    parent, name = path.rsplit(".", 1)
    setattr(ref.get_submodule(parent), name, nn.Identity())
    return ref


@pytest.mark.parametrize("family", ["mistral", *FINAL_NORMS])
def test_profile_from_hooks_equals_independent_forward(family, tiny_tokenizer, tiny_hf_model_dir, probe_text):
    torch.manual_seed(0)
    if family == "mistral":
        model, norm_path = AutoModelForCausalLM.from_pretrained(tiny_hf_model_dir), "model.norm"
    else:
        model, norm_path = tiny_model(family, tiny_tokenizer, layers=3), FINAL_NORMS[family]
    model.eval()
    probe = build_probe(probe_text, tiny_tokenizer, ProbeSetConfig(num_chunks=6), max_len=256)
    # Ours: padded batches through forward hooks (pre final norm), plus a hook on the final norm.
    prof = model_profile(model, probe, batch_size=4, final_norm=True, pad_id=tiny_tokenizer.pad_token_id)

    # Reference: one unpadded forward per chunk, HF's own output_hidden_states (no hooks of ours). HF takes the
    # last entry after the final norm; with that norm replaced by the identity, the last entry is h_L.
    plain = without_final_norm(model, norm_path)
    ordered = sorted(probe, key=len, reverse=True)  # the pooling order of model_profile (LS ignores order anyway)
    pooled = [[] for _ in range(model.config.num_hidden_layers + 1)]
    with torch.no_grad():
        for ids in ordered:
            for i, h in enumerate(plain(torch.tensor([ids]), output_hidden_states=True).hidden_states):
                pooled[i].append(h[0])
        states = [torch.cat(p) for p in pooled]
        normed = model.get_submodule(norm_path)(states[-1])
    ref = linearity_profile(states)
    ref_final = pair_stats(states[-2], normed)

    assert prof.num_tokens == sum(map(len, probe)) == states[0].shape[0]
    assert len(prof.pairs) == model.config.num_hidden_layers
    for got, want in zip([*prof.pairs, prof.final_norm], [*ref, ref_final]):
        for key in ("linearity", "linearity_wo_res", "norm_ratio"):
            assert abs(getattr(got, key) - getattr(want, key)) < 1e-8, (family, key)  # measured: at most 4e-10
    # The final norm matters: the extra pair is not the last block pair.
    assert abs(prof.final_norm.linearity - prof.pairs[-1].linearity) > 1e-4


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, shared_data):
    """A 3-step training run of a tiny linreg model with the linearity evaluator every 2 steps (subprocess)."""
    run_dir = tmp_path_factory.mktemp("linearity_run") / "run"
    args = [sys.executable, "train.py", "--config", "configs/tiny_cpu.yaml", "--run-dir", str(run_dir),
            "model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.num_kv_heads=1",
            "model.intermediate_size=64", "model.max_seq_len=64", "data.seq_len=64", "data.max_docs=200",
            "data.val_batches=1", f"data.cache_dir={run_dir.parent / 'cache'}", "tokenizer.vocab_size=300",
            "tokenizer.train_max_bytes=200000", "train.max_steps=3", "train.global_batch_size=2",
            "train.micro_batch_size=2",
            "eval.linearity.every=2", "eval.linearity.probe.num_chunks=16", "eval.linearity.final_norm=true",
            "eval.linearity.heldout.bootstrap=100",  # held-out statistics are on by default
            "eval.linearity.toolkit.anisotropy=true", "eval.linearity.toolkit.intrinsic_dimension=true",
            "eval.linearity.toolkit.logit_lens=true",
            f"eval.linearity.text_file={shared_data / 'tinystories' / 'valid.txt'}",
            "checkpoint.every=0", "checkpoint.export_at_end=false", "logging.progress_bar=false",
            "eval.benchmarks.enabled=false"]
    env = {**os.environ, "LINREG_DATA_ROOT": str(shared_data)}
    res = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return run_dir


def test_in_loop_probe_too_small_for_heldout_names_the_switch(tmp_path, tiny_tokenizer, tinystories_valid):
    """Held-out statistics are on by default in the loop, so a probe too small for their folds is refused at start-up
    with the setting that turns them off; with it off, the same probe is taken."""
    from core.errors import DataError
    from core.rundir import RunDir
    from eval.base import EvalContext
    from eval.linearity.evaluator import LinearityEvaluator
    from linreg.config import load_config

    def build(*overrides):
        cfg = load_config(REPO / "tests" / "tiny.yaml", ["eval.linearity.probe.num_chunks=3",
                                                         f"eval.linearity.text_file={tinystories_valid}", *overrides])
        ctx = EvalContext(run_dir=RunDir(tmp_path / "run"), tokenizer=tiny_tokenizer, device=torch.device("cpu"),
                          autocast_dtype=None, rank=0, world_size=1, seq_len=cfg.data.seq_len, config=cfg)
        return LinearityEvaluator(cfg.eval.linearity, ctx)

    with pytest.raises(DataError, match=r"at least 5 documents \(one per fold\), got 3 "
                                        r"\(or set eval\.linearity\.heldout\.enabled=false\)"):
        build()
    assert build("eval.linearity.heldout.enabled=false").groups is None


def test_evaluator_logs_profiles_through_training(tiny_run):
    history = read_history(tiny_run / "linearity.jsonl")
    assert [r["step"] for r in history] == [2, 3]  # every 2 steps, and at the end
    for rec in history:
        assert len(rec["linearity"]) == len(rec["linearity_wo_res"]) == len(rec["norm_ratio"]) == 2
        assert rec["final_norm"] is not None and rec["num_tokens"] > 33
        assert abs(rec["means"]["linearity"] - sum(rec["linearity"]) / 2) < 1e-12
        assert len(rec["heldout"]) == 2 and rec["heldout_lo"][0] <= rec["heldout"][0] <= rec["heldout_hi"][0]
        assert rec["final_norm"]["heldout"]["chance"] > 0
        assert {k: len(v) for k, v in rec["toolkit"].items()} == {
            "anisotropy": 3, "intrinsic_dimension": 3, "loss": 3, "loss_no_norm": 3, "neglogp_argmax": 3}
    metrics = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    logged = {k for m in metrics for k in m}
    for key in ("linearity/block_00", "linearity/block_01", "linearity/mean", "linearity_wo_res/mean",
                "norm_ratio/block_01", "linearity/final_norm", "time/eval_linearity", "heldout/mean",
                "chance_heldout/block_01", "anisotropy/state_02", "loss/state_02"):
        assert key in logged, key
    for name in ("linearity_vs_step.png", "linearity_heatmaps.png", "linearity_states_vs_step.png"):
        assert (tiny_run / "plots" / name).is_file()
    # what those files show, drawn again from the history by the function the evaluator uses
    figures = training_figures(history)
    curves = figures["linearity_vs_step"].axes
    assert [ax.get_title() for ax in curves] == [f"{t}, mean over blocks" for t in TITLES.values()]
    for ax, key in zip(curves, TITLES):
        assert (ax.get_xlabel(), ax.get_ylabel()) == ("step", "mean over blocks")
        x, y = lines(ax)["in-sample"]
        assert list(x) == [2, 3] and y == pytest.approx([sum(r[key]) / 2 for r in history])
        if key != "norm_ratio":
            assert legend(ax)[:2] == ["in-sample", "held-out"]
    assert colorbar_labels(figures["linearity_heatmaps"]) == list(TITLES.values())
    for ax in panels(figures["linearity_heatmaps"]):
        assert (ax.get_xlabel(), ax.get_ylabel()) == ("step", "block")
    for ax in figures["linearity_states_vs_step"].axes:
        assert ax.get_ylabel() and ax.get_xlabel() == "step" and legend(ax) == ["$h_{0}$", "$h_{1}$", "$h_{2}$"]
    assert any((tiny_run / "tb").iterdir())


def test_cli_on_hf_dir_and_linreg_checkpoint(tiny_run, tiny_hf_model_dir, tinystories_valid, tmp_path,
                                              saved_figures):
    ckpt = tiny_run / "checkpoints" / "step_00000003"
    assert ckpt.is_dir()
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="longer than the model's 64 positions"):  # the linreg model's context
        assert cli_main(["--model", str(tiny_hf_model_dir), "--model", str(ckpt), "--text", str(tinystories_valid),
                         "--out", str(out), "--num-chunks", "16", "--final-norm", "--no-heldout"]) == 0
    result = json.loads((out / "linearity.json").read_text())
    assert [m["label"] for m in result["models"]] == [tiny_hf_model_dir.name, "run/step_00000003"]
    assert result["probe"] == {"num_chunks": 16, "chunk_chars": 512, "seed": 0, "max_tokens": None}
    rows = list(csv.DictReader((out / "linearity.csv").open()))
    assert [r["pair"] for r in rows] == ["block_0", "block_1", "final_norm"] * 2
    assert all(0 < float(r["linearity"]) <= 1 and float(r["norm_ratio"]) > 0 for r in rows)
    assert (out / "linearity.png").is_file()
    labels = [m["label"] for m in result["models"]]
    for ax, key in zip(saved_figures["linearity.png"].axes, ("linearity", "linearity_wo_res")):
        assert ax.get_xlabel() == "normalised depth (block index / (L - 1))" and ax.get_ylabel() == "score"
        assert legend(ax) == labels  # in every panel
        for m in result["models"]:  # the block pairs, not the final norm's
            assert lines(ax)[m["label"]][1] == pytest.approx([p[key] for p in m["profile"]["pairs"]])
    # Offline and in-loop agree: the checkpoint's profile is the one the evaluator logged at the last step
    # (same probe text and recipe; only the batching differs).
    logged = read_history(tiny_run / "linearity.jsonl")[-1]
    offline = result["models"][1]["profile"]
    assert offline["num_tokens"] == logged["num_tokens"]
    for i, pair in enumerate(offline["pairs"]):
        assert abs(pair["linearity"] - logged["linearity"][i]) < 1e-5
        assert abs(pair["linearity_wo_res"] - logged["linearity_wo_res"][i]) < 1e-5
    # The run directory mode redraws the training figures.
    assert cli_main(["--run", str(tiny_run), "--out", str(tmp_path / "curves")]) == 0
    assert (tmp_path / "curves" / "linearity_heatmaps.png").is_file()
    records = [json.loads(line) for line in (tiny_run / "linearity.jsonl").read_text().splitlines()]
    assert colorbar_labels(saved_figures["linearity_heatmaps.png"]) == list(TITLES.values())
    for ax, key in zip(saved_figures["linearity_vs_step.png"].axes, TITLES):  # the logged blocks' mean, per step
        x, y = lines(ax)["in-sample"]
        assert list(x) == [r["step"] for r in records] and y == pytest.approx([np.mean(r[key]) for r in records])
