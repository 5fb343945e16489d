"""Decoder blocks replaced by an affine map, as a model transformers can load (linear-replacement pruning).

A pruned model whose block i was replaced by ``h -> h W^T + b`` (a d x d ``nn.Linear`` with bias, fitted by least
squares or distilled) is the same HF model class with ``LinearBlock`` modules at those positions. No HF
architecture has such a block, so an export of it needs code. This file *is* that code: it imports only torch and
transformers, and it is copied verbatim into every such export as ``modeling_linreg_linear.py``. The export's
config.json then has

    "model_type":  "linreg_linear_<base model_type>"       (so a plain from_pretrained cannot silently load the
                                                             base class with random weights in the replaced blocks)
    "auto_map":    {"AutoConfig":           "modeling_linreg_linear.LinearReplaced<Base>Config",
                    "AutoModelForCausalLM": "modeling_linreg_linear.LinearReplaced<Base>"}
    "linreg_linear_blocks": {"layers": "<path of the block list, e.g. model.layers>", "indices": [i, ...]}

so ``AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)`` loads it anywhere, and linreg's own loader
(``model.export.load_model``, hence ``linreg eval`` and ``linreg linearity``) builds the same classes
from this module without executing code from the model directory (``causal_lm_class``). ``<Base>`` is any HF causal
LM class (``MistralForCausalLM``, ``LlamaForCausalLM``, ``GPT2LMHeadModel``, ``OPTForCausalLM``...): the classes
are made on first access by the module-level ``__getattr__``.

With a KV cache (``generate``), a ``LinearBlock`` appends a one-value-wide dummy key/value per token at its layer
index, so the cache's sequence length (which HF reads from layer 0) stays right when block 0 is linear.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers
from torch import nn

MODEL_TYPE_PREFIX = "linreg_linear_"
CLASS_PREFIX = "LinearReplaced"
CONFIG_KEY = "linreg_linear_blocks"
MODELING_FILE = "modeling_linreg_linear.py"


class LinearBlock(nn.Module):
    """h -> h W^T + b in place of a decoder block; takes (and ignores) whatever the decoder passes a block."""

    def __init__(self, hidden_size: int, layer_idx: int | None = None, device=None, dtype=None):
        super().__init__()
        self.linear = nn.Linear(hidden_size, hidden_size, bias=True, device=device, dtype=dtype)
        self.layer_idx = layer_idx

    def forward(self, hidden_states: torch.Tensor, *args, past_key_values=None, use_cache=None, **kwargs):
        if past_key_values is None and args and hasattr(args[0], "update"):
            past_key_values = args[0]  # GPT-2 passes the cache positionally
        if use_cache and past_key_values is not None and self.layer_idx is not None:
            cache = getattr(past_key_values, "self_attention_cache", past_key_values)
            b, t = hidden_states.shape[:2]
            dummy = hidden_states.new_zeros(b, 1, t, 1)
            cache.update(dummy, dummy, self.layer_idx)
        return self.linear(hidden_states)


_CLASSES: dict[str, type] = {}


def _make_classes(base_name: str) -> tuple[type, type]:
    base = getattr(transformers, base_name)
    base_config = base.config_class

    class Config(base_config):
        model_type = MODEL_TYPE_PREFIX + base_config.model_type

    class Model(base):
        config_class = Config

        def __init__(self, config, *args, **kwargs):
            super().__init__(config, *args, **kwargs)
            spec = getattr(config, CONFIG_KEY)
            layers = self.get_submodule(spec["layers"])
            for i in spec["indices"]:
                layers[i] = LinearBlock(config.hidden_size, layer_idx=i)

    Config.__name__ = Config.__qualname__ = f"{CLASS_PREFIX}{base_name}Config"
    Model.__name__ = Model.__qualname__ = f"{CLASS_PREFIX}{base_name}"
    Config.__module__ = Model.__module__ = __name__
    _CLASSES[Config.__name__], _CLASSES[Model.__name__] = Config, Model
    _inherit_key_renames(base_name, base_config.model_type, Model.__name__)
    return Config, Model


def _inherit_key_renames(base_name: str, base_type: str, name: str) -> None:
    """transformers >= 5 renames some checkpoint keys on load by class name or model_type (GPT-NeoX's ``embed_out``
    -> ``lm_head``) and skips that for classes it does not know: give ours the base's renames."""
    try:
        from transformers import conversion_mapping as cm
    except ImportError:  # older transformers load the keys as they are saved
        return
    mapping = cm.get_checkpoint_conversion_mapping(base_name) or cm.get_checkpoint_conversion_mapping(base_type)
    if mapping:
        cm.register_checkpoint_conversion_mapping(name, mapping, overwrite=True)


def __getattr__(name: str):
    """``LinearReplaced<Base>`` and ``LinearReplaced<Base>Config`` for any transformers class ``<Base>``."""
    if name in _CLASSES:
        return _CLASSES[name]
    if name.startswith(CLASS_PREFIX):
        base = name[len(CLASS_PREFIX):].removesuffix("Config")
        if hasattr(transformers, base):
            config, model = _make_classes(base)
            return config if name.endswith("Config") else model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def causal_lm_class(path: str | Path):
    """The class that loads the model directory ``path``: ``LinearReplaced<Base>`` for a linear-replacement
    export, otherwise ``transformers.AutoModelForCausalLM``."""
    config = Path(path) / "config.json"
    if config.is_file():
        spec = json.loads(config.read_text())
        if CONFIG_KEY in spec and spec.get("architectures"):
            return __getattr__(spec["architectures"][0])
    return transformers.AutoModelForCausalLM


def export_config(config_dict: dict, base_name: str, layers_path: str, indices: list[int]) -> dict:
    """config.json of a linear-replacement export of a ``base_name`` model (see the module docstring)."""
    cls = CLASS_PREFIX + base_name.removeprefix(CLASS_PREFIX)
    model_type = MODEL_TYPE_PREFIX + config_dict["model_type"].removeprefix(MODEL_TYPE_PREFIX)
    return {**config_dict, "model_type": model_type, "architectures": [cls],
            "auto_map": {"AutoConfig": f"{MODELING_FILE[:-3]}.{cls}Config",
                         "AutoModelForCausalLM": f"{MODELING_FILE[:-3]}.{cls}"},
            CONFIG_KEY: {"layers": layers_path, "indices": sorted(indices)}}
