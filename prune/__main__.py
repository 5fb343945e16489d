"""Depth pruning from the command line (see docs/pruning.md).

    linreg prune --model PATH --criterion linearity --methods remove,linear,replaceme,sleb,reverse,... \\
        --k 1..4 --out DIR [--iterative] [--protect-first] [--protect-last] [--distill-steps N] ... [KEY=VALUE ...]

Every method of ``prune.methods`` (``--methods all`` runs them all) is built from the same model, probe and seed,
evaluated on the same data and compared with ``remove`` on the same documents.

PATH: an HF model directory or hub name, a linreg run directory or checkpoint directory. ``--k 1..4`` (or ``4``,
the same) evaluates k = 0 (the unpruned model) and every k from 1 to 4; ``--k 1,2,4`` only those. Writes
DIR/pruning.json, DIR/pruning.md, DIR/pruning_vs_k.png, DIR/pruning_vs_fraction.png, DIR/fit_errors.png, the
exported models DIR/models/<method>_k<k>/ (``--export-k``) and the training runs of healing methods
DIR/distill/<method>_k<k>/.
"""
from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

from core.cli import Parser, add_shared_args, command, list_arg, run_cli
from core.errors import ConfigError
from data.sources import data_root
from eval.linearity.probe import ProbeSetConfig, probe_text


def parse_ks(spec: str) -> list[int]:
    spec = spec.strip()
    m = re.fullmatch(r"(\d+)\.\.(\d+)", spec)
    if m:
        lo, hi = int(m.group(1)), int(m.group(2))
        if lo > hi:
            raise ConfigError(f"--k {spec}: empty range")
        return list(range(max(lo, 1), hi + 1))
    if re.fullmatch(r"\d+", spec):
        return list(range(1, int(spec) + 1))
    if re.fullmatch(r"\d+(,\d+)*", spec):
        return sorted({int(x) for x in spec.split(",") if int(x) > 0})
    raise ConfigError(f"--k {spec!r}: expected 1..K, K or a comma-separated list")


def parse_export_ks(spec: str, ks: list[int]) -> list[int]:
    if spec == "all":
        return list(ks)
    if spec == "none":
        return []
    if spec == "max":
        return [max(ks)]
    if re.fullmatch(r"\d+", spec.strip()):
        return [int(spec)]  # one k, not 1..k
    return parse_ks(spec)


def parse_args(argv=None) -> argparse.Namespace:
    from eval.benchmarks.tasks import GROUPS, TASKS
    from prune.criteria import CRITERIA
    from prune.methods import METHODS

    p = Parser("prune", "prune", __doc__)
    add_shared_args(p, model=True, data_root=True, probe=dict(defaults=ProbeSetConfig), device=True,
                    tasks=dict(names=[*TASKS, *GROUPS], default=["tinystories", "arc_easy"],
                               help="benchmark-suite tasks besides WikiText-2"),
                    overrides=dict(what="the healing runs' config (after the --distill-* options)"))
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--criterion", default="linearity", help=f"one of {', '.join(CRITERIA)} (default %(default)s)")
    list_arg(p, "--methods", default=["remove", "linear"], metavar="METHOD",
             help=f"default remove,linear; all, or of {', '.join(METHODS)}")
    list_arg(p, "--k", required=True, help="changed blocks: 1..K, K (the same), or several like 1,2,4")
    p.add_argument("--iterative", action="store_true", help="re-rank on the pruned model after each change")
    p.add_argument("--protect-first", action="store_true", help="never change block 0")
    p.add_argument("--protect-last", action="store_true", help="never change the last block")
    list_arg(p, "--export-k", default=["max"], metavar="K",
             help="ks whose models are exported: max (default), all, none, or ks")
    p.add_argument("--trust-remote-code", action="store_true", help="for hub models that need it")
    p.add_argument("--seed", type=int, default=0, help="seed of the fits' shuffling and the bootstrap (default 0)")
    g = p.add_argument_group("evaluation")
    g.add_argument("--limit", type=int, default=None, help="first N documents per task (logged as <task>_firstN)")
    g.add_argument("--context", type=int, default=None, help="WikiText-2 window (default: the model's max length)")
    g.add_argument("--stride", type=int, default=None, help="WikiText-2 stride (default: context / 2)")
    g.add_argument("--wikitext-max-tokens", type=int, default=None, help="score only the first N tokens")
    g.add_argument("--batch-tokens", type=int, default=None, help="benchmark tokens per forward")
    g = p.add_argument_group("healing (+distill, +finetune, streamline; a linreg Trainer run per method and k)")
    g.add_argument("--distill-config", default=None, help="YAML over the defaults in prune/distill.py")
    g.add_argument("--distill-steps", type=int, default=None, help="train.max_steps")
    g.add_argument("--distill-lr", type=float, default=None, help="optim.lr")
    g.add_argument("--distill-batch", type=int, default=None, help="train.global_batch_size (sequences per step)")
    g.add_argument("--distill-micro-batch", type=int, default=None, help="train.micro_batch_size (per forward)")
    g.add_argument("--distill-seq-len", type=int, default=None, help="data.seq_len")
    g.add_argument("--resume", action="store_true", help="continue distillation runs from their checkpoints")
    return p.parse_args(argv)


def distill_overrides(args, out: Path) -> list[str]:
    pairs = [("train.max_steps", args.distill_steps), ("optim.lr", args.distill_lr),
             ("train.global_batch_size", args.distill_batch), ("train.micro_batch_size", args.distill_micro_batch),
             ("data.seq_len", args.distill_seq_len),
             ("data.root", args.data_root)]
    given = [f"{k}={v}" for k, v in pairs if v is not None]
    cache = [] if any(s.startswith("data.cache_dir=") for s in args.overrides) else [
        f"data.cache_dir={out / 'cache'}"]
    return given + cache + list(args.overrides)


@command
def main(argv=None) -> int:
    args = parse_args(argv)
    from model.export import load_model
    from prune import states
    from prune.distill import distill_config
    from prune.evaluate import Evaluation
    from prune.pipeline import Study, run_study
    from prune.plan import ProbeSet
    from prune.surgery import blocks

    t0 = time.perf_counter()
    ks = parse_ks(",".join(args.k))
    from prune.methods import METHODS

    methods = list(METHODS) if args.methods == ["all"] else args.methods
    study = Study(criterion=args.criterion, methods=methods, ks=ks, iterative=args.iterative,
                  protect_first=args.protect_first, protect_last=args.protect_last,
                  export_ks=parse_export_ks(",".join(args.export_k), ks), resume=args.resume,
                  seed=args.seed)
    out = Path(args.out)
    model, tokenizer = load_model(args.model, trust_remote_code=args.trust_remote_code)
    study.check(len(blocks(model)))  # cheap errors before the probe and the evaluation data
    probe_cfg = ProbeSetConfig(args.num_chunks, args.chunk_chars, args.probe_seed, args.max_tokens)
    probe_cfg.validate("probe")
    text, source = probe_text(args.text, data_root(cli=args.data_root), args.text_field)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    max_length = getattr(model.config, "max_position_embeddings", None) or 2048
    evaluation = Evaluation(tokenizer, tasks=args.tasks, root=args.data_root, limit=args.limit, context=args.context,
                            stride=args.stride, wikitext_max_tokens=args.wikitext_max_tokens,
                            max_length=min(max_length, 2048), device=args.device, dtype=args.dtype,
                            batch_tokens=args.batch_tokens)
    probe = ProbeSet(states.make_probe(text, tokenizer, probe_cfg, model, source), args.probe_batch_size,
                     evaluation.device, pad)
    distill_cfg = None
    if study.heals():
        distill_cfg = distill_config(args.distill_config, distill_overrides(args, out), max_length)
    meta = {"model": str(args.model), "probe": {**vars(probe_cfg), "text": source}}
    run_study(model, tokenizer, study, probe, evaluation, out, distill_cfg=distill_cfg, meta=meta)
    print(f"wrote {out / 'pruning.json'}, pruning.md and plots in {out} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    run_cli(main)
