"""The batch contract: ``train.global_batch_size`` sequences per step on any number of ranks, the accumulation
derived from it, the micro-batch and the world size, and checked against DeepSpeed's own batch rule."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from core.errors import ConfigError
from linreg.config import load_config
from linreg.engine import ds_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
WORLDS = (1, 2, 4, 8)


class DataParallel:
    """DeepSpeed's ``mpu`` interface: the only thing its batch arithmetic asks of it is the data-parallel size."""

    def __init__(self, world_size: int):
        self.world_size = world_size

    def get_data_parallel_world_size(self) -> int:
        return self.world_size


@pytest.fixture(scope="module")
def deepspeed_config():
    """DeepSpeed's config parser; it reads the world size from the mpu only once a process group exists."""
    import deepspeed
    from deepspeed.runtime.config import DeepSpeedConfig

    from core import dist

    dist.setup_env()
    deepspeed.init_distributed(dist_backend="gloo", verbose=False)
    return DeepSpeedConfig


def deepspeed_split(deepspeed_config, global_batch: int, micro: int | None, world: int) -> tuple[int, int] | None:
    """DeepSpeed's own derivation of (micro-batch, accumulation) from train_batch_size and the micro-batch if
    given (None where it refuses)."""
    given = {"train_batch_size": global_batch} | ({"train_micro_batch_size_per_gpu": micro} if micro else {})
    try:
        parsed = deepspeed_config(given, mpu=DataParallel(world))
    except AssertionError:
        return None
    assert parsed.world_size == world
    return parsed.train_micro_batch_size_per_gpu, parsed.gradient_accumulation_steps


def shipped_configs(tmp_path) -> dict[str, object]:
    """Every shipped train config, the model files over base.yaml (how they are used), and every run of every
    sweep file, resolved as train.py resolves them."""
    from sweep.spec import expand, load_sweep

    found = {p.name: load_config(p) for p in sorted(CONFIGS.glob("*.yaml"))}
    for p in sorted((CONFIGS / "model").glob("*.yaml")):
        over_base = tmp_path / f"{p.stem}_over_base.yaml"
        over_base.write_text(f"extends: [{CONFIGS / 'base.yaml'}, {p}]\n")
        found[f"model/{p.name}"] = load_config(over_base)
    for p in sorted((CONFIGS / "paper").glob("*.yaml")):
        for plan in expand(load_sweep(p), tmp_path / "runs"):
            found[f"paper/{p.stem}/{plan.label}"] = load_config(plan.config, plan.overrides)
    return found


def test_derivation_matches_deepspeed_on_1_to_8_ranks(deepspeed_config):
    outcomes = {"split": 0, "refused": 0}
    for world in range(1, 9):
        for global_batch in (1, 6, 8, 12, 16, 24, 128):
            for micro in (None, 1, 2, 3, 4, 5, 8, 16, 32):
                cfg = load_config(None, [f"train.global_batch_size={global_batch}",
                                         f"train.micro_batch_size={'null' if micro is None else micro}"])
                expected = deepspeed_split(deepspeed_config, global_batch, micro, world)
                if expected is None:
                    with pytest.raises(ConfigError, match=f"train.global_batch_size={global_batch} (is not divisible"
                                                          f"|cannot be split)"):
                        cfg.train.split(world)
                else:
                    assert cfg.train.split(world) == expected
                outcomes["split" if expected else "refused"] += 1
    assert min(outcomes.values()) > 50, outcomes  # the grid has both outcomes in numbers


def test_every_shipped_config_and_sweep_run_trains_the_same_tokens_on_1_2_4_8_ranks(tmp_path, deepspeed_config):
    configs = shipped_configs(tmp_path)
    assert {"tiny_cpu.yaml", "base.yaml", "model/mistral_650m.yaml", "paper/table2_150m/none/seed1",
            "paper/table2_650m_textbooks/mse2/seed2", "paper/mini_cpu/cos05/seed1"} <= set(configs)
    for name, cfg in configs.items():
        assert cfg.train.grad_accum_steps is None, name  # shipped files give the contract, never the split
        tokens = set()
        for world in WORLDS:
            ds = ds_config(cfg, world)
            deepspeed_config(ds, mpu=DataParallel(world))  # DeepSpeed's own batch assertions accept the split
            assert ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * world == \
                cfg.train.global_batch_size, (name, world)
            tokens.add(ds["train_batch_size"] * cfg.data.seq_len)
        assert len(tokens) == 1, (name, tokens)
    for path in [*CONFIGS.rglob("*.yaml")]:
        assert "grad_accum_steps" not in path.read_text(), path


def test_a_command_line_batch_re_derives_the_accumulation():
    for path in sorted(CONFIGS.glob("*.yaml")):
        cfg = load_config(path, ["train.global_batch_size=8", "train.micro_batch_size=2"])
        assert [ds_config(cfg, w)["gradient_accumulation_steps"] for w in (1, 2)] == [4, 2], path


def test_explicit_accumulation_is_an_assertion():
    cfg = load_config(CONFIGS / "base.yaml", ["train.grad_accum_steps=4"])
    assert cfg.train.split(2) == (16, 4)  # 128 / (16 × 2)
    with pytest.raises(ConfigError, match=r"^train.grad_accum_steps=4 disagrees with train.global_batch_size 128 / "
                                          r"\(micro_batch_size 16 × 8 rank\(s\)\) = 1: drop it, it is derived$"):
        cfg.train.split(8)


@pytest.mark.parametrize("overrides,world,message", [
    (["train.micro_batch_size=32"], 8, "train.global_batch_size=128 is not divisible by train.micro_batch_size "
                                       "32 × 8 rank(s) = 256: set train.micro_batch_size to a divisor of 16 "
                                       "(global / ranks)"),
    (["train.global_batch_size=12", "train.micro_batch_size=1"], 8,
     "train.global_batch_size=12 is not divisible by train.micro_batch_size 1 × 8 rank(s) = 8: set "
     "train.global_batch_size to a multiple of 8"),
    (["train.global_batch_size=12", "train.micro_batch_size=null"], 8,
     "train.global_batch_size=12 cannot be split over 8 rank(s) (train.micro_batch_size=null): set "
     "train.global_batch_size to a multiple of 8"),
])
def test_a_batch_that_cannot_divide_is_one_line(overrides, world, message):
    cfg = load_config(CONFIGS / "base.yaml", overrides)
    with pytest.raises(ConfigError) as e:
        ds_config(cfg, world)
    assert str(e.value) == message


def test_a_deepspeed_batch_that_disagrees_is_refused(tmp_path):
    cfg = load_config(CONFIGS / "tiny_cpu.yaml", ["deepspeed={zero_optimization: {stage: 2, overlap_comm: true}}"])
    ds = ds_config(cfg, world_size=2)
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == \
        (16, 8, 1)  # micro_batch_size null: global / ranks
    assert ds["zero_optimization"] == {"stage": 2, "overlap_comm": True}
    f = tmp_path / "ds.json"
    f.write_text('{"train_batch_size": 64, "gradient_accumulation_steps": 4}')
    with pytest.raises(ConfigError, match=r"train_batch_size 64, train_micro_batch_size_per_gpu 8, "
                                          r"gradient_accumulation_steps 4 on 2 rank\(s\) must be "
                                          r"train.global_batch_size 16"):
        ds_config(cfg, world_size=2, override_file=str(f))
    f.write_text('{"train_batch_size": 16, "zero_optimization": {"stage": 3}}')
    assert ds_config(cfg, 2, str(f))["zero_optimization"]["stage"] == 3  # agreeing batch keys are fine


def test_sweep_checks_the_batch_for_the_launchers_gpus(tmp_path, capsys):
    from sweep.__main__ import main  # the command-line entry: errors are one line and exit code 2

    sweep = str(CONFIGS / "paper" / "table2_150m.yaml")
    runs = tmp_path / "runs"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main([sweep, "--runs-root", str(runs), "--print-commands", "--", "--num_gpus", "8"]) == 0
    lines = out.getvalue().splitlines()
    assert len(lines) == 12 and all("--num_gpus 8" in line for line in lines)
    code = main([sweep, "--runs-root", str(tmp_path / "other"), "--print-commands", "--", "--num_gpus", "3"])
    assert code == 2 and not (tmp_path / "other").exists()
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: variant none, seed 1: train.global_batch_size=128 is not divisible by train.micro_batch_size 16 × "
        "3 rank(s) = 48: set train.global_batch_size to a multiple of 48")
