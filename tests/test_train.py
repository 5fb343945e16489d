"""train.py end to end, as users run it (subprocesses through deepspeed.initialize on CPU)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from linreg.metrics import read_metrics

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "tiny.yaml"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("token_cache")


def train_cmd(run_dir, *overrides, config=TINY, extra=()):
    return [sys.executable, str(REPO / "train.py"), "--config", str(config), "--run-dir", str(run_dir), *extra,
            *overrides]


def run(cmd, cache_dir, timeout=600):
    cmd = [*cmd, f"data.cache_dir={cache_dir}"]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=os.environ.copy())


def losses(run_dir) -> dict[int, float]:
    return {m["step"]: m["train/loss"] for m in read_metrics(run_dir / "metrics.jsonl") if "train/loss" in m}


def test_end_to_end(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    res = run(train_cmd(run_dir), cache_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "done: steps=20" in res.stdout
    rows = read_metrics(run_dir / "metrics.jsonl")
    train_rows = [r for r in rows if "train/loss" in r]
    assert [r["step"] for r in train_rows] == list(range(1, 21))
    for key in ("train/task_loss", "train/reg", "train/lr", "train/tokens_per_s", "train/grad_norm", "train/mem_gb"):
        assert key in train_rows[-1]
    assert train_rows[-1]["train/reg"] > 0  # the tiny config uses the cosine regularizer
    assert abs(train_rows[0]["train/loss"] - train_rows[0]["train/task_loss"] - train_rows[0]["train/reg"]) < 1e-6
    val = {r["step"]: r["val/loss"] for r in rows if "val/loss" in r}
    assert set(val) == {10, 20}
    assert train_rows[-1]["train/task_loss"] < train_rows[0]["train/task_loss"] - 0.3
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert (run_dir / "checkpoints" / "latest").read_text() == "step_00000020"
    assert (run_dir / "config.yaml").is_file() and (run_dir / "tokenizer" / "tokenizer.json").is_file()

    # The HF export loads offline and reproduces the logged validation loss.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from data.cache import tokenized_split
    from data.stream import PackedSamples, validation_batches
    from linreg.config import load_config
    from model.loss import causal_lm_loss

    model = AutoModelForCausalLM.from_pretrained(run_dir / "export").eval()
    tok = AutoTokenizer.from_pretrained(run_dir / "export")
    cfg = load_config(run_dir / "config.yaml")
    samples = PackedSamples(tokenized_split(cfg.data, "valid", tok, progress=False), cfg.data.seq_len)
    tot, n = 0.0, 0
    with torch.no_grad():
        for b in validation_batches(samples, cfg.train.micro_batch_size, cfg.data.val_batches, 0, 1):
            tot += causal_lm_loss(model(b[:, :-1]).logits, b[:, 1:], reduction="sum").item()
            n += b[:, 1:].numel()
    assert abs(tot / n - val[20]) < 1e-5

    # An existing run dir is refused (and left intact) unless resuming or --overwrite.
    before = (run_dir / "metrics.jsonl").read_text()
    res = run(train_cmd(run_dir), cache_dir)
    assert res.returncode == 2 and "exists: use --resume auto" in res.stderr.strip().splitlines()[-1]
    assert (run_dir / "metrics.jsonl").read_text() == before

    # Resuming its checkpoint with another tokenizer fails before any weights are loaded.
    res = run(train_cmd(tmp_path / "other", "tokenizer.vocab_size=512", extra=["--resume", str(run_dir)]), cache_dir)
    assert res.returncode == 2
    assert "does not match this run: tokenizer was" in res.stderr.strip().splitlines()[-1]


def test_sigterm_then_resume_is_bit_exact(tmp_path, cache_dir):
    steps = ["train.max_steps=40", "checkpoint.every=0", "eval.val_loss.enabled=false"]
    full = tmp_path / "full"
    res = run(train_cmd(full, *steps), cache_dir)
    assert res.returncode == 0, res.stderr[-3000:]

    part = tmp_path / "part"
    proc = subprocess.Popen([*train_cmd(part, *steps), f"data.cache_dir={cache_dir}"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = part / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 15:
            break
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    stopped = max(losses(part))
    assert "SIGTERM: saved checkpoint at step" in out and 15 <= stopped < 40
    assert (part / "checkpoints" / "latest").read_text() == f"step_{stopped:08d}"

    res = run(train_cmd(part, *steps, extra=["--resume", "auto"]), cache_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resumed from" in res.stdout
    a, b = losses(full), losses(part)
    assert sorted(b) == list(range(1, 41))
    assert all(a[s] == b[s] for s in range(1, 41)), [(s, a[s], b[s]) for s in range(1, 41) if a[s] != b[s]]


def test_two_processes_match_one(tmp_path, cache_dir):
    """One global batch, two world sizes: 8 sequences per step as 4 micro-steps of 2 on one rank and as 2 micro-steps
    of 2 on each of two ranks train the same tokens per step with the same losses, and validate on the same set."""
    common = ["train.max_steps=6", "eval.val_loss.every=3", "checkpoint.every=0",
              "checkpoint.export_at_end=false", "train.global_batch_size=8", "train.micro_batch_size=2"]
    one = tmp_path / "one"
    res = run(train_cmd(one, *common), cache_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "1 rank(s), fp32, ZeRO-0, 256 tokens/step (8 sequences: 4 micro-step(s) of 2 per rank)" in res.stdout
    # Build the tokenizer/cache once so both ranks of the 2-process run find them.
    two = tmp_path / "two"
    launcher = Path(sys.executable).parent / "deepspeed"
    port = str(29500 + os.getpid() % 1000)
    cmd = [str(launcher), "--num_gpus", "2", "--master_port", port, str(REPO / "train.py"), "--config", str(TINY),
           "--run-dir", str(two), *common, f"data.cache_dir={cache_dir}"]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, (res.stdout[-2000:], res.stderr[-3000:])
    assert "2 rank(s), fp32, ZeRO-0, 256 tokens/step (8 sequences: 2 micro-step(s) of 2 per rank)" in res.stdout
    a, b = losses(one), losses(two)
    assert sorted(a) == sorted(b) == list(range(1, 7))
    for s in a:
        assert abs(a[s] - b[s]) < 1e-5, (s, a[s], b[s])
    val = [{m["step"]: m["val/loss"] for m in read_metrics(r / "metrics.jsonl") if "val/loss" in m} for r in (one, two)]
    assert sorted(val[0]) == sorted(val[1]) == [3, 6]
    assert all(abs(val[0][s] - val[1][s]) < 1e-5 for s in (3, 6)), val
    tokens = [{m["step"]: m["train/tokens"] for m in read_metrics(r / "metrics.jsonl") if "train/tokens" in m}
              for r in (one, two)]
    assert tokens[0] == tokens[1] == {s: 256 * s for s in range(1, 7)}


def test_bad_input_exits_with_one_line(tmp_path, cache_dir):
    res = run(train_cmd(tmp_path / "r", "train.max_stpes=3"), cache_dir)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1] == \
        "error: unknown config key 'train.max_stpes' (did you mean 'train.max_steps'?)"
    assert not (tmp_path / "r").exists()
    res = run(train_cmd(tmp_path / "r2", "data.train_files=[nowhere.txt]"), cache_dir)
    assert res.returncode == 2 and "nowhere.txt not found" in res.stderr.strip().splitlines()[-1]


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path, cache_dir):
    run_dir = tmp_path / "nan"
    res = run(train_cmd(run_dir, "optim.lr=1e30", "optim.grad_clip=0", "checkpoint.every=1", "train.max_steps=10",
                        "eval.val_loss.enabled=false"), cache_dir)
    assert res.returncode == 1, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: non-finite loss at step"), last
    bad_step = int(last.split("at step ")[1].split(":")[0])
    good = [m["step"] for m in read_metrics(run_dir / "metrics.jsonl")]
    assert good == list(range(1, bad_step))  # every finite step logged, the bad one not
    assert (run_dir / "checkpoints" / "latest").read_text() == f"step_{bad_step - 1:08d}"


def test_zero3_bf16_trains_and_exports(tmp_path, cache_dir):
    """ZeRO-3 partitions parameters: the capture hooks, the evaluators and the zero_to_fp32 export must still work."""
    run_dir = tmp_path / "z3"
    res = run(train_cmd(run_dir, "train.zero_stage=3", "train.precision=bf16", "train.max_steps=6",
                        "eval.val_loss.every=3"), cache_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert any("val/loss" in r for r in rows) and rows[-1]["step"] == 6
    assert all(r["train/reg"] > 0 for r in rows if "train/reg" in r)
    assert list((run_dir / "checkpoints" / "step_00000006").glob("*zero_pp_rank_0_*optim_states.pt"))

    from transformers import AutoModelForCausalLM

    from model.export import load_model

    exported = AutoModelForCausalLM.from_pretrained(run_dir / "export")
    from_ckpt, _ = load_model(run_dir)
    for (name, a), b in zip(exported.state_dict().items(), from_ckpt.state_dict().values()):
        assert torch.equal(a, b), name
