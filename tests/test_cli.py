"""The ``linreg`` command line: every tool is a subcommand, every subcommand documents its options with the shared
names, one list syntax and one error rule hold everywhere, and ``linreg --help`` answers without importing torch.

The bad input of each tool in depth is ``tests/test_bad_input.py``'s table; here each subcommand gets one case
through the dispatcher, as a user types it.
"""
from __future__ import annotations

import argparse
import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import commands
from commands import COMMANDS
from core.cli import ListAction, Parser, add_shared_args, list_arg

REPO = Path(__file__).resolve().parents[1]

# The shared options each subcommand must offer, under their one name.
SHARED = {
    "train": ["--config", "--run-dir", "--resume", "--print-config", "KEY=VALUE"],
    "eval": ["--model", "--label", "--tasks", "--out", "--data-root", "--device", "--dtype", "--limit"],
    "linearity": ["--model", "--label", "--out", "--text", "--text-field", "--num-chunks", "--chunk-chars",
                  "--max-tokens", "--probe-seed", "--probe-batch-size", "--device", "--dtype", "--heldout",
                  "--toolkit"],
    "report": ["--label"],
    "sweep": ["--runs-root", "--launcher", "--only", "--print-commands"],
    "compare": ["--out", "--baseline", "--plan", "--seed"],
    "prune": ["--model", "--out", "--k", "--methods", "--tasks", "--text", "--num-chunks", "--probe-seed",
              "--probe-batch-size", "--data-root", "--device", "--dtype", "--distill-steps", "KEY=VALUE"],
    "series": ["--run", "--model", "--revisions", "--paths", "--label", "--out", "--text", "--probe-seed",
               "--probe-batch-size", "--data-root", "--device", "--dtype", "--heldout"],
    "finetune": ["--model", "--label", "--tasks", "--seeds", "--out", "--text", "--probe-seed", "--probe-batch-size",
                 "--data-root", "--device", "--dtype", "KEY=VALUE"],
    "probes": ["--model", "--label", "--tasks", "--out", "--data-root", "--device", "--dtype"],
    "stories": ["--model", "--label", "--out", "--data-root", "--device", "--judge-url"],
    "linear-attention": ["--out"],
    "redraw": [],
    "prune-report": [],
    "export": ["--model", "--out"],
    "universal": ["--run"],
    "data": ["--root", "--only", "--from", "--force"],
}

# One bad input per subcommand, as typed after `linreg <command>`: (argv, pieces of the one error line).
BAD = {
    "train": (["--config", "{tmp}/nope.yaml"], ["{tmp}/nope.yaml"]),
    "eval": (["--model", "{tmp}/m", "--out", "{tmp}/o", "--tasks", "copa,tinystoris"], ["tinystoris", "tinystories"]),
    "linearity": (["--model", "{tmp}/m", "--out", "{tmp}/o"], ["--text FILE or --dataset NAME"]),
    "report": (["{tmp}/results.json"], ["{tmp}/results.json"]),
    "sweep": (["{tmp}/nope.yaml"], ["{tmp}/nope.yaml"]),
    "compare": (["{tmp}", "--out", "{tmp}/o", "--n-boot", "5"], ["--n-boot 5"]),
    "prune": (["--model", "{tmp}/m", "--out", "{tmp}/o", "--k", "1..x"], ["--k", "'1..x'"]),
    "series": (["--run", "{tmp}/a,{tmp}/b", "--label", "a", "--out", "{tmp}/o"], ["1 --label for 2 series"]),
    "finetune": (["--model", "{tmp}/m", "--tasks", "copa", "--out", "{tmp}/o"], ["--tasks", "'copa'", "boolq"]),
    "probes": (["--model", "{tmp}/m", "--tasks", "xstorycloze_en,lambada", "--out", "{tmp}/o"], ["'lambada'"]),
    "stories": (["--model", "{tmp}/m", "--label", "a,b", "--out", "{tmp}/o"], ["2 --label for 1 --model"]),
    "linear-attention": (["{tmp}/sweep", "--out", "{tmp}/o"], ["{tmp}/sweep"]),
    "redraw": (["{tmp}/o"], ["{tmp}/o", "series.csv"]),
    "prune-report": (["{tmp}/o"], ["{tmp}/o/pruning.json"]),
    "export": (["--model", "{tmp}/gone", "--out", "{tmp}/o"], ["{tmp}/gone"]),
    "universal": (["--run", "{tmp}/gone"], ["{tmp}/gone"]),
    "data": (["--root", "{tmp}/root", "--only", "arc,wikitext3"], ["--only wikitext3", "wikitext2"]),
}


def run_linreg(argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = commands.main(argv)
    except SystemExit as e:  # --help
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_help_lists_every_command_without_torch():
    proc = subprocess.run([sys.executable, "-c", "import sys, commands; code = commands.main(['--help']); "
                           "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(code)"],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    listed = dict(re.findall(r"^  (\S+) +(.+)$", proc.stdout, re.M))
    assert listed == {name: c.summary for name, c in COMMANDS.items()}


def test_every_entry_point_is_a_command():
    """Each module outside tests/ and bench/ with a ``main`` that parses a command line is a subcommand."""
    found = set()
    for path in [REPO / "train.py", *REPO.glob("*/**/*.py")]:
        rel = path.relative_to(REPO)
        if rel.parts[0] in ("tests", "bench", ".venv") or rel.parts[0].startswith("."):
            continue
        tree = ast.parse(path.read_text())
        if any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body) and "parse_args(" in \
                path.read_text():
            found.add(".".join(rel.with_suffix("").parts))
    assert found == {c.module for c in COMMANDS.values()}


@pytest.mark.parametrize("name", list(COMMANDS))
def test_subcommand_help(name, capsys):
    code, out, _ = run_linreg([name, "--help"], capsys)
    assert code == 0
    assert out.startswith(f"usage: linreg {name} ")
    module = COMMANDS[name].module
    assert ("python train.py" if module == "train" else f"python -m {module.removesuffix('.__main__')}") in out
    for flag in SHARED[name]:
        assert re.search(rf"(^|\s|\[){re.escape(flag)}\b", out), f"{flag} not in linreg {name} --help"
    assert not re.search(r"--(set|distill-set|task|probe-text|labels)\b", out)  # the old spellings are gone


@pytest.mark.parametrize("name", list(COMMANDS))
def test_subcommand_bad_input(name, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LINREG_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)
    argv, pieces = BAD[name]
    code, _, err = run_linreg([name, *(a.replace("{tmp}", str(tmp_path)) for a in argv)], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and "Traceback" not in err, err
    assert [line for line in lines if "error:" in line] == lines[-1:] and lines[-1].startswith("error: "), err
    for piece in pieces:
        assert piece.replace("{tmp}", str(tmp_path)) in lines[-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written


def test_dispatcher_errors(capsys):
    code, _, err = run_linreg(["trian", "--config", "x.yaml"], capsys)
    assert code == 2 and err.strip() == (f"error: unknown command 'trian' (did you mean 'train'?); commands: "
                                         f"{', '.join(COMMANDS)}")
    code, _, err = run_linreg(["export", "--model", "x", "--out", "y", "--froce"], capsys)
    assert code == 2 and err.strip().splitlines() == [
        "error: unrecognized arguments: --froce (see linreg export --help)"]


def test_one_list_syntax():
    """Comma lists and repeated flags are one syntax: they add up, and a given list replaces the default."""
    p = Parser("demo", "demo", "A demo.")
    add_shared_args(p, model=dict(many=True), tasks=dict(names=["cb", "copa", "rte"], default=["cb"],
                                                         choices=["cb", "copa", "rte"]),
                    overrides=dict(what="the demo"))
    list_arg(p, "--seeds", of=int, default=[0, 1, 2])
    args = p.parse_args(["--model", "a,b", "--model", "c", "--label", "x,y,z", "--tasks", "copa", "--tasks", "rte,cb",
                         "train.max_steps=3", "data.train_files=[a.txt, b.txt]"])
    assert (args.model, args.label, args.seeds, args.tasks) == (["a", "b", "c"], ["x", "y", "z"], [0, 1, 2],
                                                                ["copa", "rte", "cb"])
    assert args.overrides == ["train.max_steps=3", "data.train_files=[a.txt, b.txt]"]  # an override is one word
    assert p.parse_args(["--model", "a", "--seeds", "7, 8"]).seeds == [7, 8]
    defaults = p.parse_args(["--model", "a"])
    assert defaults.seeds == [0, 1, 2] and isinstance(defaults.seeds, list)
    for argv, message in ((["--model", "a", "--seeds", "1,x"], "argument --seeds: invalid value 'x' in '1,x'"),
                          (["--model", "a", "--tasks", "wic"], "argument --tasks: unknown value 'wic'"),
                          (["--model", "a", "--tasks", ","], "argument --tasks: empty list ','"),
                          (["--model", "a,b", "--label", "x"], "1 --label for 2 --model")):
        with pytest.raises(Exception, match=re.escape(message)) as e:
            p.parse_args(argv)
        assert e.type.__name__ == "ConfigError"
    assert all(isinstance(a, ListAction) for a in p._actions if a.dest in ("model", "label", "seeds", "tasks"))
    assert isinstance(p, argparse.ArgumentParser)


def test_python_m_and_train_py_run_the_same_main(tmp_path):
    """``python -m <module>`` and ``python train.py`` are the same commands (their --help names them linreg ...)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for entry, name in (([str(REPO / "train.py")], "train"), (["-m", "sweep.compare"], "compare")):
        proc = subprocess.run([sys.executable, *entry, "--help"], cwd=tmp_path, capture_output=True, text=True,
                              timeout=300, env=env)
        assert proc.returncode == 0 and proc.stdout.startswith(f"usage: linreg {name} "), proc.stderr


def test_python_m_runs_one_copy_of_each_command():
    """``python -m pkg.mod`` imports ``pkg`` first; a package that imports the module itself would have runpy run a
    second copy of it as __main__ (a RuntimeWarning, two sets of module globals)."""
    by_package: dict[str, list[str]] = {}
    for c in COMMANDS.values():
        if "." in c.module:
            by_package.setdefault(c.module.rpartition(".")[0], []).append(c.module)
    for package, modules in by_package.items():
        proc = subprocess.run([sys.executable, "-c", f"import importlib, sys; importlib.import_module({package!r}); "
                               f"print([m for m in {modules!r} if m in sys.modules])"],
                              cwd=REPO, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
        assert proc.returncode == 0 and proc.stdout.strip() == "[]", (package, proc.stdout, proc.stderr)
