"""Spread over repeated measurements (seeds of a recipe, prompts graded by a judge): the one summary every table
and JSON file of the sweeps and the analyses shows.

``summarize``: the mean, the sample standard deviation (ddof 1: the measurements are a sample of what the seeds or
prompts could have given) and the two-sided Student-t interval ``mean ± t(1 − (1 − level)/2, n − 1) · std / √n``.

Where there is no estimate (one measurement: no spread, no interval), the value is ``None``, not NaN: these
summaries go into JSON files (compare.json, finetune.json, stories.json, summary.json), and NaN is not JSON
(``json.dumps`` writes a bare ``NaN`` that strict parsers refuse); and ``None`` cannot flow silently through
arithmetic into a table cell: whoever shows a summary decides what "no estimate" looks like.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass
class Summary:
    n: int
    mean: float
    std: float | None  # None for n = 1
    ci95: tuple[float, float] | None  # the interval at ``level`` (95 % unless asked otherwise); None for n = 1

    @property
    def half(self) -> float | None:
        """The interval's half-width (None for n = 1)."""
        return None if self.ci95 is None else (self.ci95[1] - self.ci95[0]) / 2

    def to_dict(self) -> dict:
        return {"n": self.n, "mean": self.mean, "std": self.std, "ci95": list(self.ci95) if self.ci95 else None}


def summarize(values: Iterable[float | None], level: float = 0.95) -> Summary | None:
    """The summary of the values that are not None; None when there are none."""
    from scipy.stats import t

    x = [float(v) for v in values if v is not None]
    n = len(x)
    if n == 0:
        return None
    mean = math.fsum(x) / n
    if n == 1:
        return Summary(1, mean, None, None)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in x) / (n - 1))
    half = float(t.ppf(0.5 + level / 2, n - 1)) * std / math.sqrt(n)
    return Summary(n, mean, std, (mean - half, mean + half))
