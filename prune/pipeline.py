"""One pruning study: build the pruned models k = 1..K of every method, heal, evaluate, compare, export.

Row k = 0 of every method is the unpruned model itself, evaluated once by the same ``Evaluation``. The original
model's probe states are collected once and shared by every method's build (``methods.Context``) and by the fit
errors of Fig. 9. Methods whose builds are equal share one pass (``linear`` and ``linear+distill`` change the same
blocks at every k); a healing method trains a copy of its build's model at that k (``prune.distill.heal``). Every
model is evaluated with the same probe, evaluation data and seeds, and ``prune.compare`` sets each method against
plain ``remove`` at each k on the same documents.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from prune import compare, report
from prune.criteria import get_criterion
from prune.distill import Healing, heldout_batches
from prune.errors import PruneError
from prune.evaluate import Evaluation
from prune.export import export
from prune.fit import fit_map, token_errors
from prune.methods import Context, get_method
from prune.plan import ProbeSet, Selector


@dataclass
class Study:
    criterion: str = "linearity"
    methods: list[str] = field(default_factory=lambda: ["remove", "linear"])
    ks: list[int] = field(default_factory=lambda: [1])
    iterative: bool = False
    protect_first: bool = False
    protect_last: bool = False
    export_ks: list[int] = field(default_factory=list)
    resume: bool = False
    seed: int = 0

    def check(self, num_blocks: int) -> Selector:
        methods = [get_method(m) for m in self.methods]
        if not self.ks or min(self.ks) < 1:
            raise PruneError(f"--k: block counts must be >= 1, got {self.ks}")
        selector = Selector(get_criterion(self.criterion), self.criterion, num_blocks, self.protect_first,
                            self.protect_last)
        for m in methods:
            m.build.check(selector, max(self.ks))
        return selector

    def heals(self) -> bool:
        return any(get_method(m).heal is not None for m in self.methods)


def fit_errors(hs) -> list[np.ndarray]:
    """Per-token relative error of the linear fit h_i -> h_{i+1} of every block, from the model's states."""
    return [token_errors(fit_map(hs[i], hs[i + 1]), hs[i], hs[i + 1]).numpy() for i in range(len(hs) - 1)]


def run_study(model, tokenizer, study: Study, probe: ProbeSet, evaluation: Evaluation, out: Path, *,
              distill_cfg=None, meta: dict | None = None, log=print) -> dict:
    from prune.surgery import blocks

    num_blocks = len(blocks(model))
    selector = study.check(num_blocks)
    if study.heals() and distill_cfg is None:
        raise PruneError("a healing method (+distill, +finetune, streamline) needs a distillation config")
    model = model.eval().requires_grad_(False)
    t0 = time.perf_counter()
    results: dict[str, dict[int, dict[str, float]]] = {m: {} for m in study.methods}
    docs: dict[str, dict[int, dict[str, list]]] = {m: {} for m in study.methods}
    details: dict[str, dict[str, dict]] = {m: {} for m in study.methods}
    baseline, baseline_docs = evaluation.evaluate(model)
    for m in study.methods:
        results[m][0], docs[m][0] = dict(baseline), baseline_docs
    log(f"k=0 (unpruned, {num_blocks} blocks): " + _summary(baseline))
    states, _ = probe.collect(model)
    errors = fit_errors(states)
    heldout = heldout_batches(distill_cfg, tokenizer) if study.heals() else None
    selections: dict[str, dict] = {}
    k_max = max(study.ks)
    builds = list(dict.fromkeys(get_method(m).build for m in study.methods))
    bar = tqdm(total=len(builds) * k_max, desc="prune", unit="model", dynamic_ncols=True)
    ctx = Context(selector, model, probe, states, study.iterative, study.seed, bar)
    for b in builds:
        sharing = [m for m in study.methods if get_method(m).build == b]
        for k, pruned, record in b(ctx, k_max):
            for m in sharing:
                selections[m] = record
            if k not in study.ks:
                continue
            for method in sharing:
                t_m = time.perf_counter()
                info = {"changed_blocks": list(pruned.changed), "kept_blocks": list(pruned.alive),
                        "fits": {str(blk): f for blk, f in pruned.fits.items()}}
                variant, heal = pruned, get_method(method).heal
                if heal is not None:
                    variant, info["heal"] = heal(pruned, Healing(model, tokenizer, distill_cfg,
                                                                 out / "distill" / f"{method}_k{k}", study.resume,
                                                                 heldout))
                results[method][k], docs[method][k] = evaluation.evaluate(variant.model)
                info["seconds"] = round(time.perf_counter() - t_m, 1)
                if k in study.export_ks:
                    info["export"] = str(export(variant, tokenizer, out / "models" / f"{method}_k{k}",
                                                {**(meta or {}), "criterion": study.criterion, "k": k}))
                details[method][str(k)] = info
                bar.write(f"{method} k={k} ({pruned.changed}): " + _summary(results[method][k]))
    bar.close()
    comparison = compare.against(docs, "remove", study.seed)
    record = {**(meta or {}), "criterion": study.criterion, "iterative": study.iterative,
              "protect_first": study.protect_first, "protect_last": study.protect_last, "num_blocks": num_blocks,
              "hidden_size": model.config.hidden_size, "probe_tokens": sum(len(t) for t in probe.tokens),
              "ks": study.ks, "methods": study.methods, "seed": study.seed, "evaluation": evaluation.settings(),
              "selection": selections, "details": details,
              "comparison": {m: {str(k): v for k, v in per_k.items()} for m, per_k in comparison.items()},
              "fit_errors": [{"block": i, "median": float(np.median(e)), "mean": float(e.mean())}
                             for i, e in enumerate(errors)],
              "distill_config": distill_cfg.to_dict() if study.heals() else None,
              "wall_s": round(time.perf_counter() - t0, 1)}
    header = (f"# Pruning: {meta.get('model', '') if meta else ''}\n\ncriterion `{study.criterion}` "
              f"({'iterative' if study.iterative else 'one-shot'}), {num_blocks} blocks; evaluation "
              f"{evaluation.settings()['wikitext2']}")
    report.write_outputs(out, record, results, num_blocks, errors, header, comparison)
    return record | {"results": results}


def _summary(metrics: dict[str, float]) -> str:
    keys = [k for k in metrics if k.endswith(("wikitext2/ppl", "/loss", "/acc", "/acc_norm"))]
    return ", ".join(f"{k} {metrics[k]:.4f}" for k in keys)
