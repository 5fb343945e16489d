"""WikiText-2 test perplexity (a loss task: ``eval.benchmarks.loss``), the recipe of HF's perplexity guide.

The rows of the ordered test split of ``wikitext-2-raw-v1`` (lines, line endings normalised to ``\\n`` and kept, as
the HF rows keep them; empty rows dropped) are joined with ``"\\n\\n"`` and tokenised as one string with the
tokenizer's default special tokens. Windows of ``seq_len + 1`` tokens advance by ``stride`` (default half the
window), each scoring only the tokens the previous one did not, so every token but the first is predicted once
with at least ``seq_len + 1 - stride`` tokens of context (except in the first window). ``max_tokens`` scores only
the first tokens (and the words and bytes of the text they cover). Metrics: ``ppl``, ``word_ppl`` and ``bpb``
(which do not depend on the tokenizer), ``nll`` and ``tokens``.

Data: ``<root>/wikitext2/wiki.test.raw`` or, without a data root, the hub's ``Salesforce/wikitext`` config
``wikitext-2-raw-v1``, split ``test``.
"""
from __future__ import annotations

from pathlib import Path

from eval.benchmarks.loss import LossTask, Stream
from eval.benchmarks.tasks.base import Column, load_hub_split, require_file

HUB_DATASET, HUB_CONFIG = "Salesforce/wikitext", "wikitext-2-raw-v1"
LOCAL_FILE = "wikitext2/wiki.test.raw"
JOIN = "\n\n"


def read_wikitext_rows(path: Path) -> list[str]:
    with path.open(encoding="utf-8", newline="") as f:
        return [line.rstrip("\r\n") + "\n" for line in f if line.strip()]


class WikiText2(LossTask):
    title = "WikiText-2 test"
    metric_names = ("ppl", "word_ppl", "bpb", "nll", "tokens")
    columns = (Column("ppl", "ppl", "ratio"), Column("word_ppl", "word_ppl", "ratio"), Column("bpb", "bpb", "nats"))

    def rows(self) -> tuple[list[str], str]:
        if self.data.root is None:
            texts = [r["text"] for r in load_hub_split(self.name, HUB_DATASET, HUB_CONFIG, "test")]
            return [t.rstrip("\r\n") + "\n" for t in texts if t.strip()], f"{HUB_DATASET}/{HUB_CONFIG} test"
        path = require_file(self.name, self.data.root / LOCAL_FILE)
        return read_wikitext_rows(path), str(path)

    def default_stride(self, seq_len: int) -> int:
        return max((seq_len + 1) // 2, 1)

    def stream(self, tokenizer, limit, max_tokens):
        rows, source = self.rows()
        rows = rows[:limit] if limit else rows
        text = JOIN.join(rows)
        enc = tokenizer(text, return_offsets_mapping=max_tokens is not None)
        ids = enc["input_ids"]
        if max_tokens is not None and len(ids) > max_tokens:
            ids, end = ids[:max_tokens], enc["offset_mapping"][max_tokens - 1][1]
            text = text[:end]
        return Stream(list(ids), len(rows), len(text.encode("utf-8")), len(text.split()),
                      {"rows": len(rows), "path": source, "join": "\\n\\n"})
