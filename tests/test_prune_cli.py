"""The pruning command end to end on a tiny Mistral, its evaluation against independent references, and its
one-line errors."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from prune_models import tiny_model

from eval.benchmarks.loss import evaluate_loss
from eval.benchmarks.tasks import DataSource, get_task
from model.loss import sliding_windows as windows
from prune.evaluate import Evaluation

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(tiny_tokenizer, tmp_path_factory):
    out = tmp_path_factory.mktemp("prune_model")
    tiny_model("mistral", tiny_tokenizer).save_pretrained(out)
    tiny_tokenizer.save_pretrained(out)
    return out


def test_windows_predict_every_token_once():
    for n, context, stride in ((100, 16, 15), (100, 16, 5), (17, 16, 8), (16, 16, 8), (100, 16, 16)):
        seen = []
        for begin, end, scored in windows(n, context, stride):
            assert end - begin <= context and scored <= end - begin - 1
            seen += list(range(end - scored, end))
        # with stride == context a window's first token has no context in it and is skipped, as in HF's recipe
        skipped = list(range(context, n, context)) if stride == context else []
        assert seen == [t for t in range(1, n) if t not in skipped]


def test_wikitext_matches_hf_sliding_window_recipe(tiny_tokenizer, shared_data):
    model = tiny_model("mistral", tiny_tokenizer)
    task = get_task("wikitext2", DataSource(shared_data))
    data = task.build(tiny_tokenizer, 63, stride=24, max_tokens=700)
    got = evaluate_loss(model, data, device="cpu", batch_tokens=4 * 64, metrics=task.metric_names)
    ids = data.ids[None]  # HF's perplexity guide, with the exact count of scored labels
    nll, count, prev_end = 0.0, 0, 0
    for begin in range(0, ids.size(1), data.stride):
        end = min(begin + 64, ids.size(1))
        trg = end - prev_end
        x = ids[:, begin:end]
        labels = x.clone()
        labels[:, :-trg] = -100
        with torch.no_grad():
            loss = model(input_ids=x, labels=labels).loss
        n = int((labels[:, 1:] != -100).sum())
        nll, count, prev_end = nll + float(loss) * n, count + n, end
        if end == ids.size(1):
            break
    assert count == got["tokens"] == 699
    assert got["ppl"] == pytest.approx(math.exp(nll / count), rel=1e-5)
    # Words and bytes of the scored text, counted independently: the decoded token stream (byte-level BPE decodes
    # losslessly), not the offsets the code cuts the text at.
    scored_text = tiny_tokenizer.decode(data.ids.tolist(), skip_special_tokens=True)
    assert scored_text.startswith(" = Robert Boulter = \n")
    assert (data.num_words, data.num_bytes) == (len(scored_text.split()), len(scored_text.encode("utf-8")))
    assert got["word_ppl"] == pytest.approx(math.exp(got["nll"] / data.num_words))
    assert got["bpb"] == pytest.approx(got["nll"] / math.log(2) / data.num_bytes)


def run(args):
    from prune.__main__ import main

    return main([str(a) for a in args])


def test_cli_end_to_end(model_dir, tmp_path, tiny_tokenizer, shared_data):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "out"
    common = ["--limit", 12, "--wikitext-max-tokens", 600, "--context", 64, "--num-chunks", 12]
    assert run(["--model", model_dir, "--out", out, "--methods", "remove,linear,merged", "--k", "1..2",
                "--criterion", "cosine", "--export-k", "all", *common]) == 0
    record = json.loads((out / "pruning.json").read_text())
    for name in ("pruning.md", "pruning_vs_k.png", "pruning_vs_fraction.png", "fit_errors.png"):
        assert (out / name).is_file()
    res = record["results"]
    assert set(res) == {"remove", "linear", "merged"} and set(res["remove"]) == {"0", "1", "2"}
    # k = 0 is the unpruned model: the same numbers as an independent evaluation and as `python -m eval`
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    fresh = Evaluation(tiny_tokenizer, limit=12, context=64, wikitext_max_tokens=600, max_length=256)(model)
    assert all(res[m]["0"] == fresh for m in res)
    from eval.__main__ import main as eval_main

    eval_main(["--model", str(model_dir), "--tasks", "tinystories,arc_easy", "--limit", "12", "--out",
               str(tmp_path / "eval")])
    ref = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert res["remove"]["0"]["tinystories_first12/loss"] == pytest.approx(ref["tinystories_first12"]["loss"], 1e-6)
    assert res["remove"]["0"]["arc_easy_first12/acc_norm"] == ref["arc_easy_first12"]["acc_norm"]
    assert record["details"]["remove"]["2"]["changed_blocks"] == [o["block"] for o in
                                                                 record["selection"]["remove"]["order"]][:2]
    md = (out / "pruning.md").read_text()
    assert "### wikitext2/ppl (lower is better)" in md and "| 2 | 0.500 |" in md
    # retained share and the paired bootstrap against remove, recomputed here from the per-k numbers
    ppl = {k: res["linear"][k]["wikitext2/ppl"] for k in ("0", "1", "2")}
    retained = md[md.index("### wikitext2/ppl: % of the unpruned score retained"):]
    assert f"| linear | {100 * ppl['0'] / ppl['1']:.1f} | {100 * ppl['0'] / ppl['2']:.1f} |" in retained
    lin = record["comparison"]["linear"]["2"]["wikitext2"]
    nll = {m: res[m]["2"]["wikitext2/nll"] for m in ("linear", "remove")}
    assert lin["diff"] == pytest.approx((nll["linear"] - nll["remove"]) / res["remove"]["2"]["wikitext2/tokens"])
    assert lin["lo"] <= lin["diff"] <= lin["hi"] and "merged" in record["comparison"]
    for m in ("remove", "merged"):  # plain HF checkpoints
        reloaded = AutoModelForCausalLM.from_pretrained(out / "models" / f"{m}_k2")
        assert reloaded.config.num_hidden_layers == 2
    lin = json.loads((out / "models" / "linear_k2" / "config.json").read_text())
    assert lin["auto_map"]["AutoModelForCausalLM"].startswith("modeling_linreg_linear.")
    # linreg's own tools read the linear export directly
    from eval.linearity.__main__ import main as lin_main

    lin_main(["--model", str(out / "models" / "linear_k2"), "--text", str(shared_data / "tinystories" / "valid.txt"),
              "--num-chunks", "12", "--out", str(tmp_path / "lin")])
    prof = json.loads((tmp_path / "lin" / "linearity.json").read_text())["models"][0]["profile"]
    assert len(prof["pairs"]) == 4


@pytest.mark.parametrize("args,message", [
    (["--k", "4"], "k=4 must be smaller than the model's 4 blocks"),
    (["--k", "2", "--criterion", "cosin"], "unknown criterion 'cosin'"),
    (["--k", "2", "--methods", "remove,prune"], "unknown method 'prune'"),
    (["--k", "2", "--num-chunks", "1", "--chunk-chars", "40"], "probe has"),
])
def test_cli_errors(args, message, model_dir, tmp_path, capsys):
    assert run(["--model", model_dir, "--out", tmp_path / "o", *args]) == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


def test_cli_one_line_error(tmp_path):
    import os

    proc = subprocess.run([sys.executable, "-m", "prune", "--model", str(tmp_path / "missing"), "--out",
                           str(tmp_path / "o"), "--k", "1"], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: model not found")
    assert len(proc.stderr.strip().splitlines()) == 1
