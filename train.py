"""Train a Mistral decoder with an optional residual-stream regularizer, under DeepSpeed.

    linreg train --config configs/tiny_cpu.yaml                          # one process, CPU or one GPU
    deepspeed [--num_gpus N | --hostfile H] train.py --config configs/cos_reg.yaml [--deepspeed_config ds.json]
    linreg train --config FILE [--run-dir DIR] [--resume auto|PATH] [--overwrite] [key.sub=value ...]

``python train.py`` is ``linreg train``; the DeepSpeed launcher starts the file itself.

The run itself is ``linreg.trainer.Trainer``; this file only reads the command line. The run directory holds
config.yaml (resolved; a resume reads it back), metrics.jsonl, tb/, checkpoints/, tokenizer/ and export/.
SIGTERM/SIGINT finish the current step, save a checkpoint and exit 0 (cluster preemption).
"""
from __future__ import annotations

import argparse

from core.cli import Parser, add_shared_args, command, run_cli


def parse_args(argv=None) -> argparse.Namespace:
    p = Parser("train", "train.py", __doc__)
    p.add_argument("--config", help="YAML config (may `extends:` others); optional with --resume")
    p.add_argument("--run-dir", help="output directory (default runs/<config name>)")
    p.add_argument("--resume", help="'auto' = latest checkpoint of the run dir (fresh start if none), or a path")
    p.add_argument("--overwrite", action="store_true", help="delete an existing run dir first")
    p.add_argument("--local_rank", "--local-rank", type=int, default=-1, help="set by the DeepSpeed launcher")
    p.add_argument("--deepspeed_config", help="DeepSpeed JSON config; overrides the YAML `deepspeed:` block")
    p.add_argument("--print-config", action="store_true", help="print the resolved config (YAML) and exit")
    add_shared_args(p, overrides=dict(what="the run's config"))
    return p.parse_args(argv)


@command
def main(argv=None) -> int:
    args = parse_args(argv)
    from core import dist
    from linreg.config import resolve_run, to_yaml
    from linreg.trainers import trainer_class

    dist.setup_env(args.local_rank)
    cfg, run = resolve_run(args.config, args.run_dir, args.resume, args.overrides)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0

    trainer = trainer_class(cfg)(cfg, run, resume=args.resume, overwrite=args.overwrite,
                                 deepspeed_config=args.deepspeed_config)
    return trainer.fit()


if __name__ == "__main__":
    run_cli(main)
