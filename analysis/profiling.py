"""One linearity profile of one loaded model on a probe text, with the paper's probe recipe (``eval.linearity``):
the building block of the checkpoint series and of the fine-tuning deltas.

The probe is rebuilt from the text for every model (cheap), with that model's tokenizer and context length, so
checkpoints of one run see exactly the same tokens and models with other tokenizers see the same characters.
Forwards run in ``precision`` (bf16 autocast on CUDA by default); the scores are float64 whatever it is.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from core import precision as core_precision
from core.errors import DataError
from eval.linearity.heldout import FoldPlan, HeldoutConfig
from eval.linearity.probe import ProbeConfig, build_probe, read_probe_text
from eval.linearity.profile import Profile, model_profile, probe_groups
from eval.linearity.state_measures import ToolkitConfig


@dataclass
class ProbeSpec:
    """What a profile was measured on: the probe text's source and the recipe's settings."""
    text_source: str
    probe: ProbeConfig
    precision: str = "auto"
    batch_size: int = 8
    heldout: HeldoutConfig | None = None  # held-out scores, intervals and chance levels too
    toolkit: ToolkitConfig | None = None  # per-state anisotropy, intrinsic dimension, logit lens too

    def to_dict(self) -> dict:
        out = {"text": self.text_source, "probe": asdict(self.probe), "precision": self.precision}
        if self.heldout is not None:
            out["heldout"] = asdict(self.heldout)
        if self.toolkit is not None:
            out["toolkit"] = asdict(self.toolkit)
        return out


def probe_text(path: str | None, root: Path | None, text_field: str = "text") -> tuple[str, str]:
    """(text, source): ``path``, else the TinyStories validation text of the data root."""
    if path is None:
        if root is None:
            raise DataError("no probe text: pass --text FILE or set a data root ($LINREG_DATA_ROOT / --data-root) "
                            "holding tinystories/valid.txt")
        path = str(root / "tinystories" / "valid.txt")
    return read_probe_text(path, text_field), str(Path(path).resolve())


def probe_from_args(args, root: Path | None, device) -> tuple[str, ProbeSpec]:
    """(probe text, ProbeSpec) from the probe and device options (``core.cli.add_probe_args``, ``add_device_args``)."""
    probe = ProbeConfig(args.num_chunks, args.chunk_chars, args.probe_seed, args.max_tokens)
    probe.validate("probe")
    text, source = probe_text(args.text, root, args.text_field)
    return text, ProbeSpec(source, probe, core_precision.resolve(args.dtype, device), args.probe_batch_size)


def profile_model(model, tokenizer, text: str, spec: ProbeSpec, device: torch.device | str) -> Profile:
    """The linearity profile of ``model`` (already on ``device``) on the paper's probe of ``text``."""
    device = torch.device(device)
    dtype = core_precision.autocast_dtype(spec.precision, device)
    probe = build_probe(text, tokenizer, spec.probe, max_len=getattr(model.config, "max_position_embeddings", None))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    if spec.heldout is not None:  # refused before the forwards
        try:
            FoldPlan(probe_groups(probe), spec.heldout.folds, spec.heldout.seed, model.config.hidden_size)
        except ValueError as e:
            raise DataError(f"probe text {spec.text_source}: {e}") from None
    return model_profile(model, probe, batch_size=spec.batch_size, device=device, pad_id=pad,
                         autocast=lambda: core_precision.autocast(device, dtype), heldout=spec.heldout,
                         toolkit=spec.toolkit)
