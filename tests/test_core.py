"""Foundation helpers every package shares: model labels and the atomic file writers."""
import csv
import json

import pytest

from core.errors import ConfigError
from core.io import write_atomic, write_csv, write_json
from core.rundir import model_label, model_labels


def test_model_labels(tmp_path):
    for d in ("a/export", "b/export", "run/checkpoints/step_00000400", "solo"):
        (tmp_path / d).mkdir(parents=True)
    paths = [str(tmp_path / d) for d in ("a/export", "b/export", "run/checkpoints/step_00000400", "solo")]
    assert model_labels([*paths, "org/hub-model"]) == ["a/export", "b/export", "run/step_00000400", "solo",
                                                        "org/hub-model"]
    assert model_label(paths[2]) == "run/step_00000400" and model_label("org/hub-model") == "org/hub-model"
    assert model_labels(paths[:2], ["x", "y"]) == ["x", "y"]
    with pytest.raises(ConfigError, match="1 --label for 2 --model"):
        model_labels(paths[:2], ["x"])


def test_atomic_writers(tmp_path):
    write_atomic(tmp_path / "events.bin", b"\x00\x01", tmp_name="trimming.tmp")
    assert (tmp_path / "events.bin").read_bytes() == b"\x00\x01"
    write_json(tmp_path / "sub" / "r.json", {"path": tmp_path, "x": [1.5, None]})
    assert json.loads((tmp_path / "sub" / "r.json").read_text()) == {"path": str(tmp_path), "x": [1.5, None]}
    write_csv(tmp_path / "t.csv", ["model", "note"], [["m", 'has "quotes", and a comma'], ["n", 2]])
    with (tmp_path / "t.csv").open(newline="") as f:
        assert list(csv.reader(f)) == [["model", "note"], ["m", 'has "quotes", and a comma'], ["n", "2"]]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["events.bin", "r.json", "sub", "t.csv"]  # no temp files
