"""Healing a pruned model by layer-wise distillation from the unpruned one, through linreg's ``Trainer``.

Objective: the mean over the states both models have (h_0 and the output of every kept block: ``Pruned.state_pairs``)
of the mean squared difference between the student's and the teacher's residual state, on every token of a
training window:

    loss = 1/|P| sum_{(j, i) in P} mean_{b, t, c} (h^student_j - h^teacher_i)^2

- ``linear+distill`` (Razzhigaev et al. 2024, "Your Transformer is Secretly Linear", section 5: "linear replacement
  + distill (linear)"): only the replacement maps train (``maps_only``).
- ``remove+distill`` (the same paper's "layer removing + distill (all params)"): every parameter of the student
  trains (``all_params``).

Other methods heal through the same ``heal`` with their own trainable parameters, state pairs or objective
(``prune.streamline``: one block, one pair; ``prune.reverse``: the plain Trainer's LM loss).

``DistillTrainer`` is a ``Trainer`` with ``forward_loss`` overridden, so distillation has everything a training run
has: DeepSpeed ZeRO (``train.zero_stage``), bf16 on GPU, checkpoints and ``--resume``, TensorBoard and
metrics.jsonl (``train/loss`` is the distillation loss; ``val/loss`` the student's LM loss at the end). The data are
the run config's ``data:`` section (TinyStories by default), packed as in pretraining.

The teacher runs under ``torch.no_grad()`` in the training precision, so it costs its weights (2 bytes per parameter
in bf16, 4 in fp32) plus one forward's activations, no gradients or optimizer state. Under ZeRO-3 it is wrapped in
its own DeepSpeed engine without an optimizer (ZeRO-Inference): each rank keeps 1/world of its weights and gathers
each block's weights for the forward, as for the student; under ZeRO 0-2 every rank holds a full copy.

After training, the student's weights are read back from the final checkpoint with ``model.export``'s
``checkpoint_state_dict`` (DeepSpeed's ``zero_to_fp32`` for stages 1-3: fp32 masters, whole tensors under ZeRO-3)
into a CPU copy of the pruned model, which is then evaluated and exported like any other.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from core.rundir import RunDir
from linreg.config import Config, load_config
from linreg.trainer import Trainer
from model.capture import ResidualStream
from model.export import load_checkpoint_into
from model.linear_block import LinearBlock
from prune.errors import PruneError
from prune.plan import Pruned

# The distillation run's defaults; a --distill-config YAML and dotted --distill-set overrides go on top.
DEFAULTS: dict = {
    "name": "distill",
    "data": {"dataset": "roneneldan/TinyStories", "train_files": ["tinystories/train.txt"],
             "valid_files": ["tinystories/valid.txt"], "seq_len": 256, "val_batches": 4},
    "regularizer": {"name": "none"},
    "optim": {"lr": 1.0e-3, "weight_decay": 0.0},
    "schedule": {"kind": "cosine", "warmup_steps": 10, "min_lr_ratio": 0.1},
    "train": {"max_steps": 200, "global_batch_size": 8, "micro_batch_size": 8, "zero_stage": 0},
    "eval": {"val_loss": {"every": 0, "at_end": True}, "linearity": {"enabled": False},
             "benchmarks": {"enabled": False}},
    "checkpoint": {"every": 0, "keep_last": 1, "export_at_end": False},
    "logging": {"every": 10},
}


def distill_config(path: str | None, overrides: list[str], max_positions: int | None) -> Config:
    """The run config: DEFAULTS, then the YAML file (if any), then dotted overrides. ``model.max_seq_len`` is set
    to the window (the student's shape is its own; the section only has to accept ``data.seq_len``)."""
    from core.config import deep_merge, load_yaml_tree

    tree = copy.deepcopy(DEFAULTS)
    if path is not None:
        tree = deep_merge(tree, load_yaml_tree(path))
    cfg = load_config(None, overrides, tree=tree)
    if cfg.regularizer.name != "none":  # the distillation loss replaces the LM loss; a regularizer would be ignored
        raise PruneError(f"regularizer.name={cfg.regularizer.name!r} in the distillation config: distillation "
                         f"trains on the layer-wise MSE to the teacher only; leave regularizer.name=none")
    if max_positions is not None and cfg.data.seq_len > max_positions:
        cfg.data.seq_len = max_positions
    cfg.model.max_seq_len = cfg.data.seq_len
    return cfg


def layerwise_mse(student_states: list[torch.Tensor], teacher_states: list[torch.Tensor],
                  pairs: list[tuple[int, int]]) -> torch.Tensor:
    return torch.stack([F.mse_loss(student_states[j].float(), teacher_states[i].float()) for j, i in pairs]).mean()


def train_only(model: torch.nn.Module, modules: list[torch.nn.Module]) -> None:
    model.requires_grad_(False)
    for mod in modules:
        mod.requires_grad_(True)


@dataclass
class Healing:
    """What every heal needs: the frozen teacher (the original model), the run config and where the run goes."""
    teacher: torch.nn.Module
    tokenizer: object
    cfg: Config
    run_dir: Path
    resume: bool = False
    heldout: list[torch.Tensor] | None = None


class DistillTrainer(Trainer):
    """A Trainer whose objective is the layer-wise MSE to a frozen teacher (see the module docstring)."""

    def __init__(self, cfg: Config, run: RunDir, *, student: torch.nn.Module, teacher: torch.nn.Module,
                 tokenizer, pairs: list[tuple[int, int]], resume: str | None = None, overwrite: bool = False):
        self.pairs = pairs
        super().__init__(cfg, run, resume=resume, overwrite=overwrite, model=student, tokenizer=tokenizer)
        self.teacher = self._prepare_teacher(teacher)
        self.student_stream = ResidualStream(self.engine.module)
        self.teacher_stream = ResidualStream(self.teacher)

    def _prepare_teacher(self, teacher: torch.nn.Module) -> torch.nn.Module:
        from linreg import engine as eng

        teacher = teacher.eval().requires_grad_(False)
        dtype = torch.bfloat16 if eng.precision(self.cfg) == "bf16" else torch.float32
        teacher.to(self.device, dtype)
        if self.cfg.train.zero_stage == 3:
            import deepspeed

            micro = self.cfg.train.micro_batch_size
            ds = {"train_micro_batch_size_per_gpu": micro, "train_batch_size": micro * self.world,
                  "zero_optimization": {"stage": 3}, "bf16": {"enabled": dtype == torch.bfloat16}}
            engine, *_ = deepspeed.initialize(model=teacher, config=ds)
            teacher = engine.module
        return teacher

    def forward_loss(self, batch, step: int):
        inputs = batch[:, :-1].to(self.device, non_blocking=True)
        with torch.no_grad(), self.teacher_stream:
            self.teacher(input_ids=inputs, use_cache=False, logits_to_keep=1)
        teacher_states = self.teacher_stream.take()
        with self.student_stream:
            self.engine(input_ids=inputs, use_cache=False, logits_to_keep=1)
        return layerwise_mse(self.student_stream.take(), teacher_states, self.pairs), None

    def close(self) -> None:
        super().close()
        for stream in ("student_stream", "teacher_stream"):
            if getattr(self, stream, None) is not None:
                getattr(self, stream).remove()
                setattr(self, stream, None)


@torch.no_grad()
def heldout_mse(student: torch.nn.Module, teacher: torch.nn.Module, pairs: list[tuple[int, int]],
                batches: list[torch.Tensor], device) -> float:
    """The layer-wise MSE on held-out windows (every token), averaged over the batches."""
    s_stream, t_stream = ResidualStream(student), ResidualStream(teacher)
    s_was, t_was = student.training, teacher.training
    student.eval(), teacher.eval()
    try:
        total = 0.0
        for batch in batches:
            x = batch[:, :-1].to(device)
            with t_stream:
                teacher(input_ids=x, use_cache=False, logits_to_keep=1)
            with s_stream:
                student(input_ids=x, use_cache=False, logits_to_keep=1)
            total += float(layerwise_mse(s_stream.take(), t_stream.take(), pairs))
        return total / max(len(batches), 1)
    finally:
        s_stream.remove(), t_stream.remove()
        student.train(s_was), teacher.train(t_was)


def heldout_batches(cfg: Config, tokenizer, num_batches: int = 4) -> list[torch.Tensor]:
    """The first windows of the run's validation split (the distillation never trains on them)."""
    from data.cache import tokenized_split
    from data.stream import PackedSamples, validation_batches

    samples = PackedSamples(tokenized_split(cfg.data, "valid", tokenizer, progress=False), cfg.data.seq_len)
    return list(validation_batches(samples, cfg.train.micro_batch_size, num_batches, 0, 1))


def maps_only(pruned: Pruned, h: Healing) -> tuple[Pruned, dict]:
    return heal(pruned, h, lambda m: [mod for mod in m.modules() if isinstance(mod, LinearBlock)])


def all_params(pruned: Pruned, h: Healing) -> tuple[Pruned, dict]:
    return heal(pruned, h, lambda m: [m])


def heal(pruned: Pruned, h: Healing, trainable, pairs: list[tuple[int, int]] | None = None,
         objective: str = "states") -> tuple[Pruned, dict]:
    """Train a copy of ``pruned`` in ``h.run_dir``: only the modules ``trainable(model)`` returns, on the
    layer-wise MSE to the teacher over ``pairs`` (default: every state both have), or with ``objective="lm"``
    on the plain Trainer's next-token loss. Returns the copy (fp32, CPU) and a summary."""
    cfg, run_dir = h.cfg, h.run_dir
    student = pruned.clone()
    train_only(student.model, trainable(student.model))
    pairs = pairs or student.state_pairs()
    info: dict = {"objective": objective, "run_dir": str(run_dir), "steps": cfg.train.max_steps, "lr": cfg.optim.lr,
                  "micro_batch_size": cfg.train.micro_batch_size, "seq_len": cfg.data.seq_len,
                  "zero_stage": cfg.train.zero_stage,
                  "trainable_params": sum(p.numel() for p in student.model.parameters() if p.requires_grad)}
    if h.heldout is not None:
        info["heldout_mse_before"] = heldout_mse(student.model, h.teacher, pairs, h.heldout, "cpu")
    t0 = time.perf_counter()
    common = {"resume": "auto" if h.resume else None, "overwrite": not h.resume}
    if objective == "lm":
        trainer = Trainer(cfg, RunDir(run_dir), model=copy.deepcopy(student.model), tokenizer=h.tokenizer, **common)
    else:
        trainer = DistillTrainer(cfg, RunDir(run_dir), student=copy.deepcopy(student.model),
                                 teacher=copy.deepcopy(h.teacher), tokenizer=h.tokenizer, pairs=pairs, **common)
    trainer.fit()
    tag_dir = trainer.run.latest_checkpoint()
    info["final_train_loss"] = trainer.last_row.get("train/loss")
    del trainer
    model = student.model
    load_checkpoint_into(model, tag_dir, what="the student")
    model.float().requires_grad_(False).eval()
    info["wall_s"] = round(time.perf_counter() - t0, 1)
    if h.heldout is not None:
        info["heldout_mse_after"] = heldout_mse(model, h.teacher, pairs, h.heldout, "cpu")
    return student, info
