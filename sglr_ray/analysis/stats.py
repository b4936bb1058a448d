"""Statistics over seeds: means with 95% confidence intervals (Student t), and paired differences.

Pure functions on numbers and frames; the grouping of runs into cells lives in
runs.py and tables.py. scipy is not a dependency, so the t quantiles come
from a table (n - 1 = 1..30 degrees of freedom) and an expansion beyond it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

# t quantile 0.975 for 1..30 degrees of freedom (any statistics text's table, 4 decimals).
_T975 = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)  # fmt: skip
_Z975 = 1.959963984540054  # the normal quantile 0.975


def t_975(dof: int) -> float:
    """The 0.975 quantile of Student's t with `dof` degrees of freedom (the factor of a two-sided
    95% interval); NaN for dof < 1. Beyond the table, the Cornish-Fisher expansion around the
    normal quantile, within 1e-5 of the exact value there."""
    if dof < 1:
        return math.nan
    if dof <= len(_T975):
        return _T975[dof - 1]
    z, v = _Z975, float(dof)
    return (
        z
        + (z**3 + z) / (4 * v)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * v**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * v**3)
    )


def ci95_half_width(std: float, n: int) -> float:
    """Half the width of the 95% interval of a mean of `n` values with sample std `std`
    (n - 1 degrees of freedom); NaN for fewer than two values."""
    if n < 2 or pd.isna(std):
        return math.nan
    return t_975(int(n) - 1) * float(std) / math.sqrt(n)


def mean_ci(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, 95% half-width, n) of `values`, NaNs left out."""
    data = np.asarray([v for v in values if not pd.isna(v)], dtype=float)
    if data.size == 0:
        return math.nan, math.nan, 0
    std = float(data.std(ddof=1)) if data.size > 1 else math.nan
    return float(data.mean()), ci95_half_width(std, data.size), int(data.size)


def summarise(frame: pd.DataFrame, keys: list[str], value: str) -> pd.DataFrame:
    """Per group of `keys`: mean, std, ci95 (half-width of the 95% interval) and n of `value`."""
    table = frame.groupby(keys, dropna=False)[value].agg(mean="mean", std="std", n="count")
    half = [ci95_half_width(s, n) for s, n in zip(table["std"], table["n"], strict=True)]
    table.insert(2, "ci95", np.asarray(half, dtype=float))
    return table


def paired_summary(pairs: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """From one row per pair (columns `by`, treatment, control): per group of `by` the mean of
    each side, the mean difference treatment - control, its 95% interval (half-width ci95, and
    low, high) and n pairs. The interval is over the differences, so the seed-to-seed spread the
    two sides share cancels."""
    pairs = pairs.assign(diff=pairs.treatment - pairs.control)
    rows = {}
    for key, group in pairs.groupby(by, dropna=False, sort=True):
        diff, half, n = mean_ci(group["diff"].tolist())
        rows[key if len(by) > 1 else key[0]] = {
            "treatment": group.treatment.mean(), "control": group.control.mean(), "diff": diff,
            "ci95": half, "low": diff - half, "high": diff + half, "n": n,
        }  # fmt: skip
    columns = ["treatment", "control", "diff", "ci95", "low", "high", "n"]
    table = pd.DataFrame.from_dict(rows, orient="index", columns=columns)
    if len(by) > 1:
        table.index = pd.MultiIndex.from_tuples(table.index, names=by)
    table.index.names = by
    return table
