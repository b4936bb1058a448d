"""The paper's figures (SPEC section 5) and the trends it claims, checked against our tables.

`paper_reference()` holds the numbers; `compare_with_paper` sets ours beside them;
the trend helpers say where a table agrees with the paper's claims.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise

import pandas as pd

from sglr_ray.analysis.runs import GRID_METHODS, setting_labels


def means(table: pd.DataFrame) -> pd.DataFrame:
    """The paper's shape: only the mean of a table with a `stat` column level."""
    if "stat" not in (table.columns.names or []):
        return table
    return table.xs("mean", axis=1, level="stat")


# ---------------------------------------------------------------- the paper's figures (SPEC section 5)


def paper_reference() -> dict[str, pd.DataFrame]:
    """The paper's numbers: table1 (C x alpha), table2 (C x (alpha, phi)), table3 (acc per
    (C, alpha, phase), two cells), table4 (per method: acc,
    and the paper's PFLOPs per client, which count CL's whole compute on its one client) and
    table5 (reconstruction loss per phi). Accuracy in percent; NaN where the paper has '-'."""
    nan = float("nan")
    table1 = pd.DataFrame(
        [[82.45, 82.45, 82.45, 82.45, 82.45], [82.68, 82.46, 82.93, 83.42, 82.14],
         [83.49, 84.78, 84.98, 84.21, 34.37], [84.88, 86.25, 86.00, nan, nan]],
        index=pd.Index([1, 4, 10, 20], name="C"), columns=pd.Index([0.0, 0.5, 1.0, 1.5, 2.0], name="alpha"),
    )  # fmt: skip
    pairs = [(0.0, 0.0), (0.0, 0.25), (0.0, 0.5), (0.0, 0.75), (0.5, 0.5), (0.5, 0.75)]
    table2 = pd.DataFrame(
        [[82.68, 82.90, 83.16, 83.81, 83.24, 84.22], [83.49, 84.35, 84.74, 85.49, 85.22, 85.93],
         [84.88, 86.33, 86.59, 86.82, 87.48, 87.47]],
        index=pd.Index([4, 10, 20], name="C"),
        columns=pd.MultiIndex.from_tuples(pairs, names=["alpha", "phi"]),
    )  # fmt: skip
    table4 = pd.DataFrame(
        {"acc": [90.5, 89.7, 89.3, 86.0, 84.7], "pflops_per_client": [2.944, 0.588, 0.031, 0.031, 0.031]},
        index=pd.Index(["cl", "fl", "sglr", "sfl", "psl"], name="method"),
    )  # fmt: skip
    # Table 3 (alpha 1, phi 1, C = 20): only the two cells the claims quote, averaging throughout
    # and averaging in the final 60% of the epochs.
    table3 = pd.DataFrame(
        {"acc": [60.67, 86.53]}, index=pd.MultiIndex.from_tuples([(20, 1.0, "all"), (20, 1.0, "final:0.6")],
        names=["C", "alpha", "phase"]),
    )  # fmt: skip
    table5 = pd.DataFrame(
        {"loss": [0.2153, 0.2142, 0.2166, 0.2296, 0.2759]},
        index=pd.Index([0.0, 0.25, 0.5, 0.75, 1.0], name="phi"),
    )
    return {"table1": table1, "table2": table2, "table3": table3, "table4": table4, "table5": table5}


def compare_with_paper(ours: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """Our means beside the paper's on the rows and columns both have: columns (source, label) with
    source ours | paper | diff (ours - paper). Our rows may carry more index levels than the paper's
    (Table 4: method, C, alpha, ...); they are matched on the paper's levels. Empty if nothing is shared."""
    ours = means(ours)
    if ours.empty:
        return pd.DataFrame()
    extra = [name for name in ours.index.names if name not in paper.index.names]
    if len(extra) == ours.index.nlevels or not set(paper.index.names) <= set(ours.index.names):
        raise ValueError(f"rows of ours {ours.index.names} do not carry the paper's {paper.index.names}")
    keys = ours.index.droplevel(extra) if extra else ours.index
    shared = [c for c in ours.columns if c in paper.columns]
    rows = keys.isin(paper.index)
    if not shared or not rows.any():
        return pd.DataFrame()
    mine = ours.loc[rows, shared]
    theirs = paper.reindex(keys[rows])[shared].set_axis(mine.index)
    return pd.concat({"ours": mine, "paper": theirs, "diff": mine - theirs}, axis=1, names=["source"])


# The paper's model of each table: its differences are the effect to test ours against only where
# our runs use the same architecture.
_TABLES_OF_MODEL = {"resnet16": ("table1", "table2", "table3"), "alexnet": ("table4",)}


def paper_difference(model: str, control: str, row: pd.Series) -> float:
    """The paper's treatment-minus-control difference (points) for one comparison of ours: `row`
    has C, method, alpha, phi, phase (the treatment); `control` is "psl" (Tables 1, 2 and 4),
    "all" (Table 3: a phase minus averaging throughout) or a method name (Table 4: SGLR minus
    that method, `row.method` then the rival). NaN where the paper has no such figure or its
    table used another model family than `model`."""
    ref, tables = paper_reference(), _TABLES_OF_MODEL.get(model.split("-")[0], ())
    try:
        if control == "all" and "table3" in tables:
            acc = ref["table3"].acc
            return acc[(row.C, row.alpha, row.phase)] - acc[(row.C, row.alpha, "all")]
        if control == "psl" and "table1" in tables and row.phase == "all":
            if row.phi == 0:
                return ref["table1"].loc[row.C, row.alpha] - ref["table1"].loc[row.C, 0.0]
            return ref["table2"].loc[row.C, (row.alpha, row.phi)] - ref["table2"].loc[row.C, (0.0, 0.0)]
        if "table4" in tables and row.C == 5:
            acc = ref["table4"].acc
            return acc[row.method] - acc[control] if control == "psl" else acc["sglr"] - acc[row.method]
    except KeyError:
        pass  # the paper has no such cell
    return float("nan")


# ---------------------------------------------------------------- the trends the paper claims


def drops_with_clients(table: pd.DataFrame) -> list[tuple]:
    """Where a column of a rows-C table falls as C grows: (column, C before, C after, before, after)
    for each consecutive pair of filled cells. Empty: accuracy rises or holds with C everywhere."""
    table = means(table).sort_index()
    drops = []
    for column in table.columns:
        for (c0, v0), (c1, v1) in pairwise(table[column].dropna().items()):
            if v1 < v0:
                drops.append((column, c0, c1, v0, v1))
    return drops


def gain_over(table: pd.DataFrame, is_baseline: Callable[[object], bool]) -> pd.DataFrame:
    """Per row with C > 1: the best other column's mean minus the one baseline column's (`gain`),
    and which column that was (`best`). Empty when the table lacks either."""
    table = means(table)
    base = [c for c in table.columns if is_baseline(c)]
    others = [c for c in table.columns if not is_baseline(c)]
    if len(base) != 1 or not others:
        return pd.DataFrame(columns=["gain", "best"])
    rows = table[(table.index > 1) & table[base[0]].notna() & table[others].notna().any(axis=1)]
    gain = rows[others].max(axis=1) - rows[base[0]]
    return pd.DataFrame({"gain": gain, "best": rows[others].idxmax(axis=1)})


def best_per_method(table: pd.DataFrame) -> tuple[int | None, pd.Series]:
    """From method_comparison: the C at which the most methods ran, and each method's best mean
    accuracy there (over its alpha, phi and phase settings)."""
    if table.empty:
        return None, pd.Series(dtype=float)
    frame = table.reset_index()
    methods_at = frame.groupby("C").method.nunique()
    clients = int(methods_at[methods_at == methods_at.max()].index.max())
    return clients, frame[frame.C.eq(clients)].groupby("method").acc.max()


def server_saving(table: pd.DataFrame) -> pd.Series:
    """From communication_per_epoch: per averaging setting (phi > 0), the percentage fewer bytes the
    server sends per epoch than the same C without averaging (psl or slr; a broadcast replaces
    unicasts, and alpha moves no bytes)."""
    frame = table.reset_index()
    plain = frame[frame.method.isin(GRID_METHODS) & (frame.phi == 0)].groupby("C").mb_server_sent.mean()
    averaged = frame[(frame.phi > 0) & frame.C.isin(plain.index)]
    saving = 100 * (1 - averaged.mb_server_sent.to_numpy() / plain.loc[averaged.C].to_numpy())
    return pd.Series(saving, index=setting_labels(averaged), dtype=float)
