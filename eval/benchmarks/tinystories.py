"""TinyStories validation loss, bits per byte and perplexity (a loss task: ``eval.benchmarks.loss``).

The validation stories are tokenised without special tokens and joined into one stream with EOS before the first
story and after every story (``EOS s1 EOS s2 EOS ...``), the packing training uses. The stream is cut into windows
of ``seq_len + 1`` tokens that overlap by one token, so every story token and every story-ending EOS is predicted
exactly once, with the preceding tokens of its window as context (the first token of a window sees no earlier
window). ``bpb`` counts the EOS predictions in the numerator and no bytes for them in the denominator.

Data: ``<root>/tinystories/valid.txt`` (stories separated by ``<|endoftext|>`` lines) or, without a data root, the
``validation`` split of ``roneneldan/TinyStories`` (``text`` stripped, empty rows dropped). ``linreg data``
writes that split as ``valid.txt``; a ``valid.txt`` its manifest does not list (e.g. shared/data's 1,726-story
sample) is evaluated with a warning, which the results carry as a note.
"""
from __future__ import annotations

from core.errors import ConfigError
from eval.benchmarks.loss import LossTask, Stream
from eval.benchmarks.tasks.base import TaskDataError, load_hub_split, require_file

HUB_DATASET = "roneneldan/TinyStories"
LOCAL_FILE = "tinystories/valid.txt"


class TinyStories(LossTask):
    """Loss and bits per byte of the TinyStories validation stories (metrics: loss, bpb, ppl)."""
    title = "TinyStories validation"

    def documents(self) -> list[str]:
        if self.data.root is None:
            rows = load_hub_split(self.name, HUB_DATASET, None, "validation")
            return [r["text"].strip() for r in rows if r["text"].strip()]
        from data.prepare import MANIFEST, prepared
        from data.sources import read_txt_documents

        path = require_file(self.name, self.data.root / LOCAL_FILE)
        docs = read_txt_documents(path)
        if not docs:
            raise TaskDataError(f"task '{self.name}': no stories in {path}")
        if not prepared(self.data.root, LOCAL_FILE) and not self.notes:
            self.note(f"task '{self.name}': {path} ({len(docs):,} stories) is not the full validation split of "
                      f"{HUB_DATASET} (not in {MANIFEST}); its loss is not comparable with full-split numbers -- "
                      f"build the split with linreg data --root DIR --only tinystories")
        return docs

    def stream(self, tokenizer, limit, max_tokens):
        if max_tokens is not None:
            raise ConfigError(f"task '{self.name}': scores whole stories; limit the stories, not the tokens")
        docs = self.documents()
        docs = docs[:limit] if limit else docs
        eos = tokenizer.eos_token_id
        stream = [eos]
        for ids in tokenizer(docs, add_special_tokens=False)["input_ids"]:
            stream += ids
            stream.append(eos)
        return Stream(stream, len(docs), sum(len(d.encode("utf-8")) for d in docs))
