"""Metric functions against hand-computed cases, per-document scoring rules, and the report tables."""
from __future__ import annotations

import math

import numpy as np
import pytest

from eval.benchmarks.metrics import (
    max_over_ground_truths,
    mc_predictions,
    multiclass_mean_f1,
    normalize_squad,
    squad_exact,
    squad_f1,
)
from eval.benchmarks.report import base_name, paper_mean, render_report
from eval.benchmarks.tasks import DataSource, Instance, get_task


def test_cb_f1_hand_computed():
    golds = [0, 0, 1, 2, 2, 1]
    preds = [0, 1, 1, 2, 0, 0]
    # class 0: tp 1, fp 2, fn 1 -> 2/5; class 1: tp 1, fp 1, fn 1 -> 1/2; class 2: tp 1, fp 0, fn 1 -> 2/3
    assert multiclass_mean_f1(golds, preds, 3) == pytest.approx((0.4 + 0.5 + 2 / 3) / 3)
    assert multiclass_mean_f1([0, 1], [0, 1], 3) == pytest.approx(2 / 3)  # class 2 absent on both sides scores 0
    assert multiclass_mean_f1([2, 2], [0, 0], 3) == 0.0


def test_squad_f1_and_exact_hand_computed():
    assert normalize_squad("The  Obama, Barack!") == "obama barack"
    assert squad_f1("Barack Obama", "the Obama") == pytest.approx(2 * 0.5 * 1.0 / 1.5)  # p=1/2, r=1
    assert squad_f1("New York City", "York New") == pytest.approx(2 * (2 / 3) * 1.0 / (2 / 3 + 1))
    assert squad_f1("Paris", "London") == 0.0
    assert squad_f1("the", "a") == 1.0  # both normalise to nothing: equal
    assert squad_f1("the", "Paris") == 0.0
    assert squad_exact("The Obama!", "obama") == 1 and squad_exact("Obama", "Barack Obama") == 0
    golds = ["Benazir Bhutto", "Bhutto"]
    assert max_over_ground_truths(squad_f1, "Bhutto-Zardari", golds) == 0.0  # hyphen removed: one token
    assert max_over_ground_truths(squad_f1, "Asif Ali Bhutto", golds) == pytest.approx(2 * (1 / 3) * 1 / (4 / 3))
    assert max_over_ground_truths(squad_exact, "bhutto", golds) == 1.0
    with pytest.raises(ValueError):
        max_over_ground_truths(squad_f1, "x", [])


def test_mc_predictions_acc_norm_uses_choice_characters():
    # "no" (2 chars) vs "yes" (3 chars): -3.0/2 = -1.5 < -4.0/3 = -1.33
    assert mc_predictions([-3.0, -4.0], ["no", "yes"]) == (0, 1)
    assert mc_predictions([-1.0, -1.0], ["a", "b"]) == (0, 0)  # ties: first choice, like np.argmax


def test_record_scoring_per_query(shared_data):
    task = get_task("record", DataSource(shared_data))
    inst = task.build_instances(limit=1)[0]
    ents = inst.doc["entities"]
    lls = np.full(len(ents), -10.0)
    lls[ents.index("Bhutto-Zardari")] = -1.0  # wrong entity that shares no normalised token with the answers
    s = task.score_instance(inst, lls)
    assert s["prediction"] == "Bhutto-Zardari" and s["f1"] == 0.0 and s["em"] == 0.0
    lls[ents.index("Benazir Bhutto")] = 0.0
    s = task.score_instance(inst, lls)
    assert s["f1"] == 1.0 and s["em"] == 1.0
    agg = task.aggregate([inst, inst], [{"f1": 1.0, "em": 1.0}, {"f1": 0.5, "em": 0.0}])
    assert agg == {"f1": 0.75, "em": 0.5}


def test_cb_aggregate_reports_f1():
    task = get_task("cb", DataSource(None))
    insts = [Instance(i, {}, "", ["True", "False", "Neither"], g) for i, g in enumerate([0, 0, 1, 2, 2, 1])]
    scored = [task.score_instance(inst, np.eye(3)[p]) for inst, p in zip(insts, [0, 1, 1, 2, 0, 0])]
    agg = task.aggregate(insts, scored)
    assert agg["acc"] == pytest.approx(3 / 6)
    assert agg["f1"] == pytest.approx((0.4 + 0.5 + 2 / 3) / 3)


def test_report_tables():
    results = {"boolq": {"acc": 0.6}, "cb": {"acc": 0.5, "f1": 0.25}, "record_dev32": {"f1": 0.2, "em": 0.1},
               "xstorycloze_en": {"acc": 0.55}, "xstorycloze_zh_first10": {"acc": 0.5},
               "tinystories": {"loss": 1.5, "bpb": 0.9, "ppl": math.exp(1.5)}}
    md = render_report({"base": results})
    assert "| model | boolq | cb-acc | cb-f1 | copa | multirc | record-f1 | record-em | rte | wic | wsc | " \
           "xstorycloze-en | mean |" in md
    assert "| base | 60.0 | 50.0 | 25.0 | – | – | 20.0† | 10.0† | – | – | – | 55.0 | 36.7* |" in md
    assert "| ar | en | es |" in md and "50.0†" in md
    assert "| base | 1.5000 | 0.9000 | 4.48 |" in md
    assert "record_dev32" in md and "xstorycloze_zh_first10" in md
    assert paper_mean(results) == pytest.approx((0.6 + 0.5 + 0.25 + 0.2 + 0.1 + 0.55) / 6)
    assert paper_mean({"tinystories": {"loss": 1.0}}) is None
    assert base_name("record_dev32_first100") == "record"
    assert base_name("xstorycloze_en_first5") == "xstorycloze_en"
    assert base_name("multirc_fixed") == "multirc_fixed"
