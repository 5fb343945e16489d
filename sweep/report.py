"""compare.md from compare.json's data: what was compared, the Table 2 layout with spreads, the differences to the
baseline with their tests, TinyStories and linearity, and the notes a reviewer needs (subsets, incomplete runs)."""
from __future__ import annotations

# Table 2 columns are fractions in the data and percent in the tables; the other columns are shown as they are.


def _num(x: float, scale: float, digits: int, sign: bool = False) -> str:
    return f"{x * scale:+.{digits}f}" if sign else f"{x * scale:.{digits}f}"


def _cell(cell: dict, scale: float, digits: int, n_row: int) -> str:
    if not cell or cell["mean"] is None:
        return "–"
    text = _num(cell["mean"], scale, digits)
    if cell["std"] is not None:
        lo, hi = cell["ci95"]
        text += f" ± {_num(cell['std'], scale, digits)} [{_num(lo, scale, digits)}, {_num(hi, scale, digits)}]"
    if cell["n"] != n_row:
        text += f" (n={cell['n']})"
    return text


def _p(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.3f}" if p < 0.1 else f"p={p:.2f}"


def _diff(d: dict | None, scale: float, digits: int) -> str:
    if d is None:
        return "–"
    text = _num(d["delta"], scale, digits, sign=True)
    if d["ci95"] is not None:
        text += f" [{_num(d['ci95'][0], scale, digits, True)}, {_num(d['ci95'][1], scale, digits, True)}]"
    text += f" {_p(d['p'])}" if d["p"] is not None else " (no test)"
    return f"**{text}**" if d["significant"] else text


def _row_n(cells: dict, columns: list[str]) -> int:
    ns = [cells[c]["n"] for c in columns if cells[c]["n"]]
    return max(ns) if ns else 0


def _table(result: dict, columns: list[str], scale: float, digits, title: str) -> list[str]:
    head = ["variant", "n", *columns]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v in result["variants"]:
        cells = result["cells"][v["label"]]
        n = _row_n(cells, columns)
        lines.append("| " + " | ".join([v["label"], str(n), *(_cell(cells[c], scale, digits(c), n)
                                                              for c in columns)]) + " |")
    lines += ["", f"#### Difference to the baseline ({result['baseline']})", "",
              "| " + " | ".join(["variant", *columns]) + " |", "|" + "---|" * (len(columns) + 1)]
    for v in result["variants"]:
        d = result["differences"].get(v["label"])
        if d is not None:
            lines.append("| " + " | ".join([v["label"], *(_diff(d[c], scale, digits(c)) for c in columns)]) + " |")
    return [*lines, ""]


def _tests(result: dict) -> tuple[int, int, int, set[str]]:
    tested = [d for per in result["differences"].values() for d in per.values() if d and d["p"] is not None]
    sig = sum(d["significant"] for d in tested)
    holm = sum(d["p_holm"] < result["alpha"] for d in tested)
    return len(tested), sig, holm, {d["test"] for per in result["differences"].values() for d in per.values() if d}


def render(result: dict) -> str:
    bench, scalars = result["columns"]["benchmarks"], result["columns"]["scalars"]
    lines = [f"# Ablation: {result['title']}", "",
             f"Made by `{result['command']}` ({result['generated']}).", ""]
    if result.get("mixed"):
        lines += ["**Mixed comparison (--allow-mixed): these variants differ in model shape or tokenizer from the "
                  "baseline, so their differences are not those of the regularizer alone:** "
                  + "; ".join(result["mixed"]), ""]
    lines += ["| variant | differs from the baseline in | seeds | status |", "|---|---|---|---|"]
    for v in result["variants"]:
        keys = ", ".join(f"`{k}={val}`" for k, val in v["differs_from_baseline"].items()) or (
            "(baseline)" if v["label"] == result["baseline"] else "nothing")
        seeds = ", ".join(str(r["seed"]) for r in v["runs"])
        open_ = [f"seed {r['seed']}: {'; '.join(r['incomplete'])}" for r in v["runs"] if r["incomplete"]]
        status = "incomplete: " + "; ".join(open_) if open_ else "complete"
        lines.append(f"| {v['label']} | {keys} | {seeds} | {status} |")
    n_tests, n_sig, n_holm, tests = _tests(result)
    lines += ["", "Cells: mean over seeds ± sample std [95 % t interval]; n = seeds with a value (a single seed has "
              "no spread and no interval). Differences: variant − baseline [95 % interval], two-sided p; **bold** = "
              f"p < {result['alpha']}.", ""]
    lines += _table(result, bench, 100.0, lambda c: 1, "Benchmarks (Table 2 layout, %; mean = plain mean of the 11 "
                    "columns)")
    lines += _table(result, scalars, 1.0, lambda c: 4,
                    "TinyStories and linearity (final step; val-loss: the in-loop validation loss)")
    lines += ["### How to read this", "",
              f"- Tests: {', '.join(sorted(tests)) or 'none'}. Benchmark differences come from a paired bootstrap "
              f"over the benchmark's documents ({result['n_boot']} replicates; every model is scored on the same "
              "documents), which also resamples the seeds of variants with several; the other columns, and "
              "benchmark columns without per-document samples, from Welch's t-test over seeds.",
              f"- {n_sig} of {n_tests} differences have p < {result['alpha']}; with this many tests about "
              f"{n_tests * result['alpha']:.1f} are expected by chance when nothing differs. After Holm's correction "
              f"over all {n_tests}: {n_holm} (compare.json has `p_holm`).",
              "- Small test sets move in large steps: one CB answer is 1.8 points (56 documents), one COPA answer 1 "
              "point; WiC 50.0 with acc_norm 50.0 is usually one answer for every document.", ""]
    if result["notes"]:
        lines += ["Notes:", "", *(f"- {n}" for n in result["notes"]), ""]
    return "\n".join(lines)
