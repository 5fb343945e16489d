"""The metrics of the pruning curves: WikiText-2 perplexity, TinyStories loss, ARC-Easy (and any benchmark task).

**WikiText-2** (``<data root>/wikitext2/wiki.test.raw``, the ordered test split of ``wikitext-2-raw-v1``): the rows
(lines, line endings normalised to ``\\n`` and kept, as the HF rows keep them; the local file has no empty rows)
joined with ``"\\n\\n"`` and tokenised as one string with the tokenizer's default special tokens -- the recipe of
HF's perplexity guide. Sliding windows of ``context`` tokens advance by ``stride``; each window scores only the
tokens the previous one did not (the first window scores all but its first token), so for ``stride < context``
every token but the first is predicted exactly once, with at least ``context - stride`` tokens of context (except
in the first window). With ``stride == context`` (disjoint windows) the first token of each window has no context
and is not scored, exactly as in HF's recipe.

    ppl      = exp(NLL / predicted tokens)
    word_ppl = exp(NLL / words)        words: whitespace-separated words of the scored text
    bpb      = NLL / ln 2 / UTF-8 bytes of the scored text

(NLL in nats, summed in float64). ``word_ppl`` and ``bpb`` do not depend on the tokenizer. ``max_tokens`` scores
only the first tokens (and the words and bytes of the text they cover); the settings used are written next to the
numbers.

**TinyStories** validation loss and **ARC-Easy** (acc, acc_norm) come from the benchmark suite
(``eval.benchmarks``, scored as lm-evaluation-harness scores ``arc_easy``), with any other task of the suite.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from core import precision
from data.sources import data_root
from eval.benchmarks import BenchmarkSuite
from model.loss import causal_lm_loss
from prune.errors import PruneError


@dataclass
class WikiText:
    ids: torch.Tensor  # the scored token stream
    words: int
    bytes: int
    context: int
    stride: int
    rows: int
    path: str

    def settings(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "ids"} | {"tokens": int(self.ids.numel()),
                                                                         "join": "\\n\\n"}


def read_wikitext_rows(path: Path) -> list[str]:
    with path.open(encoding="utf-8", newline="") as f:
        return [line.rstrip("\r\n") + "\n" for line in f if line.strip()]


def prepare_wikitext(path: Path, tokenizer, context: int, stride: int, max_tokens: int | None = None) -> WikiText:
    if not path.is_file():
        raise PruneError(f"WikiText-2 file not found: {path}")
    if not 1 <= stride <= context:
        raise PruneError(f"WikiText-2 stride {stride} must be in [1, context={context}]")
    rows = read_wikitext_rows(path)
    text = "\n\n".join(rows)
    enc = tokenizer(text, return_offsets_mapping=max_tokens is not None)
    ids = enc["input_ids"]
    if max_tokens is not None and len(ids) > max_tokens:
        ids, end = ids[:max_tokens], enc["offset_mapping"][max_tokens - 1][1]
        text = text[:end]
    return WikiText(torch.tensor(ids, dtype=torch.long), len(text.split()), len(text.encode("utf-8")), context,
                    stride, len(rows), str(path))


def windows(n: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, scored) per window: tokens [begin, end) in, the last ``scored`` targets counted."""
    out, prev_end = [], 0
    for begin in range(0, max(n - 1, 1), stride):
        end = min(begin + context, n)
        out.append((begin, end, end - max(prev_end, begin + 1)))
        prev_end = end
        if end == n:
            break
    return out


@torch.no_grad()
def wikitext_metrics(model, data: WikiText, *, device, autocast_dtype=None, batch_size: int = 8,
                     per_window: list | None = None) -> dict[str, float]:
    """The metrics of the module docstring; ``per_window`` (if given) receives (NLL, scored tokens) of each window,
    in stream order, for paired comparisons."""
    spans = windows(data.ids.numel(), data.context, data.stride)
    full = [s for s in spans if s[1] - s[0] == data.context]
    groups = [full[i:i + batch_size] for i in range(0, len(full), batch_size)] + [[s] for s in spans if s not in full]
    nll, count, windows_out = 0.0, 0, {}
    for group in groups:
        x = torch.stack([data.ids[b:e] for b, e, _ in group]).to(device)
        with precision.autocast(torch.device(device), autocast_dtype):
            logits = model(input_ids=x, use_cache=False).logits
        for row, (b, _e, scored) in enumerate(group):
            w = float(causal_lm_loss(logits[row, -scored - 1:-1], x[row, -scored:], reduction="sum").double())
            nll, count, windows_out[b] = nll + w, count + scored, (w, scored)
    if per_window is not None:
        per_window += [windows_out[b] for b in sorted(windows_out)]
    return {"ppl": math.exp(nll / count), "word_ppl": math.exp(nll / data.words),
            "bpb": nll / math.log(2) / data.bytes, "nll": nll, "tokens": float(count)}


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
        self.wikitext = prepare_wikitext(base / "wikitext2" / "wiki.test.raw", tokenizer, context,
                                         stride or max(context // 2, 1), wikitext_max_tokens)
        try:
            self.suite = BenchmarkSuite(list(tasks), tokenizer, data_root=str(base), limit=limit) if tasks else None
        except ValueError as e:
            raise PruneError(f"--tasks: {e}") from None

    def settings(self) -> dict:
        notes = [n for item in self.suite.items for n in item.task.notes] if self.suite else []
        return {"wikitext2": self.wikitext.settings(), "tasks": self.suite.task_names if self.suite else [],
                "device": str(self.device), "autocast": str(self.autocast_dtype), "data_notes": notes}

    def __call__(self, model) -> dict[str, float]:
        return self.evaluate(model)[0]

    def evaluate(self, model) -> tuple[dict[str, float], dict[str, list]]:
        """(metrics, per-document scores): WikiText-2's (NLL, tokens) per window and each multiple-choice task's
        per-question ``acc``/``acc_norm``, for the paired bootstrap of ``prune.compare``."""
        model = model.to(self.device).eval()
        windows_out: list = []
        out = {f"wikitext2/{k}": v for k, v in wikitext_metrics(model, self.wikitext, device=self.device,
                                                               autocast_dtype=self.autocast_dtype,
                                                               per_window=windows_out).items()}
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

