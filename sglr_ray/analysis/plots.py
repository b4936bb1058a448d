"""The report's plots: validation accuracy per epoch and against simulated time (time to
accuracy, where runs have a virtual clock), final accuracy against C with 95%
intervals, each setting's paired difference from PSL against C, and bytes and PFLOPs per
client. Each is a matplotlib Figure (no pyplot, so no display is needed: PNGs render with Agg)
written atomically under `<report dir>/plots`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullLocator

from sglr_ray.analysis import tables as analysis
from sglr_ray.atomic import atomic_path

__all__ = ["save_figure_atomic", "write_plots"]


def write_plots(runs: pd.DataFrame, epochs: pd.DataFrame, directory: Path, suffix: str) -> list[str]:
    """Draw the plots that have data into `directory/plots` (file names end in `suffix`); return
    markdown lines that show them."""
    drawn = []
    for name, title, draw in [
        ("accuracy_per_epoch", "Validation accuracy per epoch", lambda: plot_epochs(epochs)),
        ("accuracy_vs_sim_time", "Validation accuracy against simulated time", lambda: plot_sim_time(epochs)),
        ("accuracy_vs_clients", "Final test accuracy against clients", lambda: plot_clients(runs)),
        ("difference_vs_clients", "Paired difference from PSL against clients", lambda: plot_paired(runs)),
        ("costs_per_client", "Bytes and PFLOPs per client", lambda: plot_costs(runs)),
    ]:
        figure = draw()
        if figure is not None:
            target = directory / "plots" / f"{name}{suffix}.png"
            save_figure_atomic(figure, target)
            drawn.append(f"![{title}]({target.relative_to(directory).as_posix()})")
    return ["", "### Plots", "", *drawn] if drawn else []


def plot_epochs(epochs: pd.DataFrame) -> Figure | None:
    """Validation accuracy per epoch, one line per setting (mean over seeds)."""
    table = analysis.accuracy_per_epoch(epochs) if not epochs.empty else pd.DataFrame()
    if table.empty:
        return None
    figure = Figure(figsize=(10, 5.5), layout="constrained")
    axes = figure.subplots()
    for number, setting in enumerate(table.columns):
        style = ("-", "--", ":", "-.")[number // 10 % 4]  # the colour cycle repeats every 10 lines
        axes.plot(table.index, table[setting], marker=".", linestyle=style, label=setting)
    axes.set(xlabel="epoch", ylabel="validation accuracy (%)", title="Validation accuracy, mean over seeds")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    _legend(axes, len(table.columns))
    return figure


def plot_sim_time(epochs: pd.DataFrame) -> Figure | None:
    """Time to accuracy: validation accuracy against the virtual clock (SPEC section 4), one line
    per setting, a point per epoch (means over seeds); None without simulated times."""
    table = analysis.accuracy_against_sim_time(epochs) if not epochs.empty else pd.DataFrame()
    if table.empty:
        return None
    figure = Figure(figsize=(10, 5.5), layout="constrained")
    axes = figure.subplots()
    settings = table.index.get_level_values("setting").unique()
    for number, setting in enumerate(settings):
        style = ("-", "--", ":", "-.")[number // 10 % 4]
        line = table.loc[setting]
        axes.plot(line.sim_time_s, line.acc, marker=".", linestyle=style, label=setting)
    axes.set(xlabel="simulated time (s)", ylabel="validation accuracy (%)",
             title="Time to accuracy on the virtual clock, mean over seeds")  # fmt: skip
    _legend(axes, len(settings))
    return figure


def plot_clients(runs: pd.DataFrame) -> Figure | None:
    """Final test accuracy against C, one line per setting (method and knobs), mean over seeds
    with the 95% interval as error bars; None unless some setting ran at two or more C."""
    frame = analysis.method_comparison(runs).reset_index() if not runs.empty else pd.DataFrame()
    if frame.empty:
        return None
    frame = frame.assign(setting=analysis.setting_labels(frame, with_clients=False))
    if frame.groupby("setting").C.nunique().max() < 2:  # the question is how accuracy moves with C
        return None
    lines = []
    for setting, line in frame.groupby("setting", sort=False):
        line = line.sort_values("C")
        bars = line.acc_ci95.fillna(0)  # one seed: no interval to draw
        lines.append((setting, line.C, line.acc, bars))
    title = "Accuracy against C: mean over seeds, bars 95% interval (Student t)"
    return _against_clients(lines, "final test accuracy (%)", title)


def plot_paired(runs: pd.DataFrame) -> Figure | None:
    """Each setting minus PSL (same C, seed and test images) against C, with the paired 95%
    interval as error bars: the seed-to-seed spread that both sides share cancels, so these bars
    are the ones that say whether a setting helps. None unless some setting pairs at two or more C."""
    table, _ = analysis.paired_with_plain(runs) if not runs.empty else (pd.DataFrame(), [])
    if table.empty or table.reset_index().groupby("setting").C.nunique().max() < 2:
        return None
    lines = []
    for setting in table.index.unique("setting"):
        line = table.xs(setting, level="setting").sort_index()
        below, above = (line["diff"] - line.low).fillna(0), (line.high - line["diff"]).fillna(0)
        lines.append((setting, line.index, line["diff"], [below, above]))
    plain = analysis.PLAIN.upper()
    title = f"Paired difference from {plain}: mean over seeds, bars 95% interval"
    figure = _against_clients(lines, f"minus {plain} (accuracy points)", title)
    figure.axes[0].axhline(0.0, color="black", linewidth=0.8)
    return figure


def _against_clients(lines: list[tuple[str, Any, pd.Series, Any]], ylabel: str, title: str) -> Figure:
    """One line with error bars per (label, C values, y, yerr) on a log C axis that names each C."""
    figure = Figure(figsize=(8, 5), layout="constrained")
    axes = figure.subplots()
    for number, (setting, clients, y, bars) in enumerate(lines):
        style = ("-", "--", ":", "-.")[number // 10 % 4]
        dodge = 10 ** (0.01 * (number - (len(lines) - 1) / 2))  # settings at one C: bars side by side
        axes.errorbar(clients * dodge, y, yerr=bars, marker="o", linestyle=style, capsize=3, label=setting)
    clients = sorted({c for _, line_clients, _, _ in lines for c in line_clients})
    axes.set(xlabel="clients C", ylabel=ylabel, xscale="log", title=title)
    axes.xaxis.set_minor_locator(NullLocator())  # a log axis would label 3 x 10^0 between C = 2 and 4
    axes.set_xticks(clients, [str(c) for c in clients])
    _legend(axes, len(lines))
    return figure


def plot_costs(runs: pd.DataFrame) -> Figure | None:
    """Bars per setting: MB moved and PFLOPs computed per client over the run."""
    table = analysis.method_comparison(runs) if not runs.empty else pd.DataFrame()
    if table.empty:
        return None
    labels = analysis.setting_labels(table.reset_index())
    figure = Figure(figsize=(max(7, 0.35 * len(labels) + 3), 7), layout="constrained")
    top, bottom = figure.subplots(2, 1, sharex=True)
    top.bar(labels, table.mb_per_client)
    top.set(ylabel="MB moved per client (run)", title="Communication and compute per client")
    bottom.bar(labels, table.client_pflops)
    bottom.set(ylabel="PFLOPs per client (run)")
    bottom.tick_params(axis="x", labelrotation=90, labelsize="small")
    return figure


def _legend(axes, entries: int) -> None:
    columns = 1 + entries // 25  # a sweep has dozens of settings: wrap the legend
    axes.legend(fontsize="x-small", loc="center left", bbox_to_anchor=(1.01, 0.5), ncol=columns)


def save_figure_atomic(figure: Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
