"""``train.compile=true`` (model.compile() in place before deepspeed.initialize) with the residual-stream hooks
and ``regularizer.compile=true`` (the fused cosine under inductor) trains like eager: same losses to fp32
tolerance, through Trainer.train_step as bench/train_throughput.py drives it (one subprocess, which
is also that script's smoke test). The slowest test here: inductor's C++ compilation of the tiny model."""
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_compiled_step_matches_eager(tmp_path):
    out = tmp_path / "bench"
    cmd = [sys.executable, str(REPO / "bench" / "train_throughput.py"), "--config", "tests/tiny.yaml",
           "--variants", "cosine", "--compile", "off,on", "--warmup", "2", "--steps", "1", "--repeats", "1",
           "--max-docs", "300", "--baselines", "none", "--out", str(out)]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=os.environ.copy())
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    eager, compiled = json.loads((out / "results.json").read_text())["rows"]
    assert (eager["compile"], compiled["compile"]) == (False, True)
    assert eager["loss"]["reg"] > 0  # the hooks captured the states in both
    for k in ("task_loss", "reg"):
        want, got = eager["loss"][k], compiled["loss"][k]
        assert abs(got - want) <= 1e-5 * max(1.0, abs(want)), (k, eager, compiled)
    table = (out / "results.md").read_text()
    assert "| project | cosine | 1 | off | on |" in table
