"""``linreg <command> [options]``: one console command for every tool of the repository.

Each command is the ``main(argv)`` of one module, imported only when it runs, so that ``linreg --help`` answers
without loading torch; ``python -m <module>`` (``python train.py``, ``deepspeed train.py``) runs the same function.
Every command follows the syntax and the error rule of ``core.cli``.
"""
from __future__ import annotations

import difflib
import importlib
import sys
from typing import NamedTuple

from core.cli import command
from core.errors import ConfigError


class Command(NamedTuple):
    module: str  # whose main(argv) runs
    summary: str  # the line in ``linreg --help``


COMMANDS = {
    "train": Command("train", "train a decoder from a YAML config (deepspeed train.py for several GPUs)"),
    "eval": Command("eval.__main__", "benchmark scores of a model (SuperGLUE, XStoryCloze, TinyStories, ...)"),
    "linearity": Command("eval.linearity.__main__", "linearity profiles of models on a probe text (Fig. 1)"),
    "report": Command("eval.benchmarks.report", "tables from results.json files of linreg eval"),
    "sweep": Command("sweep.__main__", "train and benchmark every run of a sweep file"),
    "compare": Command("sweep.compare", "compare sweep variants: t-tests over seeds, paired bootstrap over documents"),
    "prune": Command("prune.__main__", "depth pruning: rank blocks, remove or replace them, evaluate"),
    "prune-report": Command("prune.report", "a pruning run's curve figures again from its pruning.json"),
    "series": Command("analysis.series", "linearity across training checkpoints (Fig. 2)"),
    "finetune": Command("analysis.finetune", "how fine-tuning moves linearity (Table 1)"),
    "probes": Command("analysis.probes", "linear classifier probes on every block's states"),
    "stories": Command("analysis.stories", "TinyStories generations graded by a judge model (Table 3)"),
    "redraw": Command("analysis.redraw", "the figures of series, finetune and probes again from their tables"),
    "linear-attention": Command("analysis.linear_attention", "summary of an in-context regression sweep"),
    "export": Command("model.export", "export a linreg checkpoint as a Hugging Face model directory"),
    "universal": Command("linreg.universal", "convert a ZeRO checkpoint to resume on another number of ranks"),
    "data": Command("data.prepare", "build a data root from the Hugging Face hub"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {c.summary}" for name, c in COMMANDS.items()]
    return "\n".join(["usage: linreg <command> [options]   (linreg <command> --help for its options)", "",
                      "commands:", *lines, "",
                      "Lists are comma-separated (--tasks cb,copa); config overrides are KEY=VALUE words after the "
                      "options.", "Each command is also python -m <its module>, e.g. python -m eval."])


@command
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, list(COMMANDS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"unknown command '{name}'{hint}; commands: {', '.join(COMMANDS)}")
    return command(importlib.import_module(COMMANDS[name].module).main)(rest)


if __name__ == "__main__":
    sys.exit(main())
