"""Statistics over seeds: means with 95% intervals, paired t-tests, Holm's correction, TOST.

Pure functions on numbers and frames; the grouping of runs into cells lives in runs.py and
tables.py. Distributions come from scipy, the multiple-testing correction from statsmodels.

What each test asks (accuracy points, one difference per seed: treatment minus control at the
same C, seed and test images, so the seed-to-seed spread both sides share cancels):

- `paired_test`: is the mean difference zero? Two-sided one-sample t on the differences.
- `holm`: the p-values of one table's comparisons adjusted together (Holm 1979: controls the
  chance of any false "outside the noise" in that table at 5%, whatever the dependence).
- `equivalence_test` (TOST against the paper's effect d): is our true difference strictly inside
  (-|d|, +|d|), i.e. smaller in size than the paper's? Two one-sided t-tests, p = the larger;
  p < 0.05 is the same as our 90% interval lying inside (-|d|, +|d|). Rejecting is what
  "not reproduced: smaller than the paper's effect" means in the reports.
- `shortfall_test` (against the paper's signed effect d): does our true difference fall short
  of d, on zero's side of it? TOST's one-sided half on that side. Where our difference has the
  opposite sign, TOST can fail on the far side (an effect of d's size in the other direction
  is not excluded) while the paper's own figure is excluded: this test says so.
- `pooled_test`: one estimate per knob across C (see its docstring for why a pooled paired t).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import stats as distributions
from statsmodels.stats.multitest import multipletests


def t_975(dof: int) -> float:
    """The 0.975 quantile of Student's t with `dof` degrees of freedom (the factor of a two-sided
    95% interval); NaN for dof < 1."""
    return math.nan if dof < 1 else float(distributions.t.ppf(0.975, dof))


def ci95_half_width(std: float, n: int) -> float:
    """Half the width of the 95% interval of a mean of `n` values with sample std `std`
    (n - 1 degrees of freedom); NaN for fewer than two values."""
    if n < 2 or pd.isna(std):
        return math.nan
    return t_975(int(n) - 1) * float(std) / math.sqrt(n)


def _values(values: Sequence[float]) -> np.ndarray:
    return np.asarray([v for v in values if not pd.isna(v)], dtype=float)


# Differences whose spread is below this are equal: accuracies are counts over a fixed test set,
# so equal differences differ only by float rounding (1e-14), where a t statistic means nothing.
_NO_SPREAD = 1e-9


def _no_spread(data: np.ndarray) -> bool:
    return data.size < 2 or float(data.std(ddof=1)) < _NO_SPREAD


def mean_ci(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, 95% half-width, n) of `values`, NaNs left out."""
    data = _values(values)
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


# ---------------------------------------------------------------- tests on paired differences


class PairedTest(NamedTuple):
    """A one-sample t-test of paired differences against zero."""

    diff: float  # mean difference
    ci95: float  # half-width of its 95% interval
    n: int  # pairs
    t: float
    p: float  # two-sided; NaN with fewer than 2 pairs or no spread


def paired_test(differences: Sequence[float]) -> PairedTest:
    """The mean of `differences` with its 95% interval and the two-sided t-test of a zero mean.

    p is NaN where no test is possible: one pair, or differences that are all equal (no spread;
    all exactly zero happens where the two sides are the same computation)."""
    data = _values(differences)
    diff, half, n = mean_ci(data)
    if _no_spread(data):
        return PairedTest(diff, half, n, math.nan, math.nan)
    result = distributions.ttest_1samp(data, 0.0)
    return PairedTest(diff, half, n, float(result.statistic), float(result.pvalue))


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-adjusted p-values of one family of tests, in the order given; a NaN (no test) stays
    NaN and does not count towards the family's size."""
    p = np.asarray(pvalues, dtype=float)
    adjusted = np.full(p.shape, np.nan)
    tested = ~np.isnan(p)
    if tested.any():
        adjusted[tested] = multipletests(p[tested], method="holm")[1]
    return adjusted


def shortfall_test(differences: Sequence[float], paper: float) -> float:
    """One-sided p-value that the true mean difference lies on zero's side of the paper's signed
    effect: H0 mean >= paper for a positive paper figure, mean <= paper for a negative one.
    NaN without a test (fewer than 2 pairs, no spread, a missing or zero paper figure)."""
    data = _values(differences)
    if pd.isna(paper) or paper == 0.0 or _no_spread(data):
        return math.nan
    alternative = "less" if paper > 0 else "greater"
    return float(distributions.ttest_1samp(data, paper, alternative=alternative).pvalue)


def equivalence_test(differences: Sequence[float], margin: float) -> float:
    """TOST p-value that the true mean difference lies strictly inside (-|margin|, +|margin|):
    the larger of the one-sided t-tests of H0 mean <= -|margin| and H0 mean >= +|margin|, each
    a shortfall test against one bound. NaN without a test (fewer than 2 pairs, no spread, a
    missing or zero margin)."""
    if pd.isna(margin):
        return math.nan
    return max(shortfall_test(differences, abs(margin)), shortfall_test(differences, -abs(margin)))


def pooled_test(differences: pd.DataFrame) -> PairedTest:
    """One knob's pooled effect across C: the paired t-test over all its per-seed differences
    (`differences`: one row per (C, seed), column `diff`), each C's pairs counting once.

    Why this and not a mixed model (difference ~ 1 + C, random intercept per seed): the
    differences are already paired within C and seed, so the seed's shared share of both runs
    cancels in each; what a seed random effect would model is a seed that lifts the knob's
    effect at every C, and with 3 seeds its variance is estimated from 3 values: on
    results/paper-table12 (diff ~ 1 + C(C), groups seed) statsmodels' MixedLM failed to converge
    for 3 of the 5 settings, warned of a boundary estimate (seed variance 0.001-0.02 points^2)
    for the fourth and hit a singular matrix for the fifth. The
    pooled t then asks a plain question, "is the knob's mean effect over the C grid zero?",
    with n - 1 degrees of freedom for n = (C values x seeds) pairs. It treats the differences
    as independent; `seed_means_test` is the check that does not (one mean per seed, n = seeds)."""
    return paired_test(differences["diff"].tolist())


def seed_means_test(differences: pd.DataFrame) -> PairedTest:
    """The conservative pooled check: average each seed's differences over C, then the paired
    t-test over those seed means (degrees of freedom: seeds - 1), robust to any correlation
    between C values within a seed."""
    return paired_test(differences.groupby("seed")["diff"].mean().tolist())


def paired_summary(pairs: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """From one row per pair (columns `by`, seed, treatment, control): per group of `by` the mean
    of each side, the mean difference treatment - control, its 95% interval (half-width ci95, and
    low, high), n pairs, the t statistic and two-sided p of a zero difference (paired_test), and
    `positive`, how many of the per-seed differences are above zero."""
    pairs = pairs.assign(diff=pairs.treatment - pairs.control)
    rows = {}
    for key, group in pairs.groupby(by, dropna=False, sort=True):
        test = paired_test(group["diff"].tolist())
        rows[key if len(by) > 1 else key[0]] = {
            "treatment": group.treatment.mean(), "control": group.control.mean(), "diff": test.diff,
            "ci95": test.ci95, "low": test.diff - test.ci95, "high": test.diff + test.ci95, "n": test.n,
            "t": test.t, "p": test.p, "positive": int((group["diff"] > 0).sum()),
        }  # fmt: skip
    columns = ["treatment", "control", "diff", "ci95", "low", "high", "n", "t", "p", "positive"]
    table = pd.DataFrame.from_dict(rows, orient="index", columns=columns)
    if len(by) > 1:
        table.index = pd.MultiIndex.from_tuples(table.index, names=by)
    table.index.names = by
    return table
