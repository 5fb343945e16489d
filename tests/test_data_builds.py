"""Token caches under concurrency and mixtures through training: three processes started together on one empty
cache build it once and read the same tokens; a run on a weighted mixture resumes bit for bit."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from core.io import read_jsonl as read_metrics
from core.rundir import RunDir
from linreg.config import load_config
from linreg.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "tiny.yaml"
MIX = "{tinystories/train.txt: 0.7, tinystories/valid.txt: 0.3}"

BUILDER = """
import hashlib, sys, time
from pathlib import Path
import numpy as np
from data.cache import tokenized_split
from data.config import DataConfig
from data.tokenizer import load_tokenizer

tok_dir, cache, tmp, me = sys.argv[1:]
tok = load_tokenizer(tok_dir)
cfg = DataConfig(train_files={f"{DATA}/tinystories/train.txt": 0.7,
                 f"{DATA}/tinystories/valid.txt": 0.3}, max_docs=400, num_proc=2, cache_dir=cache)
Path(tmp, "ready-" + me).touch()
while not Path(tmp, "go").exists():
    time.sleep(0.005)
tokens = tokenized_split(cfg, "train", tok, progress=True)
print("sha256", hashlib.sha256(np.asarray(tokens).tobytes()).hexdigest(), flush=True)
"""


def test_three_builders_on_one_empty_cache(tiny_tokenizer, shared_data, tmp_path):
    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    code = BUILDER.replace("{DATA}", str(shared_data))
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "tok"), str(tmp_path / "cache"),
                               str(tmp_path), str(i)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env) for i in range(3)]
    deadline = time.time() + 120
    while len(list(tmp_path.glob("ready-*"))) < 3 and time.time() < deadline:
        assert all(p.poll() is None for p in procs), [p.communicate()[1][-2000:] for p in procs]
        time.sleep(0.01)
    (tmp_path / "go").touch()  # all three start building at once
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    stdout = "".join(out for out, _ in outs)
    assert len({line for line in stdout.splitlines() if line.startswith("sha256")}) == 1  # identical tokens
    assert stdout.count("sha256") == 3
    assert stdout.count("building the token cache of train.txt") == 1  # each cache built once
    assert stdout.count("building the token cache of valid.txt") == 1
    assert stdout.count("train: mixture:") == 1
    leftovers = [p.name for p in (tmp_path / "cache").rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers


def _cfg(cache_dir, *overrides):
    return load_config(TINY, [f"data.cache_dir={cache_dir}", "eval.linearity.enabled=false",
                              "checkpoint.export_at_end=false", "data.dataset=null", f"data.train_files={MIX}",
                              "data.valid_files=[]", "data.valid_fraction=0.1", "train.max_steps=8",
                              "checkpoint.every=4", "eval.val_loss.every=4", "logging.every=1", *overrides])


def test_mixture_run_resumes_bit_exact(tmp_path):
    cache = tmp_path / "cache"
    full = RunDir(tmp_path / "full")
    assert Trainer(_cfg(cache), full).fit() == 0
    part = RunDir(tmp_path / "part")
    assert Trainer(_cfg(cache), part, resume=str(full.checkpoint(4))).fit() == 0
    for key in ("train/loss", "val/loss"):
        a = {r["step"]: r[key] for r in read_metrics(full.metrics) if key in r}
        b = {r["step"]: r[key] for r in read_metrics(part.metrics) if key in r}
        assert [a[s] for s in range(5, 9) if s in a] == [b[s] for s in range(5, 9) if s in a]
        assert 8 in a and 8 in b
    assert len(list((cache / "splits").glob("*/meta.json"))) == 2  # the mixed train and the mixed held-out split
