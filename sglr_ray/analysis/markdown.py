"""Markdown tables from DataFrames (pandas' to_markdown needs the tabulate package), and
`collapse_stats`, a table of mean/ci95/n columns as 'mean ± ci95' text cells.

Used by `sglr-ray report` and the benchmark scripts.
"""

from __future__ import annotations

import math

import pandas as pd

CI_NOTE = "half-width of the 95% confidence interval (Student t, n - 1 degrees of freedom)"


def markdown_table(frame: pd.DataFrame, exact: bool = False, decimals: int | None = None) -> str:
    """A GitHub markdown table: a named index becomes the leading columns; tuple column labels are
    written 'alpha=0.5, phi=0.25'. Each float column gets one number of decimals (`decimals`, or
    `decimals_for` of the column); `exact` writes floats as given instead (the paper's figures)."""
    named = any(name is not None for name in frame.index.names)
    headers = [str(name) for name in frame.index.names] if named else []
    headers += [column_label(label, frame.columns.names) for label in frame.columns]
    columns = [_formatter(frame.iloc[:, i], exact, decimals) for i in range(frame.shape[1])]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for key, values in zip(frame.index, frame.itertuples(index=False, name=None), strict=True):
        keys = [_label(k) for k in (key if isinstance(key, tuple) else (key,))] if named else []
        cells = [write(v) for write, v in zip(columns, values, strict=True)]
        lines.append("| " + " | ".join(keys + cells) + " |")
    return "\n".join(lines)


def _formatter(column: pd.Series, exact: bool, decimals: int | None):
    if column.dtype.kind != "f":
        return str
    decimals = decimals_for(column) if decimals is None else decimals
    return lambda v: "" if pd.isna(v) else (f"{v:g}" if exact else f"{v:.{decimals}f}")


def decimals_for(values: pd.Series) -> int:
    """Enough decimals for 3 significant digits of the column's smallest non-zero value, 2 to 6:
    accuracies get 2, an MSE of 0.0041 gets 5."""
    nonzero = values.abs()[values.abs() > 0].dropna()
    if nonzero.empty:
        return 2
    return int(min(6, max(2, 2 - math.floor(math.log10(nonzero.min())))))


def column_label(label: object, names: list) -> str:
    labels = zip(names, label if isinstance(label, tuple) else (label,), strict=True)
    return ", ".join(_label(v) if name is None else f"{name}={_label(v)}" for name, v in labels)


def _label(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def collapse_stats(table: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """A table with a `stat` column level as text cells 'mean ± ci95' (ci95: half-width of the
    95% interval over seeds), and a note saying over how many seeds (cells carry '(n)' when that
    differs between cells)."""
    mean, half, n = (table.xs(stat, axis=1, level="stat") for stat in ("mean", "ci95", "n"))
    counts = {int(k) for k in n.to_numpy().ravel() if not pd.isna(k)}
    show_n = len(counts) > 1

    def cell(m: float, h: float, k: float, decimals: int) -> str:
        if pd.isna(m):
            return ""
        text = f"{m:.{decimals}f}" + ("" if pd.isna(h) else f" ± {h:.{decimals}f}")
        return text + (f" ({int(k)})" if show_n else "")

    decimals = [decimals_for(mean[c]) for c in mean.columns]
    rows = zip(mean.to_numpy(), half.to_numpy(), n.to_numpy(), strict=True)
    cells = [[cell(*c) for c in zip(*row, decimals, strict=True)] for row in rows]
    if show_n:
        note = f"Mean ± {CI_NOTE}; the number of seeds in brackets (one seed: no interval)."
    elif counts == {1}:
        note = "One seed per cell: no confidence interval."
    else:
        note = f"Mean ± {CI_NOTE}, over {counts.pop()} seeds."
    return pd.DataFrame(cells, index=mean.index, columns=mean.columns), note
