"""Per-layer linear probes (the paper's Fig. 5): how much of a task a linear classifier reads off each layer's states.

    linreg probes --model PATH[,PATH...] [--tasks xstorycloze_en,copa] --out DIR

The paper gives no protocol; this one is fixed across models so that they compare:

- **Inputs** are the benchmark prompts of ``eval.benchmarks.tasks`` (lme's wording); each task says how it is
  probed (``Task.probe_kind``; ``probe_tasks()`` lists them). A *two-choice* task (``xstorycloze_<lang>``,
  ``copa``) gives two sequences per document, context + " " + ending; a *classification* task (``boolq``, ``cb``,
  ``rte``, ``wic``, ``wsc``, ``multirc``) gives one, the prompt, with the document's label.
  Context and ending are tokenized apart and concatenated (as lme does), so the ending's positions are exact; a
  sequence longer than the model's context loses the start of its context.
- **Features**: for layer l = 0..L (the state h_l: h_0 = the embedding output, h_l = the output of block l - 1,
  before the final norm; blocks numbered from 0 as in docs/linearity.md;
  ``model.capture``), the mean of h_l over the ending's tokens (two-choice) or over the prompt's tokens after BOS
  (classification).
- **Pair encoding** (two-choice): the difference of the two endings' features, f(ending 1) - f(ending 2), label 1
  when ending 1 is right. Each training pair is also added mirrored (-x, 1 - y) and the classifier has no
  intercept, so it scores the two orders consistently and knows nothing before it sees features (chance = 0.5).
- **Classifier**: features standardised with the train part's statistics (two-choice: scaled only, so the mirror
  symmetry stays), scikit-learn ``LogisticRegression`` (L2, lbfgs). Its inverse regularisation C is chosen per
  model and layer from the fixed grid ``C_GRID`` by accuracy on a held-out 20% of the train split (seeded; the
  smallest C wins ties), then refitted on the whole train split and scored once on the eval split.
- **Splits**: XStoryCloze's own 360 train / 1511 eval stories; SuperGLUE from the hub: train / validation;
  SuperGLUE locally: the validation file carved into halves (``analysis.taskdata``; stated in the output).
- **Chance**: 0.5 for two-choice tasks, the majority-class rate of the eval split for classification.

Results are cached in ``DIR/probes.jsonl`` per (model, task, protocol), so adding a model reruns only that model.
Outputs: ``probes.csv`` (model, task, layer, accuracy, C), ``probes.json``, ``probes.md`` and
``probes_<task>.png`` (accuracy against layer, models overlaid).
"""
from __future__ import annotations

import argparse
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from analysis.report import (
    ResultCache,
    fingerprint,
    markdown_table,
    model_identity,
)
from core import precision as core_precision
from core.cli import Parser, add_shared_args, command, run_cli
from core.errors import ConfigError
from core.io import write_csv, write_json
from core.rundir import model_labels

C_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
KINDS = ("two_choice", "classification")


@dataclass(frozen=True)
class Example:
    """One labelled example: a shared context and one (classification) or two (two-choice) spans to pool over."""
    context: str
    spans: tuple[str, ...]
    label: int


@dataclass(frozen=True)
class LinearProbeProtocol:
    """How a linear classifier probe is trained and scored on one layer's states: the held-out share of the
    train split, the seed, the carving of local validation files, example limits and the regularisation grid."""
    holdout: float = 0.2
    seed: int = 0
    test_fraction: float = 0.5  # carving of local SuperGLUE validation files
    train_limit: int | None = None  # first N train examples (tests, quick looks)
    eval_limit: int | None = None
    grid: tuple[float, ...] = C_GRID


def probe_tasks() -> dict[str, str]:
    """Every registered task that can be probed, with its kind (``Task.probe_kind``)."""
    from eval.benchmarks.tasks import registered

    return {t.name: t.probe_kind for t in registered() if t.probe_kind in KINDS}


def task_kind(name: str) -> str:
    from eval.benchmarks.tasks import expand_task_names

    kinds = probe_tasks()
    if name in kinds:
        return kinds[name]
    try:
        expand_task_names([name])
    except ValueError as e:  # not a task at all: the registry's message, with its "did you mean"
        raise ConfigError(str(e)) from None
    listed = {k: [t for t, kind in kinds.items() if kind == k] for k in KINDS}
    raise ConfigError(f"task '{name}' has no probe form: two-choice tasks {', '.join(listed['two_choice'])}; "
                      f"classification tasks {', '.join(listed['classification'])}")


def task_examples(task, docs: list[dict]) -> list[Example]:
    """Examples of a benchmark task's documents (see the module docstring)."""
    out = []
    for doc in docs:
        text, choices = task.doc_to_text(doc), task.doc_to_choice(doc)
        if task.probe_kind == "two_choice":
            gold = task.gold_index(doc, choices)
            out.append(Example(text, tuple(task.target_delimiter + c.strip() for c in choices), int(gold == 0)))
        elif int(doc["label"]) >= 0:  # unlabelled rows (label -1) are skipped
            out.append(Example("", (text,), int(doc["label"])))
    return out


def load_examples(task_name: str, root, protocol: LinearProbeProtocol) -> tuple[list[Example], list[Example], str]:
    from analysis.taskdata import task_splits
    from eval.benchmarks.tasks import DataSource, get_task

    task = get_task(task_name, DataSource(root))
    train, test, note = task_splits(task, protocol.test_fraction, protocol.seed)
    train, test = train[:protocol.train_limit or None], test[:protocol.eval_limit or None]
    return task_examples(task, train), task_examples(task, test), note


def encode(tokenizer, context: str, span: str, max_len: int | None) -> tuple[list[int], int]:
    """Token ids of context + span and the index where the span starts; the context's start is cut to fit."""
    ctx = list(tokenizer(context)["input_ids"])
    tail = list(tokenizer(span, add_special_tokens=False)["input_ids"])
    if not tail:
        raise ConfigError(f"span {span!r} has no tokens")
    if max_len is not None and len(ctx) + len(tail) > max_len:
        tail = tail[:max_len]
        ctx = ctx[len(ctx) + len(tail) - max_len:]
    return ctx + tail, len(ctx)


@torch.no_grad()
def span_features(model, tokenizer, sequences: list[tuple[str, str]], batch_size: int = 16, device="cpu",
                  autocast=None) -> np.ndarray:
    """[n, L + 1, d] float32: per sequence (context, span) and layer, the mean of h_l over the span's tokens."""
    import contextlib

    from model.capture import ResidualStream, accepts_logits_to_keep

    max_len = getattr(model.config, "max_position_embeddings", None)
    encoded = [encode(tokenizer, c, s, max_len) for c, s in sequences]
    kwargs = {"logits_to_keep": 1} if accepts_logits_to_keep(model) else {}
    stream = ResidualStream(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = np.zeros((len(encoded), stream.num_layers + 1, model.config.hidden_size), dtype=np.float32)
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))  # little padding per batch
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            width = len(encoded[rows[0]][0])
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            attn = torch.zeros((len(rows), width), dtype=torch.long)
            span = torch.zeros((len(rows), width), dtype=torch.float32)
            for r, i in enumerate(rows):
                seq, begin = encoded[i]
                ids[r, :len(seq)] = torch.tensor(seq)
                attn[r, :len(seq)] = 1
                span[r, begin:len(seq)] = 1
            with (autocast or contextlib.nullcontext)(), stream:
                model(input_ids=ids.to(device), attention_mask=attn.to(device), use_cache=False, **kwargs)
            span = span.to(device)
            weights = span / span.sum(1, keepdim=True)
            for layer, h in enumerate(stream.take()):
                out[rows, layer] = torch.einsum("bt,btd->bd", weights, h.float()).cpu().numpy()
    finally:
        stream.remove()
    return out


def example_features(model, tokenizer, examples: list[Example], **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """(features [n, L + 1, d'], labels [n]): two-choice examples give f(span 1) - f(span 2)."""
    width = len(examples[0].spans)
    seqs = [(e.context, s) for e in examples for s in e.spans]
    feats = span_features(model, tokenizer, seqs, **kwargs).reshape(len(examples), width, -1,
                                                                      model.config.hidden_size)
    x = feats[:, 0] - feats[:, 1] if width == 2 else feats[:, 0]
    return x, np.array([e.label for e in examples])


def _fit(x, y, c: float, pairs: bool):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if pairs:  # mirrored pairs, no centring, no intercept: P(1 | x) = 1 - P(1 | -x)
        x, y = np.concatenate([x, -x]), np.concatenate([y, 1 - y])
    clf = make_pipeline(StandardScaler(with_mean=not pairs),
                        LogisticRegression(C=c, fit_intercept=not pairs, max_iter=2000))
    return clf.fit(x, y)


def fit_probe(x_train, y_train, x_eval, y_eval, pairs: bool,
              protocol: LinearProbeProtocol = LinearProbeProtocol()) -> dict:
    """Choose C on a held-out part of train, refit on all of train, score on eval (module docstring)."""
    idx = list(range(len(y_train)))
    random.Random(protocol.seed).shuffle(idx)
    cut = max(1, round(protocol.holdout * len(idx)))
    held, fit_idx = np.array(idx[:cut]), np.array(idx[cut:])
    if len(set(y_train[fit_idx].tolist())) < 2 and not pairs:
        raise ConfigError("the probe's fitting part has a single class: too few training examples")
    scores = {c: float((_fit(x_train[fit_idx], y_train[fit_idx], c, pairs).predict(x_train[held]) == y_train[held])
                       .mean()) for c in protocol.grid}
    best = max(protocol.grid, key=lambda c: (scores[c], -c))
    acc = float((_fit(x_train, y_train, best, pairs).predict(x_eval) == y_eval).mean())
    return {"accuracy": acc, "C": best, "holdout_accuracy": scores[best]}


def probe_layers(x_train, y_train, x_eval, y_eval, pairs: bool,
                 protocol: LinearProbeProtocol = LinearProbeProtocol()) -> list[dict]:
    """``fit_probe`` on each layer of [n, layers, d] features."""
    return [fit_probe(x_train[:, layer], y_train, x_eval[:, layer], y_eval, pairs, protocol)
            for layer in range(x_train.shape[1])]


def chance_level(kind: str, y_eval: np.ndarray) -> float:
    return 0.5 if kind == "two_choice" else float(np.bincount(y_eval).max() / len(y_eval))


def parse_args(argv=None) -> argparse.Namespace:
    ap = Parser("probes", "analysis.probes", __doc__)
    add_shared_args(ap, model=dict(many=True), tasks=dict(names=list(probe_tasks()), default=["xstorycloze_en"]),
                    data_root=dict(help="none: the HF hub"), device=True)
    ap.add_argument("--out", required=True)
    g = ap.add_argument_group("classifier probes")
    g.add_argument("--train-limit", type=int, help="first N training examples")
    g.add_argument("--eval-limit", type=int, help="first N eval examples")
    g.add_argument("--seed", type=int, default=0, help="hold-out draw and carving seed (default %(default)s)")
    g.add_argument("--batch-size", type=int, default=16, help="sequences per forward (default %(default)s)")
    return ap.parse_args(argv)


def plot_task(task: str, curves: dict[str, list[float]], chance: float, out: Path) -> Path:
    """``out/probes_<task>.png``: accuracy against layer, one line per model (``curves``: label -> per layer)."""
    from analysis.plots import plot_probes

    return plot_probes(curves, chance, f"Linear probes per layer: {task}", out / f"probes_{task}.png")


@command
def main(argv=None) -> int:
    from data.sources import data_root
    from model.export import load_model

    args = parse_args(argv)
    tasks = args.tasks
    kinds = {t: task_kind(t) for t in tasks}
    protocol = LinearProbeProtocol(seed=args.seed, train_limit=args.train_limit, eval_limit=args.eval_limit)
    root = data_root(cli=args.data_root)
    device = torch.device(args.device)
    dtype = core_precision.autocast_dtype(args.dtype, device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = ResultCache(out / "probes.jsonl")
    data = {t: load_examples(t, root, protocol) for t in tasks}
    results: dict[str, dict[str, dict]] = {t: {} for t in tasks}
    for path, label in zip(args.model, model_labels(args.model, args.label)):
        keys = {t: fingerprint({"model": model_identity(path), "task": t, "root": str(root), **asdict(protocol)})
                for t in tasks}
        model = None
        for t in tasks:
            rec = cache.get(keys[t])
            if rec is None:
                if model is None:
                    model, tokenizer = load_model(path)
                    model.to(device)
                t0 = time.perf_counter()
                train, test, note = data[t]
                feat = {"batch_size": args.batch_size, "device": device,
                        "autocast": lambda: core_precision.autocast(device, dtype)}
                x_tr, y_tr = example_features(model, tokenizer, train, **feat)
                x_ev, y_ev = example_features(model, tokenizer, test, **feat)
                layers = probe_layers(x_tr, y_tr, x_ev, y_ev, kinds[t] == "two_choice", protocol)
                rec = cache.add({"key": keys[t], "model": label, "path": path, "task": t, "kind": kinds[t],
                                 "split": note, "n_train": len(train), "n_eval": len(test),
                                 "chance": chance_level(kinds[t], y_ev), "layers": layers,
                                 "seconds": round(time.perf_counter() - t0, 1)})
                print(f"{label} {t}: accuracy by layer " + " ".join(f"{r['accuracy']:.3f}" for r in layers)
                      + f" (chance {rec['chance']:.3f}, {rec['seconds']} s)", flush=True)
            results[t][label] = rec
        del model
    rows = [[lab, t, i, r["accuracy"], r["C"], r["holdout_accuracy"]]
            for t in tasks for lab, rec in results[t].items() for i, r in enumerate(rec["layers"])]
    write_csv(out / "probes.csv", ["model", "task", "layer", "accuracy", "C", "holdout_accuracy"], rows)
    write_json(out / "probes.json", {"protocol": asdict(protocol), "results": results})
    md = []
    for t in tasks:
        recs = results[t]
        depth = max(len(r["layers"]) for r in recs.values())
        first = next(iter(recs.values()))
        md += [f"### {t} ({first['n_train']} train / {first['n_eval']} eval; {first['split']}; chance "
               f"{first['chance']:.3f})", "",
               markdown_table(["model", *(f"h{i}" for i in range(depth))],
                              [[lab, *(f"{r['accuracy']:.3f}" for r in rec["layers"])] for lab, rec in recs.items()]),
               ""]
        plot_task(t, {lab: [r["accuracy"] for r in rec["layers"]] for lab, rec in recs.items()}, first["chance"], out)
    (out / "probes.md").write_text("\n".join(md))
    print("\n".join(md))
    print(f"wrote {out / 'probes.csv'}, probes.json, probes.md, probes_<task>.png")
    return 0


if __name__ == "__main__":
    run_cli(main)
