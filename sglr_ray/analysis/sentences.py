"""One generated sentence per trend the paper claims: does it hold in our table, and in the paper's?

Each returns "" when its comparison has no data, so the report can skip it.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from sglr_ray.analysis import tables as analysis
from sglr_ray.analysis.markdown import column_label

# The paper's Table 4 rows (cl, fl, sglr, sfl, psl): its own comparison, SGLR against the others.
_PAPER_METHODS = list(analysis.paper_reference()["table4"].index)
Baseline = Callable[[object], bool]


def rises_sentence(ours: pd.DataFrame, paper: pd.DataFrame, what: str) -> str:
    """Whether every column of a rows-C table rises with C, in ours and in the paper's."""
    return f"Accuracy rises with C for every {what}: {_drops_text(ours)}; in the paper: {_drops_text(paper)}."


def _drops_text(table: pd.DataFrame) -> str:
    drops = analysis.drops_with_clients(table)
    if not drops:
        return "yes"
    shown = [
        f"{column_label(column, table.columns.names)} falls from C={c0} to C={c1}, {v0:.2f} to {v1:.2f}"
        for column, c0, c1, v0, v1 in drops[:6]
    ]
    more = f", and {len(drops) - 6} more" if len(drops) > 6 else ""
    return "no (" + "; ".join(shown) + more + ")"


def beats_sentence(ours: pd.DataFrame, paper: pd.DataFrame | None, what: str, is_baseline: Baseline) -> str:
    """Whether the best other column's mean is above the baseline column's at every C > 1 (means
    only: the report's paired tables give the verdicts)."""
    text = _gain_text(ours, is_baseline)
    if not text:
        return ""
    paper_text = _gain_text(paper, is_baseline) if paper is not None else ""
    return f"{what} at every C > 1: {text}" + (f"; in the paper: {paper_text}" if paper_text else "") + "."


def _gain_text(table: pd.DataFrame, is_baseline: Baseline) -> str:
    gains = analysis.gain_over(table, is_baseline)
    if gains.empty:
        return ""
    names = table.columns.names
    shown = [f"C={c}: {g:+.2f} points with {column_label(b, names)}" for c, g, b in gains.itertuples()]
    return _yes((gains.gain > 0).all()) + " (" + "; ".join(shown) + ")"


def method_sentence(table: pd.DataFrame, paper: pd.DataFrame) -> str:
    """Each method's best accuracy at the C most methods ran at, and SGLR against the paper's rivals."""
    clients, best = analysis.best_per_method(table)
    ranking = ", ".join(f"{m} {a:.2f}" for m, a in best.sort_values(ascending=False).items())
    text = f"Best accuracy per method at C={clients}: {ranking}."
    versus, paper_versus = _versus(best), _versus(paper.acc)
    if versus:
        text += f" {versus}; in the paper (C=5): {paper_versus}. (Means; the paired tests give the verdicts.)"
    return text


def _versus(best: pd.Series) -> str:
    if "sglr" not in best.index:
        return ""
    rivals = [rival for rival in reversed(_PAPER_METHODS) if rival != "sglr" and rival in best.index]
    gaps = [(rival, best["sglr"] - best[rival]) for rival in rivals]
    # Means only: the paired tables below give the verdicts (Holm-adjusted), which can differ.
    return ", ".join(f"SGLR's mean above {r.upper()}'s: {_yes(g > 0)} ({g:+.2f} points)" for r, g in gaps)


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def leakage_sentence(ours: pd.DataFrame, paper: pd.DataFrame) -> str:
    """Whether reconstruction MSE grows from phi = 0 to the largest phi, ours and the paper's."""
    mse = ours["mse"].groupby(level="phi").mean()
    if 0 not in mse.index or mse.index.max() == 0:
        return ""
    top = mse.index.max()
    low, high, paper_low, paper_high = mse.loc[0], mse.loc[top], paper.loss.loc[0.0], paper.loss.loc[1.0]
    return (
        f"Averaging leaks less (reconstruction MSE higher at phi={top:g} than at phi=0): "
        f"{_yes(high > low)} ({low:.4g} to {high:.4g}); in the paper (phi=1): "
        f"{_yes(paper_high > paper_low)} ({paper_low:g} to {paper_high:g})."
    )


def server_saving_sentence(table: pd.DataFrame) -> str:
    """Whether averaging settings send fewer server bytes than phi = 0 at the same C."""
    saving = analysis.server_saving(table)
    if saving.empty:
        return ""
    verdict = _yes((saving > 0).all())
    ends = saving if len(saving) <= 4 else saving.sort_values().iloc[[0, -1]]  # a sweep: the extremes
    shown = "; ".join(f"{label}: {percent:.1f}% less" for label, percent in ends.items())
    what = "SplitAvg's broadcast cuts the bytes the server sends per epoch (against phi = 0 at the same C)"
    return f"{what}: {verdict} ({'from ' if len(saving) > 4 else ''}{shown})."
