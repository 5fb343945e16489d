"""How far the chance level's sketch moves it: the chance levels (in-sample and held-out) of every pair of a
profile with the whole document-shuffled target (the truth the sketch estimates) against the same fits on a
sketch of it, m = 16, 32 and 64 columns of seeded Gaussian directions (the chance level's first design) or of a
CountSketch (``eval.linearity.heldout.count_sketch``, today's). The exact level's own spread over shuffle seeds
(each a new fold split and document order) is the yardstick: a sketch whose error is well below it adds little.

    python bench/chance_sketch.py --synthetic 4000 256 128        # n, d, documents (bench/linearity_bench.py's)
    python bench/chance_sketch.py --model runs/tiny_cpu/export --num-chunks 32   # a model's states on the probe

Prints, per sketch and m, the RMS error of the sketched level over --seeds sketch seeds divided by that spread
(mean and largest over the pairs), in-sample and held-out.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.linearity_bench import hidden_state_chain  # noqa: E402
from eval.linearity.heldout import FoldPlan, count_sketch, fold_cross, fold_fits, fold_grams  # noqa: E402
from eval.linearity.score import symmetric_gram  # noqa: E402


def model_states(path: str, num_chunks: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    from eval.linearity.probe import ProbeSetConfig, build_probe, probe_text
    from eval.linearity.profile import StateCollector, probe_batches, probe_groups
    from model.export import load_model

    model, tokenizer = load_model(path)
    text, _ = probe_text(None, os.environ.get("LINREG_DATA_ROOT"))
    probe = build_probe(text, tokenizer, ProbeSetConfig(num_chunks=num_chunks),
                        max_len=model.config.max_position_embeddings)
    model.eval()
    collector = StateCollector(model, final_norm=False)
    try:
        states, _ = collector.collect(probe_batches(probe, 8, 0), torch.device("cpu"))
    finally:
        collector.remove()
    return states, probe_groups(probe)


def chance_levels(states: list[torch.Tensor], groups: torch.Tensor, sketch, plan_seed: int) -> torch.Tensor:
    """(pairs x 2): in-sample and held-out chance of each pair, the shuffled target times ``sketch`` (d x m; None:
    the whole target), on the fold split and document order of ``plan_seed``."""
    d = states[0].shape[1]
    plan = FoldPlan(groups, 5, plan_seed, d)
    out = []
    for x, y in zip(states, states[1:]):
        x, y = (s.index_select(0, plan.order).double() for s in (x, y))
        x, y = x - x.mean(0), y - y.mean(0)
        gram, gram_parts = fold_grams(x, plan, symmetric_gram)
        cross, cross_parts = fold_cross(x, y, plan)
        target = (y if sketch is None else y @ sketch).index_select(0, plan.shuffle)
        fits = fold_fits(x, gram, gram_parts, y, cross, cross_parts, target, plan)
        out.append([fits.chance, fits.chance_heldout])
    return torch.tensor(out, dtype=torch.float64)


def sketch_matrix(kind: str, d: int, m: int, seed: int) -> torch.Tensor:
    if kind == "gaussian":
        return torch.randn(d, m, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    bucket, sign = count_sketch(d, m, seed)
    s = torch.zeros(d, min(m, d), dtype=torch.float64)
    s[torch.arange(d), bucket] = sign
    return s


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--synthetic", type=int, nargs=3, metavar=("N", "D", "DOCS"))
    src.add_argument("--model", help="a model directory: its states on the TinyStories probe ($LINREG_DATA_ROOT)")
    ap.add_argument("--num-chunks", type=int, default=32)
    ap.add_argument("--layers", type=int, default=3, help="--synthetic: blocks (L + 1 states)")
    ap.add_argument("--seeds", type=int, default=8, help="shuffle seeds for the spread, sketch seeds per row")
    args = ap.parse_args(argv)
    if args.synthetic:
        n, d, docs = args.synthetic
        states, groups = hidden_state_chain(n, d, args.layers), torch.arange(n) * docs // n
        what = f"synthetic n={n} d={d} documents={docs}"
    else:
        states, groups = model_states(args.model, args.num_chunks)
        what = f"{args.model}: n={states[0].shape[0]} d={states[0].shape[1]} documents={int(groups.max()) + 1}"
    d = states[0].shape[1]
    exact = torch.stack([chance_levels(states, groups, None, s) for s in range(args.seeds)])
    spread = exact.std(0)
    print(f"# {what}, {len(states) - 1} pairs; exact chance (seed 0), in-sample / held-out: "
          + ", ".join(f"{a:.4f} / {b:+.4f}" for a, b in exact[0].tolist()))
    print("| sketch | m | in-sample: RMS error / shuffle spread, mean (max) | held-out: the same |")
    print("|---|---|---|---|")
    for kind in ("gaussian", "countsketch"):
        for m in (16, 32, 64):
            est = torch.stack([chance_levels(states, groups, sketch_matrix(kind, d, m, 100 + s), 0)
                               for s in range(args.seeds)])
            rel = (est - exact[0]).pow(2).mean(0).sqrt() / spread
            print(f"| {kind} | {m} | {rel[:, 0].mean():.2f} ({rel[:, 0].max():.2f}) | "
                  f"{rel[:, 1].mean():.2f} ({rel[:, 1].max():.2f}) |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
