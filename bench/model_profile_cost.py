"""What held-out statistics and the toolkit add to a whole profile of a model, forwards included: what
``python -m eval.linearity --model DIR`` pays per model with and without ``--heldout`` and ``--toolkit``.

    python bench/model_profile_cost.py --model runs/tiny_cpu/export --num-chunks 32 --repeats 3

Times ``model_profile`` on the TinyStories probe ($LINREG_DATA_ROOT) in one process, interleaved, fastest of
--repeats by the process's CPU time: plain; held-out; held-out with anisotropy and intrinsic dimension; all of
it with the logit lens on --lens-tokens positions (1024 by default); and all of it with the lens on every
position. Prints one markdown row for docs/PERFORMANCE.md.

``--widen D L`` profiles instead a randomly initialised model of the same family and tokenizer with hidden size
D and L blocks (seed 0; heads of 64, two key/value heads where the heads are even, a 3 D MLP): the cost of a
profile depends on the shapes, not on what the weights learnt, so this gives a second model shape where only one
model was trained.

    python bench/model_profile_cost.py --model runs/tiny_cpu/export --widen 384 8 --num-chunks 128
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval.linearity.heldout import HeldoutConfig  # noqa: E402
from eval.linearity.probe import ProbeSetConfig, build_probe, probe_text  # noqa: E402
from eval.linearity.profile import model_profile  # noqa: E402
from eval.linearity.state_measures import ToolkitConfig  # noqa: E402
from model.export import load_model  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--num-chunks", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--lens-tokens", type=int, default=ToolkitConfig.lens_tokens)
    ap.add_argument("--widen", type=int, nargs=2, metavar=("D", "L"), default=None)
    args = ap.parse_args(argv)
    model, tokenizer = load_model(args.model)
    name = Path(args.model).name
    if args.widen is not None:
        model, name = widened(model, *args.widen), f"random init, {Path(args.model).name}'s tokenizer"
    text, _ = probe_text(None, os.environ.get("LINREG_DATA_ROOT"))
    probe = build_probe(text, tokenizer, ProbeSetConfig(num_chunks=args.num_chunks),
                        max_len=model.config.max_position_embeddings)
    no_lens = ToolkitConfig(anisotropy=True, intrinsic_dimension=True)
    runs = {"plain": {}, "held-out": {"heldout": HeldoutConfig()},
            "+ anisotropy, ID": {"heldout": HeldoutConfig(), "toolkit": no_lens},
            f"+ lens ({args.lens_tokens} positions)": {"heldout": HeldoutConfig(),
                                                        "toolkit": ToolkitConfig.all(lens_tokens=args.lens_tokens)},
            "+ lens (every position)": {"heldout": HeldoutConfig(), "toolkit": ToolkitConfig.all(lens_tokens=None)}}
    best = {k: float("inf") for k in runs}
    for _ in range(args.repeats):
        for key, kwargs in runs.items():
            start = time.process_time()
            model_profile(model, probe, **kwargs)
            best[key] = min(best[key], time.process_time() - start)
    n = sum(map(len, probe))
    plain = best["plain"]
    print(f"| {name}, d = {model.config.hidden_size}, L = {model.config.num_hidden_layers}, "
          f"V = {model.config.vocab_size} | {n} tokens | {torch.get_num_threads()} | {plain:.3f} | "
          + " | ".join(f"{best[k] / plain:.2f}×" for k in runs if k != "plain") + " |")
    print("| model | probe | threads | plain s (CPU) | " + " | ".join(k for k in runs if k != "plain") + " |")
    return 0


def widened(model, hidden: int, layers: int):
    """A randomly initialised model of ``model``'s class and vocabulary with the given width and depth."""
    if hidden % 64 or hidden < 64 or layers < 1:
        raise SystemExit(f"--widen: D must be a multiple of 64 (heads of 64) and L >= 1, got {hidden} {layers}")
    config = copy.deepcopy(model.config)
    config.hidden_size, config.num_hidden_layers, config.intermediate_size = hidden, layers, 3 * hidden
    heads = hidden // 64
    config.head_dim, config.num_attention_heads, config.num_key_value_heads = 64, heads, math.gcd(heads, 2)
    torch.manual_seed(0)
    return type(model)(config).eval()


if __name__ == "__main__":
    sys.exit(main())
