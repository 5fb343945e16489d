"""python -m eval on a tiny model over every task in shared/data, TinyStories loss, and the in-loop evaluator."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from eval.benchmarks.loss import evaluate_loss
from eval.benchmarks.tasks import DataSource, expand_task_names, get_task

REPO = Path(__file__).resolve().parents[1]


def tb_tags(directory: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for f in directory.rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(f))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    return tags


def test_cli_all_tasks_offline(tmp_path, tiny_hf_model_dir, shared_data, capsys):
    from eval.__main__ import main

    out = tmp_path / "out"
    rc = main(["--model", str(tiny_hf_model_dir), "--tasks", "superglue,xstorycloze,tinystories", "--out", str(out),
               "--limit", "2", "--log-samples", "--data-root", str(shared_data), "--label", "tiny"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| model | boolq | cb-acc | cb-f1 | copa | multirc | record-f1 | record-em | rte | wic | wsc |" in printed
    assert "| model | ar | en | es | eu | hi | id | my | ru | sw | te | zh | mean |" in printed
    assert "| model | loss | bpb | ppl |" in printed and "| tiny |" in printed
    results = json.loads((out / "results.json").read_text())
    names = [n for n in expand_task_names("superglue,xstorycloze,tinystories")]
    expected = {("record_dev32" if n == "record" else n) + "_first2" for n in names} | {"xstorycloze_first2"}
    assert set(results) == expected
    assert set(results["cb_first2"]) == {"acc", "acc_norm", "f1"}
    assert set(results["record_dev32_first2"]) == {"f1", "em"}
    assert set(results["tinystories_first2"]) >= {"loss", "bpb", "ppl"}
    for metrics in results.values():
        assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())
    lines = (out / "samples_boolq_first2.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["doc_id"] for r in rows] == [0, 1]
    for r in rows:
        assert len(r["loglikelihoods"]) == 2 and r["pred"] == max(range(2), key=lambda i: r["loglikelihoods"][i])
        assert r["continuations"] == [" no", " yes"] and r["context"].endswith("?\nAnswer:")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["tasks"]["record_dev32_first2"]["notes"] and meta["dtype"] == "fp32"
    assert "eval/boolq_first2/acc" in tb_tags(out / "tb")
    assert sum(line.startswith("|---|") for line in (out / "results.md").read_text().splitlines()) == 3


def test_cli_missing_data_is_a_clear_error(tmp_path, tiny_hf_model_dir, capsys):
    from eval.__main__ import main

    rc = main(["--model", str(tiny_hf_model_dir), "--tasks", "wic", "--out", str(tmp_path / "o"),
               "--data-root", str(tmp_path)])
    assert rc == 2
    assert f"task 'wic': data file not found: {tmp_path}/superglue/WiC/val.jsonl" in capsys.readouterr().err


def test_tinystories_loss_against_direct_computation(tiny_hf_model_dir, shared_data):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_hf_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_hf_model_dir)
    task = get_task("tinystories", DataSource(shared_data))
    docs = task.documents()[:5]
    data = task.build(tok, seq_len=50, limit=5)
    got = evaluate_loss(model, data, device="cpu", batch_tokens=120)
    # direct: the stream EOS s1 EOS ... s5 EOS, scored in windows of 50 predictions
    stream = [tok.eos_token_id]
    for d in docs:
        stream += tok(d, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    nats = 0.0
    with torch.no_grad():
        for i in range(0, len(stream) - 1, 50):
            w = torch.tensor(stream[i:i + 51])
            nats += F.cross_entropy(model(w[None, :-1]).logits[0], w[1:], reduction="sum").item()
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    assert got["tokens"] == len(stream) - 1 and got["bytes"] == n_bytes
    assert got["loss"] == pytest.approx(nats / (len(stream) - 1), rel=1e-5)
    assert got["bpb"] == pytest.approx(nats / math.log(2) / n_bytes, rel=1e-5)
    assert got["ppl"] == pytest.approx(math.exp(got["loss"]))


def test_in_loop_quick_start_logs_to_tensorboard(tmp_path, shared_data):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, str(REPO / "train.py"), "--config", str(REPO / "tests" / "tiny.yaml"), "--run-dir",
           str(run_dir), "eval.benchmarks.enabled=true", "eval.benchmarks.every=10", "eval.benchmarks.limit=3",
           "eval.benchmarks.tasks=[boolq,copa,record,xstorycloze_en,tinystories]", "eval.linearity.enabled=false",
           f"data.cache_dir={tmp_path / 'cache'}"]
    env = {**os.environ, "LINREG_DATA_ROOT": str(shared_data)}
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = {r["step"]: r for r in rows if "eval/boolq_first3/acc" in r}
    assert set(evals) == {10, 20}
    for key in ("eval/copa_first3/acc", "eval/record_dev32_first3/f1", "eval/xstorycloze_en_first3/acc",
                "eval/tinystories_first3/bpb", "eval/table2_mean", "time/eval_benchmarks"):
        assert key in evals[20], key
    assert evals[20]["eval/tinystories_first3/loss"] < evals[10]["eval/tinystories_first3/loss"]  # it trains
    assert {"eval/boolq_first3/acc", "eval/tinystories_first3/loss"} <= tb_tags(run_dir / "tb")
    saved = json.loads((run_dir / "benchmarks" / "step_00000020" / "results.json").read_text())
    assert saved["copa_first3"]["acc"] == evals[20]["eval/copa_first3/acc"]
