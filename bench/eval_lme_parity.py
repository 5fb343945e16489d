"""Compare ``python -m eval`` with lm-evaluation-harness itself on the same model and the same documents.

Runs in a scratch virtual environment that has lm-eval (never the project's):

    python3 -m venv /tmp/lmevenv && /tmp/lmevenv/bin/pip install torch==2.13.0 \\
        && /tmp/lmevenv/bin/pip install -c requirements/cpu.txt "lm-eval[hf]"
    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 /tmp/lmevenv/bin/python bench/eval_lme_parity.py \\
        --model MODEL_DIR --data-root ../shared/data --limit 40 --out /tmp/parity
    # the speed figure: full splits, both sides timed in this process (ours cold, then with a warm token cache)
    ... bench/eval_lme_parity.py --model MODEL_DIR --data-root ../shared/data --tasks superglue --limit 0 \\
        --squad-metrics squad_metrics.py --cache-dir /tmp/parity_cache --out /tmp/parity_full

lme's tasks read the hub datasets; offline, each task is re-pointed at jsonl files holding the documents our
loaders produce from the local files (HF row format), through a task YAML that ``include``s lme's own definition
and only overrides ``dataset_path``/``dataset_kwargs``. So this checks prompts, tokenisation, scoring and metrics
given the same documents; the mapping of the original files onto HF rows is checked by tests/test_eval_tasks.py.
lme's ReCoRD utils import ``transformers.data.metrics.squad_metrics``, which transformers 5 removed: pass
``--squad-metrics PATH`` (that file from a transformers 4.x wheel) to install it for lme, else ReCoRD is skipped.
Prints, per task, the largest log-likelihood difference per request, the documents whose argmax differs, and
both sets of metrics; then the wall time of each side (lme's ``simple_evaluate``; ours: building the suite,
which reads and tokenises the tasks, plus scoring; cold, and again with the token cache warm, as every run of a
sweep after the first sees it).
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LME_NAMES = {"rte": "sglue_rte"}  # our name -> lme's, where they differ


def install_squad_metrics(path: Path) -> None:
    """Register the SQuAD metric functions of a transformers 4.x ``squad_metrics.py`` under its old module name."""
    tree = ast.parse(path.read_text())
    wanted = {"normalize_answer", "get_tokens", "compute_exact", "compute_f1"}
    body = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in wanted]
    mod = types.ModuleType("transformers.data.metrics.squad_metrics")
    exec("import collections, re, string", mod.__dict__)
    exec(compile(ast.Module(body=body, type_ignores=[]), str(path), "exec"), mod.__dict__)
    for name in ("transformers.data", "transformers.data.metrics"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["transformers.data.metrics"].squad_metrics = mod
    sys.modules[mod.__name__] = mod


def export_docs(task, out: Path) -> dict[str, str]:
    """Write the task's validation/train documents as jsonl; returns lme split name -> file."""
    from eval.benchmarks.tasks.xstorycloze import XStoryCloze

    files = {}
    for split in ("validation", "train"):
        lme_split = "eval" if isinstance(task, XStoryCloze) and split == "validation" else split
        path = out / "docs" / task.name / f"{lme_split}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as f:
            for d in task.load_split(split):
                f.write(json.dumps(d, ensure_ascii=False) + "\n")
        files[lme_split] = str(path)
    return files


def lme_yaml(name: str, files: dict[str, str], out: Path) -> str:
    import lm_eval

    root = Path(lm_eval.__file__).parent / "tasks"
    lme_name = LME_NAMES.get(name, name)
    src = (root / "xstorycloze" / f"default_{name.split('_')[1]}.yaml" if name.startswith("xstorycloze")
           else root / "super_glue" / name / "default.yaml")
    task = f"local_{lme_name}"
    lines = [f"include: {src}", f"task: {task}", "tag: []", "dataset_path: json", "dataset_name: null",
             "dataset_kwargs:", "  data_files:"] + [f"    {k}: {v}" for k, v in files.items()]
    (out / "yaml").mkdir(parents=True, exist_ok=True)
    (out / "yaml" / f"{task}.yaml").write_text("\n".join(lines) + "\n")
    return task


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data-root", required=True)
    p.add_argument("--tasks", default="superglue,xstorycloze_en,xstorycloze_zh")
    p.add_argument("--limit", type=int, default=40, help="documents per task; 0: the full split")
    p.add_argument("--num-fewshot", type=int, default=0)
    p.add_argument("--out", default="/tmp/lme_parity")
    p.add_argument("--batch-size", type=int, default=16, help="lme's batch size (requests per forward)")
    p.add_argument("--cache-dir", type=Path, default=None, help="our token cache (timed cold, then warm)")
    p.add_argument("--squad-metrics", type=Path, default=None, help="transformers 4.x squad_metrics.py (ReCoRD)")
    args = p.parse_args()
    out = Path(args.out)
    limit = args.limit or None

    import numpy as np
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from eval.benchmarks import BenchmarkSuite
    from eval.benchmarks.tasks import DataSource, expand_task_names, get_task

    names = expand_task_names(args.tasks)
    if args.squad_metrics:
        install_squad_metrics(args.squad_metrics)
    elif "record" in names:
        print("record skipped: no --squad-metrics")
        names.remove("record")
    data = DataSource.resolve(args.data_root)
    lme_tasks = {name: lme_yaml(name, export_docs(get_task(name, data), out), out) for name in names}

    import lm_eval
    import torch
    from lm_eval.tasks import TaskManager

    print(f"load average {os.getloadavg()}, torch threads {torch.get_num_threads()}", flush=True)
    t0 = time.perf_counter()
    res = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={args.model},dtype=float32", tasks=list(lme_tasks.values()),
        num_fewshot=args.num_fewshot, limit=limit, batch_size=args.batch_size, device="cpu", log_samples=True,
        task_manager=TaskManager(include_path=str(out / "yaml")), bootstrap_iters=0)
    lme_s = time.perf_counter() - t0

    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    ours_s = []
    for _ in range(2 if args.cache_dir else 1):  # cold, then warm
        t0 = time.perf_counter()
        with torch.inference_mode():
            ours = BenchmarkSuite(names, tok, data_root=data, num_fewshot=args.num_fewshot, limit=limit,
                                  cache_dir=args.cache_dir).run(model, log_samples=True)
        ours_s.append(time.perf_counter() - t0)
    report = {}
    for name, lme_task in lme_tasks.items():
        mine = next(r for r in ours.values() if r.name == name)
        theirs = sorted(res["samples"][lme_task], key=lambda s: s["doc_id"])
        lme_ll = np.array([float(r[0][0]) for s in theirs for r in s["resps"]])
        our_ll = np.array([x for s in mine.samples for x in s["loglikelihoods"]])
        same_prompts = all(
            [list(a) for a in s["arguments"]] == [[m["context"], c] for c in m["continuations"]]
            for s, m in zip(theirs, mine.samples))
        lme_metrics = {k.split(",")[0]: v for k, v in res["results"][lme_task].items()
                       if k.endswith(",none") and "stderr" not in k}
        lme_doc = [[float(r[0][0]) for r in s["resps"]] for s in theirs]
        argmax_mismatches = sum(int(np.argmax(a)) != int(np.argmax(m["loglikelihoods"]))
                                for a, m in zip(lme_doc, mine.samples))
        report[name] = {"docs": len(mine.samples), "requests": len(our_ll), "same_prompts": same_prompts,
                        "max_abs_ll_diff": float(np.abs(lme_ll - our_ll).max()),
                        "argmax_mismatches": argmax_mismatches, "lme": lme_metrics, "ours": mine.metrics}
        print(f"{name:16s} docs={len(mine.samples):5d} requests={len(our_ll):5d} same_prompts={same_prompts} "
              f"max|dll|={report[name]['max_abs_ll_diff']:.2e} argmax_mismatches={argmax_mismatches} "
              f"lme={lme_metrics} ours={mine.metrics}")
    timing = {"lme_s": lme_s, "ours_s": ours_s, "speedup": [lme_s / t for t in ours_s],
              "lme_batch_size": args.batch_size, "torch_threads": torch.get_num_threads(),
              "load_average_end": os.getloadavg()}
    print("time: lme {:.1f} s, ours {} -> {}".format(
        lme_s, ", ".join(f"{t:.1f} s" for t in ours_s), ", ".join(f"{x:.2f}x" for x in timing["speedup"])))
    (out / "parity.json").write_text(json.dumps({"tasks": report, "timing": timing}, indent=2) + "\n")


if __name__ == "__main__":
    main()
