"""``python -m data.prepare --from``: a local copy of each hub repository, built here from shared/data's files in
the hub's row format, goes through the same ``load_dataset`` path as the hub, and the root it writes reads back,
through the benchmark, pruning and training readers, as the very rows the copy was made of."""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from core.cli import command
from core.io import read_jsonl
from data.catalog import SETS, SUPERGLUE_TASKS, XSTORY_LANGUAGES
from data.prepare import MANIFEST, main

SHARED = Path(os.environ.get("LINREG_DATA_ROOT", Path(__file__).resolve().parents[2] / "shared" / "data"))
REGISTRY = {"BoolQ": "boolq", "CB": "cb", "COPA": "copa", "MultiRC": "multirc", "ReCoRD": "record", "RTE": "rte",
            "WiC": "wic", "WSC": "wsc"}


def write_repo(repo: Path, configs: dict[str | None, dict[str, list[dict]]], layout: str) -> None:
    """A hub repository's files: one parquet file per (config, split) at ``layout``, and, for named configs, the
    README ``configs:`` metadata that tells ``datasets`` which files each config is made of."""
    from datasets import Dataset

    meta = []
    for config, splits in configs.items():
        entry = []
        for split, rows in splits.items():
            rel = layout.format(config=config, split=split)
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            Dataset.from_list(rows).to_parquet(str(repo / rel))
            entry.append(f"  - split: {split}\n    path: {rel}\n")
        if config is not None:
            meta.append(f"- config_name: {config}\n  data_files:\n" + "".join(entry))
    if meta:
        (repo / "README.md").write_text("---\nconfigs:\n" + "".join(meta) + "---\n")


def superglue_rows(folder: str, name: str) -> list[dict]:
    """The hub rows of a shared/data SuperGLUE file, as the benchmark reader maps them."""
    from eval.benchmarks.tasks import DataSource, get_task

    task = get_task(REGISTRY[folder], DataSource(SHARED))
    return task.from_original(read_jsonl(SHARED / "superglue" / folder / name))


def xstory_rows(lang: str, split: str) -> list[dict]:
    from eval.benchmarks.tasks.xstorycloze import read_xstorycloze_tsv

    return read_xstorycloze_tsv("x", SHARED / "xstorycloze" / f"spring2016.val.{lang}.tsv.split_20_80_{split}.tsv")


@pytest.fixture(scope="module")
def hub_copy(tmp_path_factory) -> Path:
    from data.sources import read_txt_documents

    hub = tmp_path_factory.mktemp("hub")
    stories = {s: [{"text": t} for t in read_txt_documents(SHARED / "tinystories" / f)]
               for s, f in (("train", "train.txt"), ("validation", "valid.txt"))}
    write_repo(hub / "roneneldan/TinyStories", {None: stories}, "data/{split}-00000-of-00001.parquet")
    # Tiny-textbooks' real rows are long synthetic textbooks; the copy only needs its columns
    books = [{"text": f"source {i}", "textbook": t["text"]} for i, t in enumerate(stories["validation"][:50])]
    write_repo(hub / "nampdn-ai/tiny-textbooks", {None: {"train": books}}, "{split}.parquet")
    # ReCoRD has no validation file in shared/data: its dev32 file stands in for the validation split
    glue = {config: {"validation": superglue_rows(folder, "dev32.jsonl" if folder == "ReCoRD" else "val.jsonl"),
                     "train": superglue_rows(folder, "train.jsonl")}
            for folder, (config, _) in SUPERGLUE_TASKS.items()}
    write_repo(hub / "aps/super_glue", glue, "{config}/super_glue-{split}.parquet")
    for lang in XSTORY_LANGUAGES:
        write_repo(hub / "juletxara/xstory_cloze", {"x": {s: xstory_rows(lang, s) for s in ("eval", "train")}},
                   lang + "/xstory_cloze-{split}.parquet")
    (hub / "juletxara/xstory_cloze/README.md").unlink()  # the conversion branch has no configs metadata
    raw = (SHARED / "wikitext2" / "wiki.test.raw").read_text(encoding="utf-8")
    wiki = [{"text": line} for line in raw.splitlines(keepends=True)] + [{"text": ""}]
    write_repo(hub / "Salesforce/wikitext", {"wikitext-2-raw-v1": {"test": wiki}}, "{config}/{split}-00000.parquet")
    arc = {s: read_jsonl(SHARED / "arc" / f"ARC-Easy-{s}.jsonl") for s in ("train", "validation", "test")}
    write_repo(hub / "allenai/ai2_arc", {"ARC-Easy": arc}, "{config}/{split}-00000-of-00001.parquet")
    hh = hub / "Anthropic/hh-rlhf"
    for folder in ("harmless-base", "helpful-base"):  # the harmless test file also stands in for helpful-base
        (hh / folder).mkdir(parents=True)
        for split in ("train", "test"):
            shutil.copy(SHARED / "hh-rlhf" / "harmless-base-test.jsonl.gz", hh / folder / f"{split}.jsonl.gz")
    return hub


@pytest.fixture(scope="module")
def prepared_root(hub_copy, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("prepared") / "root"
    assert command(main)(["--root", str(root), "--from", str(hub_copy)]) == 0
    return root


def test_manifest_lists_every_file_with_its_hash_and_rows(prepared_root, hub_copy):
    manifest = json.loads((prepared_root / MANIFEST).read_text())
    assert set(manifest["sets"]) == set(SETS)
    for name, ds in SETS.items():
        entry = manifest["sets"][name]
        assert entry["source"] == ds.hub and entry["revision"] == f"local:{(hub_copy / ds.hub).resolve()}"
        assert set(entry["files"]) == {p.path for p in ds.parts}
        for rel, meta in entry["files"].items():
            data = (prepared_root / rel).read_bytes()
            assert meta["bytes"] == len(data) and meta["sha256"] == hashlib.sha256(data).hexdigest()
    files = manifest["sets"]["superglue"]["files"]
    assert files["superglue/MultiRC/val.jsonl"]["rows"] == 4848  # hub rows (answers), PROVENANCE's count
    assert files["superglue/BoolQ/val.jsonl"]["rows"] == 3270
    assert manifest["sets"]["arc"]["files"]["arc/ARC-Easy-test.jsonl"]["rows"] == 2376
    assert not list(prepared_root.glob(".prepare-*"))


def test_benchmark_readers_get_the_hub_rows_back(prepared_root):
    from eval.benchmarks.tasks import DataSource, get_task

    for folder, task_name in REGISTRY.items():
        task = get_task(task_name, DataSource(prepared_root))
        original = "dev32.jsonl" if folder == "ReCoRD" else "val.jsonl"
        expected = task.process_docs(superglue_rows(folder, original))
        assert task.docs("validation") == expected, folder
        assert task.docs("train") == task.process_docs(superglue_rows(folder, "train.jsonl")), folder
        assert task.split_tag == "" and task.notes == []  # ReCoRD reads val.jsonl: no fallback
    for lang in XSTORY_LANGUAGES:
        task = get_task(f"xstorycloze_{lang}", DataSource(prepared_root))
        assert task.docs("validation") == xstory_rows(lang, "eval") and task.docs("train") == xstory_rows(lang, "train")
    arc = get_task("arc_easy", DataSource(prepared_root))
    assert arc.docs("validation") == read_jsonl(SHARED / "arc" / "ARC-Easy-test.jsonl")
    stories = get_task("tinystories", DataSource(prepared_root))
    assert stories.documents() == get_task("tinystories", DataSource(SHARED)).documents()
    assert stories.notes == []  # a prepared validation split: no sample warning


def test_other_readers_get_the_hub_rows_back(prepared_root):
    from data.sources import read_jsonl_documents, read_txt_documents
    from eval.benchmarks.wikitext2 import read_wikitext_rows

    assert read_wikitext_rows(prepared_root / "wikitext2" / "wiki.test.raw") == \
        read_wikitext_rows(SHARED / "wikitext2" / "wiki.test.raw")
    assert read_txt_documents(prepared_root / "tinystories" / "train.txt") == \
        read_txt_documents(SHARED / "tinystories" / "train.txt")
    books = read_jsonl_documents(prepared_root / "tiny-textbooks" / "train.jsonl")
    assert books == read_txt_documents(SHARED / "tinystories" / "valid.txt")[:50]
    with gzip.open(SHARED / "hh-rlhf" / "harmless-base-test.jsonl.gz", "rt") as f:
        pairs = [json.loads(line) for line in f]
    for name in ("harmless-base-test", "helpful-base-train"):
        assert read_jsonl(prepared_root / "hh-rlhf" / f"{name}.jsonl.gz") == pairs


def test_rerun_skips_finished_sets_and_rebuilds_a_changed_one(prepared_root, hub_copy, capsys):
    stamp = {p: p.stat().st_mtime_ns for p in prepared_root.rglob("*") if p.is_file()}
    assert command(main)(["--root", str(prepared_root), "--from", str(hub_copy)]) == 0
    out = capsys.readouterr().out
    assert all(f"{name}: finished" in out for name in SETS), out
    assert stamp == {p: p.stat().st_mtime_ns for p in prepared_root.rglob("*") if p.is_file()}
    wiki = prepared_root / "wikitext2" / "wiki.test.raw"
    good = wiki.read_bytes()
    wiki.write_bytes(good[:-1] + b"?")  # same size, other content: only the hash tells
    assert command(main)(["--root", str(prepared_root), "--from", str(hub_copy), "--only", "wikitext2,arc"]) == 0
    out = capsys.readouterr().out
    assert "wikitext2: wikitext2/wiki.test.raw differs from the manifest" in out and "arc: finished" in out
    assert wiki.read_bytes() == good


def test_a_set_that_fails_midway_leaves_nothing_behind(hub_copy, tmp_path, capsys):
    broken = tmp_path / "hub"
    shutil.copytree(hub_copy / "allenai", broken / "allenai")
    test_file = broken / "allenai/ai2_arc/ARC-Easy/test-00000-of-00001.parquet"
    test_file.write_bytes(test_file.read_bytes()[:1000])  # the third file of the set is torn
    root = tmp_path / "root"
    (root / "arc").mkdir(parents=True)
    (root / "arc" / "ARC-Easy-train.jsonl").write_text("old\n")
    code = command(main)(["--root", str(root), "--from", str(broken), "--only", "arc"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and err.startswith("error: set 'arc'"), err
    assert sorted(p.name for p in root.rglob("*")) == [".prepare.lock", "ARC-Easy-train.jsonl", "arc"]  # no manifest
    assert (root / "arc" / "ARC-Easy-train.jsonl").read_text() == "old\n"


def test_analyses_train_on_the_prepared_splits(prepared_root):
    from analysis.finetune import load_task
    from analysis.taskdata import task_splits
    from eval.benchmarks.tasks import DataSource, get_task

    train, test, note = task_splits(get_task("cb", DataSource(prepared_root)))
    assert note == "official train / validation splits"
    assert (train, test) == (superglue_rows("CB", "train.jsonl"), superglue_rows("CB", "val.jsonl"))
    train, test, note = load_task("reward", prepared_root, 0.5, 0)
    assert "helpful-base train / test" in note and len(train) == len(test) == 2312


def test_a_sample_root_is_evaluated_with_a_warning():
    from eval.benchmarks.tasks import DataSource, get_task

    task = get_task("tinystories", DataSource(SHARED))
    assert len(task.documents()) == 1726
    assert len(task.notes) == 1 and "1,726 stories" in task.notes[0] and "linreg data" in task.notes[0]


def test_xstorycloze_from_the_hub_reads_the_parquet_conversion():
    from eval.benchmarks.tasks import DataSource, TaskDataError, get_task

    with pytest.raises(TaskDataError, match=r"xstorycloze_sw.*juletxara/xstory_cloze.*refs/convert/parquet.*sw/"):
        get_task("xstorycloze_sw", DataSource(None)).docs("validation")  # offline in the tests: the error says where


def test_builders_started_together_build_each_set_once(hub_copy, tmp_path, capsys):
    from concurrent.futures import ThreadPoolExecutor

    root = tmp_path / "root"
    argv = ["--root", str(root), "--from", str(hub_copy), "--only", "arc,wikitext2"]
    with ThreadPoolExecutor(3) as pool:  # flock excludes open file descriptions, so threads contend like processes
        codes = list(pool.map(lambda _: command(main)(argv), range(3)))
    out = capsys.readouterr().out
    assert codes == [0, 0, 0] and out.count("reading allenai/ai2_arc") == 1, out
    assert out.count("reading Salesforce/wikitext") == 1, out
    assert set(json.loads((root / MANIFEST).read_text())["sets"]) == {"arc", "wikitext2"}
    assert read_jsonl(root / "arc" / "ARC-Easy-test.jsonl") == read_jsonl(SHARED / "arc" / "ARC-Easy-test.jsonl")
