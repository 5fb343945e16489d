"""compare.md from compare.json's data: what was compared, the Table 2 layout with spreads, the differences to the
baseline as two questions (is the recipe different; are these trained models different on these documents), what
the sweep could have detected, the other benchmarks the runs have, the loss tasks and linearity, and the notes a
reviewer needs (subsets, incomplete runs).
"""
from __future__ import annotations

from sweep.stats import min_permutation_p

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


def _diff(d: dict | None, scale: float, digits: int, bold: bool, alpha: float) -> str:
    if d is None:
        return "–"
    text = _num(d["delta"], scale, digits, sign=True)
    if d["ci95"] is not None:
        text += f" [{_num(d['ci95'][0], scale, digits, True)}, {_num(d['ci95'][1], scale, digits, True)}]"
    text += f" {_p(d['p'])}" if d["p"] is not None else " (no test)"
    if d["test"].startswith("permutation"):
        text += " (perm.)"
    if d.get("welch_p") is not None and d["welch_p"] >= alpha:
        text += f" ‡ Welch {_p(d['welch_p'])}"
    return f"**{text}**" if bold and d.get("significant") else text


def _row_n(cells: dict, columns: list[str]) -> int:
    ns = [cells[c]["n"] for c in columns if cells[c]["n"]]
    return max(ns) if ns else 0


def _seed_pairs(result: dict, columns: list[str]) -> set[tuple[int, int]]:
    """(variant seeds, baseline seeds) of the recipe tests of these columns."""
    base = result["cells"][result["baseline"]]
    return {(result["cells"][lab][c]["n"], base[c]["n"]) for lab, per in result["differences"].items()
            for c in columns if per.get(c) and result["cells"][lab][c]["n"] >= 2 and base[c]["n"] >= 2}


def _recipe_caption(result: dict, columns: list[str]) -> list[str]:
    alpha = result["alpha"]
    text = (f"Seeds are the units: Student's t-test on the per-seed values (variant − baseline [95 % t interval], "
            f"two-sided p; **bold** = p < {alpha}). \"(perm.)\": no spread within either variant, so the exact "
            "permutation test over seed labels. ‡: significant only with the spreads: the null hypothesis is \"the "
            "recipe changes nothing\", spread included, and Welch's test of the means alone does not reach "
            f"{alpha} (its p beside); the recipe changes the scores, but the size of the mean difference is not "
            "established.")
    floors = ((a, b, min_permutation_p(a, b)) for a, b in _seed_pairs(result, columns))
    weak = sorted((a, b, m) for a, b, m in floors if m > alpha)
    if weak:
        seeds = ", ".join(f"{a} + {b} seeds (smallest p = {m:.2f})" for a, b, m in weak)
        text += (f" **No distribution-free test can reach p < {alpha} with {seeds}** (an exact permutation "
                 "test over the seed labels): a bold cell here rests on the per-seed scores being normal, which "
                 "so few seeds cannot check.")
    return [text, ""]


def _planning_rows(result: dict, columns: list[str], scale: float, digits) -> list[str]:
    plan = result["planning"]
    first = plan[columns[0]]["seeds"]

    def mdd(c):
        d = plan[c]["detectable"]
        return "–" if d is None else "±" + _num(d, scale, digits(c))

    rows = [f"| smallest detectable, {first[0]} + {first[1]} seeds (80 % power) | "
            + " | ".join(mdd(c) for c in columns) + " |"]
    if result.get("plan_delta") is not None and any(plan[c]["plan_seeds"] is not None for c in columns):
        def need(c):
            n = plan[c]["plan_seeds"]
            return "–" if n is None else str(n)

        unit = "point" if result["plan_delta"] == 1 else "points"
        rows.append(f"| seeds per variant for ±{result['plan_delta']:g} {unit} (80 % power) | "
                    + " | ".join(need(c) for c in columns) + " |")
    return rows


def _diff_rows(result: dict, columns: list[str], scale: float, digits, question: str) -> list[str]:
    """One row per compared variant: its differences to the baseline on ``question`` ("recipe": bold where
    significant; "model")."""
    rows = []
    for v in result["variants"]:
        d = result["differences"].get(v["label"])
        if d is not None:
            rows.append("| " + " | ".join([v["label"], *(_diff(d[c] and d[c][question], scale, digits(c),
                                                               question == "recipe", result["alpha"])
                                                         for c in columns)]) + " |")
    return rows


def _table(result: dict, columns: list[str], scale: float, digits, title: str, model: bool) -> list[str]:
    head = ["variant", "n", *columns]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v in result["variants"]:
        cells = result["cells"][v["label"]]
        n = _row_n(cells, columns)
        lines.append("| " + " | ".join([v["label"], str(n), *(_cell(cells[c], scale, digits(c), n)
                                                              for c in columns)]) + " |")
    sub = "| " + " | ".join(["variant", *columns]) + " |", "|" + "---|" * (len(columns) + 1)
    lines += ["", f"#### Is the recipe different? (difference to the baseline, {result['baseline']})", "",
              *_recipe_caption(result, columns), *sub]
    lines += _diff_rows(result, columns, scale, digits, "recipe")
    lines += _planning_rows(result, columns, scale, digits)
    if model:
        lines += ["", "#### Are these trained models different on these documents? (conditional on the seeds)", "",
                  f"Paired bootstrap over the documents ({result['n_boot']} replicates; the seeds held fixed): "
                  "says whether these particular runs differ on this test set, not whether the recipe does.", "",
                  *sub, *_diff_rows(result, columns, scale, digits, "model")]
    return [*lines, ""]


def chance(result: dict) -> tuple[int, int, float, int, int]:
    """(recipe tests with a p, of them p < alpha, bold cells expected by chance alone, tests that could reach alpha,
    of them surviving Holm). Under the null every test able to reach alpha rejects with probability alpha (at most
    alpha for the permutation test); one whose smallest attainable p is above alpha never does."""
    alpha = result["alpha"]
    tested = [d["recipe"] for per in result["differences"].values() for d in per.values()
              if d and d["recipe"]["p"] is not None]
    live = [d for d in tested if d["min_p"] is not None and d["min_p"] < alpha]
    return (len(tested), sum(d["significant"] for d in tested), alpha * len(live), len(live),
            sum(d["p_holm"] < alpha for d in tested))


def render(result: dict) -> str:
    bench, scalars = result["columns"]["benchmarks"], result["columns"]["scalars"]
    other = result["columns"].get("other", [])
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
    n_tests, n_sig, expected, n_live, n_holm = chance(result)
    alpha = result["alpha"]
    lines += ["", "Cells: mean over seeds ± sample std [95 % t interval]; n = seeds with a value (a single seed has "
              "no spread and no interval). Each difference answers two questions: *is the recipe different* "
              "(seeds are the units; bold) and, for the benchmarks, *are these trained models different on these "
              "documents* (conditional on the seeds). \"smallest detectable\": the difference the recipe test "
              f"finds with 80 % power at α = {alpha}, from the seed spread pooled over all variants.", ""]
    lines += _table(result, bench, 100.0, lambda c: 1, "Benchmarks (Table 2 layout, %; mean = plain mean of the "
                    f"{len(bench) - 1} columns)", model=True)
    if other:
        lines += _table(result, other, 100.0, lambda c: 1, "Other benchmarks (%)", model=True)
    lines += _table(result, scalars, 1.0, lambda c: 4,
                    "Language-model loss and linearity (final step; val-loss: the in-loop validation loss)",
                    model=False)
    lines += ["### How to read this", "",
              f"- {n_sig} of {n_tests} recipe tests have p < {alpha}. Chance alone would give about "
              f"{expected:.1f}: {alpha} × the {n_live} tests that can reach p < {alpha} at all (the other "
              f"{n_tests - n_live} have no seed spread on either side, so their p is 1 or a permutation floor "
              f"above {alpha}). After Holm's correction over all {n_tests}: {n_holm} (compare.json has `p_holm`).",
              "- The columns are not independent (cb-acc and cb-f1, record-f1 and record-em, the mean of them all, "
              "and every variant shares the baseline's seeds), so the count of chance results varies more than a "
              "binomial count would; its expectation is as stated.",
              "- Small test sets move in large steps: one CB answer is 1.8 points (56 documents), one COPA answer 1 "
              "point; WiC 50.0 with acc_norm 50.0 is usually one answer for every document.", ""]
    if result["notes"]:
        lines += ["Notes:", "", *(f"- {n}" for n in result["notes"]), ""]
    return "\n".join(lines)
