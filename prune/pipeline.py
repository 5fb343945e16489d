"""One pruning study: select blocks, build the pruned models k = 1..K for every method, heal, evaluate, export.

Row k = 0 of every method is the unpruned model itself, evaluated by the same ``Evaluation``. For each base method
(``remove``, ``linear``, ``merged``) the models k = 1..K are built one change at a time (``plan.build``); each
distillation method starts from its base method's model at that k and trains a copy (``distill.distill``), so
``linear+distill`` at k and ``linear`` at k change the same blocks.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from prune import report
from prune.criteria import get_criterion
from prune.distill import distill, heldout_batches
from prune.errors import PruneError
from prune.evaluate import Evaluation
from prune.export import export
from prune.fit import fit_map, token_errors
from prune.plan import BASE_OF, METHODS, Probe, Selector, build
from prune.surgery import blocks


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

    def check(self, num_blocks: int) -> Selector:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise PruneError(f"unknown method '{unknown[0]}' (one of {', '.join(METHODS)})")
        if not self.ks or min(self.ks) < 1:
            raise PruneError(f"--k: block counts must be >= 1, got {self.ks}")
        selector = Selector(get_criterion(self.criterion), self.criterion, num_blocks, self.protect_first,
                            self.protect_last)
        for m in self.methods:
            selector.check_k(BASE_OF[m], max(self.ks))
        return selector


def fit_errors(model, probe: Probe) -> list[np.ndarray]:
    """Per-token relative error of the linear fit h_i -> h_{i+1} of every block of ``model``."""
    hs, _ = probe.collect(model)
    return [token_errors(fit_map(hs[i], hs[i + 1]), hs[i], hs[i + 1]).numpy() for i in range(len(hs) - 1)]


def run_study(model, tokenizer, study: Study, probe: Probe, evaluation: Evaluation, out: Path, *,
              distill_cfg=None, meta: dict | None = None, log=print) -> dict:
    num_blocks = len(blocks(model))
    selector = study.check(num_blocks)
    needs_distill = any(m.endswith("+distill") for m in study.methods)
    if needs_distill and distill_cfg is None:
        raise PruneError("a +distill method needs a distillation config")
    model = model.eval().requires_grad_(False)
    t0 = time.perf_counter()
    results: dict[str, dict[int, dict[str, float]]] = {m: {} for m in study.methods}
    details: dict[str, dict[str, dict]] = {m: {} for m in study.methods}
    baseline = evaluation(model)
    for m in study.methods:
        results[m][0] = dict(baseline)
    log(f"k=0 (unpruned, {num_blocks} blocks): " + _summary(baseline))
    errors = fit_errors(model, probe)
    heldout = heldout_batches(distill_cfg, tokenizer) if needs_distill else None
    selections: dict[str, dict] = {}
    k_max = max(study.ks)
    bases = list(dict.fromkeys(BASE_OF[m] for m in study.methods))
    bar = tqdm(total=len(bases) * k_max, desc="prune", unit="model", dynamic_ncols=True)
    for base in bases:
        for k, pruned, record in build(selector, model, probe, base, k_max, study.iterative, progress=bar):
            selections[base] = record
            if k not in study.ks:
                continue
            for method in (m for m in study.methods if BASE_OF[m] == base):
                t_m = time.perf_counter()
                info = {"changed_blocks": list(pruned.changed), "fits": {str(b): f for b, f in pruned.fits.items()}}
                variant = pruned
                if method != base:
                    variant, info["distill"] = distill(pruned, method, model, tokenizer, distill_cfg,
                                                       out / "distill" / f"{method}_k{k}", resume=study.resume,
                                                       heldout=heldout)
                results[method][k] = evaluation(variant.model)
                info["seconds"] = round(time.perf_counter() - t_m, 1)
                if k in study.export_ks:
                    info["export"] = str(export(variant, tokenizer, out / "models" / f"{method}_k{k}",
                                                {**(meta or {}), "criterion": study.criterion, "k": k}))
                details[method][str(k)] = info
                bar.write(f"{method} k={k} (blocks {pruned.changed}): " + _summary(results[method][k]))
    bar.close()
    record = {**(meta or {}), "criterion": study.criterion, "iterative": study.iterative,
              "protect_first": study.protect_first, "protect_last": study.protect_last, "num_blocks": num_blocks,
              "hidden_size": model.config.hidden_size, "probe_tokens": sum(len(t) for t in probe.tokens),
              "ks": study.ks, "methods": study.methods, "evaluation": evaluation.settings(),
              "selection": selections, "details": details,
              "fit_errors": [{"block": i, "median": float(np.median(e)), "mean": float(e.mean())}
                             for i, e in enumerate(errors)],
              "distill_config": distill_cfg.to_dict() if needs_distill else None,
              "wall_s": round(time.perf_counter() - t0, 1)}
    header = (f"# Pruning: {meta.get('model', '') if meta else ''}\n\ncriterion `{study.criterion}` "
              f"({'iterative' if study.iterative else 'one-shot'}), {num_blocks} blocks; evaluation "
              f"{evaluation.settings()['wikitext2']}")
    report.write_outputs(out, record, results, num_blocks, errors, header)
    return record | {"results": results}


def _summary(metrics: dict[str, float]) -> str:
    keys = [k for k in metrics if k.endswith(("wikitext2/ppl", "/loss", "/acc", "/acc_norm"))]
    return ", ".join(f"{k} {metrics[k]:.4f}" for k in keys)

