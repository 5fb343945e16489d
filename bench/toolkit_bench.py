"""Benchmark: the linearity toolkit's intrinsic dimension and anisotropy against the authors' own functions
(``llm-microscope`` 0.0.7, the dev extra), on the same hidden-state-like states, in one process.

    python bench/toolkit_bench.py [--n 4096] [--d 768] [--threads 1] [--repeats 3]

Rows:
  intrinsic_dimension   ours (blocked float32 bounds + exact float64 distances, ``eval.linearity.toolkit``)
                        against the authors' loop: one pass over all n points per point, in Python;
  anisotropy            ours (eigenvalues of the d x d Gram matrix) against the authors' thin SVD of X.
Each is timed by wall clock and by the process's CPU time (with one thread the CPU time is the work done, and
moves far less than the wall clock on a shared machine); ours is the median of ``--repeats`` runs, theirs runs
once (minutes). The load average is printed before and after.

Two settings make the authors' loop measurable here, and apply to both sides:
  - one torch thread by default: their loop makes ~4n small tensor operations, and with the OpenMP pool on a
    loaded machine each waits for the pool's threads (measured: 120 ms instead of 80 us per point);
  - MALLOC_MMAP_THRESHOLD_ fixed at 1 MiB (the script restarts itself with it): under glibc's adaptive threshold
    their loop's freed n x d temporaries stay in the heap behind the small tensors it keeps, and the heap grows
    by about n d 8 bytes per point (the OOM killer stopped it at 22 GB of 23 at n = 4096, d = 768).
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]
from linearity_bench import hidden_state_like  # noqa: E402

from eval.linearity.toolkit import anisotropy, intrinsic_dimension  # noqa: E402

MMAP_THRESHOLD = str(1 << 20)


def authors_functions():
    spec = importlib.util.find_spec("llm_microscope")
    if spec is None:
        sys.exit("llm-microscope 0.0.7 is needed: pip install -c requirements/cpu.txt --no-deps llm-microscope==0.0.7")
    path = Path(spec.submodule_search_locations[0]) / "functions.py"  # its __init__ does not import
    module_spec = importlib.util.spec_from_file_location("llm_microscope_functions", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def timed(fn, repeats: int) -> tuple[float, float, float]:
    """(value, median wall s, median CPU s)."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        value = fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return value, statistics.median(walls), statistics.median(cpus)


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") != MMAP_THRESHOLD:
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD})
    torch.set_num_threads(args.threads)
    authors = authors_functions()
    x = hidden_state_like(args.n, args.d)[0]  # float32, like states captured in float32
    print(f"# {datetime.date.today()}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {args.threads} thread(s), n={args.n}, d={args.d}; load average before: "
          f"{loadavg()}", flush=True)
    rows = []
    ours, wall, cpu = timed(lambda: intrinsic_dimension(x), args.repeats)
    print(f"ours ID {ours:.10f}: {wall:.2f} s wall, {cpu:.2f} s CPU", flush=True)
    theirs, twall, tcpu = timed(lambda: authors.intrinsic_dimension(x, "cpu"), 1)
    print(f"theirs ID {theirs:.10f}: {twall:.2f} s wall, {tcpu:.2f} s CPU", flush=True)
    rows.append(("intrinsic_dimension", ours, theirs, wall, cpu, twall, tcpu))
    ours, wall, cpu = timed(lambda: anisotropy(x), args.repeats)
    theirs, twall, tcpu = timed(lambda: authors.calculate_anisotropy_torch(x), args.repeats)
    rows.append(("anisotropy", ours, theirs, wall, cpu, twall, tcpu))
    print(f"# load average after: {loadavg()}")
    print("| measurement | theirs s wall / CPU | ours s wall / CPU | speed-up wall / CPU | ours − theirs |")
    print("|---|---|---|---|---|")
    for name, ours, theirs, wall, cpu, twall, tcpu in rows:
        print(f"| {name} | {twall:.2f} / {tcpu:.2f} | {wall:.3f} / {cpu:.3f} | **{twall / wall:.0f}×** / "
              f"{tcpu / cpu:.0f}× | {ours - theirs:.1e} |")


if __name__ == "__main__":
    main()
