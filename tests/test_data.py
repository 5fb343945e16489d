"""Sources, token cache, packing with EOS, deterministic/sharded/resumable order."""
import numpy as np
import pytest
import torch

from data import sources
from data.cache import TokenFile, source_tokens, tokenized_split
from data.config import DataConfig
from data.mixture import mixture_order
from data.sources import held_out, iter_documents, load_documents, read_txt_documents, tokenizer_sample
from data.stream import PackedSamples, TrainStream, validation_batches


def test_txt_documents(tinystories_train, tmp_path):
    docs = read_txt_documents(tinystories_train)
    assert len(docs) == 2983  # PROVENANCE.md
    assert all("<|endoftext|>" not in d for d in docs[:50])
    f = tmp_path / "x.txt"
    f.write_text("a b\n<|endoftext|>\n\nc\n<|endoftext|>\n")
    assert read_txt_documents(f) == ["a b", "c"]


def test_txt_reader_streams_in_small_blocks(tinystories_train, tmp_path, monkeypatch):
    """Block boundaries anywhere (inside a separator line, between its marker and newline) change nothing."""
    whole = read_txt_documents(tinystories_train)
    f = tmp_path / "x.txt"
    f.write_text("a\n<|endoftext|>\n b \n  <|endoftext|>\t\n<|endoftext|>x\n\n<|endoftext|>\nc\n<|endoftext|>")
    monkeypatch.setattr(sources, "_READ_BLOCK", 4099)
    assert read_txt_documents(tinystories_train) == whole
    monkeypatch.setattr(sources, "_READ_BLOCK", 7)
    assert read_txt_documents(f) == ["a", "b", "<|endoftext|>x", "c"]


def test_hub_split_streams_through_datasets(tmp_path, monkeypatch):
    """A hub source is read through ``datasets`` in streaming mode (here a local dataset directory, offline)."""
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "train.jsonl").write_text("".join(f'{{"text": "story {i}"}}\n' for i in range(2500)))
    desc = {"kind": "hub", "dataset": str(tmp_path / "ds"), "config": None, "split": "train", "text_field": "text"}
    docs = iter_documents(desc, max_docs=2100)
    assert not isinstance(docs, list)
    assert list(docs) == [f"story {i}" for i in range(2100)]
    with pytest.raises(KeyError, match="no field 'body'"):
        list(iter_documents({**desc, "text_field": "body"}))


def test_local_files_and_holdout(shared_data, tmp_path):
    cfg = DataConfig(root=str(shared_data), train_files=["tinystories/train.txt"], valid_fraction=0.1)
    train, valid = load_documents(cfg, "train"), load_documents(cfg, "valid")
    assert len(train) + len(valid) == 2983 and len(valid) == 298 and not set(train) & set(valid)
    assert valid[:2] == [read_txt_documents(shared_data / "tinystories" / "train.txt")[i] for i in (9, 19)]  # spread
    assert held_out(np.arange(2983), 0.1).sum() == 298 and [held_out(i, 0.1) for i in range(20)] == list(
        held_out(np.arange(20), 0.1))
    rows = tmp_path / "d.jsonl"
    rows.write_text('{"text": "hello"}\n{"text": "world"}\n')
    assert load_documents(DataConfig(train_files=[str(rows)]), "train") == ["hello", "world"]
    with pytest.raises(KeyError, match="no field 'body'"):
        load_documents(DataConfig(train_files=[str(rows)], text_field="body"), "train")


def test_missing_file_and_hub_offline(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="nope.txt not found"):
        load_documents(DataConfig(root=str(tmp_path), train_files=["nope.txt"]), "train")
    monkeypatch.delenv("LINREG_DATA_ROOT", raising=False)
    with pytest.raises(FileNotFoundError, match="cannot load HF dataset 'roneneldan/TinyStories'.*offline"):
        load_documents(DataConfig(dataset="roneneldan/TinyStories", train_files=["tinystories/train.txt"]), "train")


def test_empty_dataset(tmp_path):
    f = tmp_path / "empty.txt"
    f.write_text("\n<|endoftext|>\n")
    with pytest.raises(ValueError, match="empty train dataset"):
        load_documents(DataConfig(train_files=[str(f)]), "train")


def test_cache_packs_with_eos(tiny_tokenizer, tinystories_valid, tmp_path, monkeypatch):
    import data.cache

    monkeypatch.setattr(data.cache, "_SERIAL_TASKS", 0)  # the worker pool even for this one task
    cfg = DataConfig(train_files=[str(tinystories_valid)], max_docs=50, cache_dir=str(tmp_path), num_proc=2)
    tokens = tokenized_split(cfg, "train", tiny_tokenizer, progress=False)
    docs = read_txt_documents(tinystories_valid)[:50]
    expected = []
    for d in docs:
        expected += tiny_tokenizer(d, add_special_tokens=False)["input_ids"] + [tiny_tokenizer.eos_token_id]
    assert np.array_equal(np.asarray(tokens), np.array(expected))
    assert (np.asarray(tokens) == tiny_tokenizer.eos_token_id).sum() == 50
    again = tokenized_split(cfg, "train", tiny_tokenizer, progress=False)  # cache hit: same file
    assert again.filename == tokens.filename
    serial = source_tokens({"kind": "file", "path": str(tinystories_valid), "text_field": "text"}, 50,
                           tiny_tokenizer, tmp_path / "serial", num_proc=1)
    assert np.array_equal(serial.tokens, tokens)  # one process or several: the same file
    assert np.array_equal(np.diff(serial.ends, prepend=0), [len(tiny_tokenizer(d, add_special_tokens=False)[
        "input_ids"]) + 1 for d in docs])
    samples = PackedSamples(tokens, seq_len=32)
    b = samples.get([0, 1])
    assert b.shape == (2, 33) and torch.equal(b[0, -1], b[1, 0])  # stride seq_len: every token a target once


def _stream(n_tokens=10_000, seq=16, mb=2, rank=0, world=1, seed=7):
    return TrainStream(PackedSamples(np.arange(n_tokens, dtype=np.uint16), seq), mb, rank, world, seed)


def test_order_deterministic_and_sharded():
    a, b = _stream(), _stream()
    assert all(torch.equal(a.next_batch(), b.next_batch()) for _ in range(5))
    assert not torch.equal(_stream(seed=1).next_batch(), _stream(seed=2).next_batch())
    # One process with micro-batch 4 sees exactly the samples two ranks with micro-batch 2 see, per step.
    single = _stream(mb=4)
    r0, r1 = _stream(mb=2, rank=0, world=2), _stream(mb=2, rank=1, world=2)
    for _ in range(10):
        assert torch.equal(single.next_batch(), torch.cat([r0.next_batch(), r1.next_batch()]))


def test_epochs_cover_every_sample_once():
    s = _stream(n_tokens=16 * 10 + 1, mb=2)
    firsts = [int(x) for _ in range(5) for x in s.next_batch()[:, 0]]
    assert sorted(firsts) == list(range(0, 160, 16))
    epoch2 = [int(x) for _ in range(5) for x in s.next_batch()[:, 0]]
    assert sorted(epoch2) == sorted(firsts) and epoch2 != firsts


def test_resume_position():
    a = _stream()
    for _ in range(7):
        a.next_batch()
    state = a.state_dict()
    b = _stream()
    b.load_state_dict(state)
    assert all(torch.equal(a.next_batch(), b.next_batch()) for _ in range(5))
    with pytest.raises(ValueError, match="data changed"):
        _stream(n_tokens=5000).load_state_dict(state)


def test_validation_batches_split_over_ranks():
    samples = PackedSamples(np.arange(2000, dtype=np.uint16), 16)
    one = list(validation_batches(samples, 4, 3, 0, 1))
    r0 = list(validation_batches(samples, 2, 3, 0, 2))
    r1 = list(validation_batches(samples, 2, 3, 1, 2))
    assert all(torch.equal(o, torch.cat([x, y])) for o, x, y in zip(one, r0, r1))


def test_mixture_order_shares_and_prefixes():
    a, b = np.full(100, 10), np.full(50, 4)  # 1000 and 200 tokens
    src, doc = mixture_order([a, b], [0.5, 0.5])
    tokens = np.where(src == 0, a[0], b[0])
    assert tokens[src == 0].sum() == 600 and tokens[src == 1].sum() == 600  # half each of 1200 tokens
    assert sorted(doc[src == 0]) == sorted(set(doc[src == 0])) and doc[src == 0].max() >= 95  # 60 docs, spread
    assert np.array_equal(np.bincount(doc[src == 1]), np.full(50, 3))  # the small source three times
    share = np.cumsum(np.where(src == 0, tokens, 0)) / np.cumsum(tokens)
    assert np.abs(share[20:] - 0.5).max() < 0.05  # every prefix is mixed
    again = mixture_order([a, b], [5, 5])
    assert np.array_equal(again[0], src) and np.array_equal(again[1], doc)  # weights are normalised


def _mix_cfg(root, cache, weights=(0.7, 0.3), **kw):
    files = dict(zip(["tinystories/train.txt", "tinystories/valid.txt"], weights))
    kw = {"valid_fraction": 0.1, "max_docs": 400} | kw
    return DataConfig(root=str(root), train_files=files, cache_dir=str(cache), **kw)


def test_weighted_mixture_split(shared_data, tiny_tokenizer, tmp_path):
    """The mixed split is the documents mixture_order picks, tokenized independently; validation is the held-out
    documents mixed with the same weights; the split is rebuilt bit for bit and a weight change builds a new one."""
    cfg = _mix_cfg(shared_data, tmp_path / "a")
    train, valid = tokenized_split(cfg, "train", tiny_tokenizer, progress=False), tokenized_split(
        cfg, "valid", tiny_tokenizer, progress=False)
    eos = tiny_tokenizer.eos_token_id
    for split, tokens in (("train", train), ("valid", valid)):
        docs = []
        for name in cfg.train_files:
            texts = read_txt_documents(shared_data / name)[:400]
            keep = [t for i, t in enumerate(texts) if held_out(i, 0.1) == (split == "valid")]
            docs.append([tiny_tokenizer(t, add_special_tokens=False)["input_ids"] + [eos] for t in keep])
        src, doc = mixture_order([np.array([len(d) for d in ds]) for ds in docs], [0.7, 0.3])
        expected = [t for s, d in zip(src, doc) for t in docs[s][d]]
        assert np.array_equal(np.asarray(tokens), expected), split
        from_first = sum(len(docs[0][d]) for s, d in zip(src, doc) if s == 0)
        assert abs(from_first / len(expected) - 0.7) < 0.02
    rebuilt = tokenized_split(_mix_cfg(shared_data, tmp_path / "b"), "train", tiny_tokenizer, progress=False)
    assert np.array_equal(rebuilt, train)
    other = tokenized_split(_mix_cfg(shared_data, tmp_path / "a", (0.5, 0.5)), "train", tiny_tokenizer,
                            progress=False)
    assert other.filename != train.filename and len(list((tmp_path / "a").glob("*/meta.json"))) == 2  # sources reused


def test_tokenizer_sample_draws_from_every_source(shared_data, tmp_path):
    cfg = _mix_cfg(shared_data, tmp_path, max_docs=None)
    texts = {name: read_txt_documents(shared_data / name) for name in cfg.train_files}
    sample = list(tokenizer_sample(cfg, 600_000))
    share = {name: sum(len(d.encode()) for d in sample if d in set(docs)) for name, docs in texts.items()}
    assert abs(share["tinystories/train.txt"] / sum(share.values()) - 0.7) < 0.05
    train = texts["tinystories/train.txt"]
    picked = [i for i, d in enumerate(train) if d in set(sample)]
    assert picked[0] < 20 and picked[-1] > len(train) - 20  # spread through the file, not its first megabytes
    held = {d for i, d in enumerate(train) if held_out(i, 0.1)}
    assert not held & set(sample)


def test_failed_build_leaves_no_cache(tiny_tokenizer, tmp_path):
    f = tmp_path / "gone.txt"
    f.write_text("a story\n")
    source = {"kind": "file", "path": str(f), "text_field": "text"}
    f.unlink()  # listed in the config, gone when its tokens are needed
    with pytest.raises(FileNotFoundError, match="gone.txt"):
        source_tokens(source, None, tiny_tokenizer, tmp_path / "cache")
    f.write_bytes(b"ok\n\xff\n")
    with pytest.raises(ValueError, match="UTF-8"):
        source_tokens(source, None, tiny_tokenizer, tmp_path / "cache", num_proc=2)
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")] == []
    f.write_text("a story\n<|endoftext|>\nanother\n")
    built = source_tokens(source, None, tiny_tokenizer, tmp_path / "cache", num_proc=2)
    assert TokenFile.open(built.directory).meta["num_docs"] == 2
