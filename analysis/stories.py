"""Judged story generation (the paper's Table 3): models complete TinyStories openings, a judge grades each
completion on Grammar, Creativity, Consistency and Plot (``analysis.judge``), and the table reports the four means
and their mean, with 95% Student-t intervals over prompts.

    linreg stories --model PATH[,PATH...] --out DIR
        [--judge-url http://127.0.0.1:8000/v1 --judge-model NAME | --judge-hf PATH]

Protocol (every setting is written to ``DIR/stories_meta.json``):

- **Prompts**: the first ``--num-prompts`` stories (file order) of the TinyStories validation text
  (``<data root>/tinystories/valid.txt``; the hub's ``roneneldan/TinyStories`` validation split without a data
  root; or ``--prompts FILE``) that have more than ``--opening-words`` + 5 words; the opening is the story cut after
  its first ``--opening-words`` words (mid-sentence, as Eldan & Li's prompts often are). The prompt id is the story's
  index in the file.
- **Sampling**: HF ``generate`` with ``do_sample``, ``--temperature`` (1.0), ``--top-p`` (0.95),
  ``--max-new-tokens`` (200), stopping at EOS. Each prompt is sampled on its own with the seed ``--seed + prompt
  id`` (inside ``torch.random.fork_rng``), so a completion does not depend on which other prompts run, in which
  order, or whether a rerun regenerates it; the seeded draws are reproducible on one machine and library version.
- ``--reference`` adds a row ``reference``: the true continuation of each story, graded the same way (the
  judge's scale for human-written stories).
- **Caching**: ``generations.jsonl`` and ``grades.jsonl`` in DIR, keyed by the model, opening, sampling settings
  and seed (and for grades the judge and rubric version). A rerun generates and grades only what is missing; a
  failed grading is kept for inspection but is retried on the next run.
- **Aggregation**: per model, over the prompts whose grading succeeded: the mean of each criterion and of the
  per-story mean of the four; ``failed`` counts the prompts whose grading failed (unparseable or timed out after
  every attempt), which are not in the means.

Outputs: ``stories.md`` (Table 3 layout), ``stories.json``, ``stories.csv`` (one row per model and criterion),
``stories.png`` (the four criteria and the mean per model, with intervals).
"""
from __future__ import annotations

import argparse
import math
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from analysis.judge import CRITERIA, RUBRIC_VERSION, Judge, build_judge, grade
from analysis.report import (
    ResultCache,
    fingerprint,
    markdown_table,
    model_identity,
    pm,
)
from core import stats
from core.cli import Parser, add_shared_args, command, run_cli
from core.errors import ConfigError, DataError
from core.io import write_csv, write_json
from core.rundir import model_labels

HUB_STORIES = "roneneldan/TinyStories"
REFERENCE = "reference"
COLUMNS = ("Grammar", "Creativity", "Consistency", "Plot", "Mean")


@dataclass(frozen=True)
class Prompt:
    id: int  # index of the story in its file
    opening: str
    reference: str  # the story's own continuation


@dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = 200
    temperature: float = 1.0
    top_p: float = 0.95
    seed: int = 0

    def validate(self) -> None:
        if self.max_new_tokens < 1 or self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise ConfigError(f"sampling settings out of range: {self} (max_new_tokens >= 1, temperature > 0, "
                              f"0 < top_p <= 1)")


def story_openings(stories: list[str], num_prompts: int, opening_words: int) -> list[Prompt]:
    """The first ``num_prompts`` stories with more than ``opening_words`` + 5 words, cut after that many words."""
    prompts = []
    for i, story in enumerate(stories):
        words = list(re.finditer(r"\S+", story))
        if len(words) <= opening_words + 5:
            continue
        cut = words[opening_words - 1].end()
        prompts.append(Prompt(i, story[:cut], story[cut:].strip()))
        if len(prompts) == num_prompts:
            break
    if len(prompts) < num_prompts:
        raise DataError(f"only {len(prompts)} stories have more than {opening_words + 5} words; "
                        f"asked for {num_prompts} prompts")
    return prompts


def read_stories(path: str | None, root: Path | None) -> tuple[list[str], str]:
    """The stories to take openings from, and a description of their source."""
    from data.sources import load_hub_split, read_jsonl_documents, read_txt_documents

    if path is None and root is not None:
        path = str(root / "tinystories" / "valid.txt")
    if path is not None:
        docs = read_jsonl_documents(path) if path.endswith((".jsonl", ".jsonl.gz")) else read_txt_documents(path)
        return docs, str(Path(path).resolve())
    rows = load_hub_split(HUB_STORIES, None, "validation", hint="no data root is set: pass --prompts FILE")
    return [t.strip() for t in rows["text"] if t.strip()], f"{HUB_STORIES}:validation"


@torch.no_grad()
def generate(model, tokenizer, prompts: list[Prompt], sampling: SamplingConfig, device="cpu") -> list[str]:
    """One sampled completion per prompt (see the module docstring for the seeding rule)."""
    out = []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    limit = getattr(model.config, "max_position_embeddings", None)
    for p in prompts:
        ids = tokenizer(p.opening, return_tensors="pt")["input_ids"].to(device)
        new_tokens = sampling.max_new_tokens if limit is None else min(sampling.max_new_tokens, limit - ids.shape[1])
        if new_tokens < 1:
            raise ConfigError(f"prompt {p.id} has {ids.shape[1]} tokens: no room left in the model's {limit} positions")
        with torch.random.fork_rng(devices=[device] if torch.device(device).type == "cuda" else []):
            torch.manual_seed(sampling.seed + p.id)
            seq = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                 temperature=sampling.temperature, top_p=sampling.top_p, top_k=0,
                                 max_new_tokens=new_tokens, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
        out.append(tokenizer.decode(seq[0, ids.shape[1]:], skip_special_tokens=True))
    return out


def generation_key(model_id: str, prompt: Prompt, sampling: SamplingConfig) -> str:
    return fingerprint({"model": model_id, "opening": prompt.opening, "prompt": prompt.id, **asdict(sampling)})


def grade_key(gen_key: str, judge: Judge) -> str:
    return fingerprint({"generation": gen_key, "judge": judge.name, "rubric": RUBRIC_VERSION})


def ensure_generations(cache: ResultCache, label: str, model_path: str | None, prompts: list[Prompt],
                       sampling: SamplingConfig, device: str) -> list[dict]:
    """The generation record of every prompt for one model (``model_path`` None: the reference continuations);
    only the missing ones are generated (the model is loaded only if one is missing)."""
    model_id = REFERENCE if model_path is None else model_identity(model_path)
    keys = [generation_key(model_id, p, sampling) for p in prompts]
    missing = [(k, p) for k, p in zip(keys, prompts) if k not in cache]
    if missing and model_path is None:
        for k, p in missing:
            cache.add({"key": k, "model": label, "model_path": REFERENCE, "prompt_id": p.id, "opening": p.opening,
                       "completion": p.reference, "sampling": None})
    elif missing:
        from model.export import load_model

        model, tokenizer = load_model(model_path)
        model.to(device)
        t0 = time.perf_counter()
        for (k, p), text in zip(missing, generate(model, tokenizer, [p for _, p in missing], sampling, device)):
            cache.add({"key": k, "model": label, "model_path": model_id, "prompt_id": p.id, "opening": p.opening,
                       "completion": text, "sampling": asdict(sampling)})
        print(f"{label}: generated {len(missing)} completions in {time.perf_counter() - t0:.1f} s", flush=True)
        del model
    return [cache.get(k) for k in keys]


def ensure_grades(cache: ResultCache, generations: list[dict], judge: Judge, attempts: int) -> list[dict]:
    """The grade record of every generation; only those without a successful grade are (re)graded."""
    out, graded, failed = [], 0, 0
    for gen in generations:
        key = grade_key(gen["key"], judge)
        rec = cache.get(key)
        if rec is None:
            result = grade(judge, gen["opening"], gen["completion"], attempts)
            rec = cache.add({"key": key, "generation": gen["key"], "model": gen["model"],
                             "prompt_id": gen["prompt_id"], "judge": judge.name, **result.to_dict()})
            graded += 1
            failed += result.grades is None
        out.append(rec)
    if graded:
        print(f"{generations[0]['model']}: graded {graded} completions ({failed} failed)", flush=True)
    return out


def summarize(grade_records: list[dict]) -> dict:
    """Per criterion and for the per-story mean of the four: mean and 95% t half-width over the successfully
    graded prompts; ``n`` graded, ``failed`` not graded (with the reasons)."""
    ok = [r["grades"] for r in grade_records if r.get("grades") is not None]
    failures = [r for r in grade_records if r.get("grades") is None]
    out = {"n": len(ok), "failed": len(failures),
           "failure_reasons": sorted({r.get("error") or "unknown" for r in failures})}
    for name, values in [*((c, [g[c] for g in ok]) for c in CRITERIA),
                         ("mean", [sum(g[c] for c in CRITERIA) / len(CRITERIA) for g in ok])]:
        s = stats.summarize(values)
        out[name] = {"mean": s and s.mean, "ci95": s and s.half}
    return out


def table3(summaries: dict[str, dict]) -> str:
    rows = [[label, *(pm(s[c]["mean"], s[c]["ci95"], 2) for c in (*CRITERIA, "mean")), s["n"], s["failed"]]
            for label, s in summaries.items()]
    return markdown_table(["model", *COLUMNS, "graded", "failed"], rows)


def plot_summaries(summaries: dict[str, dict], path: Path) -> Path:
    from analysis.plots import grouped_bars

    names = (*CRITERIA, "mean")
    return grouped_bars({label: ([math.nan if s[c]["mean"] is None else s[c]["mean"] for c in names],
                                 [s[c]["ci95"] for c in names])
                         for label, s in summaries.items()}, list(COLUMNS), "grade (1-10), 95% interval over prompts",
                        "Judged TinyStories completions", path, ylim=(0, 10))


def parse_args(argv=None) -> argparse.Namespace:
    ap = Parser("stories", "analysis.stories", __doc__)
    add_shared_args(ap, model=dict(many=True, required=False,
                                   help="models to sample from: model dirs, runs or checkpoints",
                                   label_help="table labels, one per --model (default: their names)"),
                    data_root=dict(help="its tinystories/valid.txt"), device=dict(dtype=False))
    ap.add_argument("--reference", action="store_true",
                    help="also grade the stories' true continuations (row 'reference')")
    ap.add_argument("--out", required=True, help="output and cache directory")
    ap.add_argument("--prompts", help="story file (.txt with <|endoftext|> lines, or .jsonl with 'text')")
    ap.add_argument("--num-prompts", type=int, default=50)
    ap.add_argument("--opening-words", type=int, default=20)
    ap.add_argument("--max-new-tokens", type=int, default=SamplingConfig.max_new_tokens)
    ap.add_argument("--temperature", type=float, default=SamplingConfig.temperature)
    ap.add_argument("--top-p", type=float, default=SamplingConfig.top_p)
    ap.add_argument("--seed", type=int, default=SamplingConfig.seed)
    ap.add_argument("--judge-url", help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1 (vLLM)")
    ap.add_argument("--judge-model", help="model name at --judge-url (or at api.openai.com without --judge-url)")
    ap.add_argument("--judge-hf", help="a local HF causal LM as judge instead")
    ap.add_argument("--judge-timeout", type=float, default=60.0, help="seconds per judge request")
    ap.add_argument("--judge-attempts", type=int, default=3, help="requests per completion before it counts as failed")
    args = ap.parse_args(argv)
    if not args.model and not args.reference:
        ap.error("give --model PATH (one or more) and/or --reference")
    return args


@command
def main(argv=None) -> int:
    from data.sources import data_root

    args = parse_args(argv)
    sampling = SamplingConfig(args.max_new_tokens, args.temperature, args.top_p, args.seed)
    sampling.validate()
    if args.num_prompts < 1 or args.opening_words < 1:
        raise ConfigError("--num-prompts and --opening-words must be >= 1")
    judge = build_judge(args.judge_url, args.judge_model, args.judge_hf, args.judge_timeout, args.device)
    stories, source = read_stories(args.prompts, data_root(cli=args.data_root))
    prompts = story_openings(stories, args.num_prompts, args.opening_words)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gens = ResultCache(out / "generations.jsonl")
    grades = ResultCache(out / "grades.jsonl", keep=lambda r: r.get("grades") is not None)
    models = [(lab, path) for path, lab in zip(args.model, model_labels(args.model, args.label))]
    if args.reference:
        models.append((REFERENCE, None))
    summaries, meta_models = {}, []
    for label, path in models:
        records = ensure_generations(gens, label, path, prompts, sampling, args.device)
        meta_models.append({"label": label, "path": path or REFERENCE})
        if judge is not None:
            summaries[label] = summarize(ensure_grades(grades, records, judge, args.judge_attempts))
    meta = {"prompts": {"source": source, "num_prompts": args.num_prompts, "opening_words": args.opening_words,
                        "ids": [p.id for p in prompts]},
            "sampling": asdict(sampling), "models": meta_models,
            "judge": None if judge is None else {"name": judge.name, "attempts": args.judge_attempts,
                                                 "timeout_s": args.judge_timeout, "rubric_version": RUBRIC_VERSION}}
    write_json(out / "stories_meta.json", meta)
    if judge is None:
        print(f"generations in {out / 'generations.jsonl'} (no judge given: nothing graded)")
        return 0
    table = table3(summaries)
    (out / "stories.md").write_text(f"Judge: {judge.name}; {len(prompts)} prompts from {source}; mean ± 95% "
                                    f"t-interval over graded prompts.\n\n{table}\n")
    write_json(out / "stories.json", {**meta, "results": summaries})
    write_csv(out / "stories.csv", ["model", "criterion", "mean", "ci95", "n", "failed"],
              [[lab, c, s[c]["mean"], s[c]["ci95"], s["n"], s["failed"]] for lab, s in summaries.items()
               for c in (*CRITERIA, "mean")])
    plot_summaries(summaries, out / "stories.png")
    print(table)
    print(f"wrote {out / 'stories.md'}, stories.json, stories.csv, stories.png")
    return 0


if __name__ == "__main__":
    run_cli(main)
