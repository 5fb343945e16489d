"""Per-layer linear probes: above chance where the answer is linearly readable, at chance on shuffled labels, on
features of a tiny real model; span pooling against a hand-computed mean; the CLI on real XStoryCloze data."""
from __future__ import annotations

import json

import numpy as np
import pytest
from figures import legend
from figures import lines as drawn_lines

from analysis import probes as P


@pytest.fixture(scope="module")
def tiny(tiny_hf_model_dir):
    from model.export import load_model

    return load_model(tiny_hf_model_dir)


def story_examples(stories: list[str], seed: int) -> list[P.Example]:
    """Two endings per story, one always about a happy sunny day, one about a cold rainy night, in random order:
    which one is right is linearly readable from any layer."""
    rng = np.random.default_rng(seed)
    good, bad = " They were happy and played in the sun all day.", " It was a cold and rainy night outside."
    out = []
    for story in stories:
        first = bool(rng.integers(2))
        out.append(P.Example(" ".join(story.split()[:25]), (good, bad) if first else (bad, good), int(first)))
    return out


def test_separable_case_beats_chance_and_shuffled_labels_sit_at_chance(tiny, tinystories_valid):
    from data.sources import read_txt_documents

    model, tok = tiny
    stories = read_txt_documents(tinystories_valid)
    x_tr, y_tr = P.example_features(model, tok, story_examples(stories[:120], 0))
    x_ev, y_ev = P.example_features(model, tok, story_examples(stories[120:420], 1))
    assert x_tr.shape == (120, 3, 64)  # h_0, h_1, h_2 of the 2-block, d64 model
    accs = [r["accuracy"] for r in P.probe_layers(x_tr, y_tr, x_ev, y_ev, True)]
    assert min(accs) > 0.95, accs
    rng = np.random.default_rng(2)  # labels that ignore which ending is which
    shuffled = [r["accuracy"] for r in P.probe_layers(x_tr, rng.permutation(y_tr), x_ev, rng.permutation(y_ev), True)]
    # 300 eval pairs: the standard error at chance is 0.029; 4 of them either side
    assert all(abs(a - 0.5) < 0.12 for a in shuffled), shuffled


def test_classification_probe_on_synthetic_features():
    rng = np.random.default_rng(0)
    y_tr, y_ev = rng.integers(0, 3, 400), rng.integers(0, 3, 400)
    centres = rng.normal(size=(3, 16))
    x_tr, x_ev = centres[y_tr] + rng.normal(size=(400, 16)), centres[y_ev] + rng.normal(size=(400, 16))
    res = P.fit_probe(x_tr, y_tr, x_ev, y_ev, pairs=False)
    assert res["accuracy"] > 0.8 and res["C"] in P.C_GRID
    shuffled = P.fit_probe(x_tr, rng.permutation(y_tr), x_ev, y_ev, pairs=False)
    assert shuffled["accuracy"] < 0.45  # chance is about 1/3
    assert P.chance_level("classification", np.array([0, 1, 1, 2])) == 0.5


def test_span_features_are_the_mean_over_the_span(tiny):
    import torch

    from model.capture import ResidualStream

    model, tok = tiny
    context, span = "Once upon a time there was a dog", " who liked to run."
    feats = P.span_features(model, tok, [(context, span), ("A cat", " sat.")])
    ids, begin = P.encode(tok, context, span, None)
    assert begin == len(tok(context)["input_ids"])
    stream = ResidualStream(model)
    with torch.no_grad(), stream:
        model(input_ids=torch.tensor([ids]))
    hs = stream.take()
    stream.remove()
    for layer, h in enumerate(hs):
        np.testing.assert_allclose(feats[0, layer], h[0, begin:].mean(0).numpy(), rtol=1e-5, atol=1e-6)
    # a context too long for the model loses its start, never the span
    cut, begin = P.encode(tok, context * 30, span, 40)
    assert len(cut) == 40 and cut[begin:] == list(tok(span, add_special_tokens=False)["input_ids"])


def test_cli_on_xstorycloze_and_copa(tiny_hf_model_dir, tmp_path, saved_figures):
    out = tmp_path / "out"
    argv = ["--model", str(tiny_hf_model_dir), "--label", "tiny", "--tasks", "xstorycloze_en,copa",
            "--train-limit", "40", "--eval-limit", "30", "--out", str(out)]
    assert P.main(argv) == 0
    res = json.loads((out / "probes.json").read_text())["results"]
    assert res["xstorycloze_en"]["tiny"]["split"] == "official train / validation splits"
    assert "carved" in res["copa"]["tiny"]["split"]
    assert [len(r["layers"]) for r in (res["xstorycloze_en"]["tiny"], res["copa"]["tiny"])] == [3, 3]
    for task in ("xstorycloze_en", "copa"):  # the figures: one line per model and the chance level
        [ax] = saved_figures[f"probes_{task}.png"].axes
        assert (out / f"probes_{task}.png").is_file() and ax.get_title() == f"Linear probes per layer: {task}"
        assert (ax.get_xlabel(), ax.get_ylabel()) == ("state $h_i$ ($h_0$: embeddings; $h_i$: output of block $i-1$)",
                                                      "probe accuracy (eval split)")
        chance = res[task]["tiny"]["chance"]
        assert legend(ax) == ["tiny", f"chance ({chance:.2f})"]
        x, y = drawn_lines(ax)["tiny"]
        assert list(x) == [0, 1, 2] and y == pytest.approx([r["accuracy"] for r in res[task]["tiny"]["layers"]])
        assert drawn_lines(ax)[f"chance ({chance:.2f})"][1] == pytest.approx([chance, chance])
    rows = (out / "probes.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 3
    lines = (out / "probes.jsonl").read_text().splitlines()
    assert P.main(argv) == 0  # cached: nothing recomputed
    assert (out / "probes.jsonl").read_text().splitlines() == lines


def test_carving_keeps_passages_together(shared_data):
    from analysis.taskdata import carve, task_splits
    from eval.benchmarks.tasks import DataSource, get_task

    task = get_task("multirc", DataSource(shared_data))
    train, test, note = task_splits(task, 0.5, 0)
    assert "carved" in note and len(train) + len(test) == 4848
    assert not {d["idx"]["paragraph"] for d in train} & {d["idx"]["paragraph"] for d in test}
    a, b = carve(list(map(lambda i: {"i": i}, range(10))), 0.3, 1)
    assert (len(a), len(b)) == (7, 3) and carve([{"i": i} for i in range(10)], 0.3, 1) == (a, b)
