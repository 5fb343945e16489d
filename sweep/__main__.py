"""linreg sweep SWEEP.yaml [options] [-- LAUNCHER ARGS]: train and benchmark every run of a sweep (runner.py)."""
from __future__ import annotations

import argparse
import json
import sys

from core.cli import Parser, command, list_arg, run_cli
from core.errors import ConfigError


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = Parser("sweep", "sweep", "Train and benchmark every (variant, seed) of a sweep file, one run after another; "
                                 "finished runs are skipped, unfinished ones resumed.",
               epilog="Arguments after `--` go to the launcher, e.g. `-- --num_gpus 8` (with --launcher deepspeed).")
    p.add_argument("sweep", help="sweep file (YAML): base, variants, seeds, overrides (see docs/ablations.md)")
    p.add_argument("--runs-root", default="runs", help="runs go to RUNS_ROOT/<sweep name>/<variant>/seed<k> "
                   "(default: %(default)s)")
    p.add_argument("--launcher", choices=("python", "deepspeed"), default=None,
                   help="how train.py is started (default: the sweep file's `launcher`, else python)")
    p.add_argument("--no-eval", action="store_true", help="do not benchmark the runs after training")
    p.add_argument("--print-commands", action="store_true",
                   help="print one shell line per pending run (train, then benchmark) and exit")
    list_arg(p, "--only", metavar="VARIANT[/seedK]", help="run only these variants or runs")
    if "--" in argv:
        i = argv.index("--")
        args, launcher_args = p.parse_args(argv[:i]), argv[i + 1:]
    else:
        args, launcher_args = p.parse_args(argv), None
    args.launcher_args = launcher_args
    return args


@command
def main(argv: list[str] | None = None) -> int:
    from sweep.runner import launcher_prefix, launcher_ranks, pending_steps, run_sweep, shell_line
    from sweep.spec import describe, expand, load_sweep, sweep_dir

    args = parse_args(sys.argv[1:] if argv is None else argv)
    spec = load_sweep(args.sweep)
    launcher = args.launcher or spec.launcher
    launcher_args = spec.launcher_args if args.launcher_args is None else args.launcher_args
    prefix = launcher_prefix(launcher, launcher_args)
    plans = expand(spec, args.runs_root, launcher_ranks(launcher, launcher_args))
    if args.only:
        known = {p.variant for p in plans} | {p.label for p in plans}
        unknown = [s for s in args.only if s not in known]
        if unknown:
            raise ConfigError(f"--only {unknown[0]}: no such variant or run (variants: {', '.join(spec.variants)}; "
                              f"seeds: {', '.join(map(str, spec.seeds))})")
        plans = [p for p in plans if p.variant in args.only or p.label in args.only]
    root = sweep_dir(spec, args.runs_root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "sweep.json").write_text(json.dumps(describe(spec), indent=1) + "\n")  # compare reads the baseline here
    if args.print_commands:
        for plan in plans:
            steps = pending_steps(plan, spec, prefix, not args.no_eval)
            if steps:
                print(shell_line(steps))
        return 0
    return run_sweep(spec, plans, prefix, evaluate=not args.no_eval)


if __name__ == "__main__":
    run_cli(main)
