"""How fine-tuning moves linearity (the paper's Table 1): fine-tune a decoder as a sequence classifier or a pairwise
reward model, and compare the mean-over-blocks linearity without residual before and after, on one probe text.

    linreg finetune --model PATH[,PATH...] --tasks boolq,multirc,cb,reward --seeds 0,1,2 --steps 500 --out DIR \
        [train.zero_stage=2 ...]

Protocol:

- **Model**: transformers' ``AutoModelForSequenceClassification`` built from the decoder's config, with the
  decoder's weights (any source ``model.export.load_model`` reads: a linreg run, checkpoint or export, an HF dir
  or hub name) and a new linear head on the last non-pad token (HF's ``score`` head), initialised from the seed.
  Classification tasks get one logit per class, the reward model one scalar.
- **Tasks**: every benchmark task with a classification framing (``Task.labels``, ``classification_template``;
  ``finetune_tasks()`` lists them), by default the paper's ``boolq`` ("question: {q} passage: {p}", 2 classes),
  ``multirc`` ("question: {q} answer: {a} passage: {p}", is the answer correct, 2 classes), ``cb`` ("premise: {p}
  hypothesis: {h}"); the passage comes last so that truncation to ``--max-length`` cuts it, not the question. CB
  is kept as the three-class task it is (entailment / contradiction / neutral, HF's label order) rather than
  merged into a binary one: merging would change the task and its label balance. ``reward``: Anthropic HH-RLHF
  preference pairs, loss
  -log σ(r_chosen - r_rejected); dialogues longer than ``--max-length`` lose their start (BOS kept), so the final
  replies, where chosen and rejected differ, always stay.
- **Data**: from the hub, ``aps/super_glue`` train / validation and ``Anthropic/hh-rlhf`` (``helpful-base``)
  train / test. A data root built by ``linreg data`` holds both (its manifest lists
  ``superglue/<Task>/train.jsonl`` and ``hh-rlhf/helpful-base-{train,test}.jsonl.gz``), and they are used as they
  are. In other roots (shared/data), SuperGLUE's validation files and ``hh-rlhf/harmless-base-test.jsonl.gz`` are
  carved into train and test parts (``analysis.taskdata``; the output says so): there the train files are the
  32-example FewGLUE subsets and the helpful-base split is missing.
- **Training** drives linreg's ``Trainer`` (``ClassifierTrainer`` overrides ``forward_loss``): DeepSpeed ZeRO
  (the override ``train.zero_stage=2`` after the options), bf16 on GPU, gradient clipping, the cosine schedule with
  warm-up, checkpoints, ``--resume``-able run dirs, metrics.jsonl and TensorBoard per (task, seed) under
  ``DIR/runs/``; any Trainer key can be overridden the same way. The batch stream is a seeded permutation per epoch
  whose position is checkpointed.
- **Accuracy** on the test part before (untrained head) and after fine-tuning, with the majority-class rate
  (0.5 for reward pairs: the rate at which r_chosen > r_rejected), so a reader sees whether the model learned.
- **Linearity**: the paper's probe (``--text``, default the TinyStories validation text; ``eval.linearity``) through
  the base decoder and through each fine-tuned model's blocks; Δ = after - before of the mean over blocks of the
  linearity score without residual, per seed; the table shows mean ± std (ddof 1) over seeds.

Cached per (model, task, seed, settings) in ``DIR/finetune.jsonl``: a rerun trains only what is missing.
Outputs: ``finetune.md`` (Table 1 layout: rows tasks, columns models; then accuracies), ``finetune.csv`` (one row
per model, task and seed), ``finetune.json`` and ``finetune.png`` (Δ per task and model, ± std).
"""
from __future__ import annotations

import argparse
import copy
import gc
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from analysis.profiling import ProfileSpec, probe_from_args, profile_model
from analysis.report import (
    ResultCache,
    fingerprint,
    markdown_table,
    model_identity,
    pm,
)
from core import stats
from core.cli import Parser, add_shared_args, command, list_arg, run_cli
from core.errors import DataError
from core.io import write_csv, write_json
from core.rundir import RunDir, model_labels
from eval.linearity.probe import ProbeSetConfig
from linreg.trainer import Trainer

REWARD, REWARD_TITLE = "reward", "Reward model (HH-RLHF)"
DEFAULT_TASKS = ("boolq", "multirc", "cb", REWARD)  # the paper's Table 1
HH_RLHF = "Anthropic/hh-rlhf"
HH_LOCAL = "hh-rlhf/harmless-base-test.jsonl.gz"
HH_HELPFUL = "hh-rlhf/helpful-base-{split}.jsonl.gz"  # written by linreg data


# -- data ------------------------------------------------------------------------------------------------------------

def finetune_tasks() -> list[str]:
    """What ``--task`` accepts: the registered tasks with a classification framing, and the reward model."""
    from eval.benchmarks.tasks import registered

    return [t.name for t in registered() if t.classifiable] + [REWARD]


def task_title(task: str) -> str:
    from eval.benchmarks.tasks import describe

    return REWARD_TITLE if task == REWARD else describe(task).display_name


def num_labels(task: str) -> int:
    """Classes of the classifier's head; one scalar for the reward model."""
    from eval.benchmarks.tasks import describe

    return 1 if task == REWARD else len(describe(task).labels)


def load_task(task: str, root, test_fraction: float, seed: int) -> tuple[list, list, str]:
    """(train examples, test examples, split note). A classification example is (text, label); a reward example
    is (chosen, rejected)."""
    from analysis.taskdata import carve, task_splits

    if task == REWARD:
        if root is None:
            from data.sources import load_hub_split

            rows = {s: load_hub_split(HH_RLHF, None, s, data_dir="helpful-base") for s in ("train", "test")}
            pairs = {s: [(r["chosen"], r["rejected"]) for r in rows[s]] for s in rows}
            return pairs["train"], pairs["test"], f"{HH_RLHF} helpful-base train / test"
        from core.io import read_jsonl
        from data.prepare import prepared

        helpful = {s: HH_HELPFUL.format(split=s) for s in ("train", "test")}
        if all(prepared(root, rel) for rel in helpful.values()):
            pairs = {s: [(r["chosen"], r["rejected"]) for r in read_jsonl(Path(root) / rel)]
                     for s, rel in helpful.items()}
            return pairs["train"], pairs["test"], f"{HH_RLHF} helpful-base train / test (prepared data root)"
        path = Path(root) / HH_LOCAL
        if not path.is_file():
            raise DataError(f"task 'reward': data file not found: {path}")
        train, test = carve(read_jsonl(path), test_fraction, seed)
        note = (f"{path.name} carved into train/test ({len(train)}/{len(test)} pairs, test fraction {test_fraction}, "
                f"seed {seed}): the harmless split stands in for helpful-base, which is not available offline")
        return [(r["chosen"], r["rejected"]) for r in train], [(r["chosen"], r["rejected"]) for r in test], note
    from eval.benchmarks.tasks import DataSource, get_task

    bench = get_task(task, DataSource(root))
    train, test, note = task_splits(bench, test_fraction, seed)
    to_examples = lambda docs: [(bench.classification_text(d), int(d["label"])) for d in docs]
    return to_examples(train), to_examples(test), note


def encode(tokenizer, text: str, max_length: int, keep_end: bool) -> list[int]:
    """Token ids cut to ``max_length``: the end is cut, or with ``keep_end`` the start (a leading BOS is kept)."""
    ids = list(tokenizer(text)["input_ids"])
    if len(ids) <= max_length:
        return ids
    if not keep_end:
        return ids[:max_length]
    head = ids[:1] if tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id else []
    return head + ids[len(ids) - (max_length - len(head)):]


def collate(seqs: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, :len(s)], mask[r, :len(s)] = torch.tensor(s), 1
    return {"input_ids": ids, "attention_mask": mask}


class ExampleStream:
    """Batches of encoded examples in a seeded permutation per epoch; its position is checkpointed (the Trainer's
    stream protocol: ``next_batch``, ``state_dict``, ``load_state_dict``, ``epoch``). A reward batch holds the
    chosen sequences, then the rejected ones."""

    def __init__(self, encoded: list, pairwise: bool, batch_size: int, pad_id: int, seed: int):
        self.encoded, self.pairwise, self.batch_size = encoded, pairwise, batch_size
        self.pad_id, self.seed = pad_id, seed
        self.epoch, self.pos = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> list[int]:
        order = list(range(len(self.encoded)))
        random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        return order

    def next_batch(self) -> dict[str, torch.Tensor]:
        if self.pos + self.batch_size > len(self._order):
            self.epoch, self.pos = self.epoch + 1, 0
            self._order = self._permutation()
        items = [self.encoded[i] for i in self._order[self.pos:self.pos + self.batch_size]]
        self.pos += self.batch_size
        return make_batch(items, self.pairwise, self.pad_id)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self._order = self._permutation()


def make_batch(items: list, pairwise: bool, pad_id: int) -> dict[str, torch.Tensor]:
    if pairwise:
        return collate([c for c, _ in items] + [r for _, r in items], pad_id)
    return {**collate([s for s, _ in items], pad_id), "labels": torch.tensor([y for _, y in items])}


# -- model and training ----------------------------------------------------------------------------------------------

def classifier_from(lm, tokenizer, num_labels: int, seed: int):
    """A sequence classifier with ``lm``'s decoder weights and a new head (initialised under ``seed``)."""
    from transformers import AutoModelForSequenceClassification

    cfg = copy.deepcopy(lm.config)
    cfg.num_labels = num_labels
    cfg.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    torch.manual_seed(seed)
    clf = AutoModelForSequenceClassification.from_config(cfg, dtype=torch.float32)
    clf.base_model.load_state_dict(lm.base_model.state_dict())  # strict: the decoders are the same
    return clf


def pairwise_loss(rewards: torch.Tensor) -> torch.Tensor:
    """-log σ(r_chosen - r_rejected), averaged; ``rewards`` holds the chosen half, then the rejected half."""
    chosen, rejected = rewards.float().reshape(2, -1)
    return -F.logsigmoid(chosen - rejected).mean()


class ClassifierTrainer(Trainer):
    """The Trainer with a classification (cross-entropy) or pairwise reward objective; no regularizer."""
    pairwise = False

    def forward_loss(self, batch, step):
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        logits = self.engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        if self.pairwise:
            return pairwise_loss(logits.squeeze(-1)), None
        return F.cross_entropy(logits.float(), batch["labels"]), None


@torch.no_grad()
def accuracy(model, encoded: list, pairwise: bool, pad_id: int, device, batch_size: int = 16) -> float:
    """Test accuracy: argmax = label, or r_chosen > r_rejected."""
    was_training = model.training
    model.eval()
    hits = 0
    for start in range(0, len(encoded), batch_size):
        items = encoded[start:start + batch_size]
        batch = {k: v.to(device) for k, v in make_batch(items, pairwise, pad_id).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        if pairwise:
            chosen, rejected = logits.squeeze(-1).reshape(2, -1)
            hits += int((chosen > rejected).sum())
        else:
            hits += int((logits.argmax(-1) == batch["labels"]).sum())
    model.train(was_training)
    return hits / len(encoded)


@dataclass(frozen=True)
class FinetuneSettings:
    steps: int = 500
    batch_size: int = 8
    lr: float = 2e-5
    warmup_steps: int | None = None  # None: 10% of the steps
    max_length: int = 256
    test_fraction: float = 0.5  # carving of local files
    train_limit: int | None = None
    eval_limit: int | None = None
    overrides: tuple[str, ...] = ()  # dotted Trainer config keys

    def trainer_config(self, task: str, seed: int):
        from linreg.config import load_config

        warmup = self.warmup_steps if self.warmup_steps is not None else self.steps // 10
        tree = {"name": f"finetune_{task}", "data": {"dataset": HH_RLHF if task == REWARD else "aps/super_glue",
                                                     "dataset_config": None if task == REWARD else task,
                                                     "seq_len": self.max_length},
                "model": {"max_seq_len": self.max_length},
                "optim": {"lr": self.lr}, "schedule": {"warmup_steps": warmup},
                "train": {"max_steps": self.steps, "global_batch_size": self.batch_size,
                          "micro_batch_size": self.batch_size, "seed": seed},
                "eval": {k: {"enabled": False} for k in ("val_loss", "linearity", "benchmarks")},
                "checkpoint": {"every": 0, "keep_last": 1, "export_at_end": False},
                "logging": {"every": max(1, min(10, self.steps // 10)), "progress_bar": False}}
        return load_config(None, list(self.overrides), tree=tree)


def finetune_one(lm, tokenizer, task: str, seed: int, data: tuple, settings: FinetuneSettings, run_dir: Path,
                 text: str, spec: ProfileSpec, device) -> dict:
    """Fine-tune ``lm`` on ``task`` under ``seed``; accuracy before and after, and the fine-tuned profile."""
    from eval.linearity.evaluator import history_record

    train, test, note = data
    pairwise = task == REWARD
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pairwise:
        enc = lambda xs: [(encode(tokenizer, c, settings.max_length, True),
                           encode(tokenizer, r, settings.max_length, True)) for c, r in xs]
    else:
        enc = lambda xs: [(encode(tokenizer, t, settings.max_length, False), y) for t, y in xs]
    train_enc, test_enc = enc(train), enc(test)
    clf = classifier_from(lm, tokenizer, num_labels(task), seed).to(device)
    acc_before = accuracy(clf, test_enc, pairwise, pad, device)
    stream = ExampleStream(train_enc, pairwise, settings.batch_size, pad, seed)
    trainer = ClassifierTrainer(settings.trainer_config(task, seed), RunDir(run_dir), resume="auto", model=clf,
                                tokenizer=tokenizer, stream=stream)
    trainer.pairwise = pairwise
    t0 = time.perf_counter()
    trainer.fit()
    train_s = time.perf_counter() - t0
    tuned = trainer.model
    acc_after = accuracy(tuned, test_enc, pairwise, pad, device)
    after = history_record(settings.steps, profile_model(tuned, tokenizer, text, spec, device), 0.0)
    labels = [y for _, y in test_enc]
    majority = 0.5 if pairwise else max(map(labels.count, set(labels))) / len(labels)
    del trainer, tuned, clf
    gc.collect()
    return {"task": task, "seed": seed, "split": note, "n_train": len(train), "n_test": len(test),
            "acc_before": acc_before, "acc_after": acc_after, "majority": majority, "after": after,
            "train_seconds": round(train_s, 1)}


def linearity_delta(before: dict, after: dict, quantity: str = "linearity_wo_res") -> float:
    """after - before of the mean over blocks (records in ``eval.linearity.evaluator.history_record`` form)."""
    if len(before[quantity]) != len(after[quantity]):
        raise ValueError(f"profiles of {len(before[quantity])} and {len(after[quantity])} blocks do not compare")
    return sum(after[quantity]) / len(after[quantity]) - sum(before[quantity]) / len(before[quantity])


# -- tables ----------------------------------------------------------------------------------------------------------

def summarize(records: list[dict]) -> dict[str, dict[str, dict]]:
    """model -> task -> Δ (mean, std over seeds) with and without residual, accuracies (means over seeds)."""
    out: dict[str, dict[str, dict]] = {}
    for rec in records:
        out.setdefault(rec["model"], {}).setdefault(rec["task"], []).append(rec)
    for tasks in out.values():
        for task, recs in tasks.items():
            wo, lin = (stats.summarize([r[key] for r in recs]) for key in ("delta_wo_res", "delta_linearity"))
            tasks[task] = {"delta_wo_res": wo.mean, "delta_wo_res_std": wo.std, "delta_linearity": lin.mean,
                           "delta_linearity_std": lin.std, "seeds": [r["seed"] for r in recs],
                           "acc_before": stats.summarize([r["acc_before"] for r in recs]).mean,
                           "acc_after": stats.summarize([r["acc_after"] for r in recs]).mean,
                           "majority": recs[0]["majority"], "split": recs[0]["split"],
                           "before_wo_res": recs[0]["before"]["means"]["linearity_wo_res"]}
    return out


def plot_deltas(summary: dict, tasks: list[str], path: Path) -> Path:
    """Δ mean linearity without residual per task (groups) and model (bars), ± std over seeds."""
    from analysis.plots import grouped_bars

    return grouped_bars({m: ([s[t]["delta_wo_res"] for t in tasks], [s[t]["delta_wo_res_std"] for t in tasks])
                         for m, s in summary.items()}, [task_title(t) for t in tasks],
                        "Δ mean linearity w/o residual (± std over seeds)", "Linearity change by fine-tuning", path)


def tables(summary: dict, tasks: list[str]) -> str:
    models = list(summary)
    delta = markdown_table(["task", *models], [[task_title(t), *(
        pm(summary[m][t]["delta_wo_res"], summary[m][t]["delta_wo_res_std"], 4, signed=True) if t in summary[m]
        else "–" for m in models)] for t in tasks])
    acc_cell = lambda s: f"{s['acc_before']:.3f} → {s['acc_after']:.3f} (majority {s['majority']:.3f})"
    acc = markdown_table(["task", *models], [[task_title(t), *(
        acc_cell(summary[m][t]) if t in summary[m] else "–" for m in models)] for t in tasks])
    seeds = "/".join(map(str, sorted({len(summary[m][t]["seeds"]) for m in models for t in tasks if t in summary[m]})))
    return (f"Δ mean linearity without residual (after − before fine-tuning), mean ± std over {seeds} seeds:\n\n"
            f"{delta}\n\nTest accuracy before → after fine-tuning (mean over seeds):\n\n{acc}\n")


# -- command line ----------------------------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    ap = Parser("finetune", "analysis.finetune", __doc__)
    add_shared_args(ap, model=dict(many=True, help="decoders to fine-tune",
                                   label_help="table columns, one per --model"),
                    tasks=dict(names=finetune_tasks(), default=DEFAULT_TASKS, choices=finetune_tasks()),
                    data_root=dict(help="none: the HF hub"), probe=dict(defaults=ProbeSetConfig), device=True,
                    overrides=dict(what="the Trainer config of every fine-tuning run, e.g. train.zero_stage=2"))
    list_arg(ap, "--seeds", of=int, default=[0, 1, 2], metavar="SEED", help="fine-tuning seeds (default 0,1,2)")
    ap.add_argument("--out", required=True)
    g = ap.add_argument_group("fine-tuning")
    g.add_argument("--steps", type=int, default=FinetuneSettings.steps)
    g.add_argument("--batch-size", type=int, default=FinetuneSettings.batch_size)
    g.add_argument("--lr", type=float, default=FinetuneSettings.lr)
    g.add_argument("--warmup-steps", type=int, default=None, help="default 10%% of --steps")
    g.add_argument("--max-length", type=int, default=FinetuneSettings.max_length)
    g.add_argument("--train-limit", type=int, help="first N training examples")
    g.add_argument("--eval-limit", type=int, help="first N test examples")
    return ap.parse_args(argv)


@command
def main(argv=None) -> int:
    from data.sources import data_root
    from eval.linearity.evaluator import history_record
    from model.export import load_model

    args = parse_args(argv)
    tasks, seeds = args.tasks, args.seeds
    settings = FinetuneSettings(args.steps, args.batch_size, args.lr, args.warmup_steps, args.max_length,
                                train_limit=args.train_limit, eval_limit=args.eval_limit,
                                overrides=tuple(args.overrides))
    settings.trainer_config(tasks[0], 0)  # bad override keys fail here, before any model is loaded
    root = data_root(cli=args.data_root)
    device = torch.device(args.device)
    text, spec = probe_from_args(args, root, device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = ResultCache(out / "finetune.jsonl")
    data = {}
    for t in tasks:
        train, test, note = load_task(t, root, settings.test_fraction, 0)
        data[t] = (train[:settings.train_limit or None], test[:settings.eval_limit or None], note)
    records = []
    for path, label in zip(args.model, model_labels(args.model, args.label)):
        ident = {"model": model_identity(path), "probe": spec.to_dict()}
        lm, tokenizer, before = None, None, None
        for t in tasks:
            for seed in seeds:
                key = fingerprint({**ident, "task": t, "seed": seed, "root": str(root), **asdict(settings)})
                rec = cache.get(key)
                if rec is None:
                    if lm is None:
                        lm, tokenizer = load_model(path)
                        lm.to(device)
                        before = history_record(0, profile_model(lm, tokenizer, text, spec, device), 0.0)
                    run_dir = out / "runs" / label.replace("/", "_") / t / f"seed_{seed}_{key[:8]}"
                    res = finetune_one(lm, tokenizer, t, seed, data[t], settings, run_dir, text, spec, device)
                    rec = cache.add({"key": key, "model": label, "path": path, **res, "before": before,
                                     "delta_wo_res": linearity_delta(before, res["after"]),
                                     "delta_linearity": linearity_delta(before, res["after"], "linearity")})
                    lin = (before["means"]["linearity_wo_res"], rec["after"]["means"]["linearity_wo_res"])
                    print(f"{label} {t} seed {seed}: accuracy {rec['acc_before']:.3f} -> {rec['acc_after']:.3f} "
                          f"(majority {rec['majority']:.3f}); mean linearity w/o residual {lin[0]:.4f} -> "
                          f"{lin[1]:.4f} (Δ {rec['delta_wo_res']:+.4f}); {rec['train_seconds']} s training", flush=True)
                records.append({**rec, "model": label})
        del lm
    summary = summarize(records)
    text_md = tables(summary, tasks)
    notes = sorted({f"- {task_title(r['task'])}: {r['n_train']} train / {r['n_test']} test examples; {r['split']}"
                    for r in records})
    (out / "finetune.md").write_text(text_md + "\nData:\n\n" + "\n".join(notes) + "\n")
    write_csv(out / "finetune.csv", ["model", "task", "seed", "acc_before", "acc_after", "majority",
                                     "before_wo_res", "after_wo_res", "delta_wo_res", "delta_linearity"],
              [[r["model"], r["task"], r["seed"], r["acc_before"], r["acc_after"], r["majority"],
                r["before"]["means"]["linearity_wo_res"], r["after"]["means"]["linearity_wo_res"], r["delta_wo_res"],
                r["delta_linearity"]] for r in records])
    write_json(out / "finetune.json", {"settings": asdict(settings), "probe": spec.to_dict(), "seeds": seeds,
                                       "summary": summary})
    plot_deltas(summary, tasks, out / "finetune.png")
    print(text_md)
    print(f"wrote {out / 'finetune.md'}, finetune.csv, finetune.json, finetune.png")
    return 0


if __name__ == "__main__":
    run_cli(main)
