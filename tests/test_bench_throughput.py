"""bench/train_throughput.py's pieces that need no subprocess: the plain-HF loop and the report arithmetic
(the whole script runs in tests/test_compile.py)."""
import torch

from bench.hf_baseline import PlainHFLoop
from bench.train_throughput import PRESETS, add_ratios, load_cfg, parse_args, render
from data.stream import PackedSamples, TrainStream


def test_plain_hf_loop_trains(tiny_tokenizer):
    import numpy as np

    args = parse_args(["--config", "tests/tiny.yaml", "--out", "unused"])
    assert load_cfg(args, []).model.vocab_size == 384  # pinned to tokenizer.vocab_size: the preset's shape
    cfg = load_cfg(args, ["train.global_batch_size=8", f"model.vocab_size={len(tiny_tokenizer)}"])  # 4 × 2
    tokens = np.random.default_rng(0).integers(0, len(tiny_tokenizer), 4000).astype(np.uint16)
    stream = TrainStream(PackedSamples(tokens, cfg.data.seq_len), cfg.train.micro_batch_size, 0, 1, 0)
    for naive in ("none", "cosine", "mse"):
        loop = PlainHFLoop(cfg, tiny_tokenizer, stream, torch.device("cpu"), compile=False, naive=naive)
        assert (loop.pair_loss is None) == (naive == "none")  # a named regularizer is never silently dropped
        before = [p.detach().clone() for p in loop.model.parameters()]
        loop.step()
        assert stream.cursor % (2 * cfg.train.micro_batch_size) == 0  # grad_accum micro-batches per step
        assert all(not torch.equal(a, p) for a, p in zip(before, loop.model.parameters()) if p.dim() >= 2)


def test_ratios_and_table():
    def row(setup, variant, step_s, compile=False, **kw):
        return {"run": 0, "setup": setup, "variant": variant, "zero": 1 if setup == "project" else None,
                "ckpt": False, "compile": compile, "step_s": step_s, "tokens_per_s": 1000 / step_s,
                "tokens_per_s_range": [900 / step_s, 1100 / step_s], "mfu": None, "peak_mem_gb": 1.0,
                "host_syncs_per_step": None, **kw}

    rows = [row("project", "none", 1.0), row("project", "cosine", 1.02), row("project", "cosine", 0.5, compile=True),
            row("plain HF", "none", 2.0), row("plain HF", "naive cosine", 2.5),
            {"run": 0, "setup": "project", "variant": "mse", "zero": 3, "ckpt": True, "compile": False,
             "error": "OutOfMemoryError: CUDA out of memory"}]
    add_ratios(rows)
    assert abs(rows[1]["reg_cost"] - 0.02) < 1e-9 and rows[2]["reg_cost"] is None  # no compiled `none` row
    assert rows[0]["vs_plain"] == 2.0 and rows[4]["reg_cost"] == 0.25
    meta = {"date": "2026-11-22", "device": "CPU (2 cores)", "versions": "torch x", "command": "python bench/...",
            "data": "synthetic", "shape": "tiny", "timing": "3 windows"}
    table = render([meta], rows)
    assert "| 0 | project | cosine | 1 | off | off | 980 |" in table and "+2.0%" in table
    assert "failed: OutOfMemoryError" in table and "150m" in PRESETS
