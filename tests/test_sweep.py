"""Sweeps end to end on CPU (tiny configs, offline): run, interrupt, resume, benchmark, compare, plot, refuse.

One module-scoped sweep (2 variants x 2 seeds of tests/tiny.yaml, CB and COPA on their full validation splits) is
run by the real runner in a subprocess, interrupted with SIGTERM while its second run trains, inspected in that
state, and finished by running the same command again. The comparison tests recompute their numbers from the
run files with numpy/scipy.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from references import enumerated_permutation_p
from scipy import stats as st

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "tiny.yaml"
STEPS = 40
HAVE_WANDB = importlib.util.find_spec("wandb") is not None


def sweep_cmd(sweep_file, runs_root, *extra):
    return [sys.executable, "-m", "sweep", str(sweep_file), "--runs-root", str(runs_root), *extra]


def write_sweep(path: Path, cache: Path, **extra) -> Path:
    spec = {
        "name": "abl", "base": str(TINY), "seeds": [1, 2], "baseline": "none",
        "overrides": {"train.max_steps": STEPS, "checkpoint.every": 10, "eval.val_loss.every": 10,
                      "eval.linearity.every": 10, "data.cache_dir": str(cache)},
        "variants": {"none": {"regularizer.name": "none"},
                     "cos05": {"regularizer.name": "cosine", "regularizer.weight": 0.5}},
        "benchmarks": {"tasks": ["cb", "copa"]},
        **extra,
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    wandb_dir = tmp_path_factory.mktemp("wandb")
    return {**os.environ, "WANDB_DIR": str(wandb_dir), "WANDB_SILENT": "true"}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, env):
    """The sweep, run until its second run is interrupted (state "interrupted"), then to the end."""
    tmp = tmp_path_factory.mktemp("sweep")
    extra = {"wandb": {"project": "linreg-test", "mode": "offline"}} if HAVE_WANDB else {}
    sweep_file = write_sweep(tmp / "abl.yaml", tmp / "cache", **extra)
    root = tmp / "runs"
    runs = {f"{v}/seed{s}": root / "abl" / v / f"seed{s}" for v in ("none", "cos05") for s in (1, 2)}

    proc = subprocess.Popen(sweep_cmd(sweep_file, root), cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    second = runs["none/seed2"] / "metrics.jsonl"
    deadline = time.time() + 900
    while time.time() < deadline:
        if second.is_file() and sum(1 for line in second.read_text().splitlines() if '"train/loss"' in line) >= 5:
            break
        assert proc.poll() is None, proc.communicate()[0][-4000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    first_out, _ = proc.communicate(timeout=600)
    interrupted = {"code": proc.returncode, "out": first_out}

    # The interrupted state, for the tests that look at it: copied, since the sweep goes on below.
    snapshot = tmp / "snapshot"
    shutil.copytree(root, snapshot)
    res = subprocess.run(sweep_cmd(sweep_file, root), cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=1800)
    return {"file": sweep_file, "root": root, "runs": runs, "interrupted": interrupted, "snapshot": snapshot,
            "resumed": res, "tmp": tmp}


def test_interrupted_sweep_stops_and_says_how_to_continue(sweep):
    it = sweep["interrupted"]
    assert it["code"] == 128 + signal.SIGTERM, it["out"][-3000:]
    assert "stopped by SIGTERM" in it["out"] and "run the same command to continue" in it["out"]
    snap = sweep["snapshot"] / "abl"
    first, second = snap / "none" / "seed1", snap / "none" / "seed2"
    assert (first / "checkpoints" / "latest").read_text() == f"step_{STEPS:08d}"
    assert (first / "benchmarks" / "final" / "samples_cb.jsonl").is_file()
    stopped = int((second / "checkpoints" / "latest").read_text().split("_")[1])
    assert 5 <= stopped < STEPS
    assert not (snap / "cos05").exists()


def test_restart_skips_finished_and_resumes_unfinished(sweep):
    res = sweep["resumed"]
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-3000:])
    out = res.stdout
    assert "[1/4] none/seed1: finished, benchmarked: skipped" in out
    assert "[2/4] none/seed2: at step" in out and f"of {STEPS}: resuming" in out
    assert "resumed from" in out and "[3/4] cos05/seed1: new: training" in out
    assert "sweep abl: 1 skipped, 1 resumed, 2 trained" in out
    for run in sweep["runs"].values():
        assert (run / "checkpoints" / "latest").read_text() == f"step_{STEPS:08d}"
        assert (run / "benchmarks" / "final" / "results.json").is_file()
        steps = [r["step"] for r in read_jsonl(run / "metrics.jsonl") if "train/loss" in r]
        assert steps == list(range(1, STEPS + 1))  # the resumed run neither repeats nor skips a step
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        assert cfg["train"]["seed"] == int(run.name[4:]) and cfg["name"] == f"abl/{run.parent.name}/{run.name}"
    assert yaml.safe_load((sweep["runs"]["cos05/seed1"] / "config.yaml").read_text())["regularizer"]["name"] == "cosine"
    # Nothing left: --print-commands prints nothing, and a third start skips everything.
    again = subprocess.run(sweep_cmd(sweep["file"], sweep["root"], "--print-commands"), cwd=REPO,
                           capture_output=True, text=True)
    assert again.returncode == 0 and again.stdout == ""


def test_print_commands_lists_complete_lines_for_pending_runs(sweep):
    res = subprocess.run(sweep_cmd(sweep["file"], sweep["snapshot"], "--print-commands"), cwd=REPO,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 3  # none/seed1 is done; seed2 resumes; cos05 has not started
    for line, label in zip(lines, ["none/seed2", "cos05/seed1", "cos05/seed2"]):
        train, bench = [shlex.split(part) for part in line.split(" && ")]
        run_dir = str(sweep["snapshot"] / "abl" / label)
        assert train[:2] == [sys.executable, str(REPO / "train.py")]
        assert train[train.index("--run-dir") + 1] == run_dir and "--resume" in train and "auto" in train
        assert f"train.seed={label[-1]}" in train
        assert bench[1:3] == ["-m", "eval"] and "--log-samples" in bench
        assert bench[bench.index("--out") + 1] == run_dir + "/benchmarks/final"


@pytest.mark.skipif(not HAVE_WANDB, reason="wandb is not installed")
def test_wandb_offline_runs_are_grouped_by_sweep_and_variant(sweep, env):
    run = sweep["runs"]["cos05/seed2"]
    cfg = yaml.safe_load((run / "config.yaml").read_text())["logging"]["wandb"]
    assert cfg == {"project": "linreg-test", "entity": None, "group": "abl", "job_type": "cos05",
                   "name": "abl/cos05/seed2", "mode": "offline"}
    files = list(Path(env["WANDB_DIR"]).glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) >= 4
    from core.rundir import RunDir
    from linreg.metrics import wandb_run_id

    mine = [f for f in files if f.name == f"run-{wandb_run_id(RunDir(run))}.wandb"]
    assert mine, files
    data = b"".join(f.read_bytes() for f in mine)
    keys = {k for row in read_jsonl(run / "metrics.jsonl") for k in row if k != "step"}
    missing = [k for k in keys if k.encode() not in data]
    assert not missing, missing  # every metrics.jsonl key (= TensorBoard tag) went to W&B under the same name
    assert b"linreg-test" in data and b"cos05" in data


def test_wandb_enabled_but_not_installed_is_a_config_error(tmp_path, monkeypatch):
    import importlib.util as iu

    from core.errors import ConfigError
    from core.rundir import RunDir
    from linreg.config import load_config
    from linreg.metrics import start_wandb

    real = iu.find_spec
    monkeypatch.setattr(iu, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"^logging.wandb is set but the wandb package is not installed: pip "
                                          r"install wandb$"):
        load_config(TINY, ["logging.wandb.mode=offline"])
    load_config(TINY, ["logging.wandb.mode=disabled"])  # disabled: no package needed
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb now raises ImportError
    with pytest.raises(ConfigError, match="pip install wandb"):
        start_wandb(RunDir(tmp_path), {"mode": "offline"})


# -- compare ----------------------------------------------------------------------------------------------------------

def _compare(*args):
    from sweep.compare import main

    return main([str(a) for a in args])


def _t_summary(values):
    x = np.asarray(values, dtype=float)
    half = st.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size)
    return x.mean(), x.std(ddof=1), (x.mean() - half, x.mean() + half)


@pytest.fixture(scope="module")
def compared(sweep, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    assert _compare(sweep["root"] / "abl", "--out", out, "--n-boot", "2000") == 0
    return out, json.loads((out / "compare.json").read_text())


def test_compare_reproduces_means_spreads_and_differences(sweep, compared):
    _, result = compared
    assert result["baseline"] == "none" and [v["label"] for v in result["variants"]] == ["none", "cos05"]
    assert result["variants"][1]["differs_from_baseline"] == {"regularizer.name": "cosine"}
    runs = sweep["runs"]

    def bench(label, task, metric):
        return [json.loads((runs[f"{label}/seed{s}"] / "benchmarks/final/results.json").read_text())[task][metric]
                for s in (1, 2)]

    def last(label, key):
        return [[r[key] for r in read_jsonl(runs[f"{label}/seed{s}"] / "metrics.jsonl") if key in r][-1]
                for s in (1, 2)]

    def lin(label, key):
        return [read_jsonl(runs[f"{label}/seed{s}"] / "linearity.jsonl")[-1]["means"][key] for s in (1, 2)]

    expected = {}
    for label in ("none", "cos05"):
        expected[label] = {"cb-acc": bench(label, "cb", "acc"), "cb-f1": bench(label, "cb", "f1"),
                           "copa": bench(label, "copa", "acc"), "val-loss": last(label, "val/loss"),
                           "linearity": lin(label, "linearity"), "linearity-wo-res": lin(label, "linearity_wo_res")}
        for col, values in expected[label].items():
            cell = result["cells"][label][col]
            mean, std, ci = _t_summary(values)
            assert cell["n"] == 2 and cell["values"] == pytest.approx(values)
            assert (cell["mean"], cell["std"]) == pytest.approx((mean, std)) and cell["ci95"] == pytest.approx(ci)
        assert result["cells"][label]["boolq"]["n"] == 0  # not benchmarked: no cell, no test
    diff = result["differences"]["cos05"]
    for col in expected["none"]:
        recipe = diff[col]["recipe"]
        assert recipe["delta"] == pytest.approx(np.mean(expected["cos05"][col]) - np.mean(expected["none"][col]))
        a, b = expected["cos05"][col], expected["none"][col]
        ref = st.ttest_ind(a, b, equal_var=True)
        if np.isfinite(ref.statistic):  # seeds with spread: Student's t over the seed values
            assert recipe["test"] == "t" and recipe["ci95"] == pytest.approx(tuple(ref.confidence_interval(0.95)))
            ref_p = ref.pvalue
        elif np.ptp(a + b) == 0:  # every seed of both variants scored the same
            ref_p = 1.0
        else:  # no spread within either variant: the exact permutation test over the seed labels
            ref_p = enumerated_permutation_p(a, b)
        assert recipe["p"] == pytest.approx(ref_p) and recipe["significant"] == (ref_p < 0.05)
    for col in ("val-loss", "linearity", "linearity-wo-res"):
        assert diff[col]["model"] is None  # no per-document samples: the recipe question only
    # the model question, against scipy's paired bootstrap of the per-document differences of the seed means
    for col, task in (("cb-acc", "cb"), ("copa", "copa")):
        per_doc = {label: np.mean([[s["acc"] for s in read_jsonl(runs[f"{label}/seed{k}"] /
                                                                  f"benchmarks/final/samples_{task}.jsonl")]
                                   for k in (1, 2)], axis=0) for label in ("none", "cos05")}
        d_doc = per_doc["cos05"] - per_doc["none"]
        model = diff[col]["model"]
        assert model["test"] == "bootstrap (documents)" and model["delta"] == pytest.approx(d_doc.mean())
        if np.ptp(d_doc) > 0:
            ref = st.bootstrap((d_doc,), np.mean, n_resamples=20000, method="percentile", random_state=0)
            width = ref.confidence_interval.high - ref.confidence_interval.low
            assert model["ci95"] == pytest.approx((ref.confidence_interval.low, ref.confidence_interval.high),
                                                  abs=0.1 * width)
            # the shifted-bootstrap p on scipy's replicates (Monte Carlo error of ours at 2,000: about 0.011)
            shifted = np.abs(ref.bootstrap_distribution - d_doc.mean()) >= abs(d_doc.mean()) - 1e-12
            assert model["p"] == pytest.approx((1 + shifted.sum()) / (shifted.size + 1), abs=0.04)
    assert diff["boolq"] is None
    plan = result["planning"]["val-loss"]
    values = [expected[label]["val-loss"] for label in ("none", "cos05")]
    pooled = np.sqrt(sum(np.var(v, ddof=1) for v in values) / 2)  # two variants of two seeds: the mean variance
    assert plan["seed_sd"] == pytest.approx(pooled) and plan["df"] == 2 and plan["seeds"] == [2, 2]
    assert plan["detectable"] > st.t.ppf(0.975, 2) * pooled  # below the 2-df critical t, 80 % power is impossible


def test_compare_markdown_marks_only_significant_differences(compared):
    out, result = compared
    md = (out / "compare.md").read_text()
    assert "| variant | n | boolq | cb-acc | cb-f1 | copa |" in md and "tinystories-bpb" in md
    bold = [d["recipe"] for d in result["differences"]["cos05"].values() if d and d["recipe"]["significant"]]
    for col in ("cb-acc", "cb-f1", "copa"):
        d = result["differences"]["cos05"][col]["recipe"]
        assert (f"**{100 * d['delta']:+.1f}" in md) == (d["p"] < 0.05)
    cells = [c.strip() for line in md.splitlines() if line.startswith("| ") for c in line.strip("|").split(" | ")]
    assert sum(c.startswith("**") for c in cells) == len(bold)  # in the tables, bold is the recipe question only
    assert "No distribution-free test can reach p < 0.05 with 2 + 2 seeds (smallest p = 0.33)" in md


def test_compare_plots_draw_each_variants_seed_mean(sweep, tmp_path, saved_figures):
    """The figures as drawn: labels, one legend entry and one line per variant, and each line is the mean over the
    seeds of what the runs logged (read here from their jsonl files)."""
    from figures import has_raw_tex, legend, lines

    from sweep.compare import group_runs
    from sweep.plots import write_plots
    from sweep.runs import find_runs

    runs = sweep["runs"]
    names = write_plots(group_runs(find_runs([sweep["root"] / "abl"]).runs, ["none", "cos05"]), tmp_path)
    assert sorted(names) == sorted(saved_figures) == ["linearity_per_layer.png", "linearity_wo_res_vs_step.png",
                                                       "loss_curves.png", "norm_ratio_per_layer.png"]
    assert all((tmp_path / n).stat().st_size > 10_000 and not has_raw_tex(saved_figures[n]) for n in names)

    def seed_mean(label, key):
        curves = [{r["step"]: r[key] for r in read_jsonl(runs[f"{label}/seed{s}"] / "metrics.jsonl") if key in r}
                  for s in (1, 2)]
        steps = sorted(set(curves[0]) & set(curves[1]))
        return steps, [np.mean([c[s] for c in curves]) for s in steps]

    axes = saved_figures["loss_curves.png"].axes
    assert [ax.get_title() for ax in axes] == ["validation loss", "training loss (task loss + λ·regularizer)",
                                               "training task loss (cross-entropy)"]
    for ax, key in zip(axes, ("val/loss", "train/loss", "train/task_loss")):
        assert (ax.get_xlabel(), ax.get_ylabel()) == ("step", "loss (nats per token)")
        assert legend(ax) == ["none (n=2)", "cos05 (n=2)"]
        drawn = lines(ax)
        assert list(drawn) == legend(ax)
        for label in ("none", "cos05"):
            steps, ys = seed_mean(label, key)
            x, y = drawn[f"{label} (n=2)"]
            assert x == pytest.approx(steps) and y == pytest.approx(ys)
        assert_distinct_styles(ax)

    [ax] = saved_figures["linearity_wo_res_vs_step.png"].axes
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("step", "mean linearity score w/o residual")
    assert legend(ax) == list(lines(ax)) == ["none (n=2)", "cos05 (n=2)"]
    for label in ("none", "cos05"):
        profiles = [read_jsonl(runs[f"{label}/seed{s}"] / "linearity.jsonl") for s in (1, 2)]
        x, y = lines(ax)[f"{label} (n=2)"]
        assert x == pytest.approx([rec["step"] for rec in profiles[0]])
        assert y == pytest.approx(np.mean([[rec["means"]["linearity_wo_res"] for rec in p] for p in profiles], axis=0))
    assert_distinct_styles(ax)
    for name, key, ylabel in (("linearity_per_layer.png", "linearity_wo_res", "linearity score w/o residual"),
                              ("norm_ratio_per_layer.png", "norm_ratio",
                               r"$\|h_{i+1} - h_i\| \,/\, \|h_{i+1}\|$")):
        [ax] = saved_figures[name].axes
        assert (ax.get_xlabel(), ax.get_ylabel()) == (r"block $i$ (pair $h_i \to h_{i+1}$)", ylabel)
        drawn = lines(ax)
        assert legend(ax) == list(drawn) and len(drawn) == 2
        for label in ("none", "cos05"):
            finals = [read_jsonl(runs[f"{label}/seed{s}"] / "linearity.jsonl")[-1] for s in (1, 2)]
            [(x, y)] = [v for k, v in drawn.items() if k == f"{label} (n=2), step {finals[0]['step']}"]
            assert x == pytest.approx(range(len(finals[0][key])))
            assert y == pytest.approx(np.mean([f[key] for f in finals], axis=0))
        assert_distinct_styles(ax)


def assert_distinct_styles(ax):
    """Equal curves stay visible: no two variants share a line style and marker."""
    styles = [(ln.get_linestyle(), ln.get_marker()) for ln in ax.get_lines()]
    assert len(set(styles)) == len(styles)


def test_compare_runs_in_progress_and_single_seeds(sweep, tmp_path):
    snap = sweep["snapshot"] / "abl"
    assert _compare(snap, "--out", tmp_path / "partial", "--n-boot", "200", "--no-plots") == 0
    partial = json.loads((tmp_path / "partial" / "compare.json").read_text())
    [none] = partial["variants"]
    assert [r["incomplete"] for r in none["runs"]][0] == []
    assert none["runs"][1]["incomplete"][0].startswith("trained to step") and "no final benchmarks" in \
        none["runs"][1]["incomplete"]
    assert partial["cells"]["none"]["cb-acc"]["n"] == 1 and partial["cells"]["none"]["cb-acc"]["std"] is None
    assert "incomplete: seed 2: trained to step" in (tmp_path / "partial" / "compare.md").read_text()

    runs = sweep["runs"]
    assert _compare(runs["none/seed1"], runs["cos05/seed1"], "--out", tmp_path / "single", "--n-boot", "500") == 0
    single = json.loads((tmp_path / "single" / "compare.json").read_text())
    assert [v["label"] for v in single["variants"]] == ["none", "cos05"]
    cell = single["cells"]["cos05"]["cb-acc"]
    assert cell["n"] == 1 and cell["std"] is None and cell["ci95"] is None
    d = single["differences"]["cos05"]
    assert d["cb-acc"]["model"]["test"] == "bootstrap (documents)" and d["cb-acc"]["recipe"]["p"] is None
    assert d["val-loss"]["recipe"]["p"] is None and d["val-loss"]["model"] is None
    assert d["val-loss"]["recipe"]["test"].startswith("none: 1 vs 1 seeds")
    md = (tmp_path / "single" / "compare.md").read_text()
    assert "| none | 1 |" in md and "(no test)" in md


def _copy_run(src: Path, dst: Path, edit) -> None:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoints", "export", "tb", "samples_*"))
    cfg = yaml.safe_load((dst / "config.yaml").read_text())
    edit(cfg)
    (dst / "config.yaml").write_text(yaml.safe_dump(cfg))


def test_compare_refuses_another_model_shape_unless_allowed(sweep, tmp_path, capsys):
    runs = sweep["runs"]
    _copy_run(runs["none/seed1"], tmp_path / "abl" / "wide" / "seed1",
              lambda c: c["model"].update(hidden_size=64, intermediate_size=128))
    code = _compare(runs["none/seed1"], tmp_path / "abl" / "wide", "--out", tmp_path / "out")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: variants differ in model shape or tokenizer: wide vs none: model.hidden_size")
    assert err[0].endswith("pass --allow-mixed to compare them anyway")
    assert not (tmp_path / "out").exists()
    assert _compare(runs["none/seed1"], tmp_path / "abl" / "wide", "--out", tmp_path / "out", "--allow-mixed",
                    "--n-boot", "200", "--no-plots") == 0
    assert "Mixed comparison (--allow-mixed)" in (tmp_path / "out" / "compare.md").read_text()


def test_compare_refuses_seeds_of_one_variant_that_differ_in_more(sweep, tmp_path, capsys):
    runs = sweep["runs"]
    _copy_run(runs["none/seed1"], tmp_path / "abl" / "none" / "seed1", lambda c: None)
    _copy_run(runs["none/seed2"], tmp_path / "abl" / "none" / "seed2", lambda c: c["optim"].update(lr=1e-3))
    assert _compare(tmp_path / "abl", "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: runs of variant 'none' differ in more than the seed:") and "optim.lr" in err


# -- the runner's other paths -----------------------------------------------------------------------------------------

def test_bad_sweep_files_are_one_line_errors_and_write_nothing(tmp_path):
    root = tmp_path / "runs"
    cases = {
        "bad_key": ({"base": str(TINY), "variants": {"a": {"regularizer.wieght": 0.5}}},
                    "error: variant a, seed 1: unknown config key 'regularizer.wieght' (did you mean "
                    "'regularizer.weight'?)"),
        "no_base": ({"base": "missing.yaml", "variants": {"a": {}}}, "error: base: config file not found: "),
        "typo": ({"base": str(TINY), "variants": {"a": {}}, "seedz": [1]},
                 "error: unknown config key 'seedz' (did you mean 'seeds'?)"),
        "seed": ({"base": str(TINY), "variants": {"a": {"train.seed": 3}}},
                 "error: variants.a.train.seed=3: set by the sweep runner (seeds come from `seeds:`)"),
        "two_bases_bad": ({"base": [str(TINY), str(TINY)], "variants": {"a": {"model.hidden_size": "wide"}}},
                          "error: variant a, seed 1: model.hidden_size: expected an integer, got 'wide'"),
    }
    for name, (spec, message) in cases.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(spec))
        res = subprocess.run(sweep_cmd(path, root), cwd=REPO, capture_output=True, text=True)
        err = res.stderr.strip().splitlines()
        assert res.returncode == 2 and len(err) == 1 and err[0].startswith(message), (name, res.stderr)
        assert not root.exists(), name


def test_a_failed_run_is_reported_and_the_sweep_goes_on(tmp_path):
    spec = {"name": "f", "base": str(TINY), "seeds": [1],
            "overrides": {"train.max_steps": 2, "eval.val_loss.enabled": False, "eval.linearity.enabled": False,
                          "checkpoint.every": 0, "data.cache_dir": str(tmp_path / "cache")},
            "variants": {"broken": {"data.train_files": ["nowhere.txt"]}, "ok": {}}}
    path = tmp_path / "f.yaml"
    path.write_text(yaml.safe_dump(spec))
    res = subprocess.run(sweep_cmd(path, tmp_path / "runs", "--no-eval"), cwd=REPO, capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 1, res.stdout[-3000:]
    assert "sweep f: 1 failed, 1 trained" in res.stdout
    assert f"failed: broken/seed1 (training exited with code 2) in {tmp_path / 'runs' / 'f' / 'broken' / 'seed1'}" \
        in res.stdout
    assert (tmp_path / "runs" / "f" / "ok" / "seed1" / "checkpoints" / "latest").read_text() == "step_00000002"
