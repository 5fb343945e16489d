"""Corpus tokenization: the project's streaming, multi-process token cache builder (``data.cache``) against the
``tokenizers`` library's own batch encoding of the same documents on the same cores; and the builder's peak memory.

    python bench/tokenize_throughput.py --size-mb 64 --repeats 2               # throughput table
    python bench/tokenize_throughput.py --size-mb 1100 --rss --repeats 1       # peak RSS on a >= 1 GB corpus

The corpus is generated under a temporary directory (deleted at the end): the TinyStories stories of
``$LINREG_DATA_ROOT/tinystories`` (or ``../shared/data``), shuffled and repeated to ``--size-mb``, in the
``<|endoftext|>``-separated text format. The tokenizer is the project's byte-level BPE (``--vocab``) trained on
``tinystories/train.txt``.

- *reference*: ``Tokenizer.encode_batch`` (and ``encode_batch_fast``) of the corpus's documents, read into memory
  beforehand and not timed, in batches of 1,000, on a Rayon pool of ``--num-proc`` threads. Only encoding is timed.
- *ours*: ``data.cache.tokenize_documents`` with ``num_proc`` workers, timed end to end: reading and splitting the
  file, encoding, flattening with EOS, writing tokens.bin and ends.bin.

Each repeat runs every row once, in turn (a shared machine's load drifts; ratios within a repeat are what count).
``--rss`` runs the builder in a fresh process and reports its peak resident memory (``ru_maxrss``) and the largest
peak of its worker processes.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-mb", type=float, default=64.0, help="generated corpus size (MiB)")
    p.add_argument("--num-proc", type=int, default=len(os.sched_getaffinity(0)), help="cores for both sides")
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--rss", action="store_true", help="peak RSS of the builder only (no reference)")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    p.add_argument("--child", nargs=3, metavar=("CORPUS", "TOKENIZER", "OUT"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def stories() -> list[str]:
    from data.sources import read_txt_documents

    root = Path(os.environ.get("LINREG_DATA_ROOT", Path(__file__).resolve().parents[2] / "shared" / "data"))
    return [d for name in ("train.txt", "valid.txt") for d in read_txt_documents(root / "tinystories" / name)]


def make_corpus(path: Path, size_mb: float) -> tuple[int, int]:
    """Write shuffled repeats of the stories to ``path`` until it holds ``size_mb`` MiB; (bytes, documents)."""
    docs, rng = stories(), random.Random(0)
    target, written, n = int(size_mb * 2**20), 0, 0
    with path.open("w", encoding="utf-8") as f:
        while written < target:
            rng.shuffle(docs)
            for d in docs:
                chunk = d + "\n<|endoftext|>\n"
                f.write(chunk)
                written += len(chunk.encode("utf-8"))
                n += 1
                if written >= target:
                    break
    return written, n


def build_tokenizer(vocab: int, directory: Path):
    from data.sources import read_txt_documents
    from data.tokenizer import save_tokenizer, train_bpe_tokenizer

    root = Path(os.environ.get("LINREG_DATA_ROOT", Path(__file__).resolve().parents[2] / "shared" / "data"))
    tok = train_bpe_tokenizer(read_txt_documents(root / "tinystories" / "train.txt"), vocab)
    save_tokenizer(tok, directory)
    return tok


def ours(corpus: Path, tok, num_proc: int, counter: list | None = None) -> tuple[float, int]:
    from data.cache import tokenize_documents
    from data.sources import iter_txt_documents

    def counted(docs):
        for d in docs:
            counter[0] += len(d) + 15  # + the separator line
            yield d

    docs = iter_txt_documents(corpus)
    with tempfile.TemporaryDirectory(dir=corpus.parent) as out:
        t = time.perf_counter()
        meta = tokenize_documents(counted(docs) if counter is not None else docs, tok, Path(out), num_proc)
        return time.perf_counter() - t, meta["num_tokens"]


def reference(docs: list[str], tok, fast: bool) -> tuple[float, int]:
    backend = tok.backend_tokenizer
    encode = backend.encode_batch_fast if fast else backend.encode_batch
    n, t = 0, time.perf_counter()
    for i in range(0, len(docs), 1000):
        n += sum(len(e.ids) for e in encode(docs[i:i + 1000], add_special_tokens=False))
    return time.perf_counter() - t, n + len(docs)  # + one EOS per document, as the builder writes


def _kib(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def child(corpus: str, tok_dir: str, out: str, num_proc: int) -> None:
    """In a fresh process: build the cache, and every 20 s print how far it is and the resident memory of this
    process and of its workers; at the end, the peaks (``ru_maxrss`` of this process and of its largest worker)."""
    import threading

    from data.tokenizer import load_tokenizer

    tok = load_tokenizer(tok_dir)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    counter, done, t0 = [0], threading.Event(), time.perf_counter()

    def sample():
        while not done.wait(20):
            kids = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text().split()
            workers = [_kib(int(k), "VmRSS") / 1024 for k in kids]
            print(f"  {time.perf_counter() - t0:6.0f} s  {counter[0] / 2**20:7.0f} MiB read  parent RSS "
                  f"{_kib(os.getpid(), 'VmRSS') / 1024:.0f} MiB (peak {_kib(os.getpid(), 'VmHWM') / 1024:.0f})  "
                  f"workers RSS {' '.join(f'{w:.0f}' for w in workers)} MiB", flush=True)

    threading.Thread(target=sample, daemon=True).start()
    seconds, tokens = ours(Path(corpus), tok, num_proc, counter)
    done.set()
    Path(out).write_text(json.dumps({
        "seconds": seconds, "tokens": tokens, "rss_before_mb": before / 1024,
        "rss_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "workers_rss_peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        child(*args.child, args.num_proc)
        return 0
    os.environ["RAYON_NUM_THREADS"] = str(args.num_proc)  # the reference's thread pool: the same cores
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    results = {"num_proc": args.num_proc, "rows": []}
    with tempfile.TemporaryDirectory(prefix="linreg-tokbench-") as tmp:
        tmp = Path(tmp)
        corpus = tmp / "corpus.txt"
        size, n_docs = make_corpus(corpus, args.size_mb)
        tok = build_tokenizer(args.vocab, tmp / "tok")
        results.update(corpus_bytes=size, corpus_docs=n_docs, vocab=len(tok))
        print(f"corpus {size / 2**20:.0f} MiB, {n_docs:,} documents; vocab {len(tok)}; {args.num_proc} cores; "
              f"load average {Path('/proc/loadavg').read_text().split()[:3]}", flush=True)
        if args.rss:
            for r in range(args.repeats):
                out = tmp / f"rss{r}.json"
                subprocess.run([sys.executable, __file__, "--num-proc", str(args.num_proc), "--child", str(corpus),
                                str(tmp / "tok"), str(out)], check=True)
                row = json.loads(out.read_text()) | {"repeat": r, "loadavg": Path("/proc/loadavg").read_text()[:14]}
                results["rows"].append(row)
                print(json.dumps(row), flush=True)
        else:
            from data.sources import read_txt_documents

            docs = read_txt_documents(corpus)
            for r in range(args.repeats):
                load = Path("/proc/loadavg").read_text().split()[0]
                rows = {"encode_batch": reference(docs, tok, fast=False),
                        "encode_batch_fast": reference(docs, tok, fast=True),
                        "ours": ours(corpus, tok, args.num_proc)}
                assert len({n for _, n in rows.values()}) == 1, rows  # the same tokens on every row
                for name, (sec, n) in rows.items():
                    row = {"repeat": r, "row": name, "seconds": sec, "tokens": n, "mtok_per_s": n / sec / 1e6,
                           "mib_per_s": size / 2**20 / sec, "loadavg_1min": float(load),
                           "ours_vs_this": rows[name][0] / rows["ours"][0]}
                    results["rows"].append(row)
                    print(f"repeat {r}  {name:18s} {sec:7.2f} s  {row['mtok_per_s']:6.2f} Mtok/s  "
                          f"{row['mib_per_s']:6.2f} MiB/s  ours/this throughput {row['ours_vs_this']:.3f}  "
                          f"(load {load})", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
