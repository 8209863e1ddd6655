"""A scalar, independent statement of ``sae_sens.report.intervals.mean_ci`` for one group, written
from its docstring with scipy.stats: the reference the report's interval columns are checked against."""

from __future__ import annotations

import math
from collections.abc import Sequence

from scipy import stats


def reference_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    v = [float(x) for x in values]
    n = len(v)
    if n == 0:
        return math.nan, math.nan
    p = sum(v) / n
    if any(x < 0 or x > 1 for x in v):  # Student t
        if n == 1:
            return math.nan, math.nan
        s = stats.tstd(v)
        h = stats.t.ppf(1 - (1 - confidence) / 2, n - 1) * s / math.sqrt(n)
        return p - h, p + h
    if n == 1:
        return 0.0, 1.0
    s2 = sum((x - p) ** 2 for x in v) / (n - 1)
    s2 = ((n - 1) * s2 + p * (1 - p)) / n  # one pseudo-feature of the largest variance at mean p
    n_eff = p * (1 - p) / (s2 / n) if 0 < p < 1 else n
    z = stats.t.ppf(1 - (1 - confidence) / 2, n - 1)
    den = 1 + z * z / n_eff
    centre = (p + z * z / (2 * n_eff)) / den
    half = z * math.sqrt(p * (1 - p) / n_eff + z * z / (4 * n_eff ** 2)) / den
    return max(0.0, centre - half), min(1.0, centre + half)
