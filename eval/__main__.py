"""Benchmark a model, checkpoint or export, scored as lm-evaluation-harness scores it (see docs/eval.md).

    python -m eval --model PATH --tasks tinystories,superglue,xstorycloze --out DIR \\
        [--num-fewshot K] [--limit N] [--log-samples] [--data-root DIR]

PATH: an HF model directory (an export), a linreg run directory or a checkpoint directory. Task names: boolq, cb,
copa, multirc, record, rte, wic, wsc, xstorycloze_<lang>, tinystories, multirc_fixed, and the groups superglue and
xstorycloze. Data: ``--data-root`` (default ``$LINREG_DATA_ROOT``) in the layout of shared/data; without one, the
HF hub datasets. Writes DIR/results.json ({task: {metric: value}}), DIR/meta.json, DIR/results.md (the tables,
also printed), DIR/samples_<task>.jsonl with --log-samples, and TensorBoard scalars eval/<task>/<metric> in DIR/tb.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="HF model dir, linreg run dir or checkpoint dir")
    p.add_argument("--tasks", default="superglue,xstorycloze_en,tinystories",
                   help="comma-separated task and group names (default: %(default)s)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--num-fewshot", type=int, default=0, help="examples from the train split per prompt (default 0)")
    p.add_argument("--fewshot-seed", type=int, default=1234, help="few-shot sampling seed (lme's default 1234)")
    p.add_argument("--limit", type=int, default=None, help="first N documents per task (logged as <task>_firstN)")
    p.add_argument("--log-samples", action="store_true", help="write samples_<task>.jsonl, one line per document")
    p.add_argument("--data-root", default=os.environ.get("LINREG_DATA_ROOT"),
                   help="local data in the shared/data layout (default $LINREG_DATA_ROOT; none: the HF hub)")
    p.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    p.add_argument("--dtype", choices=("auto", "fp32", "bf16"), default="auto",
                   help="bf16 autocast or fp32; auto: bf16 on GPU, fp32 on CPU")
    p.add_argument("--batch-tokens", type=int, default=None,
                   help="tokens per forward batch (default 32768 on GPU, 4096 on CPU)")
    p.add_argument("--max-length", type=int, default=None,
                   help="context length for truncation (default: the model's, as lme resolves it)")
    p.add_argument("--seq-len", type=int, default=None, help="TinyStories window (default min(max length, 2048))")
    p.add_argument("--no-share-context", action="store_true",
                   help="give every choice its own copy of the context (slower; the numbers are the same)")
    p.add_argument("--step", type=int, default=0, help="global step for the TensorBoard scalars")
    p.add_argument("--label", default=None, help="row label in the tables (default: the model path's name)")
    return p.parse_args(argv)


def load(path: str):
    """(model, tokenizer) through the training core's loader (HF dir, run dir or checkpoint dir)."""
    from model.export import load_model

    return load_model(path)


def write_tensorboard(out: Path, scalars: dict[str, float], step: int) -> None:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard not installed: the json/markdown outputs are enough
        return
    with SummaryWriter(str(out / "tb")) as w:
        for k, v in scalars.items():
            w.add_scalar(k, v, step)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import torch

    from eval.benchmarks import BenchmarkSuite, default_batch_tokens, results_to_scalars, write_results
    from eval.tasks import TaskDataError

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = args.dtype if args.dtype != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    autocast_dtype = torch.bfloat16 if dtype == "bf16" else None

    t0 = time.perf_counter()
    model, tokenizer = load(args.model)
    model.to(device).eval()
    try:
        suite = BenchmarkSuite(args.tasks, tokenizer, data_root=args.data_root, num_fewshot=args.num_fewshot,
                               limit=args.limit, fewshot_seed=args.fewshot_seed)
    except (TaskDataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t_prep = time.perf_counter() - t0
    with torch.no_grad():
        results = suite.run(model, device=device, autocast_dtype=autocast_dtype, max_length=args.max_length,
                            seq_len=args.seq_len, batch_tokens=args.batch_tokens, progress=True,
                            log_samples=args.log_samples, share_context=not args.no_share_context)
    from eval.scorer import resolve_max_length

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
    sys.exit(main())
