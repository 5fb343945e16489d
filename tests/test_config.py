"""Config loading: inheritance, overrides, strict validation with one-line errors."""
import pytest

from core.errors import ConfigError
from linreg.config import load_config
from linreg.engine import ds_config

REPO_CONFIGS = __import__("pathlib").Path(__file__).resolve().parents[1] / "configs"


def test_extends_and_overrides():
    cfg = load_config(REPO_CONFIGS / "cos_reg.yaml", ["train.max_steps=200", "regularizer.weight=2.0", "optim.lr=1e-3"])
    assert cfg.name == "cos_reg"
    assert (cfg.model.hidden_size, cfg.model.num_layers, cfg.model.num_kv_heads) == (768, 12, 4)  # preset
    assert cfg.data.dataset == "roneneldan/TinyStories"  # from base.yaml
    assert cfg.regularizer.name == "cosine" and cfg.regularizer.weight == 2.0
    assert cfg.train.max_steps == 200 and isinstance(cfg.optim.lr, float) and cfg.optim.lr == 1e-3


def test_all_shipped_configs_load():
    for path in REPO_CONFIGS.glob("*.yaml"):
        load_config(path)


def test_unknown_key_names_closest():
    with pytest.raises(ConfigError, match=r"unknown config key 'train.max_stpes' \(did you mean 'train.max_steps'\?\)"):
        load_config(REPO_CONFIGS / "tiny_cpu.yaml", ["train.max_stpes=3"])
    with pytest.raises(ConfigError, match="unknown config key 'optimm'"):
        load_config(REPO_CONFIGS / "tiny_cpu.yaml", ["optimm.lr=1"])


def test_unknown_key_in_yaml_file(tmp_path):
    (tmp_path / "bad.yaml").write_text(f"extends: {REPO_CONFIGS / 'tiny_cpu.yaml'}\nmodel:\n  hiden_size: 64\n")
    with pytest.raises(ConfigError, match="model.hiden_size.*did you mean 'model.hidden_size'"):
        load_config(tmp_path / "bad.yaml")


@pytest.mark.parametrize("override,match", [
    ("train.max_steps=abc", r"train.max_steps: expected an integer, got 'abc'"),
    ("optim.lr=-1", r"optim.lr=-1.0: must be > 0"),
    ("train.precision=fp16", r"train.precision: 'fp16' is not one of"),
    ("model.num_kv_heads=5", r"model.num_kv_heads=5: must divide num_heads=4"),
    ("regularizer.name=cosin", r"regularizer.name='cosin': unknown regularizer"),
    ("data.seq_len=100000", r"data.seq_len=100000: exceeds model.max_seq_len"),
    ("train.gradient_checkpointing=maybe", r"expected true/false"),
    # a YAML scalar of one kind is not taken for another (bool is an int in Python)
    ("train.max_steps=true", r"train.max_steps: expected an integer, got True"),
    ("optim.lr=true", r"optim.lr: expected a number, got True"),
    ("train.gradient_checkpointing=1", r"expected true/false, got 1"),
    ("name=3", r"name: expected a string, got 3"),
])
def test_type_and_range_errors(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(REPO_CONFIGS / "tiny_cpu.yaml", [override])


def test_deepspeed_block_and_override_file(tmp_path):
    cfg = load_config(REPO_CONFIGS / "tiny_cpu.yaml", ["deepspeed={zero_optimization: {stage: 2, overlap_comm: true}}"])
    ds = ds_config(cfg, world_size=1)
    assert ds["zero_optimization"] == {"stage": 2, "overlap_comm": True}
    f = tmp_path / "ds.json"
    f.write_text('{"zero_optimization": {"stage": 3}}')
    assert ds_config(cfg, 1, str(f))["zero_optimization"]["stage"] == 3  # the file wins over the YAML block


def test_extends_cycle(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_integral_floats_are_integers():
    cfg = load_config(REPO_CONFIGS / "tiny_cpu.yaml", ["train.max_steps=2e2", "optim.lr=1"])
    assert cfg.train.max_steps == 200 and type(cfg.train.max_steps) is int
    assert cfg.optim.lr == 1.0 and type(cfg.optim.lr) is float


def test_differences_of_nested_and_flattened_mappings():
    from core.config import UNSET, differences, first_difference, flatten

    a = {"name": "x", "model": {"hidden_size": 64, "extra": {}}}
    b = {"name": "x", "model": {"hidden_size": 128}}
    assert flatten(a) == {"name": "x", "model.hidden_size": 64, "model.extra": {}}
    assert differences(a, b) == {"model.extra": ({}, UNSET), "model.hidden_size": (64, 128)}
    assert differences(flatten(a), flatten(b)) == differences(a, b)
    assert first_difference(a, b) == "model.extra ({} vs <unset>)"
    assert first_difference(b, a) == "model.extra (<unset> vs {})"
    assert first_difference(a, {**a}) is None
