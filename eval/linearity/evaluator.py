"""In-loop linearity profiles: every ``every`` steps, the profile on a fixed probe set from the validation text.

Logs per-block scalars and their means (``linearity/block_00`` .. ``linearity/mean``, the same under
``linearity_wo_res/`` and ``norm_ratio/``), appends one record per evaluation to ``run_dir/linearity.jsonl``
and, at the end, draws ``plots/linearity_vs_step.png`` and ``plots/linearity_heatmaps.png`` in the run directory
(again on demand with ``linreg linearity --run RUN_DIR``).

Under ZeRO-3 every rank runs the same forwards (parameters are gathered collectively); rank 0 alone keeps the
states and solves. The probe is tokenized once, at construction.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from core.config import check
from core.errors import ConfigError, DataError
from core.io import append_jsonl
from data.sources import load_documents
from eval.base import EvalContext, Evaluator, EvaluatorConfig
from eval.linearity.heldout import HeldoutConfig
from eval.linearity.probe import ProbeSetConfig, checked_probe, read_probe_text
from eval.linearity.profile import (
    HELDOUT_QUANTITIES,
    INTERVALS,
    QUANTITIES,
    StateCollector,
    pool_order,
    probe_batches,
    probe_groups,
    profile_from_states,
)
from eval.linearity.state_measures import ToolkitConfig, pooled_labels


@dataclass
class HeldoutEvalConfig(HeldoutConfig):
    # on by default: an evaluation with held-out statistics costs 1.34-1.45x a plain one in the quick start's loop,
    # and a model's profile 1.21-1.44x (docs/PERFORMANCE.md), within the 2x an in-loop default may cost
    enabled: bool = True


@dataclass
class LinearityEvalConfig(EvaluatorConfig):
    every: int = 200  # ~1% of wall time on tiny_cpu with the paper probe (docs/PERFORMANCE.md)
    probe: ProbeSetConfig = field(default_factory=ProbeSetConfig)
    text_file: str | None = None  # probe text; None = the run's validation documents joined by newlines
    batch_size: int = 32  # probe sequences per forward (their L+1 states are held until moved to the CPU)
    final_norm: bool = False  # also the pair (h_{L-1}, final_norm(h_L)), logged as <quantity>/final_norm
    plot: bool = True  # PNGs (and TensorBoard figures) at the end of training
    heldout: HeldoutEvalConfig = field(default_factory=HeldoutEvalConfig)  # held-out scores, intervals, chance
    toolkit: ToolkitConfig = field(default_factory=ToolkitConfig)  # per-state anisotropy, TwoNN ID, logit lens

    def validate(self, p: str) -> None:
        super().validate(p)
        check(self.batch_size >= 1, f"{p}.batch_size", self.batch_size, "must be >= 1")


def history_record(step: int, profile, seconds: float) -> dict:
    rec = {"step": step, "num_tokens": profile.num_tokens, "seconds": round(seconds, 4), "means": profile.means()}
    for key in (*QUANTITIES, "rank_x", "solver"):
        rec[key] = [getattr(p, key) for p in profile.pairs]
    if profile.pairs[0].heldout is not None:
        for key in (*HELDOUT_QUANTITIES, *INTERVALS):
            rec[key] = [getattr(p.heldout, key) for p in profile.pairs]
    rec["final_norm"] = profile.final_norm.to_dict() if profile.final_norm is not None else None
    if profile.toolkit is not None:
        rec["toolkit"] = profile.toolkit
    return rec


def scalars_of(profile) -> dict[str, float]:
    out, means = {}, profile.means()
    held = profile.pairs[0].heldout is not None
    for key in (*QUANTITIES, *(HELDOUT_QUANTITIES if held else ())):
        def value(pair, key=key):
            return getattr(pair, key) if key in QUANTITIES else getattr(pair.heldout, key)
        for i, pair in enumerate(profile.pairs):
            out[f"{key}/block_{i:02d}"] = value(pair)
        out[f"{key}/mean"] = means[key]
        if profile.final_norm is not None:
            out[f"{key}/final_norm"] = value(profile.final_norm)
    for key, values in (profile.toolkit or {}).items():
        for i, v in enumerate(values):
            out[f"{key}/state_{i:02d}"] = v
    return out


class LinearityEvaluator(Evaluator, config=LinearityEvalConfig):
    name = "linearity"

    def __init__(self, cfg: LinearityEvalConfig, ctx: EvalContext):
        super().__init__(cfg, ctx)
        if cfg.text_file is not None:
            text = read_probe_text(cfg.text_file, ctx.config.data.text_field)
        else:
            try:
                text = "\n".join(load_documents(ctx.config.data, "valid"))
            except ValueError as e:
                raise DataError(f"eval.linearity: {e} (or set eval.linearity.text_file, or "
                                 f"eval.linearity.enabled=false)") from None
        model_cfg = ctx.config.model
        # refused at start-up, not at the first evaluation
        probe = checked_probe(text, ctx.tokenizer, cfg.probe, source=cfg.text_file or "(the run's validation text)",
                              width=model_cfg.hidden_size, max_len=getattr(model_cfg, "max_seq_len", ctx.seq_len),
                              heldout=cfg.heldout if cfg.heldout.enabled else None,
                              heldout_off="set eval.linearity.heldout.enabled=false")
        self.num_tokens = sum(len(p) for p in probe)
        self.labels = pooled_labels(probe, pool_order(probe)) if cfg.toolkit.logit_lens else None
        if cfg.toolkit.logit_lens and getattr(ctx.config.train, "zero_stage", 0) == 3:
            raise ConfigError("eval.linearity.toolkit.logit_lens=true: the logit lens reads lm_head whole, which "
                              "ZeRO-3 partitions (use zero_stage <= 2, or linreg linearity on a checkpoint)")
        self.groups = probe_groups(probe) if cfg.heldout.enabled else None
        pad = ctx.tokenizer.pad_token_id if ctx.tokenizer.pad_token_id is not None else 0
        self.batches = probe_batches(probe, cfg.batch_size, pad)
        self.collector: StateCollector | None = None  # hooks go on at the first evaluation (the engine's module)
        self.jsonl = ctx.run_dir.linearity

    def evaluate(self, model: torch.nn.Module, step: int) -> dict[str, float]:
        t0 = time.perf_counter()
        if self.collector is None:
            self.collector = StateCollector(model, final_norm=self.cfg.final_norm)
        states, normed = self.collector.collect(self.batches, self.ctx.device, self.ctx.autocast,
                                                keep=self.ctx.is_main)
        if not self.ctx.is_main:
            return {}
        profile = profile_from_states(states, normed, self.ctx.device, groups=self.groups, heldout=self.cfg.heldout,
                                      toolkit=self.cfg.toolkit, model=self.collector.model, labels=self.labels)
        append_jsonl(self.jsonl, history_record(step, profile, time.perf_counter() - t0))
        return scalars_of(profile)

    def finish(self, step: int) -> None:
        if self.collector is not None:
            self.collector.remove()
        if not (self.ctx.is_main and self.cfg.plot and self.jsonl.is_file()):
            return
        # Imported on use: matplotlib is a second of start-up that a config load or a run without plots
        # should not pay.
        from eval.linearity.plots import read_history, save_figures, training_figures

        figures = training_figures(read_history(self.jsonl))
        tb = self.ctx.tb_writer
        save_figures(figures, self.ctx.run_dir.plots, close=tb is None)
        if tb is not None:
            for name, fig in figures.items():
                tb.add_figure(f"linearity/{name}", fig, step)  # closes the figure
