"""The sweep file: base config(s), named variants of dotted overrides, seeds; and the runs it expands to.

    name: table2_150m                # default: the file's stem. Runs go to <runs root>/<name>/<variant>/seed<k>/
    base: ../no_reg.yaml             # a train config, or a list of them merged in order (as `extends:` merges)
    seeds: [1, 2, 3]                 # each run gets train.seed=<k>
    baseline: none                   # compare's default --baseline (default: the first variant)
    overrides: {train.max_steps: 20000}          # shared by every run
    variants:                        # name -> dotted overrides (applied after the shared ones)
      none: {regularizer.name: none}
      cos05: {regularizer.name: cosine, regularizer.weight: 0.5}
    launcher: python                 # or deepspeed (then `launcher_args`, or the CLI's `-- ARGS`, go before train.py)
    launcher_args: []
    benchmarks: {enabled: true, tasks: [superglue, xstorycloze_en, tinystories], limit: null, args: []}  # eval's
                                     # default tasks; names are checked against its registry when the file loads
    wandb: {project: linreg, mode: offline}      # optional: logging.wandb for every run, grouped by sweep/variant

Paths in the file are relative to the file. A sweep file may ``extends:`` another (as configs do: mappings such as
``overrides`` merge key by key); ``base`` is then resolved relative to the file named on the command line.
Override values are set as train.py sets a dotted override: a mapping value replaces the whole section.

Every run is the ordinary command line
``train.py --config BASE --run-dir DIR --resume auto <shared> <variant> [wandb] name=... train.seed=<k>``, so a
run dir of a sweep is resumable and evaluable on its own. ``expand`` resolves every run's config before anything
is written, so an unknown key, a bad value or a missing base file is one error line and nothing on disk.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from core.config import check, from_dict, load_yaml_tree, yaml_load
from core.errors import ConfigError, UserError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")  # a directory name on every file system
# Keys the runner sets per run: a sweep file that sets them would be silently overridden.
RUNNER_KEYS = ("train.seed", "name")


def _default_tasks() -> list[str]:
    from eval.benchmarks.tasks import DEFAULT_TASKS

    return list(DEFAULT_TASKS)


@dataclass
class BenchmarksSpec:
    """``linreg eval`` on every run's final checkpoint, once (full splits unless ``limit``)."""
    enabled: bool = True
    tasks: list[str] = field(default_factory=_default_tasks)
    limit: int | None = None  # first N documents per task: for tests only, the results are logged as <task>_firstN
    args: list[str] = field(default_factory=list)  # more `linreg eval` options, e.g. [--dtype, fp32]

    def validate(self, p: str) -> None:
        from eval.benchmarks.tasks import expand_task_names

        check(bool(self.tasks), f"{p}.tasks", self.tasks, "name at least one task")
        try:  # a typo fails here, when the file loads, not after every run has trained
            expand_task_names(self.tasks)
        except ValueError as e:
            raise ConfigError(f"{p}.tasks: {e}") from None
        check(self.limit is None or self.limit >= 1, f"{p}.limit", self.limit, "must be >= 1 or null")


@dataclass
class SweepSpec:
    base: list[str]
    variants: dict
    name: str = ""
    seeds: list[int] = field(default_factory=lambda: [1])
    baseline: str | None = None
    overrides: dict = field(default_factory=dict)
    launcher: Literal["python", "deepspeed"] = "python"
    launcher_args: list[str] = field(default_factory=list)
    benchmarks: BenchmarksSpec = field(default_factory=BenchmarksSpec)
    wandb: dict | None = None  # logging.wandb keys (project, entity, mode, ...) for every run

    def validate(self, p: str) -> None:
        check(bool(self.base), "base", self.base, "name the train config the runs start from")
        check(bool(self.variants), "variants", self.variants, "define at least one variant")
        check(bool(self.seeds), "seeds", self.seeds, "give at least one seed")
        check(len(set(self.seeds)) == len(self.seeds), "seeds", self.seeds, "seeds repeat")
        check(all(s >= 0 for s in self.seeds), "seeds", self.seeds, "must be >= 0")
        check(bool(_NAME.match(self.name)), "name", self.name, "use letters, digits, and _ . + - only")
        for variant, overrides in self.variants.items():
            check(bool(_NAME.match(str(variant))), "variants", variant, "use letters, digits, and _ . + - only")
            check(isinstance(overrides, dict), f"variants.{variant}", overrides,
                  "expected a mapping of dotted keys to values, e.g. {regularizer.weight: 0.5}")
            _check_overrides(overrides, f"variants.{variant}")
        _check_overrides(self.overrides, "overrides")
        if self.baseline is not None:
            check(self.baseline in self.variants, "baseline", self.baseline,
                  f"not a variant (variants: {', '.join(self.variants)})")


def _check_overrides(overrides: dict, where: str) -> None:
    for key in overrides:
        check(isinstance(key, str) and key.strip() != "", where, key, "keys are dotted config keys")
        check(key not in RUNNER_KEYS, f"{where}.{key}", overrides[key],
              "set by the sweep runner (seeds come from `seeds:`)")


def override_arg(key: str, value) -> str:
    """``key=value`` in the form train.py parses back to the same value (its overrides are read as YAML)."""
    text = value if isinstance(value, str) else json.dumps(value)  # JSON is YAML flow syntax
    if isinstance(value, str) and yaml_load(value) != value:  # "null", "1e-3", "yes": keep them strings
        text = json.dumps(value)
    if yaml_load(text) != value:
        raise ConfigError(f"{key}: {value!r} cannot be written as a command-line override")
    return f"{key}={text}"


@dataclass
class RunPlan:
    """One (variant, seed): its run directory and the train.py arguments that make it."""
    variant: str
    seed: int
    run_dir: Path
    config: Path  # the file given to --config
    overrides: list[str]
    max_steps: int  # train.max_steps of the resolved config (what "finished" means)

    @property
    def label(self) -> str:
        return f"{self.variant}/seed{self.seed}"


def load_sweep(path: str | os.PathLike) -> SweepSpec:
    path = Path(path)
    tree = load_yaml_tree(path)  # also rejects a missing file and bad YAML with one line
    tree.setdefault("name", path.stem)
    base = tree.get("base")
    if base is not None:
        base = [base] if isinstance(base, str) else base
        if not isinstance(base, list) or not all(isinstance(b, str) for b in base):
            raise ConfigError(f"base: {tree['base']!r}: expected a config file or a list of them")
        tree["base"] = [str((path.resolve().parent / b).resolve()) for b in base]
        for b in tree["base"]:
            if not Path(b).is_file():
                raise ConfigError(f"base: config file not found: {b}")
    elif "variants" in tree:
        raise ConfigError(f"{path}: no `base:` (the train config every run starts from)")
    try:
        return from_dict(SweepSpec, tree)
    except TypeError as e:  # a required key is missing: dataclass __init__ names it
        raise ConfigError(f"{path}: {e}".replace("SweepSpec.__init__() ", "")) from None


def sweep_dir(spec: SweepSpec, runs_root: str | os.PathLike) -> Path:
    return Path(runs_root) / spec.name


def base_config(spec: SweepSpec, runs_root: str | os.PathLike) -> Path:
    """The file passed to ``--config``: the base itself, or for several bases a generated file extending them all
    (train.py takes one config file), kept in the sweep directory."""
    if len(spec.base) == 1:
        return Path(spec.base[0])
    return sweep_dir(spec, runs_root) / "base.yaml"


def write_base_config(spec: SweepSpec, runs_root: str | os.PathLike) -> None:
    target = base_config(spec, runs_root)
    if len(spec.base) > 1:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("# written by linreg sweep: the sweep's base configs, merged in order\n"
                          + json.dumps({"extends": spec.base}) + "\n")


def run_overrides(spec: SweepSpec, variant: str, seed: int) -> list[str]:
    """Shared overrides, the variant's (which win), tracking keys, then the run's name and seed."""
    args = [override_arg(k, v) for k, v in spec.overrides.items()]
    args += [override_arg(k, v) for k, v in spec.variants[variant].items()]
    if spec.wandb is not None:
        tracking = {"group": spec.name, "job_type": variant, "name": f"{spec.name}/{variant}/seed{seed}"}
        args += [override_arg(f"logging.wandb.{k}", v) for k, v in {**tracking, **spec.wandb}.items()]
    return [*args, override_arg("name", f"{spec.name}/{variant}/seed{seed}"), f"train.seed={seed}"]


def expand(spec: SweepSpec, runs_root: str | os.PathLike, world_size: int | None = None) -> list[RunPlan]:
    """Every (variant, seed), variant-major, each config resolved as train.py will resolve it (a run dir that
    exists already contributes its saved config.yaml, as ``--resume auto`` does), and its batch split over
    ``world_size`` ranks when the launch says how many. On a bad config nothing is left on disk: a generated base
    file written for the check is removed again."""
    from linreg.config import resolve_run

    config = base_config(spec, runs_root)
    created = [p for p in (*reversed(config.parents), config) if not p.exists()]
    write_base_config(spec, runs_root)
    plans = []
    try:
        for variant in spec.variants:
            for seed in spec.seeds:
                run_dir = sweep_dir(spec, runs_root) / variant / f"seed{seed}"
                overrides = run_overrides(spec, variant, seed)
                try:
                    cfg, _ = resolve_run(str(config), str(run_dir), "auto", overrides)
                    if world_size is not None:
                        cfg.train.split(world_size)
                except ConfigError as e:
                    raise ConfigError(f"variant {variant}, seed {seed}: {e}") from None
                plans.append(RunPlan(variant, seed, run_dir, config, overrides, cfg.train.max_steps))
    except UserError:
        for p in reversed(created):
            p.unlink() if p.is_file() else p.rmdir()
        raise
    return plans


def describe(spec: SweepSpec) -> dict:
    """The resolved sweep as plain data (saved beside the runs; compare reads the baseline and order from it)."""
    return asdict(spec)
