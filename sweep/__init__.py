"""Ablation studies: a sweep file names base config(s), variants (dotted overrides) and seeds; ``linreg sweep``
trains and benchmarks every (variant, seed) as an ordinary run directory, and ``linreg compare`` turns
the run directories into the paper's Table 2 with spreads over seeds, differences to a baseline with their
significance, and training-curve plots. See docs/ablations.md.

    spec.py     the sweep file (YAML) and the runs it expands to
    runner.py   train / resume / skip each run, benchmark it, print commands for a cluster scheduler
    runs.py     read a run directory (config, metrics, linearity, benchmarks, per-document samples)
    stats.py    means, t intervals, Welch's test, the paired (hierarchical) bootstrap
    compare.py  group runs into variants, compute the table, write compare.md / compare.json
    report.py   compare.md from compare.json's data
    plots.py    the PNG figures
"""
