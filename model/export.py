"""Model loading from anything a user points at, and the HF export of linreg checkpoints.

``load_model(path)`` accepts an HF model directory (an export), a linreg run directory, a ``checkpoints/`` dir or
a ``step_*`` checkpoint dir, or a hub name (``org/model``, which needs the hub). ``export_checkpoint`` turns a
checkpoint into a ``save_pretrained`` directory (safetensors + config + tokenizer) that ``AutoModelForCausalLM`` /
``AutoTokenizer.from_pretrained`` load offline. Weights come from DeepSpeed's ``zero_to_fp32`` reconstruction for
ZeRO stages 1-3 and from the module state for stage 0, after every file has passed PyTorch's restricted unpickler
(``load_weights_file``: a checkpoint from elsewhere cannot run code; README, "What is safe to load"). A run is
rebuilt from the ``model:`` section of its config.yaml and its tokenizer/ (the layout is ``core.rundir``'s).

    linreg export --model CHECKPOINT_OR_RUN_DIR --out OUT_DIR
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from core.cli import Parser, add_shared_args, command, run_cli
from core.config import from_dict, load_yaml_tree
from core.errors import CheckpointError, ConfigError, UserError
from core.rundir import RunDir, find_checkpoint, is_checkpoint_dir
from model.build import build_model
from model.config import ModelConfig

TRUST_ENV = "LINREG_TRUST_CHECKPOINTS"  # =1: unpickle checkpoint files fully (only for files you trust)


def _deepspeed_records() -> list[type]:
    """The DeepSpeed classes its ZeRO optimizer files pickle besides tensors, containers and numbers: plain records
    and an int enum, without ``__setstate__`` or ``__reduce__`` of their own."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [fragment_address, LossScaler, DynamicLossScaler, ZeroStageEnum]


def load_weights_file(path: Path, allow: list[type] = (), mmap: bool = False):
    """``torch.load`` of one checkpoint file through PyTorch's restricted unpickler (``weights_only=True``, plus the
    classes in ``allow``): a file that would need any other Python object -- which full unpickling would build by
    running code the file names -- is refused with a CheckpointError, unless ``$LINREG_TRUST_CHECKPOINTS=1``."""
    import pickle

    trusted = os.environ.get(TRUST_ENV) == "1"
    try:
        with torch.serialization.safe_globals(list(allow)):
            return torch.load(path, map_location="cpu", mmap=mmap, weights_only=not trusted)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as e:
        extra = _unsafe_globals(path, allow) if isinstance(e, pickle.UnpicklingError) else []
        if extra:
            raise CheckpointError(f"{path} is not a plain-weights checkpoint (it pickles {', '.join(extra[:3])}): "
                                  f"export it with linreg export where it was written, or set "
                                  f"{TRUST_ENV}=1 if you trust this file") from None
        text = str(e).split("WeightsUnpickler error:")[-1].strip() or type(e).__name__
        why = text.splitlines()[0].split(". ")[0]  # torch's first sentence, without its advice on weights_only
        raise CheckpointError(f"cannot read checkpoint file {path}: damaged or not a PyTorch file ({why})") from None


def _unsafe_globals(path: Path, allow) -> list[str]:
    """The Python objects a torch file names beyond the restricted unpickler's (read without running them)."""
    allowed = {f"{c.__module__}.{c.__qualname__}" for c in allow}
    try:
        return [g for g in torch.serialization.get_unsafe_globals_in_checkpoint(path) if g not in allowed]
    except Exception:  # noqa: BLE001 -- a file too damaged to list: reported as unreadable by the caller
        return []


def checkpoint_state_dict(tag_dir: Path) -> dict[str, torch.Tensor]:
    model_file = tag_dir / "mp_rank_00_model_states.pt"
    if any(tag_dir.glob("*zero_pp_rank_*optim_states.pt")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        # zero_to_fp32 unpickles every model and optimizer file fully: check each with the restricted unpickler
        # first (memory-mapped, so the tensors are not read twice).
        for f in sorted(tag_dir.glob("*_model_states.pt")) + sorted(tag_dir.glob("*_optim_states.pt")):
            load_weights_file(f, _deepspeed_records(), mmap=True)
        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
        return get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name)
    if not model_file.is_file():
        raise CheckpointError(f"checkpoint {tag_dir}: no model file {model_file.name}")
    # Stage 0 keeps whole weights in the module state, beside DeepSpeed's config and linreg's client state: plain
    # dicts, lists and numbers, so the restricted unpickler reads it.
    state = load_weights_file(model_file)
    if not isinstance(state, dict) or not isinstance(state.get("module"), dict):
        raise CheckpointError(f"{model_file} holds no module state: not a DeepSpeed model checkpoint")
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


def load_checkpoint_into(model, tag_dir: Path, what: str = "its run config") -> None:
    """The checkpoint's weights into ``model`` (tied embeddings: lm_head is the embedding, not loaded twice); a
    CheckpointError when they do not fit."""
    state = checkpoint_state_dict(tag_dir)
    tied = getattr(model.config, "tie_word_embeddings", False)
    if tied:
        state.pop("lm_head.weight", None)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (tied and k == "lm_head.weight")]
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {tag_dir} does not match {what}: missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}")


def model_from_checkpoint(tag_dir: Path):
    """(model, tokenizer) rebuilt from the run config with the checkpoint's weights."""
    model, tokenizer = build_from_run(RunDir.of_checkpoint(tag_dir))
    load_checkpoint_into(model, tag_dir)
    return model, tokenizer


def export_checkpoint(path: str | Path, out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"export output {out_dir} exists and is not a directory")
    tag_dir = find_checkpoint(path)
    model, tokenizer = model_from_checkpoint(tag_dir)
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
    p = Parser("export", "model.export", "Export a linreg checkpoint as a Hugging Face model directory.")
    add_shared_args(p, model=dict(help="a run dir (its newest complete checkpoint), its checkpoints/ dir, or a step_* "
                                       "dir"))
    p.add_argument("--out", required=True, help="output directory")
    args = p.parse_args(argv)
    print(export_checkpoint(args.model, args.out))
    return 0


if __name__ == "__main__":
    run_cli(main)
