"""HF export and model loading.

``export_checkpoint`` turns any linreg checkpoint into a ``save_pretrained`` directory (safetensors + config +
tokenizer) that ``AutoModelForCausalLM`` / ``AutoTokenizer.from_pretrained`` load offline. Weights come from
DeepSpeed's ``zero_to_fp32`` reconstruction for ZeRO stages 1-3 and from the module state for stage 0.
``load_model`` accepts an HF directory, a linreg run directory or a checkpoint directory.

    python -m model.export CHECKPOINT_OR_RUN_DIR OUT_DIR
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from linreg import checkpoint


def run_dir_of(tag_dir: Path) -> Path:
    return tag_dir.parent.parent  # run_dir/checkpoints/step_XXXXXXXX


def checkpoint_state_dict(tag_dir: Path) -> dict[str, torch.Tensor]:
    model_file = tag_dir / "mp_rank_00_model_states.pt"
    if any(tag_dir.glob("*zero_pp_rank_*optim_states.pt")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
        return get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name)
    # Stage 0 keeps whole weights in the module state. DeepSpeed pickles its config and client state there too,
    # so it cannot be read with weights_only=True: only read checkpoints you trust (your own runs).
    state = torch.load(model_file, map_location="cpu", weights_only=False)
    return {k: v.float() for k, v in state["module"].items()}


def build_from_run(run_dir: Path):
    from data.tokenizer import load_tokenizer
    from linreg.run_config import load_config
    from model.build import build_model

    cfg = load_config(run_dir / "config.yaml")
    tokenizer = load_tokenizer(run_dir / "tokenizer")
    cfg.model.attn_implementation = "sdpa"  # exports must load anywhere
    return build_model(cfg.model, tokenizer), tokenizer


def model_from_checkpoint(tag_dir: Path):
    """(model, tokenizer) rebuilt from the run config with the checkpoint's weights."""
    model, tokenizer = build_from_run(run_dir_of(tag_dir))
    state = checkpoint_state_dict(tag_dir)
    tied = model.config.tie_word_embeddings
    if tied:
        state.pop("lm_head.weight", None)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (tied and k == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"checkpoint {tag_dir} does not match its run config: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}")
    return model, tokenizer


def export_checkpoint(path: str | Path, out_dir: str | Path) -> Path:
    tag_dir = checkpoint.resolve(path)
    model, tokenizer = model_from_checkpoint(tag_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "linreg_checkpoint.txt").write_text(f"{tag_dir.resolve()}\n")
    return out_dir


def load_model(path: str | Path, dtype: torch.dtype = torch.float32):
    """(model in eval mode, tokenizer) from an HF directory, a linreg run directory or a checkpoint directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if (path / "config.json").is_file():
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        return model.eval(), AutoTokenizer.from_pretrained(path)
    model, tokenizer = model_from_checkpoint(checkpoint.resolve(path))
    return model.to(dtype).eval(), tokenizer


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Export a linreg checkpoint as a Hugging Face model directory.")
    p.add_argument("checkpoint", help="run dir, its checkpoints/ dir, or a checkpoints/step_* dir")
    p.add_argument("out", help="output directory")
    args = p.parse_args(argv)
    print(export_checkpoint(args.checkpoint, args.out))


if __name__ == "__main__":
    main()
