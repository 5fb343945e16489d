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
from eval.linearity.heldout import HeldoutConfig
from eval.linearity.probe import ProbeSetConfig, checked_probe, probe_text
from eval.linearity.profile import Profile, model_profile
from eval.linearity.state_measures import ToolkitConfig


@dataclass
class ProfileSpec:
    """How a linearity profile is measured: the probe text's source, the probe set's recipe, the forward
    precision and batch size, and the optional held-out and toolkit measurements (recorded beside the results)."""
    text_source: str
    probe: ProbeSetConfig
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


def probe_from_args(args, root: Path | None, device) -> tuple[str, ProfileSpec]:
    """(probe text, ProfileSpec) from the probe and device options (the ``probe`` and ``device`` groups of
    ``core.cli.add_shared_args``)."""
    probe = ProbeSetConfig(args.num_chunks, args.chunk_chars, args.probe_seed, args.max_tokens)
    probe.validate("probe")
    text, source = probe_text(args.text, root, args.text_field)
    return text, ProfileSpec(source, probe, core_precision.resolve(args.dtype, device), args.probe_batch_size)


def profile_model(model, tokenizer, text: str, spec: ProfileSpec, device: torch.device | str) -> Profile:
    """The linearity profile of ``model`` (already on ``device``) on the paper's probe of ``text``."""
    device = torch.device(device)
    dtype = core_precision.autocast_dtype(spec.precision, device)
    probe = checked_probe(text, tokenizer, spec.probe, source=spec.text_source, width=model.config.hidden_size,
                          max_len=getattr(model.config, "max_position_embeddings", None), heldout=spec.heldout,
                          heldout_off="pass --no-heldout")  # held-out is on in a spec by linreg series' default
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return model_profile(model, probe, batch_size=spec.batch_size, device=device, pad_id=pad,
                         autocast=lambda: core_precision.autocast(device, dtype), heldout=spec.heldout,
                         toolkit=spec.toolkit)
