"""The metrics of the pruning curves: WikiText-2 perplexity, TinyStories loss, ARC-Easy (and any benchmark task).

WikiText-2 is the benchmark suite's loss task ``wikitext2`` (``eval.benchmarks.wikitext2``: HF's perplexity-guide
recipe, sliding windows of ``context`` tokens advancing by ``stride``), scored here with its per-window NLL kept
for the paired comparisons of ``prune.compare``; its settings are written next to the numbers. TinyStories loss
and ARC-Easy (acc, acc_norm) come from the benchmark suite (``eval.benchmarks``, scored as lm-evaluation-harness
scores ``arc_easy``), with any other task of the suite.
"""
from __future__ import annotations

import torch

from core import precision
from data.sources import data_root
from eval.benchmarks import BenchmarkSuite
from eval.benchmarks.loss import LossData, evaluate_loss
from eval.benchmarks.tasks import DataSource, get_task
from prune.errors import PruneError

WIKITEXT_BATCH = 8  # windows per forward


def wikitext_settings(data: LossData) -> dict:
    return {"words": data.num_words, "bytes": data.num_bytes, "context": data.seq_len + 1, "stride": data.stride,
            **data.settings, "tokens": int(data.ids.numel())}


class Evaluation:
    """Prepared once per tokenizer, then called with each pruned model: a flat {"task/metric": value} dict."""

    def __init__(self, tokenizer, *, tasks=("tinystories", "arc_easy"), root: str | None = None,
                 limit: int | None = None, context: int | None = None, stride: int | None = None,
                 wikitext_max_tokens: int | None = None, max_length: int = 2048, device=None, dtype: str = "auto",
                 batch_tokens: int | None = None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.autocast_dtype = precision.autocast_dtype(precision.resolve(dtype, self.device), self.device)
        self.batch_tokens = batch_tokens
        base = data_root(cli=root)
        if base is None:
            raise PruneError("pruning evaluation needs local data: set --data-root or $LINREG_DATA_ROOT "
                             "(wikitext2/wiki.test.raw, tinystories/valid.txt, arc/ARC-Easy-test.jsonl)")
        context = context or max_length
        self.wikitext_task = get_task("wikitext2", DataSource(base))
        self.wikitext = self.wikitext_task.build(tokenizer, context - 1, stride=stride,
                                                 max_tokens=wikitext_max_tokens)
        if "wikitext2" in tasks:
            raise PruneError("--tasks: wikitext2 is always scored here, with --context and --stride; leave it out")
        try:
            self.suite = BenchmarkSuite(list(tasks), tokenizer, data_root=str(base), limit=limit) if tasks else None
        except ValueError as e:
            raise PruneError(f"--tasks: {e}") from None

    def settings(self) -> dict:
        notes = [n for item in self.suite.items for n in item.task.notes] if self.suite else []
        return {"wikitext2": wikitext_settings(self.wikitext), "tasks": self.suite.task_names if self.suite else [],
                "device": str(self.device), "autocast": str(self.autocast_dtype), "data_notes": notes}

    def __call__(self, model) -> dict[str, float]:
        return self.evaluate(model)[0]

    def evaluate(self, model) -> tuple[dict[str, float], dict[str, list]]:
        """(metrics, per-document scores): WikiText-2's (NLL, tokens) per window and each multiple-choice task's
        per-question ``acc``/``acc_norm``, for the paired bootstrap of ``prune.compare``."""
        model = model.to(self.device).eval()
        windows_out: list = []
        metrics = evaluate_loss(model, self.wikitext, device=self.device, autocast_dtype=self.autocast_dtype,
                                batch_tokens=WIKITEXT_BATCH * (self.wikitext.seq_len + 1), per_window=windows_out,
                                metrics=self.wikitext_task.metric_names)
        out = {f"wikitext2/{k}": v for k, v in metrics.items()}
        docs: dict[str, list] = {"wikitext2": windows_out}
        if self.suite is not None:
            with torch.no_grad():
                results = self.suite.run(model, device=self.device, autocast_dtype=self.autocast_dtype,
                                         batch_tokens=self.batch_tokens, log_samples=True)
            out |= {f"{name}/{m}": float(v) for name, r in results.items() for m, v in r.metrics.items()}
            for name, r in results.items():
                for m in ("acc", "acc_norm"):
                    if r.samples and m in r.samples[0]:
                        docs[f"{name}/{m}"] = [float(s[m]) for s in r.samples]
        model.to("cpu")
        return out, docs

