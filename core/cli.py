"""The command line of every linreg tool: one error rule, one syntax, and the argument groups the tools share.

    linreg <command> [options]            # the commands.py dispatcher
    python -m <module> [options]          # the same main(argv), e.g. python -m eval for linreg eval

Syntax, the same in every command:

- **Lists**: one flag with comma-separated values, ``--tasks cb,copa``. Giving the flag again adds to the list
  (``--model runs/a --model runs/b`` is ``--model runs/a,runs/b``); a list flag that is given replaces its default.
- **Config overrides**: ``KEY=VALUE`` words after the options, dotted keys of the config the command trains with and
  values read as YAML: ``train.max_steps=200 optim.lr=3e-4 data.train_files=[a.txt, b.txt]`` (train, the healing
  runs of prune, the runs of finetune). An override is one word, not a list: commas inside its value stay.
- **Models**: ``--model PATH`` (an HF model dir or hub name, a linreg run or checkpoint dir). A command that compares
  models takes a list, and ``--label`` names them in its tables and legends, one label per model, in order.
- **Shared options** mean the same everywhere: ``--device``/``--dtype``, ``--data-root``, ``--tasks``, ``--out`` and
  the linearity probe (``--text``, ``--text-field``, ``--num-chunks``, ``--chunk-chars``, ``--max-tokens``,
  ``--probe-seed``, ``--probe-batch-size``). ``--seed`` seeds a command's own draws (bootstrap, fits, sampling),
  ``--probe-seed`` the probe's documents.

Errors: a ``UserError`` is printed as one ``error: ...`` line with exit code 2; a diverged run
(``NonFiniteLossError``) exits 1 the same way; anything else is a bug and keeps its traceback (``LINREG_DEBUG=1``
shows the traceback of user errors too). A usage error that argparse finds (a missing option, a bad value) is a
``ConfigError`` and takes the same path.

    @command                      # main(argv) now returns 2 (and prints one line) on a UserError
    def main(argv=None) -> int:
        p = Parser("eval", "eval", __doc__)
        add_shared_args(p, model=True, data_root=True, device=True)   # the shared groups this command offers
        ...

    if __name__ == "__main__":
        run_cli(main)             # sys.exit(main()), with the same rule for a main that is not decorated

This module is the lowest layer: registries (task names, criteria) come in from the caller, and nothing heavy is
imported until a parser is built, so ``linreg --help`` stays fast.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from core.errors import ConfigError, NonFiniteLossError, UserError, one_line


def command(main: Callable[..., int | None]) -> Callable[..., int]:
    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs) or 0
        except (UserError, NonFiniteLossError) as e:
            if os.environ.get("LINREG_DEBUG"):
                raise
            print(f"error: {one_line(e)}", file=sys.stderr, flush=True)
            return 2 if isinstance(e, UserError) else 1

    return wrapper


def run_cli(main: Callable[[], int | None]) -> None:
    sys.exit(command(main)())


# -- the parser ------------------------------------------------------------------------------------------------------

class Parser(argparse.ArgumentParser):
    """The parser of ``linreg <name>`` (``python -m <module>``), described by the first paragraph of ``doc``: its
    usage errors are ``ConfigError``s (one line, exit 2, through ``command``), its list options arrive as lists and
    its ``--device`` default is resolved."""

    def __init__(self, name: str, module: str, doc: str | None, epilog: str | None = None, **kwargs):
        summary = (doc or "").strip().split("\n\n")[0]
        same = f"The same command: python {module if module.endswith('.py') else '-m ' + module} [options]."
        super().__init__(prog=f"linreg {name}", description=summary, allow_abbrev=False,
                         epilog=f"{epilog} {same}" if epilog else same,
                         formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)

    def error(self, message: str):
        raise ConfigError(f"{message} (see {self.prog} --help)")

    def parse_known_args(self, args=None, namespace=None):
        ns, rest = super().parse_known_args(args, namespace)
        if getattr(ns, "device", "") is None:  # _device_args' default
            import torch

            ns.device = "cuda" if torch.cuda.is_available() else "cpu"
        for action in self._actions:
            value = getattr(ns, action.dest, None)
            if isinstance(action, ListAction) and isinstance(value, tuple):
                setattr(ns, action.dest, list(value))  # the default, as a list the caller may change
            pairs = getattr(action, "pairs_with", None)
            given, other = getattr(ns, action.dest, None), getattr(ns, pairs or "", None)
            if pairs and given and len(given) != len(other or ()):
                self.error(f"{len(given)} --{action.dest} for {len(other or ())} --{pairs}: give one per --{pairs}")
        return ns, rest


class ListAction(argparse.Action):
    """A comma-separated list; each use of the flag adds to it (the default is replaced by the first use)."""

    def __init__(self, option_strings, dest, item_type: Callable[[str], Any] = str,
                 item_choices: Sequence[str] | None = None, **kwargs):
        self.item_type, self.item_choices = item_type, item_choices
        if isinstance(kwargs.get("default"), list):
            kwargs["default"] = tuple(kwargs["default"])  # a tuple marks "not given yet"
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        items = []
        for raw in str(values).split(","):
            raw = raw.strip()
            if not raw:
                continue
            try:
                item = self.item_type(raw)
            except (TypeError, ValueError):
                raise argparse.ArgumentError(self, f"invalid value {raw!r} in {values!r}") from None
            if self.item_choices is not None and item not in self.item_choices:
                raise argparse.ArgumentError(self, f"unknown value {raw!r} (choose from "
                                                   f"{', '.join(map(str, self.item_choices))})")
            items.append(item)
        if not items:
            raise argparse.ArgumentError(self, f"empty list {values!r}")
        current = getattr(namespace, self.dest, None)
        setattr(namespace, self.dest, (current if isinstance(current, list) else []) + items)


def list_arg(group, *flags: str, of: Callable[[str], Any] = str, choices: Sequence[str] | None = None,
             default: Sequence | None = None, **kwargs) -> argparse.Action:
    """A list-valued option (see the module docstring): ``--flag a,b`` and ``--flag a --flag b`` are the same."""
    metavar = kwargs.pop("metavar", None) or flags[0].lstrip("-").upper().replace("-", "_")
    return group.add_argument(*flags, action=ListAction, item_type=of, item_choices=choices,
                              default=list(default) if default is not None else None,
                              metavar=f"{metavar}[,{metavar}...]", **kwargs)


# -- the shared groups -----------------------------------------------------------------------------------------------

MODEL_HELP = "an HF model dir or hub name, a linreg run dir or checkpoint dir"


def add_shared_args(p: argparse.ArgumentParser, *, model: bool | dict = False, tasks: dict | None = None,
                    data_root: bool | dict = False, probe: dict | None = None, device: bool | dict = False,
                    overrides: dict | None = None) -> None:
    """The option groups a command shares with the others, added in one call and in one order: ``--model`` and
    ``--label``, ``--tasks``, ``--data-root``, the linearity probe, ``--device``/``--dtype``, the ``KEY=VALUE``
    overrides. A keyword holds the settings of its group (the keywords of the builder below: ``model=dict(many=True)``,
    ``tasks=dict(names=..., default=...)``, ``probe=dict(defaults=ProbeSetConfig)``, ``overrides=dict(what=...)``);
    ``True`` takes a group's defaults and a group left out is not offered."""
    for build, settings in ((_model_args, model), (_tasks_arg, tasks), (_data_root_arg, data_root),
                            (_probe_args, probe), (_device_args, device), (_overrides_arg, overrides)):
        if settings:
            build(p, **({} if settings is True else settings))


def _model_args(p: argparse.ArgumentParser, many: bool = False, required: bool = True, help: str = MODEL_HELP,
                label_help: str | None = None) -> None:
    """``--model`` (a list with ``many``) and ``--label``: one label per model (default: the model's name)."""
    g = p.add_argument_group("model")
    if many:
        list_arg(g, "--model", required=required, default=[], metavar="PATH", help=f"{help} (a list)")
        list_arg(g, "--label", default=[], metavar="NAME",
                 help=label_help or "names in the tables and legends, one per --model (default: the paths' names)"
                 ).pairs_with = "model"
    else:
        g.add_argument("--model", required=required, metavar="PATH", help=help)
        if label_help:
            g.add_argument("--label", metavar="NAME", help=label_help)


def _tasks_arg(p: argparse.ArgumentParser, names: Sequence[str], default: Sequence[str],
               choices: Sequence[str] | None = None, help: str = "") -> None:
    """``--tasks``: ``names`` are what the caller's registry accepts (listed in the help); ``choices`` makes the
    parser refuse anything else (otherwise the registry checks, with its own hints)."""
    list_arg(p, "--tasks", default=list(default), choices=choices, metavar="TASK",
             help=f"{help + '; ' if help else ''}default {','.join(default)}; tasks: {', '.join(names)}")


def _data_root_arg(p: argparse.ArgumentParser, help: str = "") -> None:
    p.add_argument("--data-root", metavar="DIR",
                   help=f"data root (default $LINREG_DATA_ROOT){'; ' + help if help else ''}")


def _probe_args(p: argparse.ArgumentParser, defaults: Any,
                text: str | None = "default <data root>/tinystories/valid.txt") -> None:
    """The linearity probe (docs/linearity.md): ``defaults`` carries ``num_chunks``, ``chunk_chars`` and ``seed``
    (eval.linearity's ``ProbeSetConfig``, which this layer cannot import); ``text`` ends the help of ``--text`` (None:
    no ``--text``, the command has its own text)."""
    g = p.add_argument_group("linearity probe (docs/linearity.md)")
    if text is not None:
        g.add_argument("--text", metavar="FILE", help=f"probe text (.txt or .jsonl); {text}")
        g.add_argument("--text-field", default="text", help="text field of .jsonl probe records (default %(default)s)")
    g.add_argument("--num-chunks", type=int, default=defaults.num_chunks, help="documents drawn (default %(default)s)")
    g.add_argument("--chunk-chars", type=int, default=defaults.chunk_chars,
                   help="characters per document (default %(default)s)")
    g.add_argument("--max-tokens", type=int, default=None, help="cap on pooled probe tokens")
    g.add_argument("--probe-seed", type=int, default=defaults.seed, help="document draw seed (default %(default)s)")
    g.add_argument("--probe-batch-size", type=int, default=8, help="probe sequences per forward (default %(default)s)")


def _device_args(p: argparse.ArgumentParser, dtype: bool = True) -> None:
    """``--device`` (default: cuda when available) and ``--dtype`` (the precision vocabulary of core.precision)."""
    from core import precision

    g = p.add_argument_group("device")
    g.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available)")
    if dtype:
        g.add_argument("--dtype", choices=precision.CHOICES, default="auto",
                       help="forward precision (auto: bf16 on CUDA, fp32 otherwise; default %(default)s)")


def _overrides_arg(p: argparse.ArgumentParser, what: str) -> None:
    """Dotted config overrides, the positional ``KEY=VALUE`` words after the options."""
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help=f"overrides of {what}: dotted keys, YAML values, e.g. train.max_steps=200")
