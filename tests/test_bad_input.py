"""Bad input on every command line: exit code 2, a last stderr line ``error: ...`` that names the culprit (a key, a
path or a value from the command), no traceback, and nothing on disk changed.

The cases call each command's ``main(argv)`` in this process through ``core.cli.command`` (the wrapper every
``__main__`` and ``linreg`` use), so that the whole table costs one import of torch;
``test_main_modules_follow_the_rule`` runs a few of them as real subprocesses to check the ``__main__`` wiring.
Every ``linreg`` command has a case (``tests/test_cli.py`` checks). Cases that need a checkpoint copy one tiny
trained run (module scope). Placeholders in a case's arguments: ``{tmp}`` its own directory, ``{run}`` the trained
run, ``{hf}`` a tiny HF model dir, ``{data}`` the shared data root, ``{tiny}`` tests/tiny.yaml.
"""
from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from commands import COMMANDS
from core.cli import command

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "tiny.yaml"
MODULES = {name: c.module for name, c in COMMANDS.items()}
STORY = "Once upon a time, a little fox found a red ball in the tall grass. " * 12  # ~800 characters


@dataclass
class Case:
    cli: str
    argv: list[str]
    culprit: list[str]  # substrings the error line must contain (placeholders allowed)
    files: dict[str, str | bytes] = field(default_factory=dict)  # written into {tmp} before the snapshot
    prep: str | None = None  # name of a function below that builds more of {tmp}


# -- checkpoint dirs built from the trained run ----------------------------------------------------------------------

def _copy_run(tmp: Path, run: Path) -> Path:
    dst = tmp / "run"
    shutil.copytree(run, dst)
    return dst


def _tag(run: Path) -> Path:
    from core.rundir import find_checkpoint

    return find_checkpoint(run)


def _reseal(tag: Path) -> None:
    """Record the tampered files in the checkpoint's manifest, as a writer who meant harm would."""
    from core.rundir import write_manifest

    write_manifest(tag)


class _RunsCode:
    """Unpickling this calls ``exec``: what a hostile checkpoint does."""

    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        return exec, (self.code,)


def prep_hostile(tmp: Path, run: Path) -> None:
    tag = _tag(_copy_run(tmp, run))
    model_file = tag / "mp_rank_00_model_states.pt"
    state = torch.load(model_file, weights_only=True)
    state["payload"] = _RunsCode(f"open({str(tmp / 'pwned')!r}, 'w').write('code ran')")
    torch.save(state, model_file)
    _reseal(tag)


def prep_damaged(tmp: Path, run: Path) -> None:
    tag = _tag(_copy_run(tmp, run))
    (tag / "mp_rank_00_model_states.pt").write_bytes(b"\x80\x02 not a torch file" * 8)
    _reseal(tag)


def prep_truncated(tmp: Path, run: Path) -> None:
    tag = _tag(_copy_run(tmp, run))  # not resealed: the manifest finds it
    (tag / "mp_rank_00_model_states.pt").write_bytes(b"\x80\x02 truncated")


def prep_debris_with_latest(tmp: Path, run: Path) -> None:
    tag = _tag(_copy_run(tmp, run))  # `latest` says a save once finished; what is left of it has no manifest
    (tag / "manifest.json").unlink()


def prep_empty_config(tmp: Path, run: Path) -> None:
    (_copy_run(tmp, run) / "config.yaml").write_text("")


def prep_no_latest(tmp: Path, run: Path) -> None:
    (tmp / "run" / "checkpoints").mkdir(parents=True)
    shutil.copy(run / "config.yaml", tmp / "run" / "config.yaml")


PREPS = {f.__name__: f for f in (prep_hostile, prep_damaged, prep_truncated, prep_debris_with_latest, prep_empty_config,
                                  prep_no_latest)}

BAD_JSONL = '{"text": "a story"}\n{"text": \n'
EV = ["--out", "{tmp}/out", "--tasks", "tinystories"]
LIN = OUT = ["--out", "{tmp}/out"]
TXT = ["--text", "{data}/tinystories/valid.txt"]
C_YAML = ["--config", "{tmp}/c.yaml"]
TINY_CFG = ["--config", "{tiny}"]
MIX = [*TINY_CFG, "--run-dir", "{tmp}/r", "data.cache_dir={tmp}/cache"]

CASES: dict[str, Case] = {
    # -- train.py: config files ---------------------------------------------------------------------------------
    "train-config-missing": Case("train", ["--config", "{tmp}/nope.yaml"], ["{tmp}/nope.yaml"]),
    "train-config-empty": Case("train", C_YAML, ["c.yaml", "empty"], {"c.yaml": ""}),
    "train-config-bad-yaml": Case("train", C_YAML, ["c.yaml", "invalid YAML"], {"c.yaml": "a: [1\n"}),
    "train-config-not-mapping": Case("train", C_YAML, ["c.yaml", "mapping"], {"c.yaml": "- 1\n"}),
    "train-config-not-utf8": Case("train", C_YAML, ["c.yaml", "UTF-8"], {"c.yaml": b"name: \xff\n"}),
    "train-extends-cycle": Case("train", C_YAML, ["cycle", "c.yaml"], {"c.yaml": "extends: c.yaml\n"}),
    "train-extends-missing": Case("train", C_YAML, ["gone.yaml"], {"c.yaml": "extends: gone.yaml\n"}),
    # -- train.py: keys, types, ranges --------------------------------------------------------------------------
    "train-unknown-key": Case("train", [*TINY_CFG, "train.max_stpes=3"], ["train.max_stpes", "train.max_steps"]),
    "train-wrong-type": Case("train", [*TINY_CFG, "train.max_steps=abc"], ["train.max_steps", "abc"]),
    "train-out-of-range": Case("train", [*TINY_CFG, "train.max_steps=0"], ["train.max_steps=0"]),
    "train-bad-choice": Case("train", [*TINY_CFG, "schedule.kind=cosin"], ["schedule.kind", "cosine"]),
    "train-heldout-interval": Case("train", [*TINY_CFG, "eval.linearity.heldout.insample_interval=delete-one"],
                                   ["eval.linearity.heldout.insample_interval", "delete-one", "jackknife"]),
    "train-override-form": Case("train", [*TINY_CFG, "train.max_steps"], ["train.max_steps", "key.sub=value"]),
    "train-unknown-regularizer": Case("train", [*TINY_CFG, "regularizer.name=l7"], ["l7"]),
    "train-seq-len": Case("train", [*TINY_CFG, "data.seq_len=1000"], ["data.seq_len", "1000"]),
    "train-unknown-task": Case("train", [*TINY_CFG, "eval.benchmarks.tasks=[nosuch]"], ["nosuch"]),
    "train-linear-attention-no-prompts": Case("train", [*TINY_CFG, "--run-dir", "{tmp}/r",
                                                        "model.arch=linear_attention", "eval.linearity.enabled=false",
                                                        "eval.val_loss.enabled=false"], ["data.icl"]),
    "train-icl-bad-df": Case("train", [*TINY_CFG, "data.icl.df=0"], ["data.icl.df"]),
    "train-icl-bad-gamma-shape": Case("train", [*TINY_CFG, "data.icl.gamma_shape=0"], ["data.icl.gamma_shape"]),
    "train-icl-bad-gamma-scale": Case("train", [*TINY_CFG, "data.icl.gamma_scale=-1"], ["data.icl.gamma_scale"]),
    "train-global-batch": Case("train", [*TINY_CFG, "--run-dir", "{tmp}/r", "train.global_batch_size=5"],
                               ["train.global_batch_size=5"]),
    "train-micro-batch-does-not-divide": Case("train", [*TINY_CFG, "--run-dir", "{tmp}/r", "train.global_batch_size=8",
                                                        "train.micro_batch_size=3"],
                                              ["train.global_batch_size=8", "train.micro_batch_size 3"]),
    "train-grad-accum-disagrees": Case("train", [*TINY_CFG, "--run-dir", "{tmp}/r", "train.grad_accum_steps=2"],
                                       ["train.grad_accum_steps=2", "derived"]),
    # -- train.py: the DeepSpeed block and file -----------------------------------------------------------------
    "train-ds-fp16-bool": Case("train", [*TINY_CFG, "--run-dir", "{tmp}/r", "deepspeed.fp16=true"],
                               ["deepspeed.fp16=True"]),
    "train-ds-fp16-enabled": Case("train", [*TINY_CFG, "--run-dir", "{tmp}/r",
                                            "deepspeed.fp16.enabled=true"], ["deepspeed.fp16.enabled=true"]),
    "train-ds-micro-null": Case("train", [*TINY_CFG, "--run-dir", "{tmp}/r",
                                          "deepspeed.train_micro_batch_size_per_gpu=null"],
                                ["train_micro_batch_size_per_gpu=None"]),
    "train-ds-json-missing": Case("train", [*TINY_CFG, "--run-dir", "{tmp}/r", "--deepspeed_config",
                                            "{tmp}/ds.json"], ["{tmp}/ds.json"]),
    "train-ds-json-invalid": Case("train", [*TINY_CFG, "--run-dir", "{tmp}/r", "--deepspeed_config",
                                            "{tmp}/ds.json"], ["ds.json", "invalid JSON"], {"ds.json": "{"}),
    "train-ds-json-list": Case("train", [*TINY_CFG, "--run-dir", "{tmp}/r", "--deepspeed_config",
                                         "{tmp}/ds.json"], ["ds.json", "JSON object"], {"ds.json": "[1]"}),
    # -- train.py: run dirs and resume --------------------------------------------------------------------------
    "train-no-config": Case("train", [], ["--config"]),
    "train-resume-missing": Case("train", ["--resume", "{tmp}/gone"], ["{tmp}/gone"]),
    "train-resume-no-checkpoint": Case("train", ["--resume", "{tmp}/empty"], ["{tmp}/empty"], {"empty/.keep": ""}),
    "train-resume-auto-no-config": Case("train", ["--resume", "auto", "--run-dir", "{tmp}/r"], ["{tmp}/r", "--config"],
                                        {"r/.keep": ""}),
    "train-resume-empty-config": Case("train", ["--resume", "auto", "--run-dir", "{tmp}/run"], ["config.yaml", "empty"],
                                      prep="prep_empty_config"),
    "train-resume-auto-damaged": Case("train", ["--resume", "auto", "--run-dir", "{tmp}/run"],
                                      ["no usable checkpoint", "mp_rank_00_model_states.pt has"],
                                      prep="prep_truncated"),
    "train-resume-auto-only-debris": Case("train", ["--resume", "auto", "--run-dir", "{tmp}/run"],
                                          ["{tmp}/run/checkpoints/latest", "refusing to restart from step 0"],
                                          prep="prep_debris_with_latest"),
    "train-run-dir-exists": Case("train", [*TINY_CFG, "--run-dir", "{run}"], ["{run}", "exists"]),
    "train-data-missing": Case("train", [*TINY_CFG, "--run-dir", "{tmp}/r", "data.train_files=[gone.txt]"],
                               ["gone.txt"]),
    "train-mixture-weight-zero": Case("train", [*MIX, "data.train_files={tinystories/train.txt: 1, a.txt: 0}"],
                                      ["data.train_files[a.txt]", "positive"]),
    "train-mixture-file-missing": Case("train", [*MIX, "data.train_files={tinystories/train.txt: 1, gone.jsonl: 1}"],
                                       ["gone.jsonl"]),
    "train-data-not-utf8": Case("train", [*TINY_CFG, "--run-dir", "{tmp}/r", "data.train_files=[{tmp}/t.txt]",
                                          "data.cache_dir={tmp}/cache"], ["t.txt", "UTF-8"],
                                {"t.txt": b"ok\n\xff bad\n"}),
    # -- linreg eval --------------------------------------------------------------------------------------------
    "eval-model-missing": Case("eval", ["--model", "{tmp}/gone", *EV], ["{tmp}/gone"]),
    "eval-model-empty-dir": Case("eval", ["--model", "{tmp}/empty", *EV], ["{tmp}/empty"], {"empty/.keep": ""}),
    "eval-model-is-file": Case("eval", ["--model", "{tmp}/m.txt", *EV], ["{tmp}/m.txt"], {"m.txt": "x"}),
    "eval-run-no-latest": Case("eval", ["--model", "{tmp}/run", *EV], ["{tmp}/run"], prep="prep_no_latest"),
    "eval-run-empty-config": Case("eval", ["--model", "{tmp}/run", *EV], ["config.yaml", "empty"],
                                  prep="prep_empty_config"),
    "eval-hostile-checkpoint": Case("eval", ["--model", "{tmp}/run", *EV], ["plain-weights", "builtins.exec"],
                                    prep="prep_hostile"),
    "eval-unknown-task": Case("eval", ["--model", "{hf}", "--out", "{tmp}/out", "--tasks", "tinystoris"],
                              ["tinystoris", "tinystories"]),
    "eval-limit-zero": Case("eval", ["--model", "{hf}", *EV, "--limit", "0"], ["--limit 0"]),
    "eval-fewshot-negative": Case("eval", ["--model", "{hf}", *EV, "--num-fewshot", "-1"], ["--num-fewshot -1"]),
    "eval-data-root-missing": Case("eval", ["--model", "{hf}", *EV, "--data-root", "{tmp}/nodata"], ["{tmp}/nodata"]),
    "eval-fewshot-too-many": Case("eval", ["--model", "{hf}", "--out", "{tmp}/out", "--tasks", "cb", "--num-fewshot",
                                           "100000", "--data-root", "{data}"], ["cb", "100000-shot"]),
    "eval-argparse": Case("eval", ["--model", "{hf}", "--dtype", "fp8", "--out", "{tmp}/out"], ["--dtype", "fp8"]),
    # -- linreg linearity ---------------------------------------------------------------------------------------
    "linearity-model-missing": Case("linearity", ["--model", "{tmp}/gone", *TXT, *LIN], ["{tmp}/gone"]),
    "linearity-no-checkpoint": Case("linearity", ["--model", "{tmp}/run", *TXT, *LIN], ["{tmp}/run"],
                                    prep="prep_no_latest"),
    "linearity-hostile-checkpoint": Case("linearity", ["--model", "{tmp}/run", *TXT, *LIN], ["builtins.exec"],
                                         prep="prep_hostile"),
    "linearity-text-missing": Case("linearity", ["--model", "{hf}", "--text", "{tmp}/gone.txt", *LIN],
                                   ["{tmp}/gone.txt"]),
    "linearity-text-too-short": Case("linearity", ["--model", "{hf}", "--text", "{tmp}/s.txt", *LIN], ["s.txt", "512"],
                                     {"s.txt": "A short story.\n"}),
    "linearity-too-few-tokens": Case("linearity", ["--model", "{hf}", "--text", "{tmp}/s.txt", "--num-chunks", "1",
                                                   "--max-tokens", "40", *LIN], ["s.txt", "n=40", "d=64"],
                                     {"s.txt": STORY}),
    "linearity-text-not-utf8": Case("linearity", ["--model", "{hf}", "--text", "{tmp}/s.txt", *LIN], ["s.txt", "UTF-8"],
                                    {"s.txt": b"ok\n\xff\xfe bad bytes\n"}),
    "linearity-jsonl-bad-line": Case("linearity", ["--model", "{hf}", "--text", "{tmp}/s.jsonl", *LIN], ["s.jsonl:2:"],
                                     {"s.jsonl": BAD_JSONL}),
    "linearity-jsonl-no-field": Case("linearity", ["--model", "{hf}", "--text", "{tmp}/s.jsonl", *LIN],
                                     ["s.jsonl:2:", "'text'"], {"s.jsonl": '{"text": "a"}\n{"story": "b"}\n'}),
    "linearity-num-chunks": Case("linearity", ["--model", "{hf}", *TXT, *LIN, "--num-chunks", "0"], ["num_chunks=0"]),
    "linearity-heldout-folds": Case("linearity", ["--model", "{hf}", *TXT, *LIN, "--heldout", "--folds", "1"],
                                    ["heldout.folds=1"]),
    "linearity-heldout-interval": Case("linearity", ["--model", "{hf}", *TXT, *LIN, "--heldout",
                                                     "--insample-interval", "delete-one"],
                                       ["--insample-interval", "delete-one"]),
    # held-out statistics are on by default: too few documents for their folds names the way to turn them off
    "linearity-heldout-few-documents": Case("linearity", ["--model", "{hf}", *TXT, *LIN, "--num-chunks", "3"],
                                            ["valid.txt", "5 documents", "--no-heldout"]),
    "linearity-batch-size": Case("linearity", ["--model", "{hf}", *TXT, *LIN, "--probe-batch-size", "0"],
                                 ["--probe-batch-size 0"]),
    "linearity-label-count": Case("linearity", ["--model", "{hf},{hf}", "--label", "a", *TXT, *LIN],
                                  ["1 --label for 2 --model"]),
    "linearity-run-no-history": Case("linearity", ["--run", "{tmp}/r"], ["{tmp}/r/linearity.jsonl"], {"r/.keep": ""}),
    "linearity-run-bad-history": Case("linearity", ["--run", "{tmp}/r"], ["linearity.jsonl:2:"],
                                      {"r/linearity.jsonl": '{"step": 1}\n{"step": 2, \n'}),
    # -- linreg export ------------------------------------------------------------------------------------------
    "export-missing": Case("export", ["--model", "{tmp}/gone", *OUT], ["{tmp}/gone"]),
    "export-empty-dir": Case("export", ["--model", "{tmp}/empty", *OUT], ["{tmp}/empty"], {"empty/.keep": ""}),
    "export-no-latest": Case("export", ["--model", "{tmp}/run", *OUT], ["{tmp}/run"], prep="prep_no_latest"),
    "export-empty-config": Case("export", ["--model", "{tmp}/run", *OUT], ["config.yaml", "empty"],
                                prep="prep_empty_config"),
    "export-hostile-checkpoint": Case("export", ["--model", "{tmp}/run", *OUT], ["plain-weights", "builtins.exec",
                                                                               "LINREG_TRUST_CHECKPOINTS"],
                                      prep="prep_hostile"),
    "export-damaged-file": Case("export", ["--model", "{tmp}/run", *OUT], ["mp_rank_00_model_states.pt"],
                                prep="prep_damaged"),
    "export-out-is-file": Case("export", ["--model", "{run}", *OUT], ["{tmp}/out"], {"out": "x"}),
    # -- the other command lines: a couple each ---------------------------------------------------------------
    "prune-bad-k": Case("prune", ["--model", "{hf}", "--out", "{tmp}/out", "--k", "x"], ["--k", "'x'"]),
    "prune-probe-too-short": Case("prune", ["--model", "{hf}", "--out", "{tmp}/out", "--k", "1", "--text",
                                            "{tmp}/short.txt"], ["{tmp}/short.txt", "fewer than one chunk"],
                                  {"short.txt": "Once upon a time."}),
    "prune-distill-regularizer": Case("prune", ["--model", "{hf}", "--out", "{tmp}/out", "--k", "1", "--methods",
                                                "linear+distill", "regularizer.name=cosine"],
                                      ["regularizer.name='cosine'", "leave regularizer.name=none"]),
    "prune-unknown-method": Case("prune", ["--model", "{hf}", "--out", "{tmp}/out", "--k", "1", "--methods",
                                           "remove,replacme"], ["unknown method 'replacme'", "replaceme_cos"]),
    "prune-model-missing": Case("prune", ["--model", "{tmp}/gone", "--out", "{tmp}/out", "--k", "1"], ["{tmp}/gone"]),
    "series-path-missing": Case("series", ["--paths", "{tmp}/gone", "--out", "{tmp}/out"], ["{tmp}/gone"]),
    "series-nothing-given": Case("series", ["--out", "{tmp}/out"], ["no series"]),
    "compare-plan-negative": Case("compare", ["{tmp}", "--out", "{tmp}/out", "--plan", "-1"], ["--plan -1"]),
    "sweep-file-missing": Case("sweep", ["{tmp}/nope.yaml"], ["{tmp}/nope.yaml"]),
    "sweep-file-empty": Case("sweep", ["{tmp}/s.yaml"], ["s.yaml", "empty"], {"s.yaml": ""}),
    "sweep-task-typo": Case("sweep", ["{tmp}/s.yaml", "--runs-root", "{tmp}/runs"],
                            ["benchmarks.tasks", "unknown task 'xstorycloze_english'", "did you mean"],
                            {"s.yaml": f"base: {TINY}\nvariants: {{a: {{}}}}\n"
                                       "benchmarks: {tasks: [cb, xstorycloze_english]}\n"}),
    "data-unknown-set": Case("data", ["--root", "{tmp}/root", "--only", "tinystories,arcc"],
                                ["--only arcc", "'arc'"]),
    "data-corrupt-manifest": Case("data", ["--root", "{tmp}/root", "--only", "arc"],
                                     ["{tmp}/root/MANIFEST.json", "corrupt"], {"root/MANIFEST.json": '{"sets": '}),
    "data-offline": Case("data", ["--root", "{tmp}/root", "--only", "wikitext2"],
                            ["set 'wikitext2'", "Salesforce/wikitext"]),
    "data-from-missing": Case("data", ["--root", "{tmp}/root", "--from", "{tmp}/hub"], ["--from {tmp}/hub"]),
    "sweep-batch-for-the-gpus": Case("sweep", ["{tmp}/s.yaml", "--runs-root", "{tmp}/runs", "--", "--num_gpus", "2"],
                                     ["variant a, seed 1", "train.global_batch_size=12", "4 × 2 rank(s)"],
                                     {"s.yaml": f"base: {TINY}\nlauncher: deepspeed\nvariants: {{a: {{}}}}\n"
                                                "overrides: {train.global_batch_size: 12}\n"}),
    "report-missing": Case("report", ["{tmp}/gone.json"], ["{tmp}/gone.json"]),
    "finetune-unknown-task": Case("finetune", ["--model", "{tmp}/m", "--tasks", "cb,boolqq", "--out", "{tmp}/out"],
                                  ["--tasks", "'boolqq'"]),
    "finetune-bad-seeds": Case("finetune", ["--model", "{tmp}/m", "--seeds", "0,x", "--out", "{tmp}/out"],
                               ["--seeds", "'x'"]),
    "probes-no-probe-form": Case("probes", ["--model", "{tmp}/m", "--tasks", "copa,tinystories", "--out",
                                            "{tmp}/out"], ["'tinystories'", "no probe form"]),
    "stories-nothing-to-sample": Case("stories", ["--out", "{tmp}/out"], ["--model", "--reference"]),
    "linear-attention-missing": Case("linear-attention", ["{tmp}/gone", "--out", "{tmp}/out"], ["{tmp}/gone"]),
    "universal-missing": Case("universal", ["--run", "{tmp}/gone"], ["{tmp}/gone"]),
    "universal-no-checkpoint": Case("universal", ["--run", "{tmp}/run"], ["{tmp}/run"], prep="prep_no_latest"),
    "universal-zero0": Case("universal", ["--run", "{run}"],
                            ["{run}/checkpoints/step_", "ZeRO-0", "nothing to convert"]),
    "universal-damaged-file": Case("universal", ["--run", "{tmp}/run"], ["mp_rank_00_model_states.pt"],
                                   prep="prep_truncated"),
}


# -- fixtures and checks -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A 2-step ZeRO-0 run of tests/tiny.yaml (config.yaml, tokenizer/, one checkpoint)."""
    from core.rundir import RunDir
    from linreg.config import load_config
    from linreg.trainer import Trainer

    root = tmp_path_factory.mktemp("bad_input_run")
    cfg = load_config(TINY, [f"data.cache_dir={root / 'cache'}", "train.max_steps=2", "checkpoint.every=0",
                             "checkpoint.export_at_end=false", "eval.linearity.enabled=false",
                             "eval.val_loss.enabled=false"])
    assert Trainer(cfg, RunDir(root / "run"), log=False).fit() == 0
    return root / "run"


def snapshot(*roots: Path) -> dict[str, tuple]:
    """Every path under ``roots`` with its size and modification time (directories change when entries do)."""
    out = {}
    for root in roots:
        for p in [root, *sorted(root.rglob("*"))] if root.exists() else []:
            st = p.lstat()
            out[str(p)] = (p.is_dir(), 0 if p.is_dir() else st.st_size, st.st_mtime_ns)
    return out


def fill(text: str, env: dict[str, str]) -> str:
    for k, v in env.items():
        text = text.replace("{" + k + "}", v)
    return text


def check_error_line(code: int, err: str, culprit: list[str], env: dict[str, str]) -> None:
    assert "Traceback" not in err, err
    assert code == 2, err
    lines = err.strip().splitlines()
    last = lines[-1] if lines else ""
    assert last.startswith("error: ") and sum("error:" in line for line in lines) == 1, err  # argparse's too
    for piece in culprit:
        assert fill(piece, env) in last, f"{fill(piece, env)!r} not in {last!r}"


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, request, tmp_path, capsys, monkeypatch):
    case = CASES[name]
    monkeypatch.delenv("LINREG_DEBUG", raising=False)
    monkeypatch.delenv("LINREG_TRUST_CHECKPOINTS", raising=False)
    monkeypatch.chdir(tmp_path)  # a default runs/ dir would show up in the snapshot
    needs = " ".join([*case.argv, *case.culprit])
    env = {"tmp": str(tmp_path), "tiny": str(TINY), "data": os.environ["LINREG_DATA_ROOT"]}
    if "{hf}" in needs:
        env["hf"] = str(request.getfixturevalue("tiny_hf_model_dir"))
    if "{run}" in needs or case.prep:
        env["run"] = str(request.getfixturevalue("trained_run"))
    for rel, content in case.files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    if case.prep:
        PREPS[case.prep](tmp_path, Path(env["run"]))
    roots = [tmp_path] + [Path(env[k]) for k in ("run", "hf") if k in env]
    before = snapshot(*roots)
    main = command(importlib.import_module(MODULES[case.cli]).main)
    capsys.readouterr()
    try:
        code = main([fill(a, env) for a in case.argv])
    except SystemExit as e:  # argparse
        code = e.code
    err = capsys.readouterr().err
    check_error_line(code, err, case.culprit, env)
    assert snapshot(*roots) == before


SUBPROCESS = ["train-config-empty", "eval-limit-zero", "linearity-text-missing", "export-missing",
              "data-unknown-set"]


def test_main_modules_follow_the_rule(tmp_path):
    """The same rule through ``python -m`` / ``python train.py``: the ``__main__`` blocks are wired to it."""
    (tmp_path / "c.yaml").write_text("")
    env = {"tmp": str(tmp_path), "hf": str(tmp_path / "no_model"), "tiny": str(TINY)}
    for name in SUBPROCESS:
        case = CASES[name]
        argv = [fill(a, env) for a in case.argv]
        entry = [str(REPO / "train.py")] if case.cli == "train" else ["-m", MODULES[case.cli].removesuffix(".__main__")]
        env_vars = {k: v for k, v in os.environ.items() if k != "LINREG_DEBUG"}
        env_vars["PYTHONPATH"] = os.pathsep.join([str(REPO), env_vars.get("PYTHONPATH", "")])
        proc = subprocess.run([sys.executable, *entry, *argv], cwd=tmp_path, capture_output=True, text=True,
                              timeout=300, env=env_vars)
        check_error_line(proc.returncode, proc.stderr, case.culprit, env)


def test_zero1_checkpoint_loads_through_the_restricted_unpickler(tmp_path, monkeypatch):
    """ZeRO-1 optimizer files pickle a few DeepSpeed records: the allow-list admits them, and the weights equal
    those of DeepSpeed's own, fully unpickling, reader."""
    from core.rundir import RunDir
    from linreg.config import load_config
    from linreg.trainer import Trainer
    from model.export import TRUST_ENV, load_model

    cfg = load_config(TINY, [f"data.cache_dir={tmp_path / 'cache'}", "train.max_steps=2", "checkpoint.every=0",
                             "checkpoint.export_at_end=false", "eval.linearity.enabled=false",
                             "eval.val_loss.enabled=false", "train.zero_stage=1"])
    assert Trainer(cfg, RunDir(tmp_path / "run"), log=False).fit() == 0
    monkeypatch.delenv(TRUST_ENV, raising=False)
    safe, _ = load_model(tmp_path / "run")
    monkeypatch.setenv(TRUST_ENV, "1")
    full, _ = load_model(tmp_path / "run")
    for (name, a), (_, b) in zip(safe.state_dict().items(), full.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
