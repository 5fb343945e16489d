"""Resume ZeRO 1-3 on another number of ranks: convert a checkpoint into DeepSpeed's universal format.

ZeRO stages 1-3 partition the optimizer state (stage 3 also the weights) by rank, so a checkpoint written by N ranks
loads only on N ranks. DeepSpeed's own converter, ``deepspeed.checkpoint.ds_to_universal``, rewrites it as one
folder per parameter (fp32 weights and Adam moments), which any number of ranks can load. This command runs it on a
checkpoint of a linreg run and puts the result inside that checkpoint:

    linreg universal --run runs/cos                               # the run's newest complete checkpoint
    linreg universal --run runs/cos/checkpoints/step_00001000     # or a given one

It writes ``step_.../universal/`` with a manifest of its own, and leaves the checkpoint's own files as they are. A
resume with another world size (``--resume auto`` or that checkpoint's path) then loads ``universal/`` by itself;
without it such a resume is refused with this command in the error. The resumed run sees the same samples it would
have seen (one global sample cursor, whatever the number of ranks), in steps of the same ``train.global_batch_size``:
only the accumulation is derived again for the new number of ranks.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from core.cli import Parser, command, run_cli
from core.errors import CheckpointError
from core.rundir import find_checkpoint, verify_checkpoint, write_manifest

UNIVERSAL = "universal"  # the converted copy's folder inside its checkpoint


def saved_world_size(tag_dir: Path) -> int | None:
    try:
        return json.loads((tag_dir / "meta.json").read_text()).get("world_size")
    except (OSError, ValueError, AttributeError):
        return None  # check_compatible names a damaged meta.json


def converted(tag_dir: Path) -> Path | None:
    """The checkpoint's complete universal copy, or None."""
    out = tag_dir / UNIVERSAL
    return out if verify_checkpoint(out) is None else None


def needs_universal(saved_world: int | None, zero_stage: int, world_size: int) -> bool:
    """Resuming a checkpoint written by ``saved_world`` ranks on ``world_size`` ranks needs its universal copy
    (ZeRO 1-3 partition the optimizer state by rank)."""
    return zero_stage > 0 and saved_world is not None and saved_world != world_size


def ds_config_for_resume(ds_cfg: dict, tag_dir: Path, world_size: int) -> dict:
    """``ds_cfg`` with DeepSpeed's ``checkpoint.load_universal`` on when the resume needs the universal copy and it
    exists (for this launch only: config.yaml keeps what the user wrote, so later resumes load ordinary tags)."""
    stage = ds_cfg.get("zero_optimization", {}).get("stage", 0)
    if not (needs_universal(saved_world_size(tag_dir), stage, world_size) and converted(tag_dir)):
        return ds_cfg
    return {**ds_cfg, "checkpoint": {**ds_cfg.get("checkpoint", {}), "load_universal": True}}


def convert(tag_dir: Path) -> Path:
    """Write ``tag_dir/universal`` with DeepSpeed's converter (through a temporary folder, then one rename, so a
    crash leaves no half copy that looks complete); returns it. An existing complete copy is kept."""
    if not any(tag_dir.glob("*optim_states.pt")):  # ZeRO-0 keeps the whole optimizer in the model file
        raise CheckpointError(f"checkpoint {tag_dir} was saved with ZeRO-0, whose state is not partitioned by rank: "
                              f"it resumes on any number of ranks as it is (nothing to convert)")
    out = converted(tag_dir)
    if out is not None:
        print(f"{out} already exists")
        return out
    # Converted inside a scratch folder, which also takes the `latest_universal` file the converter writes beside
    # its output, then moved into place with one rename.
    scratch = tag_dir / f".{UNIVERSAL}.tmp"
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.rmtree(tag_dir / UNIVERSAL, ignore_errors=True)  # an incomplete copy: redo it
    # --inject_missing_state: the converter wants the client to have saved a `universal_checkpoint_info` record
    # (Megatron-DeepSpeed does); a plain ZeRO-1/2/3 model needs only its version, which this adds.
    cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(tag_dir),
           "--output_folder", str(scratch / UNIVERSAL), "--inject_missing_state"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        shutil.rmtree(scratch, ignore_errors=True)
        lines = [ln for ln in (done.stderr or done.stdout).strip().splitlines() if ln.strip()]
        raise CheckpointError(f"DeepSpeed's ds_to_universal failed on {tag_dir} (exit {done.returncode}): "
                              f"{lines[-1] if lines else 'no output'}")
    write_manifest(scratch / UNIVERSAL)
    (scratch / UNIVERSAL).rename(tag_dir / UNIVERSAL)
    shutil.rmtree(scratch)
    return tag_dir / UNIVERSAL


@command
def main(argv: list[str] | None = None) -> int:
    p = Parser("universal", "linreg.universal", __doc__)
    p.add_argument("--run", required=True, type=Path, metavar="RUN_OR_CHECKPOINT",
                   help="a run dir (its newest complete checkpoint) or a checkpoint dir")
    args = p.parse_args(argv)
    tag_dir = find_checkpoint(args.run)  # verified complete
    out = convert(tag_dir)
    print(f"universal checkpoint: {out} (resume with any number of ranks: --resume auto or --resume {tag_dir})")
    return 0


if __name__ == "__main__":
    run_cli(main)
