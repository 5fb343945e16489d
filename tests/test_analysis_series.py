"""Linearity across checkpoints: a tiny linreg run's checkpoints profiled post hoc, in step order, cached, and
each profile equal to an independent float64 least-squares computation on the checkpoint's hidden states."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from analysis import series as SR
from core.errors import ConfigError
from core.rundir import RunDir

TINY = Path(__file__).resolve().parent / "tiny.yaml"
PROBE = ["--num-chunks", "12", "--chunk-chars", "400"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny linreg run with checkpoints at steps 4, 8, 12 and the in-loop linearity evaluator off."""
    from linreg.config import load_config
    from linreg.trainer import Trainer

    root = tmp_path_factory.mktemp("series_run")
    cfg = load_config(TINY, [f"data.cache_dir={root / 'cache'}", "eval.linearity.enabled=false",
                             "eval.val_loss.enabled=false", "checkpoint.export_at_end=false", "train.max_steps=12",
                             "checkpoint.every=4", "checkpoint.keep_last=10", "logging.tensorboard=false"])
    run = RunDir(root / "run")
    assert Trainer(cfg, run).fit() == 0
    assert not run.linearity.exists()
    return run


def ls_wo_res_numpy(x: np.ndarray, y: np.ndarray) -> float:
    """LS(X, Y - X) by numpy's float64 lstsq on the centred, Frobenius-normalised matrices (the definition)."""
    x, z = x - x.mean(0), (y - x) - (y - x).mean(0)
    x, z = x / np.linalg.norm(x), z / np.linalg.norm(z)
    a = np.linalg.lstsq(x, z, rcond=None)[0]
    return 1 - float(np.linalg.norm(x @ a - z) ** 2)


def check_series_figures(saved: dict, csv_rows: list[str], out: Path) -> None:
    """series.png: per quantity, one line of the mean over blocks against the step (log axis); series_heatmap.png:
    block x checkpoint with labelled colourbars; values recomputed from the CSV's per-block rows."""
    from figures import colorbar_labels, has_raw_tex, legend, lines

    from eval.linearity.plots import TITLES

    table = [r.split(",") for r in csv_rows]
    steps = sorted({int(r[2]) for r in table})
    col = {"linearity": 4, "linearity_wo_res": 5}
    for name in ("series.png", "series_heatmap.png"):
        assert (out / name).is_file() and not has_raw_tex(saved[name])
    for ax, key in zip(saved["series.png"].axes, col):
        assert (ax.get_xlabel(), ax.get_ylabel()) == ("training step", "score (mean over blocks)")
        assert ax.get_xscale() == "log"
        assert ax.get_title() == f"{TITLES[key]}, mean over blocks" and legend(ax) == ["tiny"]
        x, y = lines(ax)["tiny"]
        assert list(x) == steps
        assert y == pytest.approx([np.mean([float(r[col[key]]) for r in table if int(r[2]) == s]) for s in steps])
    heat = saved["series_heatmap.png"]
    assert colorbar_labels(heat) == [TITLES["linearity"], TITLES["linearity_wo_res"]]
    for ax, key in zip(heat.axes[:2] if heat.axes[1].get_label() != "<colorbar>" else heat.axes[::2], col):
        assert (ax.get_xlabel(), ax.get_ylabel()) == ("checkpoint (step)", "block")
        assert [t.get_text() for t in ax.get_xticklabels()] == [str(s) for s in steps]
        [mesh] = ax.collections
        grid = [[float(r[col[key]]) for s in steps for r in table if int(r[2]) == s and int(r[3]) == b]
                for b in range(2)]
        assert np.asarray(mesh.get_array()).reshape(2, len(steps)) == pytest.approx(np.array(grid))


def test_run_checkpoints_in_step_order_cached_and_exact(tiny_run, tinystories_valid, tmp_path, monkeypatch,
                                                        saved_figures):
    import torch

    from eval.linearity.probe import ProbeSetConfig, build_probe, read_probe_text
    from model.export import load_model

    out = tmp_path / "out"
    # the in-sample scores alone (test_linearity_heldout.py runs the series with held-out statistics, the default)
    argv = ["--run", str(tiny_run.path), "--label", "tiny", "--text", str(tinystories_valid), *PROBE, "--out", str(out),
            "--no-heldout"]
    calls = []
    real = SR.profile_model
    monkeypatch.setattr(SR, "profile_model", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert SR.main(argv) == 0
    assert len(calls) == 3
    rows = (out / "series.csv").read_text().splitlines()
    assert rows[0] == "model,checkpoint,step,block,linearity,linearity_wo_res,norm_ratio,solver"
    assert [(r.split(",")[2], r.split(",")[3]) for r in rows[1:]] == [
        (s, b) for s in ("4", "8", "12") for b in ("0", "1")]
    res = json.loads((out / "series.json").read_text())["series"]["tiny"]
    assert [r["step"] for r in res] == [4, 8, 12] and [r["checkpoint"] for r in res] == [
        "step_00000004", "step_00000008", "step_00000012"]
    assert len({r["means"]["linearity_wo_res"] for r in res}) == 3  # the checkpoints differ
    check_series_figures(saved_figures, rows[1:], out)
    from analysis.redraw import main as redraw

    saved_figures.clear()
    assert redraw([str(out)]) == 0  # the same figures again, from series.csv alone
    check_series_figures(saved_figures, rows[1:], out)

    # Block 0 of the step-8 checkpoint against numpy on HF's hidden states (h_0, h_1 are pre-norm there).
    model, tok = load_model(tiny_run.checkpoint(8))
    probe = build_probe(read_probe_text(tinystories_valid), tok, ProbeSetConfig(12, 400, 0),
                        max_len=model.config.max_position_embeddings)
    hs = []
    with torch.no_grad():
        for ids in probe:
            out_h = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
            hs.append([h[0].double().numpy() for h in out_h[:2]])
    h0, h1 = (np.concatenate([h[i] for h in hs]) for i in (0, 1))
    assert res[1]["linearity_wo_res"][0] == pytest.approx(ls_wo_res_numpy(h0, h1), abs=1e-9)
    assert res[1]["num_tokens"] == h0.shape[0]

    # Rerun: nothing is profiled again; a series that shares checkpoints profiles only the new ones.
    calls.clear()
    assert SR.main(argv) == 0
    assert calls == []
    ckpts = [str(p) for p in tiny_run.checkpoint_dirs()]
    assert SR.main(["--paths", f"{ckpts[2]},{ckpts[0]}", "--label", "two", "--text", str(tinystories_valid), *PROBE,
                    "--out", str(out), "--no-heldout"]) == 0
    assert calls == []  # same checkpoints, same probe: cached under any label
    assert SR.main(["--run", str(tiny_run.path), "--text", str(tinystories_valid), *PROBE, "--probe-seed", "1",
                    "--out", str(out), "--no-heldout"]) == 0
    assert len(calls) == 3  # another probe is another measurement


def test_revisions_and_names():
    revs = SR.revision_series("EleutherAI/pythia-70m", ["step2000", "step128", "step143000"])
    assert [(c.name, c.step, c.revision) for c in revs] == [
        ("step128", 128, "step128"), ("step2000", 2000, "step2000"), ("step143000", 143000, "step143000")]
    assert SR.step_from_name("runs/x/checkpoints/step_00000400") == 400
    assert SR.step_from_name("global_step3000") == 3000
    with pytest.raises(ConfigError, match="cannot read a training step from 'main'"):
        SR.step_from_name("main")


def test_bad_series_arguments(tmp_path, capsys):
    for argv, message in ((["--run", str(tmp_path)], "no checkpoints"),
                          (["--model", "EleutherAI/pythia-70m"], "1 --model with 0 --revisions")):
        assert SR.main([*argv, "--out", str(tmp_path / "o")]) == 2
        assert message in capsys.readouterr().err.strip().splitlines()[-1]
