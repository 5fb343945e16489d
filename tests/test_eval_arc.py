"""ARC-Easy as lm-evaluation-harness's ``arc_easy`` defines it, on the real test and train rows."""
from __future__ import annotations

import json
import random

import numpy as np

from eval.benchmarks.tasks import DataSource, expand_task_names, get_task


def _rows(shared_data, split):
    return [json.loads(line) for line in (shared_data / "arc" / f"ARC-Easy-{split}.jsonl").open()]


def test_arc_easy_prompts_and_gold(shared_data):
    task = get_task("arc_easy", DataSource(shared_data))
    assert expand_task_names("arc_easy") == ["arc_easy"]
    insts = task.build_instances()
    assert len(insts) == 2376  # lme scores the test split
    first = insts[0]
    assert first.context == ("Question: Which statement best explains why photosynthesis is the foundation of most "
                             "food webs?\nAnswer:")
    assert first.requests[0] == (first.context, " Sunlight is the source of energy for nearly all ecosystems.")
    assert first.gold == 0 and len(first.choices) == 4
    rows = _rows(shared_data, "test")
    numeric = next(i for i, r in enumerate(rows) if r["choices"]["label"][0] == "1")
    row = rows[numeric]
    assert insts[numeric].gold == row["choices"]["label"].index(row["answerKey"])
    assert {len(i.choices) for i in insts} <= {3, 4, 5}


def test_arc_easy_metrics_and_fewshot(shared_data):
    task = get_task("arc_easy", DataSource(shared_data))
    inst = task.build_instances(limit=1)[0]
    # choice 2 has the best total log-likelihood; per character, the long choice 0 wins
    lengths = np.array([len(c) for c in inst.choices], dtype=float)
    lls = np.array([-1.0 * lengths[0] * 0.5, -30.0, -2.0 * lengths[2] * 0.0 - 5.0, -40.0])
    s = task.score_instance(inst, lls)
    assert s["pred"] == int(np.argmax(lls)) and s["acc"] == float(np.argmax(lls) == inst.gold)
    assert s["acc_norm"] == float(int(np.argmax(lls / lengths)) == inst.gold)
    # lme draws exactly k shots from train for this task (its test split is set, its few-shot split is not)
    shots = task.build_instances(limit=2, num_fewshot=2)
    train = task.docs("train")
    rnd = random.Random(1234)
    for inst in shots:
        picked = rnd.sample(train, 2)
        prefix = "".join(f"Question: {d['question']}\nAnswer: "
                         f"{d['choices']['text'][d['choices']['label'].index(d['answerKey'])]}\n\n" for d in picked)
        assert inst.context == prefix + f"Question: {inst.doc['question']}\nAnswer:"
