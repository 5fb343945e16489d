"""Adding a task is one class and one registry line: docs/eval.md's worked example (``rte_short``, RTE's short
premises under a new name), scored on the shared data, appears in results.md, in compare.md and in the task lists
of the probes and of fine-tuning, with nothing else changed."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from eval.benchmarks.tasks import TASKS, Column
from eval.benchmarks.tasks.superglue import RTE


class RTEShort(RTE):
    """RTE's documents whose premise is under 200 characters."""
    title, paper_columns, columns = "RTE (short premises)", (), (Column("rte-short", "acc"),)

    def process_docs(self, docs):
        return [d for d in docs if len(d["premise"]) < 200]


@pytest.fixture
def rte_short(monkeypatch):
    monkeypatch.setitem(TASKS, "rte_short", f"{__name__}:RTEShort")  # the registry line
    return "rte_short"


def _short_rte(shared_data: Path) -> list[dict]:
    """The documents the task should score, read here from the original file."""
    rows = [json.loads(line) for line in (shared_data / "superglue" / "RTE" / "val.jsonl").read_text().splitlines()]
    return [r for r in rows if len(r["premise"]) < 200]


def _fake_run(path: Path, regularizer: str, results: dict) -> None:
    """A run directory as compare reads it: the config and the final benchmarks' results."""
    (path / "benchmarks" / "final").mkdir(parents=True)
    config = {"train": {"seed": 1, "max_steps": 1}, "regularizer": {"name": regularizer}}
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    (path / "benchmarks" / "final" / "results.json").write_text(json.dumps(results))


def test_a_new_task_is_scored_reported_compared_and_analysed(rte_short, tiny_hf_model_dir, shared_data, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from analysis.finetune import finetune_tasks, load_task
    from analysis.probes import ProbeProtocol, load_examples, probe_tasks
    from eval.benchmarks import BenchmarkSuite, write_results
    from sweep.compare import main as compare

    model = AutoModelForCausalLM.from_pretrained(tiny_hf_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_hf_model_dir)
    suite = BenchmarkSuite([rte_short], tokenizer, data_root=shared_data)
    results = suite.run(model, device="cpu")
    expected = _short_rte(shared_data)
    assert 0 < results[rte_short].n == len(expected) < 277
    acc = results[rte_short].metrics["acc"]

    md = write_results(tmp_path / "eval", results, {}, label="tiny")
    assert "### RTE (short premises) (%)" not in md  # not a split group: the SuperGLUE variants table holds it
    assert "### SuperGLUE variants (%)\n\n| model | rte-short |\n|---|---|\n" f"| tiny | {100 * acc:.1f} |" in md
    assert md == (tmp_path / "eval" / "results.md").read_text()

    table = {name: r.metrics for name, r in results.items()}
    _fake_run(tmp_path / "abl" / "none" / "seed1", "none", table)
    _fake_run(tmp_path / "abl" / "cos" / "seed1", "cosine", {**table, rte_short: {**table[rte_short], "acc": 0.5}})
    assert compare([str(tmp_path / "abl"), "--out", str(tmp_path / "cmp"), "--n-boot", "200", "--no-plots",
                    "--baseline", "none"]) == 0
    out = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert out["columns"]["other"] == [rte_short]
    assert out["cells"]["none"][rte_short]["values"] == [acc]
    assert out["differences"]["cos"][rte_short]["recipe"]["delta"] == pytest.approx(0.5 - acc)
    compare_md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "### Other benchmarks (%)" in compare_md and f"| none | 1 | {100 * acc:.1f} |" in compare_md

    assert probe_tasks()[rte_short] == "classification"
    train, test, note = load_examples(rte_short, shared_data, ProbeProtocol())
    assert len(train) + len(test) == len(expected) and "carved" in note
    assert rte_short in finetune_tasks()
    train, test, _ = load_task(rte_short, shared_data, 0.5, 0)
    labels = {r["premise"]: int(r["label"] == "not_entailment") for r in expected}
    assert all(labels[text.split(" hypothesis: ")[0].removeprefix("premise: ")] == y for text, y in train + test)
