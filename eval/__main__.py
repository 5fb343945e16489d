"""Benchmark a model, checkpoint or export, scored as lm-evaluation-harness scores it (see docs/eval.md).

    linreg eval --model PATH --tasks tinystories,superglue,xstorycloze --out DIR \\
        [--num-fewshot K] [--limit N] [--log-samples] [--data-root DIR]

PATH: an HF model directory (an export), a linreg run directory or a checkpoint directory. Task names: boolq, cb,
copa, multirc, record, rte, wic, wsc, xstorycloze_<lang>, tinystories, wikitext2, arc_easy, multirc_fixed, and the
groups superglue and xstorycloze (``eval.benchmarks.tasks``). Data: ``--data-root`` (default ``$LINREG_DATA_ROOT``)
in the layout of shared/data; without one, the HF hub datasets. Writes DIR/results.json ({task: {metric: value}}),
DIR/meta.json, DIR/results.md (the tables, also printed), DIR/samples_<task>.jsonl with --log-samples, and
TensorBoard scalars eval/<task>/<metric> in DIR/tb.
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from core import precision
from core.cli import Parser, add_shared_args, command, run_cli
from core.errors import ConfigError, MissingDataError


def parse_args(argv=None) -> argparse.Namespace:
    from eval.benchmarks.tasks import DEFAULT_TASKS, GROUPS, TASKS

    p = Parser("eval", "eval", __doc__)
    add_shared_args(p, model=dict(label_help="row label in the tables (default: the model path's name)"),
                    tasks=dict(names=[*TASKS, *GROUPS], default=DEFAULT_TASKS, help="task and group names"),
                    data_root=dict(help="none: the HF hub"), device=True)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--num-fewshot", type=int, default=0, help="examples from the train split per prompt (default 0)")
    p.add_argument("--fewshot-seed", type=int, default=1234, help="few-shot sampling seed (lme's default 1234)")
    p.add_argument("--limit", type=int, default=None, help="first N documents per task (logged as <task>_firstN)")
    p.add_argument("--log-samples", action="store_true", help="write samples_<task>.jsonl, one line per document")
    p.add_argument("--cache-dir", default=".cache/linreg",
                   help="tokenised task requests are kept in DIR/benchmarks between runs (default %(default)s, "
                        "training's data.cache_dir)")
    p.add_argument("--no-cache", action="store_true", help="tokenise the tasks without reading or writing the cache")
    p.add_argument("--batch-tokens", type=int, default=None,
                   help="tokens per forward batch (default 32768 on GPU, 4096 on CPU)")
    p.add_argument("--max-length", type=int, default=None,
                   help="context length for truncation (default: the model's, as lme resolves it)")
    p.add_argument("--seq-len", type=int, default=None, help="TinyStories window (default min(max length, 2048))")
    p.add_argument("--no-share-context", action="store_true",
                   help="give every choice its own copy of the context (slower; the numbers are the same)")
    p.add_argument("--step", type=int, default=0, help="global step for the TensorBoard scalars")
    args = p.parse_args(argv)
    for flag, value, least in (("--limit", args.limit, 1), ("--num-fewshot", args.num_fewshot, 0),
                               ("--batch-tokens", args.batch_tokens, 1), ("--max-length", args.max_length, 1),
                               ("--seq-len", args.seq_len, 2)):
        if value is not None and value < least:  # --limit 0 would otherwise mean "every document"
            raise ConfigError(f"{flag} {value}: must be >= {least}")
    if args.data_root is not None and not Path(args.data_root).is_dir():
        raise MissingDataError(f"--data-root {args.data_root}: no such directory")
    return args


def write_tensorboard(out: Path, scalars: dict[str, float], step: int) -> None:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard not installed: the json/markdown outputs are enough
        return
    with SummaryWriter(str(out / "tb")) as w:
        for k, v in scalars.items():
            w.add_scalar(k, v, step)


@command
def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import torch

    from eval.benchmarks import BenchmarkSuite, default_batch_tokens, results_to_scalars, write_results
    from eval.benchmarks.tasks import expand_task_names
    from model.export import load_model

    device = torch.device(args.device)
    dtype = precision.resolve(args.dtype, device)
    autocast_dtype = precision.autocast_dtype(dtype, device)

    t0 = time.perf_counter()
    try:
        expand_task_names(args.tasks)
    except ValueError as e:
        raise ConfigError(f"--tasks: {e}") from None
    model, tokenizer = load_model(args.model)
    model.to(device).eval()
    suite = BenchmarkSuite(args.tasks, tokenizer, data_root=args.data_root, num_fewshot=args.num_fewshot,
                           limit=args.limit, fewshot_seed=args.fewshot_seed,
                           cache_dir=None if args.no_cache else Path(args.cache_dir) / "benchmarks")
    t_prep = time.perf_counter() - t0
    with torch.no_grad():
        results = suite.run(model, device=device, autocast_dtype=autocast_dtype, max_length=args.max_length,
                            seq_len=args.seq_len, batch_tokens=args.batch_tokens, progress=True,
                            log_samples=args.log_samples, share_context=not args.no_share_context)
    from eval.benchmarks.scorer import resolve_max_length

    out = Path(args.out)
    meta = {
        "model": str(Path(args.model).resolve()), "data": suite.data.describe(), "tasks": suite.task_names,
        "num_fewshot": args.num_fewshot, "fewshot_seed": args.fewshot_seed, "limit": args.limit,
        "device": str(device), "dtype": dtype, "batch_tokens": args.batch_tokens or default_batch_tokens(device),
        "max_length": args.max_length or resolve_max_length(model.config, tokenizer),
        "load_and_prepare_seconds": round(t_prep, 3), "total_seconds": round(time.perf_counter() - t0, 3),
        "torch": torch.__version__,
    }
    label = args.label or Path(args.model).resolve().name
    report = write_results(out, results, meta, log_samples=args.log_samples, label=label)
    write_tensorboard(out, results_to_scalars(results), args.step)
    print(report)
    print(f"wrote {out / 'results.json'}" + (" and samples_<task>.jsonl" if args.log_samples else ""))
    return 0


if __name__ == "__main__":
    run_cli(main)
