"""Training throughput of the project's real step (``linreg.trainer.Trainer.train_step``, under DeepSpeed) for
each regularizer, beside the plain-HF loop of issue 5 (bench/hf_baseline.py), in one process: every figure is
a ratio on the same machine.

    python bench/train_throughput.py --preset tiny --out runs/bench/cpu            # CPU smoke test (minutes)
    python bench/train_throughput.py --preset 150m --zero 1,2,3 --compile on --out runs/bench/h100_150m

For each point of the grid (ZeRO stage × activation checkpointing × compile × regularizer) it builds a Trainer
in a temporary run dir, runs ``--warmup`` steps (compilation happens there), then times ``--repeats`` windows of
``--steps`` optimizer steps between device synchronisations, and reports the median tokens/s, MFU (the formula
of model/build.py, against linreg.engine's peak table), peak memory of the timed steps, the regularizer's cost
against ``none`` at the same settings, and the mean losses (compile-vs-eager parity checks read those).

Data: ``real`` = the first ``--max-docs`` TinyStories documents under $LINREG_DATA_ROOT (or ../shared/data);
``synthetic`` = generated random-word text, for machines without the data; ``auto`` picks real when present.
Either way the tokens go through the project's own tokenizer/cache/stream path; the BPE is trained on ~2 MB of
text and ``model.vocab_size`` is pinned to the preset's vocabulary so the model has the preset's exact shape.
Results: ``--out DIR`` gets results.md and results.json (``--append`` adds rows to an existing results.json).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import shlex
import shutil
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

PRESETS = {
    "tiny": ["configs/tiny_cpu.yaml"],
    "150m": ["configs/base.yaml", "configs/model/mistral_150m.yaml"],
    "650m": ["configs/base.yaml", "configs/model/mistral_650m.yaml"],
}
_REG = ["regularizer.weight=0.5"]
VARIANTS = {  # *_ref: the reference (stacked fp32) regularizer path, to price the fused one in the real step
    "none": ["regularizer.name=none"],
    "cosine": ["regularizer.name=cosine", *_REG],
    "mse": ["regularizer.name=mse", *_REG],
    "cosine_ref": ["regularizer.name=cosine", *_REG, "regularizer.fused=false"],
    "mse_ref": ["regularizer.name=mse", *_REG, "regularizer.fused=false"],
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--config", action="append", help="config file(s) instead of a preset (merged in order)")
    p.add_argument("--variants", default="none,cosine,mse", help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--zero", default="1", help="ZeRO stages, comma list")
    p.add_argument("--ckpt", default="off", help="activation checkpointing: off, on or off,on")
    p.add_argument("--compile", default="off", help="torch.compile of model and regularizer: off, on or off,on")
    p.add_argument("--batch", type=int, help="train.global_batch_size, sequences per step (default: the config's)")
    p.add_argument("--micro-batch", type=int, help="train.micro_batch_size (default: the config's); the accumulation "
                   "is --batch / --micro-batch in this one process")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per setup (compilation happens here)")
    p.add_argument("--steps", type=int, default=10, help="optimizer steps per timed window")
    p.add_argument("--repeats", type=int, default=3, help="timed windows per setup (the median is reported)")
    p.add_argument("--data", choices=["auto", "real", "synthetic"], default="auto")
    p.add_argument("--max-docs", type=int, default=4000, help="documents tokenized (the stream cycles over them)")
    p.add_argument("--baselines", choices=["all", "eager", "none"], default="all",
                   help="plain-HF loop rows: eager and each --compile mode, eager only, or none")
    p.add_argument("--interleave", action="store_true",
                   help="time each project setup against its own plain eager loop in alternating windows (ABBA), "
                        "so that drift in the machine's speed hits both alike; the ratio is per pair")
    p.add_argument("--plain-reg", choices=["same", "none"], default="same",
                   help="with --interleave: the plain loop beside a regularized setup adds the same regularizer, "
                        "written naively (bench/hf_baseline.py), or none (then the ratio also prices the "
                        "regularizer itself)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more config overrides, all setups")
    p.add_argument("--out", required=True, help="directory for results.md and results.json")
    p.add_argument("--append", action="store_true", help="add to the rows of an existing DIR/results.json")
    return p.parse_args(argv)


def on_off(text: str) -> list[bool]:
    return [{"off": False, "on": True}[v.strip()] for v in text.split(",")]


# ------------------------------------------------------------------------------------------------------------
# Config and data
# ------------------------------------------------------------------------------------------------------------

def synthetic_corpus(path: Path, num_docs: int, seed: int = 0) -> None:
    """Random words from a fixed syllable set, documents separated as data/sources.py reads them."""
    rng = random.Random(seed)
    syllables = [a + b for a in "bcdfghklmnprstvwz" for b in ("a", "e", "i", "o", "u", "an", "er", "ol")]
    with path.open("w") as f:
        for _ in range(num_docs):
            words = (("".join(rng.choices(syllables, k=rng.randint(1, 3)))) for _ in range(rng.randint(80, 250)))
            f.write(" ".join(words) + ".\n<|endoftext|>\n")


def data_overrides(args, work: Path) -> tuple[str, list[str]]:
    """Which data the run uses, and the overrides that point the config at it."""
    root = os.environ.get("LINREG_DATA_ROOT") or str(REPO.parent / "shared" / "data")
    have_real = (Path(root) / "tinystories" / "train.txt").is_file()
    mode = args.data if args.data != "auto" else ("real" if have_real else "synthetic")
    if mode == "real":
        if not have_real:
            raise SystemExit(f"--data real: no tinystories/train.txt under {root} (set LINREG_DATA_ROOT)")
        os.environ["LINREG_DATA_ROOT"] = root
        return f"real (first {args.max_docs} TinyStories docs)", []
    corpus = work / "synthetic.txt"
    synthetic_corpus(corpus, args.max_docs)
    files = [f"data.{split}_files=[{corpus}]" for split in ("train", "valid")]
    return f"synthetic ({args.max_docs} random-word docs)", files


def load_cfg(args, overrides: list[str]):
    from core.config import deep_merge, load_yaml_tree
    from linreg.config import load_config

    tree: dict = {}
    for f in args.config or PRESETS[args.preset]:
        tree = deep_merge(tree, load_yaml_tree(REPO / f))
    cfg = load_config(None, overrides, tree=tree)
    if cfg.model.vocab_size is None:  # the preset's shape, whatever the small bench BPE ends up with
        cfg = load_config(None, [*overrides, f"model.vocab_size={cfg.tokenizer.vocab_size}"], tree=tree)
    return cfg


def setup_overrides(args, common: list[str], variant: str, zero: int, ckpt: bool, comp: bool) -> list[str]:
    batch = [f"train.global_batch_size={args.batch}"] if args.batch else []
    batch += [f"train.micro_batch_size={args.micro_batch}"] if args.micro_batch else []
    return [*common, *batch, *VARIANTS[variant], f"train.zero_stage={zero}", f"train.gradient_checkpointing={ckpt}",
            f"train.compile={comp}", f"regularizer.compile={comp}", *args.set]


# ------------------------------------------------------------------------------------------------------------
# Measurement
# ------------------------------------------------------------------------------------------------------------

def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_windows(step_fn, first: int, args, device) -> tuple[list[float], float | None]:
    """Seconds per step in each window, and the peak memory (GB) over the windows."""
    from linreg.meter import peak_memory_gb

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    per_step, s = [], first
    for _ in range(args.repeats):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step_fn(s)
            s += 1
        sync(device)
        per_step.append((time.perf_counter() - t0) / args.steps)
    return per_step, peak_memory_gb(device)  # CPU: the process's RSS high-water mark (cumulative)


def host_syncs(step_fn, step: int, device) -> int | None:
    """Device-to-host synchronisations in one step (CUDA's sync debug mode warns on each)."""
    if device.type != "cuda":
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step_fn(step)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def data_ms_per_step(stream, accum: int, n: int = 10) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        stream.next_batch()
    return (time.perf_counter() - t0) / n * accum * 1e3


def measure(step_fn, args, device, flops_tok: float, peak_tflops: float | None, tokens_per_step: int) -> dict:
    t0 = time.perf_counter()
    for s in range(args.warmup):
        step_fn(s)
    sync(device)
    warmup_s = time.perf_counter() - t0
    per_step, mem = timed_windows(step_fn, args.warmup, args, device)
    step_s = statistics.median(per_step)
    tok_s = tokens_per_step / step_s
    steps_run = args.warmup + args.repeats * args.steps
    syncs = host_syncs(step_fn, steps_run, device)
    return {"tokens_per_s": tok_s, "tokens_per_s_range": [tokens_per_step / t for t in (max(per_step), min(per_step))],
            "step_s": step_s, "mfu": flops_tok * tok_s / (peak_tflops * 1e12) if peak_tflops else None,
            "peak_mem_gb": mem, "warmup_s": warmup_s, "host_syncs_per_step": syncs,
            "steps_run": steps_run + (syncs is not None)}


def release(device) -> None:
    gc.collect()
    torch._dynamo.reset()  # a new model per setup: drop the old graphs and their guards
    if device.type == "cuda":
        torch.cuda.empty_cache()


def allocated_gb(device) -> float | None:
    return torch.cuda.memory_allocated(device) / 2**30 if device.type == "cuda" else None


def run_project(cfg, run_dir: Path, device, args, keep: dict) -> dict:
    """The real training step: ``Trainer.train_step`` (a fresh run dir per setup; no logging or evaluators)."""
    from core.rundir import RunDir
    from linreg import engine as eng
    from linreg.trainer import Trainer

    t = Trainer(cfg, RunDir(run_dir), overwrite=True, log=False)
    try:
        keep.setdefault("tokenizer", t.tokenizer)
        keep.setdefault("samples", t.stream.samples)
        row = {"params_m": round(t.params["total"] / 1e6, 2),
               "data_ms_per_step": data_ms_per_step(t.stream, t.grad_accum)}
        t.meter.reset()
        row.update(measure(lambda s: t.train_step(), args, device, t.flops_per_token,
                           eng.peak_tflops(cfg.logging.peak_tflops), t.tokens_per_step))
        task_loss, reg = t.meter.mean_losses(t.state.step)
        # means over every measured micro-step (compile parity reads these)
        row["loss"] = {"task_loss": task_loss, "reg": reg}
    finally:
        t.close()
    return row


def run_pair(cfg, run_dir: Path, device, args, keep: dict, naive: str) -> list[dict]:
    """The project step and a plain eager loop of the same model, batch and data, built side by side and timed
    in alternating windows (project-plain, then plain-project, ...): on a shared machine drift in speed hits
    both alike, which back-to-back rows cannot promise. Returns [project row, plain row]."""
    from bench.hf_baseline import PlainHFLoop
    from core.rundir import RunDir
    from data.stream import TrainStream
    from linreg.trainer import Trainer

    t = Trainer(cfg, RunDir(run_dir), overwrite=True, log=False)
    try:
        keep.setdefault("tokenizer", t.tokenizer)
        keep.setdefault("samples", t.stream.samples)
        stream = TrainStream(t.stream.samples, cfg.train.split(1)[0], 0, 1, cfg.train.seed)
        loop = PlainHFLoop(cfg, t.tokenizer, stream, device, compile=False, naive=naive)
        steps = {"project": t.train_step, "plain": loop.step}
        warm = {}
        for name, fn in steps.items():
            t0 = time.perf_counter()
            for _ in range(args.warmup):
                fn()
            sync(device)
            warm[name] = time.perf_counter() - t0
        per_step = {name: [] for name in steps}
        for r in range(args.repeats):
            for name in (list(steps) if r % 2 == 0 else list(steps)[::-1]):
                sync(device)
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    steps[name]()
                sync(device)
                per_step[name].append((time.perf_counter() - t0) / args.steps)
        rows = []
        for name, times in per_step.items():
            step_s = statistics.median(times)
            rows.append({"tokens_per_s": t.tokens_per_step / step_s, "step_s": step_s,
                         "tokens_per_s_range": [t.tokens_per_step / x for x in (max(times), min(times))],
                         "mfu": None, "peak_mem_gb": None, "warmup_s": warm[name], "host_syncs_per_step": None,
                         "steps_run": args.warmup + args.repeats * args.steps})
        ce, reg = t.meter.mean_losses(t.state.step)
        rows[0].update(params_m=round(t.params["total"] / 1e6, 2), loss={"ce": ce, "reg": reg})
        return rows
    finally:
        t.close()


def run_baseline(cfg, device, args, keep: dict, comp: bool, naive: str) -> dict:
    from bench.hf_baseline import PlainHFLoop
    from data.stream import TrainStream
    from linreg import engine as eng
    from model.build import count_params, flops_per_token

    stream = TrainStream(keep["samples"], cfg.train.split(1)[0], 0, 1, cfg.train.seed)
    loop = PlainHFLoop(cfg, keep["tokenizer"], stream, device, comp, naive)
    flops = flops_per_token(count_params(loop.model)["dense"], cfg.model.num_layers, cfg.model.hidden_size,
                            cfg.data.seq_len)
    tokens = cfg.train.global_batch_size * cfg.data.seq_len
    return measure(lambda s: loop.step(), args, device, flops, eng.peak_tflops(cfg.logging.peak_tflops), tokens)


# ------------------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------------------

def _fmt(v, spec: str, none: str = "-") -> str:
    return none if v is None else format(v, spec)


def add_ratios(rows: list[dict]) -> None:
    """reg_cost: step time against `none` at the same settings; vs_plain: tokens/s against the plain eager loop.
    Both within one run (one process, one machine)."""
    ok = [r for r in rows if "error" not in r]
    key = lambda r: (r["run"], r["setup"], r["zero"], r["ckpt"], r["compile"])  # noqa: E731
    none = {key(r): r["step_s"] for r in ok if r["variant"] == "none" and "pair" not in r}
    plain = {r["run"]: r["tokens_per_s"] for r in ok if r["setup"] == "plain HF" and r["variant"] == "none"
             and not r["compile"] and "pair" not in r}
    paired = {(r["run"], r["pair"]): r["tokens_per_s"] for r in ok if r["setup"] == "plain HF" and "pair" in r}
    for r in ok:
        base = none.get(key(r))
        r["reg_cost"] = r["step_s"] / base - 1 if base and r["variant"] != "none" and "pair" not in r else None
        ref = paired.get((r["run"], r.get("pair"))) if "pair" in r else plain.get(r["run"])
        r["vs_plain"] = r["tokens_per_s"] / ref if ref else None


def render(runs: list[dict], rows: list[dict]) -> str:
    lines = []
    for i, m in enumerate(runs):
        lines += [f"Run {i}: {m['date']}, {m['device']}; {m['versions']}.", f"`{m['command']}`",
                  f"Data: {m['data']}; {m['shape']}; timed: median of {m['timing']}.", ""]
    lines += ["| run | setup | reg | ZeRO | ckpt | compile | tokens/s | (min-max) | step ms | MFU | peak mem GB | "
              "reg cost vs none | × plain eager | host syncs/step |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        head = f"| {r['run']} | {r['setup']} | {r['variant']} | {_fmt(r['zero'], 'd')} | " \
               f"{'on' if r['ckpt'] else 'off'} | {'on' if r['compile'] else 'off'} |"
        if "error" in r:
            lines.append(f"{head} failed: {r['error']} | | | | | | | |")
            continue
        lo, hi = r["tokens_per_s_range"]
        lines.append(f"{head} {r['tokens_per_s']:,.0f} | {lo:,.0f}-{hi:,.0f} | {r['step_s'] * 1e3:.1f} | "
                     f"{_fmt(r['mfu'], '.1%')} | {_fmt(r['peak_mem_gb'], '.2f')} | {_fmt(r['reg_cost'], '+.1%')} | "
                     f"{_fmt(r['vs_plain'], '.2f')} | {_fmt(r['host_syncs_per_step'], 'd')} |")
    if any(m["device"].startswith("CPU") for m in runs):
        lines.append("\nCPU: peak memory is the process's RSS high-water mark, cumulative over a run's rows; "
                     "no MFU (no peak FLOP/s for a CPU).")
    return "\n".join(lines) + "\n"


def describe_device(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({os.cpu_count()} cores, {platform.machine()}, {torch.get_num_threads()} torch threads)"


def versions() -> str:
    import deepspeed
    import transformers

    cuda = f" (CUDA {torch.version.cuda})" if torch.version.cuda else ""
    return (f"python {platform.python_version()}, torch {torch.__version__}{cuda}, "
            f"transformers {transformers.__version__}, deepspeed {deepspeed.__version__}")


# ------------------------------------------------------------------------------------------------------------

def run_grid(args, work: Path, device) -> tuple[list[dict], object, str]:
    """Every project setup of the grid, then the plain-HF baselines: the rows, the last config, the data."""
    data_desc, data_ovr = data_overrides(args, work)
    common = [*data_ovr, f"data.cache_dir={work / 'cache'}", f"data.max_docs={args.max_docs}",
              "tokenizer.train_max_bytes=2000000", "train.max_steps=1000000"]
    zeros, ckpts, compiles = [int(z) for z in args.zero.split(",")], on_off(args.ckpt), on_off(args.compile)
    variants = args.variants.split(",")
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; known: {', '.join(VARIANTS)}")

    rows, keep = [], {}

    def record(row: dict, fn, *fn_args) -> None:
        t0 = time.perf_counter()
        try:
            row.update(fn(*fn_args))
        except Exception as e:  # an OOM or a compile failure costs one row, not the whole grid
            traceback.print_exc()
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
        row["wall_s"] = round(time.perf_counter() - t0, 1)
        release(device)
        rows.append(row)
        print("bench:", json.dumps(row), flush=True)

    def record_pair(row: dict, cfg) -> None:
        t0 = time.perf_counter()
        pair = len(rows)
        # The plain loop's regularizer: the project setup's own (cosine_ref -> cosine), written naively, or none.
        naive = cfg.regularizer.name if args.plain_reg == "same" else "none"
        plain = {"setup": "plain HF", "variant": "none" if naive == "none" else f"naive {naive}", "zero": None,
                 "ckpt": False, "compile": False, "mem_before_gb": None, "pair": pair}
        row["pair"] = pair
        project_row, plain_row = run_pair(cfg, work / "run", device, args, keep, naive)
        for r, measured in ((row, project_row), (plain, plain_row)):
            r.update(measured, wall_s=round(time.perf_counter() - t0, 1))
            rows.append(r)
            print("bench:", json.dumps(r), flush=True)
        release(device)

    for zero in zeros:
        for ckpt in ckpts:
            for comp in compiles:
                for variant in variants:
                    cfg = load_cfg(args, setup_overrides(args, common, variant, zero, ckpt, comp))
                    row = {"setup": "project", "variant": variant, "zero": zero, "ckpt": ckpt, "compile": comp,
                           "mem_before_gb": allocated_gb(device)}
                    if args.interleave:
                        record_pair(row, cfg)
                    else:
                        record(row, run_project, cfg, work / "run", device, args, keep)
    if args.baselines != "none" and "samples" in keep and not args.interleave:
        # Always the eager loop: the reference of `× plain eager` within this run.
        for comp in sorted({False, *compiles}) if args.baselines == "all" else [False]:
            for naive in ("none", "cosine"):
                cfg = load_cfg(args, setup_overrides(args, common, "none", 0, False, comp))
                row = {"setup": "plain HF", "variant": "none" if naive == "none" else f"naive {naive}", "zero": None,
                       "ckpt": False, "compile": comp, "mem_before_gb": allocated_gb(device)}
                record(row, run_baseline, cfg, device, args, keep, comp, naive)
    return rows, cfg, data_desc


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from core import dist
    from linreg.trainer import init_distributed

    dist.setup_env()
    device = init_distributed()
    work = Path(tempfile.mkdtemp(prefix="linreg_bench_"))
    try:
        rows, cfg, data_desc = run_grid(args, work, device)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the bench's tokenizer, token cache and synthetic text
    write_report(Path(args.out), args.append, rows, {
        "date": date.today().isoformat(), "device": describe_device(device), "versions": versions(),
        "command": " ".join(["python", "bench/train_throughput.py", *map(shlex.quote, argv or sys.argv[1:])]),
        "data": data_desc, "timing": f"{args.repeats} windows of {args.steps} steps after {args.warmup} warm-up steps"
                  + (", each project setup alternating window by window with its own plain eager loop (the "
                     "plain row below it)" if args.interleave else ""),
        "shape": f"{rows[0].get('params_m', '?')}M params, {describe_batch(cfg)}"})
    return 1 if any("error" in r for r in rows) else 0


def describe_batch(cfg) -> str:
    from linreg.engine import precision

    t = cfg.train
    return (f"{' × '.join(map(str, t.split(1)))} × seq {cfg.data.seq_len} = "
            f"{t.global_batch_size * cfg.data.seq_len:,} tokens/step, {precision(cfg)}")


def write_report(out: Path, append: bool, this_run: list[dict], meta: dict) -> None:
    runs, rows = [], []
    if append and (out / "results.json").is_file():
        previous = json.loads((out / "results.json").read_text())
        runs, rows = previous["runs"], previous["rows"]
    for r in this_run:
        r["run"] = len(runs)
    runs, rows = [*runs, meta], [*rows, *this_run]
    add_ratios(rows)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"runs": runs, "rows": rows}, indent=1))
    table = render(runs, rows)
    (out / "results.md").write_text(table)
    print(table)


if __name__ == "__main__":
    sys.exit(main())
