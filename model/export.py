"""Model loading from anything a user points at, and the HF export of linreg checkpoints.

``load_model(path)`` accepts an HF model directory (an export), a linreg run directory, a ``checkpoints/`` dir or
a ``step_*`` checkpoint dir, or a hub name (``org/model``, which needs the hub). ``export_checkpoint`` turns a
checkpoint into a ``save_pretrained`` directory (safetensors + config + tokenizer) that ``AutoModelForCausalLM`` /
``AutoTokenizer.from_pretrained`` load offline. Weights come from DeepSpeed's ``zero_to_fp32`` reconstruction for
ZeRO stages 1-3 and from the module state for stage 0. A run is rebuilt from the ``model:`` section of its
config.yaml and its tokenizer/ (the layout is ``core.rundir``'s).

    python -m model.export CHECKPOINT_OR_RUN_DIR OUT_DIR
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import torch

from core.cli import command
from core.config import from_dict, load_yaml_tree
from core.errors import CheckpointError, UserError
from core.rundir import RunDir, find_checkpoint, is_checkpoint_dir
from model.build import build_model
from model.config import ModelConfig


def checkpoint_state_dict(tag_dir: Path) -> dict[str, torch.Tensor]:
    model_file = tag_dir / "mp_rank_00_model_states.pt"
    if any(tag_dir.glob("*zero_pp_rank_*optim_states.pt")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
        return get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name)
    if not model_file.is_file():
        raise CheckpointError(f"checkpoint {tag_dir}: no model file {model_file.name}")
    # Stage 0 keeps whole weights in the module state. DeepSpeed pickles its config and client state there too,
    # so it cannot be read with weights_only=True: only read checkpoints you trust (your own runs).
    state = torch.load(model_file, map_location="cpu", weights_only=False)
    return {k: v.float() for k, v in state["module"].items()}


def build_from_run(run: RunDir):
    """A fresh model and the tokenizer of a run, from its config.yaml's ``model:`` section and tokenizer/."""
    from transformers import AutoTokenizer

    if not run.config.is_file():
        raise CheckpointError(f"{run.path} has no config.yaml: not a linreg run directory")
    model_cfg = from_dict(ModelConfig, load_yaml_tree(run.config).get("model") or {}, "model")
    model_cfg.attn_implementation = "sdpa"  # exports must load anywhere
    tokenizer = AutoTokenizer.from_pretrained(str(run.tokenizer))
    return build_model(model_cfg, tokenizer), tokenizer


def model_from_checkpoint(tag_dir: Path):
    """(model, tokenizer) rebuilt from the run config with the checkpoint's weights."""
    model, tokenizer = build_from_run(RunDir.of_checkpoint(tag_dir))
    state = checkpoint_state_dict(tag_dir)
    tied = model.config.tie_word_embeddings
    if tied:
        state.pop("lm_head.weight", None)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (tied and k == "lm_head.weight")]
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {tag_dir} does not match its run config: missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}")
    return model, tokenizer


def export_checkpoint(path: str | Path, out_dir: str | Path) -> Path:
    tag_dir = find_checkpoint(path)
    model, tokenizer = model_from_checkpoint(tag_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "linreg_checkpoint.txt").write_text(f"{tag_dir.resolve()}\n")
    return out_dir


def load_model(path: str | Path, dtype: torch.dtype = torch.float32, trust_remote_code: bool = False,
               revision: str | None = None):
    """(model in eval mode, tokenizer) from an HF directory, a linreg run/checkpoint directory or a hub name.
    ``revision``: a branch, tag or commit of a hub model (e.g. Pythia's ``step1000``); HF sources only."""
    from transformers import AutoTokenizer

    from model.linear_block import causal_lm_class

    local = Path(path)
    if (local / "config.json").is_file() or (not local.exists() and _looks_like_hub_name(str(path))):
        hub = {"trust_remote_code": trust_remote_code, **({"revision": revision} if revision else {})}
        try:
            # A linear-replacement pruning export loads through linreg's own copy of its modeling code.
            model = causal_lm_class(local).from_pretrained(str(path), dtype=dtype, **hub)
            tokenizer = AutoTokenizer.from_pretrained(str(path), **hub)
        except OSError as e:
            offline = " (the hub is offline: HF_HUB_OFFLINE=1)" if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
            at = f"@{revision}" if revision else ""
            raise UserError(f"cannot load model '{path}{at}'{offline}: {str(e).strip().splitlines()[0]}") from None
        return model.eval(), tokenizer
    if revision:
        raise UserError(f"revision '{revision}' given for {path}, which is a linreg run or checkpoint dir, "
                        f"not an HF model")
    if not local.exists():
        raise UserError(f"model not found: {path} (an HF model dir, a linreg run or checkpoint dir, or a hub name)")
    if not (is_checkpoint_dir(local) or (local / "checkpoints").is_dir() or (local / "latest").is_file()):
        raise UserError(f"{path} is neither an HF model dir (no config.json) nor a linreg run or checkpoint dir")
    model, tokenizer = model_from_checkpoint(find_checkpoint(local))
    return model.to(dtype).eval(), tokenizer


def _looks_like_hub_name(name: str) -> bool:
    parts = name.split("/")
    return len(parts) <= 2 and all(p and not p.startswith(".") for p in parts) and not name.startswith(("/", "~"))


@command
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Export a linreg checkpoint as a Hugging Face model directory.")
    p.add_argument("checkpoint", help="run dir, its checkpoints/ dir, or a checkpoints/step_* dir")
    p.add_argument("out", help="output directory")
    args = p.parse_args(argv)
    print(export_checkpoint(args.checkpoint, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
