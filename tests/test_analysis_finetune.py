"""Fine-tuning deltas: Δ linearity from before/after profiles against a hand computation, the Trainer-driven
fine-tune learning a constructed task, the CLI (CB + reward pairs, two seeds) with its tables and cache."""
from __future__ import annotations

import json
import math

import pytest

from analysis import finetune as FT


def record(lin, wo):
    from eval.linearity.evaluator import history_record
    from eval.linearity.profile import Profile
    from eval.linearity.score import PairStats

    pairs = [PairStats(a, b, 0.5, 8, "cholesky") for a, b in zip(lin, wo)]
    return history_record(0, Profile(len(pairs), 8, 100, pairs), 0.0)


def test_delta_and_table_match_a_hand_computation():
    before = record([0.9, 0.8, 0.7], [0.30, 0.20, 0.10])  # mean w/o residual 0.20
    after = [record([0.9, 0.9, 0.9], [0.40, 0.25, 0.15]),  # 0.2667: Δ +0.0667
             record([0.9, 0.8, 0.8], [0.20, 0.10, 0.15])]  # 0.15:   Δ -0.05
    deltas = [FT.linearity_delta(before, a) for a in after]
    assert deltas == pytest.approx([0.8 / 3 - 0.2, -0.05])
    assert FT.linearity_delta(before, after[0], "linearity") == pytest.approx(0.9 - 0.8)
    recs = [{"model": "m", "task": "cb", "seed": s, "delta_wo_res": d, "delta_linearity": 0.0, "acc_before": 0.3,
             "acc_after": 0.6 + 0.1 * s, "majority": 0.5, "split": "x", "before": before} for s, d in enumerate(deltas)]
    summary = FT.summarize(recs)["m"]["cb"]
    mean = (0.8 / 3 - 0.2 - 0.05) / 2
    std = math.sqrt(((0.8 / 3 - 0.2 - mean) ** 2 + (-0.05 - mean) ** 2) / 1)
    assert summary["delta_wo_res"] == pytest.approx(mean) and summary["delta_wo_res_std"] == pytest.approx(std)
    assert summary["acc_after"] == pytest.approx(0.65)
    assert f"+{mean:.4f} ± {std:.4f}" in FT.tables(FT.summarize(recs), ["cb"])
    with pytest.raises(ValueError, match="do not compare"):
        FT.linearity_delta(before, record([0.9], [0.1]))


def test_pairwise_loss_and_encoding(tiny_tokenizer):
    import torch

    r = torch.tensor([2.0, 0.0, 1.0, 1.0])  # chosen (2, 0), rejected (1, 1)
    expected = -(math.log(1 / (1 + math.exp(-1))) + math.log(1 / (1 + math.exp(1)))) / 2
    assert float(FT.pairwise_loss(r)) == pytest.approx(expected)
    text = "Human: hi there. Assistant: hello! " * 20 + "The final reply."
    ids = FT.encode(tiny_tokenizer, text, 16, keep_end=True)
    full = tiny_tokenizer(text)["input_ids"]
    assert len(ids) == 16 and ids[0] == tiny_tokenizer.bos_token_id and ids[1:] == full[-15:]
    assert FT.encode(tiny_tokenizer, text, 16, keep_end=False) == full[:16]


def test_trainer_fine_tune_learns_a_separable_task(tiny_hf_model_dir, tinystories_valid, tmp_path):
    from analysis.profiling import ProfileSpec
    from eval.linearity.probe import ProbeSetConfig, read_probe_text
    from model.export import load_model

    lm, tok = load_model(tiny_hf_model_dir)
    q = "question: is it sunny? passage: story"
    happy = [(f"{q} {i}. The sun was warm and everyone smiled.", 1) for i in range(24)]
    sad = [(f"{q} {i}. It was dark, cold and it rained.", 0) for i in range(24)]
    train, test = happy[:16] + sad[:16], happy[16:] + sad[16:]
    settings = FT.FinetuneSettings(steps=30, batch_size=8, lr=3e-3, max_length=32)
    spec = ProfileSpec("valid", ProbeSetConfig(12, 400, 0))
    res = FT.finetune_one(lm, tok, "boolq", 0, (train, test, "constructed"), settings, tmp_path / "run",
                          read_probe_text(tinystories_valid), spec, "cpu")
    assert res["acc_after"] == 1.0 and res["majority"] == 0.5
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert losses[-1] < losses[0] / 2  # the Trainer's own log: it learned


def test_cli_cb_and_reward_two_seeds(tiny_hf_model_dir, tinystories_valid, tmp_path, monkeypatch):
    out = tmp_path / "out"
    argv = ["--model", str(tiny_hf_model_dir), "--label", "tiny", "--tasks", "cb,reward", "--seeds", "0,1",
            "--steps", "4", "--batch-size", "4", "--max-length", "48", "--train-limit", "12", "--eval-limit", "12",
            "--text", str(tinystories_valid), "--num-chunks", "12", "--chunk-chars", "400", "--lr", "1e-3",
            "--out", str(out)]
    assert FT.main(argv) == 0
    rows = (out / "finetune.csv").read_text().splitlines()
    assert rows[0].startswith("model,task,seed,acc_before,acc_after,majority,before_wo_res,after_wo_res,delta_wo_res")
    assert [tuple(r.split(",")[1:3]) for r in rows[1:]] == [("cb", "0"), ("cb", "1"), ("reward", "0"),
                                                            ("reward", "1")]
    recs = [json.loads(line) for line in (out / "finetune.jsonl").read_text().splitlines()]
    before = recs[0]["before"]
    for rec in recs:
        assert rec["before"] == before  # one base profile, the same probe for every seed and task
        hand = sum(rec["after"]["linearity_wo_res"]) / 2 - sum(before["linearity_wo_res"]) / 2
        assert rec["delta_wo_res"] == pytest.approx(hand, abs=1e-12) and rec["delta_wo_res"] != 0
        assert 0 <= rec["acc_after"] <= 1 and rec["n_train"] == 12 and rec["n_test"] == 12
    assert {r["majority"] for r in recs if r["task"] == "reward"} == {0.5}
    md = (out / "finetune.md").read_text()
    assert "| CB |" in md and "| Reward model (HH-RLHF) |" in md and "carved" in md
    assert (out / "finetune.png").stat().st_size > 0
    monkeypatch.setattr(FT, "finetune_one", lambda *a, **k: pytest.fail("a cached fine-tune ran again"))
    assert FT.main(argv) == 0


def test_bad_override_fails_before_loading(tmp_path, capsys):
    assert FT.main(["--model", "nowhere", "--tasks", "cb", "--out", str(tmp_path), "train.max_stpes=3"]) == 2
    assert "train.max_stpes" in capsys.readouterr().err.strip().splitlines()[-1]
