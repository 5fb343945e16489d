"""Train a Mistral decoder with an optional residual-stream regularizer, under DeepSpeed.

    python train.py --config configs/tiny_cpu.yaml                       # one process, CPU or one GPU
    deepspeed [--num_gpus N | --hostfile H] train.py --config configs/cos_reg.yaml [--deepspeed_config ds.json]
    python train.py --config FILE [--run-dir DIR] [--resume auto|PATH] [--overwrite] [key.sub=value ...]

Every run goes through ``deepspeed.initialize`` (gloo on CPU, NCCL on GPU). The run directory holds
config.yaml (resolved; a resume reads it back), metrics.jsonl, tb/, checkpoints/, tokenizer/ and export/.
SIGTERM/SIGINT finish the current step, save a checkpoint and exit 0 (cluster preemption).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import resource
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from linreg.config import ConfigError


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="YAML config (may `extends:` others); optional with --resume")
    p.add_argument("--run-dir", help="output directory (default runs/<config name>)")
    p.add_argument("--resume", help="'auto' = latest checkpoint of the run dir (fresh start if none), or a path")
    p.add_argument("--overwrite", action="store_true", help="delete an existing run dir first")
    p.add_argument("--local_rank", "--local-rank", type=int, default=-1, help="set by the DeepSpeed launcher")
    p.add_argument("--deepspeed_config", help="DeepSpeed JSON config; overrides the YAML `deepspeed:` block")
    p.add_argument("--print-config", action="store_true", help="print the resolved config (YAML) and exit")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.max_steps=200")
    return p.parse_args(argv)


def resolve_config(args):
    """The config to run with, and the run directory. A resume reads back the run dir's config.yaml."""
    from linreg.run_config import load_config

    if args.config is None and args.resume is None:
        raise ConfigError("--config is required (or --resume with an existing run dir)")
    run_dir = Path(args.run_dir) if args.run_dir else None
    if args.resume not in (None, "auto") and run_dir is None:
        from linreg import checkpoint
        run_dir = checkpoint.resolve(args.resume).parent.parent
    if run_dir is None:
        name = load_config(args.config, args.overrides).name
        run_dir = Path("runs") / name
    saved = run_dir / "config.yaml"
    if args.resume is not None and saved.is_file():
        return load_config(saved, args.overrides), run_dir
    if args.config is None:
        raise ConfigError(f"--resume {args.resume}: no config.yaml in {run_dir}; pass --config")
    return load_config(args.config, args.overrides), run_dir


class Preemption:
    """Turns SIGTERM/SIGINT into a flag checked after each optimizer step."""

    def __init__(self):
        self.requested = None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.requested = signal.Signals(signum).name


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


@dataclass
class Trainer:
    """Everything a training step needs, built once by ``build`` (also used by bench/ to time the real step)."""
    cfg: Any
    device: torch.device
    rank: int
    world: int
    tokenizer: Any
    stream: Any  # data.stream.TrainStream
    engine: Any  # deepspeed.DeepSpeedEngine
    scheduler: Any
    regularizer: Any
    capture: Any  # model.capture.ResidualStream, or None when the regularizer needs no states
    params: dict
    ds_cfg: dict
    sums: torch.Tensor = None  # [ce, reg] summed over micro-steps since the last log (on device: no host sync)

    @property
    def tokens_per_step(self) -> int:
        return self.ds_cfg["train_batch_size"] * self.cfg.data.seq_len


def init_distributed() -> torch.device:
    import deepspeed

    from linreg import dist

    on_gpu = torch.cuda.is_available()
    deepspeed.init_distributed(dist_backend="nccl" if on_gpu else "gloo", verbose=False)
    device = torch.device("cuda", dist.local_rank()) if on_gpu else torch.device("cpu")
    if on_gpu:
        torch.cuda.set_device(device)
    return device


def prepare_run_dir(cfg, run_dir: Path, resume: str | None, overwrite: bool) -> Path | None:
    """Create/validate the run dir on rank 0, write config.yaml; return the checkpoint to resume from."""
    from linreg import checkpoint, dist
    from linreg.run_config import save_config

    ckpt_root = run_dir / "checkpoints"
    resume_from = None
    if resume == "auto":
        resume_from = checkpoint.latest(ckpt_root)
    elif resume is not None:
        resume_from = checkpoint.resolve(resume)
    if dist.rank() == 0:
        if run_dir.exists() and resume_from is None and resume is None:
            if overwrite:
                shutil.rmtree(run_dir)
            elif any(run_dir.iterdir()):
                raise ConfigError(f"run dir {run_dir} exists: use --resume auto to continue it, --overwrite to replace "
                                  f"it, or --run-dir for a new one")
        ckpt_root.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    dist.barrier()
    return resume_from


def build_tokenizer(cfg, tok_dir: Path):
    """The run's tokenizer: saved in the run dir once (trained or loaded on rank 0), then read back by all."""
    from data.sources import load_documents
    from data.tokenizer import load_tokenizer, save_tokenizer, train_bpe_tokenizer
    from linreg import dist

    if dist.rank() == 0 and not (tok_dir / "tokenizer_config.json").is_file():
        if cfg.tokenizer.name is not None:
            tokenizer = load_tokenizer(cfg.tokenizer.name)
        else:
            print(f"training a byte-level BPE tokenizer (vocab {cfg.tokenizer.vocab_size})", flush=True)
            tokenizer = train_bpe_tokenizer(load_documents(cfg.data, "train"), cfg.tokenizer.vocab_size,
                                            cfg.tokenizer.train_max_bytes)
        save_tokenizer(tokenizer, tok_dir)
    dist.barrier()
    return load_tokenizer(tok_dir)


def build(cfg, run_dir: Path, device: torch.device, ds_cfg: dict) -> Trainer:
    import deepspeed

    from data.cache import tokenized_split
    from data.stream import PackedSamples, TrainStream
    from linreg import dist
    from linreg import engine as eng
    from linreg.schedule import build_scheduler
    from model.build import build_model, count_params
    from model.capture import ResidualStream
    from regularizers import build_regularizer

    rank, world = dist.rank(), dist.world_size()
    dist.seed_everything(cfg.train.seed)
    tokenizer = build_tokenizer(cfg, run_dir / "tokenizer")
    train_tokens = tokenized_split(cfg.data, "train", tokenizer, rank, dist.barrier, progress=rank == 0)
    stream = TrainStream(PackedSamples(train_tokens, cfg.data.seq_len), cfg.train.micro_batch_size, rank, world,
                         cfg.train.seed)

    model = build_model(cfg.model, tokenizer, seed=cfg.train.seed)
    params = count_params(model)
    if cfg.train.gradient_checkpointing:
        # Non-reentrant: the checkpointed block's output is the tensor our capture hooks saw, so the
        # regularizer's gradient flows through recomputation.
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    # train.compile also compiles the regularizer's per-token math (inductor fuses each state's work).
    regularizer = build_regularizer(dataclasses.replace(cfg.regularizer,
                                                        compile=cfg.regularizer.compile or cfg.train.compile))
    capture = ResidualStream(model) if regularizer.needs_states else None
    if cfg.train.compile:
        model.compile()  # in place: keeps parameter names (checkpoints, export) unchanged
    optimizer = eng.build_optimizer(model, cfg.optim, device.type)
    scheduler = build_scheduler(optimizer, cfg.schedule, cfg.train.max_steps)
    engine, optimizer, _, scheduler = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                                           config=ds_cfg)
    return Trainer(cfg=cfg, device=device, rank=rank, world=world, tokenizer=tokenizer, stream=stream, engine=engine,
                   scheduler=scheduler, regularizer=regularizer, capture=capture, params=params, ds_cfg=ds_cfg,
                   sums=torch.zeros(2, device=device, dtype=torch.float64))


def train_step(t: Trainer, step: int, measure_norm: bool = False):
    """One optimizer step (all micro-steps). Losses accumulate on device in ``t.sums``; no host sync.
    Returns the gradient norm when ``measure_norm`` and DeepSpeed keeps none (ZeRO-0 fp32), else None."""
    from model.loss import causal_lm_loss

    own_norm = None
    accum = t.cfg.train.grad_accum_steps
    for micro in range(accum):
        batch = t.stream.next_batch().to(t.device, non_blocking=True)
        inputs, targets = batch[:, :-1], batch[:, 1:]
        if t.capture is not None:
            with t.capture:
                logits = t.engine(input_ids=inputs).logits
            reg = t.regularizer(t.capture.take(), step)
        else:
            logits = t.engine(input_ids=inputs).logits
            reg = None
        ce = causal_lm_loss(logits, targets)
        t.engine.backward(ce if reg is None else ce + reg)
        if measure_norm and micro == accum - 1:
            # DeepSpeed clips ZeRO-0 fp32 gradients but drops their norm: measure it ourselves (log steps only).
            own_norm = torch.linalg.vector_norm(torch.stack(
                [p.grad.detach().norm() for p in t.engine.module.parameters() if p.grad is not None]))
        t.engine.step()
        t.sums[0] += ce.detach()
        if reg is not None:
            t.sums[1] += reg.detach()
    return own_norm


def main(argv=None) -> int:
    args = parse_args(argv)
    from linreg import dist

    dist.setup_env(args.local_rank)
    cfg, run_dir = resolve_config(args)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0

    # Cheap checks first: batch arithmetic and the DeepSpeed block, before any data or model work.
    from linreg import engine as eng

    ds_cfg = eng.ds_config(cfg, dist.world_size(), args.deepspeed_config)

    from eval.base import EvalContext
    from eval.hook import build_evaluators, run_evaluators
    from linreg import checkpoint
    from linreg.metrics import MetricsLogger
    from linreg.schedule import apply_lr_override
    from model.build import flops_per_token
    from model.export import export_checkpoint

    device = init_distributed()
    resume_from = prepare_run_dir(cfg, run_dir, args.resume, args.overwrite)
    t = build(cfg, run_dir, device, ds_cfg)
    main_proc, ckpt_root = t.rank == 0, run_dir / "checkpoints"

    from data.tokenizer import tokenizer_fingerprint

    meta = {"tokenizer": tokenizer_fingerprint(t.tokenizer), "vocab_size": t.engine.module.config.vocab_size,
            "model": dataclasses.asdict(cfg.model) | {"attn_implementation": None}}
    step, tokens_seen = 0, 0
    if resume_from is not None:
        checkpoint.check_compatible(resume_from, meta)
        client = checkpoint.load(t.engine, resume_from)
        step, tokens_seen = client["step"], client["tokens_seen"]
        t.stream.load_state_dict(client["data"])
        lr_changed = apply_lr_override(t.scheduler, cfg.optim.lr)
        if main_proc:
            print(f"resumed from {resume_from} at step {step}"
                  + (f" (optim.lr now {cfg.optim.lr})" if lr_changed else ""), flush=True)

    logger = MetricsLogger(run_dir, cfg.logging.tensorboard, purge_step=step + 1) if main_proc else None
    autocast_dtype = torch.bfloat16 if eng.precision(cfg) == "bf16" else None
    ctx = EvalContext(run_dir=run_dir, tokenizer=t.tokenizer, device=device, autocast_dtype=autocast_dtype,
                      rank=t.rank, world_size=t.world, seq_len=cfg.data.seq_len, config=cfg,
                      tb_writer=logger.tb if logger else None)
    evaluators = build_evaluators(cfg.eval, ctx)

    flops_tok = flops_per_token(t.params["dense"], cfg.model.num_layers, cfg.model.hidden_size, cfg.data.seq_len)
    peak = eng.peak_tflops(cfg.logging.peak_tflops)
    if main_proc:
        print(f"model: {t.params['total'] / 1e6:.2f}M parameters ({t.params['dense'] / 1e6:.2f}M dense), "
              f"{t.world} rank(s), {eng.precision(cfg)}, ZeRO-{cfg.train.zero_stage}, "
              f"{t.tokens_per_step} tokens/step, run dir {run_dir}", flush=True)

    # DeepSpeed reports the global grad norm except for ZeRO-0 without a mixed-precision optimizer wrapper.
    own_norm_needed = (ds_cfg.get("zero_optimization", {}).get("stage", 0) == 0
                       and not ds_cfg.get("bf16", {}).get("enabled") and not ds_cfg.get("fp16", {}).get("enabled"))

    def client_state() -> dict:
        return {"step": step, "tokens_seen": tokens_seen, "data": t.stream.state_dict(), "config": cfg.to_dict()}

    from tqdm import tqdm

    bar = tqdm(total=cfg.train.max_steps, initial=step, desc="train", unit="step", dynamic_ncols=True,
               disable=not (main_proc and cfg.logging.progress_bar))
    preempt = Preemption()
    steps_since_log, t_log = 0, time.perf_counter()
    t_start, step_at_start = time.perf_counter(), step
    last_train_loss = float("nan")
    exit_code = 0

    def sync_log(now_step: int, own_norm) -> dict[str, float]:
        """Host sync: the averaged losses since the last log, over micro-steps and ranks."""
        nonlocal steps_since_log, t_log
        dist.all_reduce_sum(t.sums)
        ce, reg = (t.sums / (steps_since_log * cfg.train.grad_accum_steps * t.world)).tolist()
        if not math.isfinite(ce) or not math.isfinite(reg):
            raise FloatingPointError(f"non-finite loss at step {now_step}: ce={ce}, reg={reg} "
                                     f"(last good checkpoint kept in {ckpt_root})")
        dt = time.perf_counter() - t_log
        tok_s = steps_since_log * t.tokens_per_step / dt
        out = {"train/loss": ce + reg, "train/ce": ce, "train/reg": reg, "train/lr": t.scheduler.get_last_lr()[0],
               "train/tokens_per_s": tok_s, "train/tokens": tokens_seen, "train/epoch": t.stream.epoch,
               "train/mem_gb": peak_memory_gb(device), "train/step_time_s": dt / steps_since_log}
        gn = t.engine.get_global_grad_norm() if own_norm is None else own_norm
        if gn is not None:
            out["train/grad_norm"] = float(gn)
        if peak:
            out["train/mfu"] = flops_tok * tok_s / (peak * 1e12 * t.world)
        t.sums.zero_()
        steps_since_log, t_log = 0, time.perf_counter()
        return out

    try:
        while step < cfg.train.max_steps:
            measure_norm = own_norm_needed and (step + 1) % cfg.logging.every == 0
            own_norm = train_step(t, step, measure_norm)
            step += 1
            tokens_seen += t.tokens_per_step
            steps_since_log += 1
            bar.update(1)

            stopping = preempt.requested is not None
            ckpt_due = cfg.checkpoint.every > 0 and step % cfg.checkpoint.every == 0
            if step % cfg.logging.every == 0 or ckpt_due or stopping or step == cfg.train.max_steps:
                scalars = sync_log(step, own_norm)  # also before every checkpoint: never save a NaN state
                last_train_loss = scalars["train/loss"]
                if main_proc:
                    logger.log(step, scalars)
                    bar.set_postfix(loss=f"{scalars['train/loss']:.4f}", tok_s=f"{scalars['train/tokens_per_s']:.0f}")
            if stopping:
                checkpoint.save(t.engine, ckpt_root, step, client_state(), cfg.checkpoint.keep_last, meta)
                if main_proc:
                    bar.close()
                    print(f"{preempt.requested}: saved checkpoint at step {step}; resume with --resume auto",
                          flush=True)
                return 0
            if ckpt_due and step < cfg.train.max_steps:
                checkpoint.save(t.engine, ckpt_root, step, client_state(), cfg.checkpoint.keep_last, meta)
            if step < cfg.train.max_steps:
                scalars = run_evaluators(evaluators, t.engine.module, step, final=False)
                if main_proc and scalars:
                    logger.log(step, scalars)
                    t_log += sum(v for k, v in scalars.items() if k.startswith("time/eval_"))  # keep tok/s honest

        bar.close()
        final = run_evaluators(evaluators, t.engine.module, step, final=True)
        for ev in evaluators:
            ev.finish(step)
        if main_proc and final:
            logger.log(step, final)
        tag_dir = checkpoint.save(t.engine, ckpt_root, step, client_state(), cfg.checkpoint.keep_last, meta)
        if main_proc and cfg.checkpoint.export_at_end:
            export_checkpoint(tag_dir, run_dir / "export")
        if main_proc:
            elapsed = time.perf_counter() - t_start
            done = step - step_at_start
            summary = {"steps": step, "tokens": tokens_seen, "train_loss": round(last_train_loss, 4),
                       **{k: round(v, 4) for k, v in final.items() if k.startswith("val/")},
                       "wall_s": round(elapsed, 1),
                       "tokens_per_s": round(done * t.tokens_per_step / max(elapsed, 1e-9))}
            print("done: " + " ".join(f"{k}={v}" for k, v in summary.items()), flush=True)
    except FloatingPointError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        exit_code = 1
    finally:
        if logger is not None:
            logger.close()
    return exit_code


def cli() -> None:
    try:
        code = main()
    except (ConfigError, FileNotFoundError, KeyError, ValueError, ImportError) as e:
        if os.environ.get("LINREG_DEBUG"):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}", file=sys.stderr, flush=True)
        code = 2
    sys.exit(code)


if __name__ == "__main__":
    cli()
