"""Linearity profiles from the command line.

    linreg linearity --model PATH[,PATH...] (--text FILE | --dataset NAME [--split S]) --out DIR
    linreg linearity --run RUN_DIR [--out DIR]  # redraw a run's curves (default RUN_DIR/plots)

PATH: any local AutoModelForCausalLM directory (an HF export, GPT-2, OPT, Llama, Mistral, Pythia...), a linreg
run directory or a linreg checkpoint directory. Writes DIR/linearity.json (probe settings + full profiles),
DIR/linearity.csv (one row per model and pair) and DIR/linearity.png (the paper's Fig. 1 layout).
"""
from __future__ import annotations

import argparse
import gc
from pathlib import Path

import torch

from core import precision
from core.cli import Parser, add_shared_args, command, run_cli
from core.errors import ConfigError
from core.io import write_csv, write_json
from core.rundir import RunDir, model_labels
from eval.linearity.plots import plot_history, plot_profiles, plot_states
from eval.linearity.probe import ProbeSetConfig, checked_probe, probe_text, read_probe_dataset
from eval.linearity.profile import HELDOUT_QUANTITIES, INTERVALS, QUANTITIES, model_profile
from eval.linearity.state_measures import STATE_KEYS, add_measure_arguments, measures_from_args


def parse_args(argv=None) -> argparse.Namespace:
    ap = Parser("linearity", "eval.linearity", __doc__)
    add_shared_args(ap, model=dict(many=True, required=False,
                                   label_help="legend labels, one per --model (default: their names)"),
                    probe=dict(defaults=ProbeSetConfig, text="or --dataset"), device=True)
    ap.add_argument("--out", help="output directory")
    ap.add_argument("--run", help="a training run directory: redraw its linearity curves and exit")
    g = ap.add_argument_group("probe text from an HF dataset instead of --text")
    g.add_argument("--dataset", help="hub name or local directory")
    g.add_argument("--dataset-config", default=None)
    g.add_argument("--split", default="validation", help="split of --dataset (default %(default)s)")
    ap.add_argument("--final-norm", action="store_true",
                    help="also score the pair (h_{L-1}, final_norm(h_L)) that HF hidden_states end with")
    add_measure_arguments(ap)
    args = ap.parse_args(argv)
    if args.run is None and not (args.model and args.out and (args.text is None) != (args.dataset is None)):
        ap.error("give --model PATH (one or more), --text FILE or --dataset NAME, and --out DIR; or --run RUN_DIR")
    return args


HELDOUT_COLUMNS = (*HELDOUT_QUANTITIES, *INTERVALS)


def profile_rows(results: list[dict]) -> tuple[list[str], list[list]]:
    """(header, rows) of linearity.csv: one row per model and pair (and final-norm pair)."""
    held = any("heldout" in res["profile"]["pairs"][0] for res in results)
    header = ["model", "pair", "depth", *QUANTITIES, "rank_x", "solver", *(HELDOUT_COLUMNS if held else ())]
    out = []
    for res in results:
        prof = res["profile"]
        rows = [(f"block_{i}", f"{d:.6f}", pair) for i, (d, pair) in enumerate(zip(prof["depths"], prof["pairs"]))]
        if prof["final_norm"] is not None:
            rows.append(("final_norm", "", prof["final_norm"]))
        for name, depth, pair in rows:
            extra = [repr(pair["heldout"][q]) for q in HELDOUT_COLUMNS] if held and "heldout" in pair else []
            out.append([res["label"], name, depth, *(repr(pair[q]) for q in QUANTITIES), pair["rank_x"],
                        pair["solver"], *extra])
    return header, out


def state_rows(results: list[dict]) -> tuple[list[str], list[list]]:
    """(header, rows) of linearity_states.csv: one row per model and state h_i, the toolkit's measurements."""
    rows = []
    for res in results:
        measures = res["profile"]["toolkit"]
        for i in range(res["profile"]["num_layers"] + 1):
            rows.append([res["label"], i, *(repr(measures[k][i]) if k in measures else "" for k in STATE_KEYS)])
    return ["model", "state", *STATE_KEYS], rows


@command
def main(argv=None) -> int:
    args = parse_args(argv)
    if args.run is not None:
        for path in plot_history(RunDir(args.run).linearity, args.out):
            print(path)
        return 0
    from model.export import load_model

    device = torch.device(args.device)
    dtype = precision.resolve(args.dtype, device)
    autocast_dtype = precision.autocast_dtype(dtype, device)
    probe_cfg = ProbeSetConfig(args.num_chunks, args.chunk_chars, args.probe_seed, args.max_tokens)
    probe_cfg.validate("probe")
    heldout, toolkit = measures_from_args(args)
    if args.probe_batch_size < 1:
        raise ConfigError(f"--probe-batch-size {args.probe_batch_size}: must be >= 1")
    if args.text is not None:
        text, source = probe_text(args.text, None, args.text_field)
    else:
        text = read_probe_dataset(args.dataset, args.split, args.dataset_config, args.text_field)
        source = f"{args.dataset}:{args.dataset_config or ''}:{args.split}"
    results, profiles = [], {}
    for path, label in zip(args.model, model_labels(args.model, args.label)):
        model, tokenizer = load_model(path)
        model.to(device)
        probe = checked_probe(text, tokenizer, probe_cfg, source=f"{source} for {path}",
                              width=getattr(model.config, "hidden_size", None),
                              max_len=getattr(model.config, "max_position_embeddings", None), heldout=heldout,
                              heldout_off="pass --no-heldout")
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        prof = model_profile(model, probe, batch_size=args.probe_batch_size, device=device, final_norm=args.final_norm,
                             pad_id=pad, autocast=lambda: precision.autocast(device, autocast_dtype), heldout=heldout,
                             toolkit=toolkit)
        profiles[label] = prof
        results.append({"label": label, "path": str(Path(path).resolve()),
                        "architecture": type(model).__name__, "dtype": dtype,
                        "profile": {**prof.to_dict(), "depths": prof.depths()}})
        if args.final_norm and prof.final_norm is None:
            print(f"{label}: no final norm module (post-LN blocks?): no final_norm pair", flush=True)
        means = prof.means()
        shown = (*QUANTITIES, *(HELDOUT_QUANTITIES if heldout is not None else ()))
        print(f"{label}: {prof.num_layers} blocks, d={prof.hidden_size}, {prof.num_tokens} tokens: "
              + ", ".join(f"mean {q} {means[q]:.4f}" for q in shown), flush=True)
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)  # only now: a bad model or probe leaves nothing behind
    meta = {"text": source, "probe": vars(probe_cfg), "device": str(device),
            **({"heldout": vars(heldout)} if heldout is not None else {}),
            **({"toolkit": vars(toolkit)} if toolkit is not None else {})}
    write_json(out / "linearity.json", {**meta, "models": results})
    write_csv(out / "linearity.csv", *profile_rows(results))
    plot_profiles(profiles, out / "linearity.png")
    print(f"wrote {out / 'linearity.json'}, {out / 'linearity.csv'}, {out / 'linearity.png'}")
    if toolkit is not None:
        write_csv(out / "linearity_states.csv", *state_rows(results))
        plot_states({label: prof.toolkit for label, prof in profiles.items()}, out / "linearity_states.png")
        print(f"wrote {out / 'linearity_states.csv'}, {out / 'linearity_states.png'}")
    return 0


if __name__ == "__main__":
    run_cli(main)
