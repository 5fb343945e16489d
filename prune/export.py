"""Export of pruned models as directories that load with transformers.

- No ``LinearBlock`` in the model (``remove``, ``merged``, ``remove+distill``): the model is a standard model of
  its family with fewer blocks (``prune.surgery``), written with ``save_pretrained`` (safetensors + config.json)
  and the tokenizer. ``AutoModelForCausalLM.from_pretrained(dir)`` loads it offline, no ``trust_remote_code``.
- With linear blocks (``linear``, ``linear+distill``): the same files, plus ``modeling_linreg_linear.py`` (a
  verbatim copy of ``model/linear_block.py``) and a config.json that names it in ``auto_map`` under its own
  ``model_type`` (see that module). Chosen over alternatives because (1) no HF architecture has an affine block,
  and approximating one with a real block (e.g. an MLP behind a norm) would not be exact; (2) ``auto_map`` is the
  mechanism every transformers install, vLLM-style loaders and the hub already understand, with
  ``trust_remote_code=True``; (3) the distinct ``model_type`` makes a plain ``from_pretrained`` refuse (asking for
  ``trust_remote_code``) instead of silently building the base class with random weights in the replaced blocks;
  (4) linreg's own loader reads the directory without running code from it.

Either way ``pruning.json`` in the directory records the source model, the method and which original blocks were
changed.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from model import linear_block
from prune import surgery
from prune.plan import Pruned


def export(pruned: Pruned, tokenizer, out_dir: str | Path, meta: dict | None = None) -> Path:
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model = pruned.model
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    linear = pruned.linear_positions()
    if linear:
        config = json.loads((out / "config.json").read_text())
        config = linear_block.export_config(config, type(model).__name__, surgery.blocks_path(model), linear)
        (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        shutil.copyfile(linear_block.__file__, out / linear_block.MODELING_FILE)
    record = {**(meta or {}), "method": pruned.method, "changed_blocks": pruned.changed,
              "kept_blocks": pruned.alive, "linear_positions": linear, "num_blocks": len(pruned.alive),
              "needs_trust_remote_code": bool(linear)}
    (out / "pruning.json").write_text(json.dumps(record, indent=2) + "\n")
    return out
