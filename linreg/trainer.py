"""The Trainer: one training run, built from a resolved config and a run directory, driven by ``fit()``.

    trainer = Trainer(cfg, RunDir("runs/x"), resume="auto")
    exit_code = trainer.fit()          # train_step() until max_steps or preemption, then finish()

Everything goes through ``deepspeed.initialize`` (gloo on CPU, NCCL on GPU), one process or many. Each component
owns its cadence and its state: the ``StepMeter`` decides when a training row is due and produces it (a host sync
on those steps only), the ``Checkpointer`` when a periodic checkpoint is due and how every stateful component is
saved and restored, the ``Evaluators`` which evaluations are due, ``Preemption`` whether every rank agreed to stop
(with several ranks, one tiny all-reduce and a host sync every step; none with one rank).
The Trainer only puts them in order, so sweeps, pruning-with-distillation and benchmarks drive the same loop.
"""
from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from core import dist
from core.errors import NonFiniteLossError
from core.rundir import RunDir, find_checkpoint, log_filter
from linreg import engine as eng
from linreg import universal
from linreg.checkpoint import Checkpointer, failpoint
from linreg.meter import StepMeter
from linreg.preemption import Preemption


@dataclass
class TrainState:
    """What the loop itself has done: optimizer steps and tokens seen (the stateful component of the loop)."""
    step: int = 0
    tokens_seen: int = 0
    owed_evaluations: bool = False  # preempted at a step whose evaluations had not run: run them on resume

    def state_dict(self) -> dict:
        return {"step": self.step, "tokens_seen": self.tokens_seen, "owed_evaluations": self.owed_evaluations}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.tokens_seen = int(state["step"]), int(state["tokens_seen"])
        self.owed_evaluations = bool(state.get("owed_evaluations", False))


def init_distributed() -> torch.device:
    import deepspeed

    on_gpu = torch.cuda.is_available()
    dist.skip_inference_comm_op()
    deepspeed.init_distributed(dist_backend="nccl" if on_gpu else "gloo", verbose=False)
    device = torch.device("cuda", dist.local_rank()) if on_gpu else torch.device("cpu")
    if on_gpu:
        torch.cuda.set_device(device)
    return device


class Trainer:
    def __init__(self, cfg, run: RunDir, *, resume: str | None = None, overwrite: bool = False,
                 deepspeed_config: str | None = None, log: bool = True, model: torch.nn.Module | None = None,
                 tokenizer=None, stream=None):
        """Build the run: DeepSpeed config (checked first: cheap), run dir, tokenizer, data, model, engine, meter,
        checkpointer, evaluators, logger; then restore ``resume`` ('auto' = the run dir's newest complete
        checkpoint, fresh if it has none; or a path). ``log=False`` builds no evaluators, logger or progress bar
        (benchmarks).

        Workflows that train something else than a fresh ``cfg.model`` language model (distilling a pruned model,
        fine-tuning a classifier) pass ``model`` (only its parameters with ``requires_grad`` are trained),
        ``tokenizer`` (saved into the run dir) and/or ``stream`` (an object with ``next_batch()``,
        ``state_dict()``, ``load_state_dict()`` and ``epoch``), and override ``forward_loss``."""
        dist.setup_env()
        self.cfg, self.run = cfg, run
        self.ds_cfg = eng.ds_config(cfg, dist.world_size(), deepspeed_config)
        self.device = init_distributed()
        self.rank, self.world = dist.rank(), dist.world_size()
        self.is_main = self.rank == 0
        existed = run.path.exists()
        resume_from = self._prepare_run_dir(resume, overwrite)
        if resume_from is not None:  # another world size under ZeRO 1-3: load its universal copy, if converted
            self.ds_cfg = universal.ds_config_for_resume(self.ds_cfg, resume_from, self.world)
        self.state = TrainState()
        try:
            self._build_components(model, tokenizer, stream)
        except BaseException:
            if self.is_main and resume_from is None and not existed and not run.started():
                shutil.rmtree(run.path, ignore_errors=True)  # a failed fresh start leaves nothing behind
            raise
        self.meter = StepMeter(every=cfg.logging.every, max_steps=cfg.train.max_steps,
                               micro_steps=self.grad_accum, world=self.world,
                               tokens_per_step=self.tokens_per_step, flops_per_token=self.flops_per_token,
                               peak_tflops=eng.peak_tflops(cfg.logging.peak_tflops), device=self.device)
        self.checkpointer = Checkpointer(self.engine, run, cfg.checkpoint.every, cfg.checkpoint.keep_last,
                                         self._checkpoint_meta(), extra={"config": cfg.to_dict()})
        for name, obj in (("train", self.state), ("meter", self.meter), ("data", self.stream)):
            self.checkpointer.register(name, obj)
        self.last_checkpoint: Path | None = None
        self._saved_steps: list[tuple[int, Path]] = []  # checkpoints of this run, oldest first
        self._finite_through = 0  # the last step whose loss is known to be finite
        self._name_last_good()
        self.last_row: dict[str, float] = {}  # the latest training row (the summary line reports its loss)
        if resume_from is not None:
            self._resume(resume_from)
        # A run resumed from its final checkpoint has nothing to do; anything else has now started successfully,
        # and only now do its config.yaml and logs change.
        self.finished = resume_from is not None and self.state.step >= cfg.train.max_steps
        if not self.finished and self.is_main:
            from linreg.config import save_config

            save_config(cfg, run.config)
            self._tidy_logs(resume_from)
        dist.barrier()
        failpoint("after_start")
        self.preemption = Preemption(self.device)
        if resume_from is not None and not self.finished:
            saved_in = Checkpointer.save_seconds(resume_from)
            if saved_in is not None:
                self.preemption.check_save_time(saved_in, f"measured when {resume_from.name} was written")
        self.logger, self.evaluators, self.bar = None, None, None
        if log and not self.finished:
            self._build_logging()

    # -- construction ------------------------------------------------------------------------------------------
    def _prepare_run_dir(self, resume: str | None, overwrite: bool) -> Path | None:
        """Check the run dir on rank 0 (``RunDir.prepare``); return the checkpoint to resume from (verified)."""
        resume_from = self.run.resumable_checkpoint() if resume == "auto" else (
            find_checkpoint(resume) if resume is not None else None)
        if self.is_main:
            self.run.prepare(fresh=resume_from is None and resume is None, overwrite=overwrite)
        dist.barrier()
        return resume_from

    def _tidy_logs(self, resume_from: Path | None) -> None:
        """Logs hold each (step, tag) once. A resume drops what was logged after its checkpoint (the resumed run
        logs it again); a fresh start moves the logs of an attempt that never finished a checkpoint aside."""
        from linreg.metrics import trim_tensorboard

        if resume_from is not None:
            self.run.trim_logs(self.state.step, self.state.owed_evaluations)
            trim_tensorboard(self.run.tb, log_filter(self.state.step, self.state.owed_evaluations))
            return
        aside = self.run.set_aside_attempt()
        if aside is not None:
            print(f"no checkpoint in {self.run.checkpoints}: starting fresh; the logs of the attempt that ended "
                  f"before its first checkpoint are now in {aside}", flush=True)

    def _build_tokenizer(self, given=None):
        """The run's tokenizer: saved in the run dir once (given, trained or loaded on rank 0), then read back."""
        from data.sources import tokenizer_sample
        from data.tokenizer import load_tokenizer, save_tokenizer, train_bpe_tokenizer

        cfg, tok_dir = self.cfg.tokenizer, self.run.tokenizer
        if self.is_main and not (tok_dir / "tokenizer_config.json").is_file():
            if given is not None:
                tokenizer = given
            elif cfg.name is not None:
                tokenizer = load_tokenizer(cfg.name)
            else:
                print(f"training a byte-level BPE tokenizer (vocab {cfg.vocab_size})", flush=True)
                tokenizer = train_bpe_tokenizer(tokenizer_sample(self.cfg.data, cfg.train_max_bytes), cfg.vocab_size)
            save_tokenizer(tokenizer, tok_dir)
        dist.barrier()
        return load_tokenizer(tok_dir)

    def _build_components(self, model, tokenizer, stream) -> None:
        import deepspeed

        from data.cache import tokenized_split
        from data.stream import PackedSamples, TrainStream
        from linreg.schedule import build_scheduler
        from model.build import build_model, count_params, flops_per_token
        from model.capture import ResidualStream, accepts_logits_to_keep
        from regularizers import build_regularizer

        cfg = self.cfg
        dist.seed_everything(cfg.train.seed)
        self.tokenizer = self._build_tokenizer(tokenizer)
        if stream is None:
            train_tokens = tokenized_split(cfg.data, "train", self.tokenizer, self.rank, dist.barrier,
                                           progress=self.is_main)
            stream = TrainStream(PackedSamples(train_tokens, cfg.data.seq_len), self.micro_batch,
                                 self.rank, self.world, cfg.train.seed)
        self.stream = stream
        self.custom_model = model is not None
        if model is None:
            model = build_model(cfg.model, self.tokenizer, seed=cfg.train.seed)
        self.params = count_params(model)
        hf = model.config
        self.flops_per_token = flops_per_token(self.params["dense"], hf.num_hidden_layers, hf.hidden_size,
                                               cfg.data.seq_len)
        if cfg.train.gradient_checkpointing:
            # Non-reentrant: the checkpointed block's output is the tensor our capture hooks saw, so the
            # regularizer's gradient flows through recomputation.
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        # train.compile also compiles the regularizer's per-token math (inductor fuses each state's work).
        self.regularizer = build_regularizer(dataclasses.replace(cfg.regularizer,
                                                                 compile=cfg.regularizer.compile or cfg.train.compile))
        self.capture = ResidualStream(model) if self.regularizer.needs_states else None
        if cfg.train.compile:
            model.compile()  # in place: keeps parameter names (checkpoints, export) unchanged
        optimizer = eng.build_optimizer(model, cfg.optim, self.device.type)
        scheduler = build_scheduler(optimizer, cfg.schedule, cfg.train.max_steps)
        self.engine, _, _, self.scheduler = deepspeed.initialize(model=model, optimizer=optimizer,
                                                                 lr_scheduler=scheduler, config=self.ds_cfg)
        # One grad-norm rule: DeepSpeed reports the global norm, except for ZeRO-0 without a mixed-precision
        # wrapper, where it clips but drops it; then we measure it ourselves, on the steps that get a row.
        self._own_grad_norm = (self.ds_cfg.get("zero_optimization", {}).get("stage", 0) == 0
                               and not self.ds_cfg.get("bf16", {}).get("enabled")
                               and not self.ds_cfg.get("fp16", {}).get("enabled"))
        if self._own_grad_norm and self.world == 1:
            # One rank holds the whole gradient: DeepSpeed's all-reduce would flatten, "average" over one rank and
            # copy back every gradient each step. Its own switch for this (set when it has no process group).
            self.engine.enable_backward_allreduce = False
        self._grad_norm: torch.Tensor | None = None
        head = model.get_output_embeddings()
        self.fused_loss = (cfg.train.fused_loss and cfg.train.zero_stage < 3 and head is not None
                           and getattr(head, "bias", None) is None and accepts_logits_to_keep(model))
        self._head = head if self.fused_loss else None  # the engine's module is this model: the same head

    def _checkpoint_meta(self) -> dict:
        from data.tokenizer import tokenizer_fingerprint

        module = self.engine.module
        shape = (dataclasses.asdict(self.cfg.model) | {"attn_implementation": None} if not self.custom_model else
                 {"architecture": type(module).__name__, "config": module.config.to_diff_dict()})
        return {"tokenizer": tokenizer_fingerprint(self.tokenizer), "vocab_size": module.config.vocab_size,
                "model": shape}

    def _resume(self, tag_dir: Path) -> None:
        from linreg.schedule import apply_lr_override

        self.checkpointer.load(tag_dir)
        self._saved(tag_dir)
        lr_changed = apply_lr_override(self.scheduler, self.cfg.optim.lr)
        if self.is_main:
            print(f"resumed from {tag_dir} at step {self.state.step}"
                  + (f" (optim.lr now {self.cfg.optim.lr})" if lr_changed else ""), flush=True)

    def _build_logging(self) -> None:
        from tqdm import tqdm

        from eval.base import EvalContext
        from eval.hook import Evaluators
        from linreg.metrics import MetricsLogger

        cfg = self.cfg
        if self.is_main:
            wandb = dataclasses.asdict(cfg.logging.wandb) if cfg.logging.wandb is not None else None
            self.logger = MetricsLogger(self.run, cfg.logging.tensorboard, wandb=wandb, config=cfg.to_dict())
        from core.precision import autocast_dtype

        ctx = EvalContext(run_dir=self.run, tokenizer=self.tokenizer, device=self.device,
                          autocast_dtype=autocast_dtype(eng.precision(cfg)), rank=self.rank, world_size=self.world,
                          seq_len=cfg.data.seq_len, config=cfg, tb_writer=self.logger.tb if self.logger else None)
        self.evaluators = Evaluators(cfg.eval, ctx)
        self.bar = tqdm(total=cfg.train.max_steps, initial=self.state.step, desc="train", unit="step",
                        dynamic_ncols=True, disable=not (self.is_main and cfg.logging.progress_bar))
        if self.is_main:
            print(f"model: {self.params['total'] / 1e6:.2f}M parameters ({self.params['dense'] / 1e6:.2f}M dense), "
                  f"{self.world} rank(s), {eng.precision(cfg)}, ZeRO-{cfg.train.zero_stage}, "
                  f"{self.tokens_per_step} tokens/step ({cfg.train.global_batch_size} sequences: {self.grad_accum} "
                  f"micro-step(s) of {self.micro_batch} per rank), run dir {self.run}", flush=True)

    # -- public API ----------------------------------------------------------------------------------------------
    @property
    def seq_len(self) -> int:
        """Positions per sequence (a subclass with other inputs overrides it)."""
        return self.cfg.data.seq_len

    @property
    def tokens_per_step(self) -> int:
        return self.ds_cfg["train_batch_size"] * self.seq_len

    @property
    def micro_batch(self) -> int:
        """Sequences per rank and forward (``train.micro_batch_size``, or global / ranks when that is null)."""
        return self.ds_cfg["train_micro_batch_size_per_gpu"]

    @property
    def grad_accum(self) -> int:
        """Micro-steps per optimizer step: derived from the global batch, the micro-batch and the world size."""
        return self.ds_cfg["gradient_accumulation_steps"]

    @property
    def model(self) -> torch.nn.Module:
        """The engine's module (an HF causal LM), e.g. for evaluation."""
        return self.engine.module

    def forward_regularized(self, step: int, *args, **kwargs):
        """(the engine's output, the regularizer on the residual states that forward captured, or None without a
        regularizer) for one micro-batch: every objective that takes the regularizer goes through here."""
        if self.capture is None:
            return self.engine(*args, **kwargs), None
        with self.capture:
            out = self.engine(*args, **kwargs)
        return out, self.regularizer(self.capture.take(), step)

    def forward_loss(self, batch, step: int):
        """(task loss, regularizer or None) of one micro-batch from the stream; the task loss is the objective
        without the regularizer (logged as ``train/task_loss``): here next-token cross-entropy. Workflows with
        another objective (distillation's MSE, a classifier's cross-entropy) override this."""
        from model.loss import causal_lm_loss, linear_cross_entropy

        batch = batch.to(self.device, non_blocking=True)
        if not self.fused_loss:
            out, reg = self.forward_regularized(step, input_ids=batch[:, :-1])
            return causal_lm_loss(out.logits, batch[:, 1:]), reg
        # The head's input is HF's last hidden state (after the final norm); the head itself runs one position.
        out, reg = self.forward_regularized(step, input_ids=batch[:, :-1], logits_to_keep=1, output_hidden_states=-1)
        return linear_cross_entropy(out.hidden_states[-1], self._head.weight, batch[:, 1:]), reg

    def train_step(self) -> None:
        """One optimizer step (all micro-steps). Losses accumulate on the device in the meter: no host sync."""
        step = self.state.step
        accum = self.grad_accum
        measure_norm = self._own_grad_norm and self.meter.due(step + 1)
        for micro in range(accum):
            task_loss, reg = self.forward_loss(self.stream.next_batch(), step)
            self.engine.backward(task_loss if reg is None else task_loss + reg)
            if measure_norm and micro == accum - 1:  # gradients are gone after engine.step()
                self._grad_norm = torch.linalg.vector_norm(torch.stack(
                    [p.grad.detach().norm() for p in self.engine.module.parameters() if p.grad is not None]))
            self.engine.step()
            self.meter.add(task_loss, reg)
        self.state.step += 1
        self.state.tokens_seen += self.tokens_per_step
        self.meter.step_done()
        failpoint("after_train_step")

    def grad_norm(self) -> float | None:
        """The global gradient norm of the last step (None where it was not measured)."""
        if self._own_grad_norm:
            return float(self._grad_norm) if self._grad_norm is not None else None
        gn = self.engine.get_global_grad_norm()
        return float(gn) if gn is not None else None

    def log(self, step: int, scalars: dict[str, float]) -> None:
        if self.logger is not None and scalars:
            self.logger.log(step, scalars)

    def log_train_row(self, step: int) -> dict[str, float]:
        row = self.meter.row(step, lr=self.scheduler.get_last_lr()[0], grad_norm=self.grad_norm(),
                             **{"train/tokens": self.state.tokens_seen, "train/epoch": self.stream.epoch})
        self._verified(step)
        self.log(step, row)
        self.last_row = row
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{row['train/loss']:.4f}", tok_s=f"{row['train/tokens_per_s']:.0f}")
        return row

    def _saved(self, tag_dir: Path) -> None:
        self.last_checkpoint = tag_dir
        self._saved_steps.append((self.state.step, tag_dir))
        self._name_last_good()

    def _verified(self, step: int) -> None:
        """The losses up to ``step`` are finite: every checkpoint before it led to a finite next step."""
        self._finite_through = step
        self._name_last_good()

    def _name_last_good(self) -> None:
        # The last good checkpoint is not simply the newest: the weights saved after step s produce the loss of
        # step s + 1, so s is good only once that loss was seen finite. Resuming from it (with a lower lr)
        # starts from weights that are known to give a finite loss.
        # Only checkpoints still on disk: keep_last may already have pruned an older good one.
        good = [path for step, path in self._saved_steps if step < self._finite_through and path.is_dir()]
        self.meter.on_nonfinite = (f" (last good checkpoint: {good[-1]}; resume from it with a lower optim.lr)"
                                   if good else " (no good checkpoint yet: lower optim.lr and start again)")

    def weights_finite(self) -> bool:
        """All parameters finite on every rank (each rank checks its own ZeRO-3 shard)."""
        bad = torch.zeros(1, device=self.device)
        for p in self.engine.module.parameters():
            local = getattr(p, "ds_tensor", p)  # ZeRO-3: the partition this rank owns
            if local.numel() and not torch.isfinite(local).all():
                bad += 1
                break
        return float(dist.all_reduce_sum(bad)) == 0

    def save_checkpoint(self) -> Path:
        """Save the state after this step, unless its loss or its weights went NaN/Inf: a checkpoint named as
        "last good" must be one that resumes into finite numbers."""
        step = self.state.step
        self.meter.check_finite(step)
        self._verified(step)
        if not self.weights_finite():
            raise NonFiniteLossError(f"non-finite weights after the update of step {step}"
                                     f"{self.meter.on_nonfinite}")
        if self.logger is not None:
            self.logger.sync()  # what this checkpoint says was logged is on disk before it is complete
        started = time.perf_counter()
        with self.meter.pause():
            tag_dir = self.checkpointer.save(step)
        self.preemption.check_save_time(time.perf_counter() - started)
        failpoint("after_save")
        self._saved(tag_dir)
        return tag_dir

    def evaluate(self, final: bool = False) -> dict[str, float]:
        if self.evaluators is None:
            return {}
        step = self.state.step
        with self.meter.pause():
            scalars = self.evaluators.run(self.model, step, final=final)
        if scalars:
            failpoint("before_eval_log")  # linearity.jsonl (and benchmark files) written, the scalars not yet
        self.log(step, scalars)
        return scalars

    def after_step(self) -> bool:
        """Everything due after an optimizer step, in order; True when the run must stop (preemption)."""
        step, last = self.state.step, self.state.step >= self.cfg.train.max_steps
        if self.bar is not None:
            self.bar.update(1)
        if self.meter.due(step):
            self.log_train_row(step)
        stop = self.preemption.agreed() and not last  # at the last step finish() saves anyway
        if stop:
            # No time for evaluations before the kill: the checkpoint records them as owed.
            self.state.owed_evaluations = self.evaluators is not None and bool(self.evaluators.due(step))
            self.save_checkpoint()
            if self.is_main:
                print(f"{self.preemption.requested}: saved checkpoint at step {step}; resume with --resume auto",
                      flush=True)
            return True
        if not last:
            self.evaluate()  # before the checkpoint of this step: a crash in between replays both
            if self.checkpointer.due(step):
                self.save_checkpoint()
        return False

    def fit(self) -> int:
        """Train to ``train.max_steps`` (or until preempted), then ``finish()``. Returns the exit code (0)."""
        self._t_start, self._step_at_start = time.perf_counter(), self.state.step
        try:
            if self.finished:
                return self._already_finished()
            if self.state.owed_evaluations:
                self.evaluate()
                self.state.owed_evaluations = False
            while self.state.step < self.cfg.train.max_steps:
                self.train_step()
                if self.after_step():
                    return 0
            self.finish()
            return 0
        finally:
            self.close()

    def _already_finished(self) -> int:
        """A finished run launched again (a requeued job): nothing is trained, evaluated or rewritten."""
        from model.export import export_checkpoint

        step = self.state.step
        if self.is_main:
            if self.cfg.checkpoint.export_at_end and not self.custom_model and not self.run.export.is_dir():
                export_checkpoint(self.last_checkpoint, self.run.export)  # the one thing a crash may have missed
            print(f"run already finished at step {step} (train.max_steps={self.cfg.train.max_steps}): nothing to "
                  f"do; raise train.max_steps to train further", flush=True)
        return 0

    def finish(self) -> Path:
        """Final evaluations, the final checkpoint, the HF export and the summary line; returns the checkpoint."""
        from model.export import export_checkpoint

        step = self.state.step
        if self.bar is not None:
            self.bar.close()
        final = self.evaluate(final=True)
        if self.evaluators is not None:
            self.evaluators.finish(step)
        tag_dir = self.save_checkpoint()
        failpoint("before_export")
        if self.is_main and self.cfg.checkpoint.export_at_end and not self.custom_model:
            export_checkpoint(tag_dir, self.run.export)  # a workflow with its own model exports it itself
        if self.is_main and self.logger is not None:
            elapsed = time.perf_counter() - self._t_start
            summary = {"steps": step, "tokens": self.state.tokens_seen,
                       "train_loss": round(self.last_row.get("train/loss", float("nan")), 4),
                       **{k: round(v, 4) for k, v in final.items() if k.startswith("val/")},
                       "wall_s": round(elapsed, 1),
                       "tokens_per_s": round((step - self._step_at_start) * self.tokens_per_step / max(elapsed, 1e-9))}
            print("done: " + " ".join(f"{k}={v}" for k, v in summary.items()), flush=True)
        return tag_dir

    def close(self) -> None:
        """Release what the run holds (log files, signal handlers, capture hooks); safe to call twice."""
        if self.bar is not None:
            self.bar.close()
        if self.logger is not None:
            self.logger.close()
            self.logger = None
        self.preemption.restore()
