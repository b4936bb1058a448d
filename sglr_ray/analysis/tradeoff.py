"""The privacy trade-off (issue 26): for each attack in `<out>/privacy`, final test accuracy against
the attack's main metric, one point per (method setting, defense setting) with the mean over
seeds and 95% intervals both ways; a table of the same numbers and a plot per attack.

An attack's main metric is the first it declares (privacy/attacks/: inversion's mse, label's
and broadcast's label_acc); an attack this version does not know uses its first metric by name.
A defense setting is the run's --defense and its --compress (compression counts as a defense:
the attacks see what the codec sends). Where an attack reports `chance_acc` (broadcast), the
plot marks its mean: the level a target that learns nothing reaches.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from sglr_ray import privacy
from sglr_ray.analysis.markdown import markdown_table
from sglr_ray.analysis.runs import setting_labels
from sglr_ray.analysis.stats import summarise

__all__ = ["defense_labels", "main_metric", "plot_tradeoff", "privacy_lines", "tradeoff_table"]
MARKERS = "osD^v<>pP*Xh"
CHANCE = "chance_acc"


def main_metric(attack: str, metrics: pd.Series) -> str:
    """The metric an attack's plot puts on its axis."""
    known = privacy.ATTACKS.get(attack)
    if known is not None and known.metrics and known.metrics[0] in set(metrics):
        return known.metrics[0]
    return sorted(set(metrics))[0]


def defense_labels(frame: pd.DataFrame) -> list[str]:
    """'none', 'noise:0.5', 'int8', 'nopeek:1 + topk:0.1': the run's defense and compression."""
    labels = []
    for defense, compress in zip(frame.defense.fillna(""), frame.compress.fillna("none"), strict=True):
        parts = [p for p in (defense, "" if compress == "none" else compress) if p]
        labels.append(" + ".join(parts) or "none")
    return labels


def tradeoff_table(rows: pd.DataFrame, attack: str) -> pd.DataFrame:
    """Per (setting, defense): n seeds, accuracy (%) and the main metric, each mean and ci95; plus
    the chance level's mean where the attack reports one. Empty if the attack has no rows."""
    rows = rows[rows.attack == attack]
    if rows.empty:
        return pd.DataFrame()
    metric = main_metric(attack, rows.metric)
    wide = rows.pivot_table(index="run_id", columns="metric", values="value", aggfunc="mean")
    runs = rows.drop_duplicates("run_id").set_index("run_id")
    frame = runs.join(wide).reset_index()
    frame = frame.assign(setting=setting_labels(frame, with_clients=False), defense=defense_labels(frame),
                         acc=100 * frame.final_test_acc)  # fmt: skip
    keys = ["setting", "defense"]
    acc, leak = summarise(frame, keys, "acc"), summarise(frame, keys, metric)
    table = pd.DataFrame({"n": leak["n"], "acc": acc["mean"], "acc_ci95": acc["ci95"],
                          metric: leak["mean"], f"{metric}_ci95": leak["ci95"]})  # fmt: skip
    if CHANCE in frame.columns and metric != CHANCE:
        table[CHANCE] = frame.groupby(keys, dropna=False)[CHANCE].mean()
    return table


def plot_tradeoff(table: pd.DataFrame, attack: str) -> Figure:
    """Accuracy against the attack's main metric: colour per method setting, marker per defense."""
    metric = table.columns[3]
    figure = Figure(figsize=(9, 5.5), layout="constrained")
    axes = figure.subplots()
    settings = list(table.index.unique("setting"))
    defenses = sorted(table.index.unique("defense"), key=lambda d: (d != "none", d))  # none: a circle
    colours = {s: f"C{i % 10}" for i, s in enumerate(settings)}
    markers = {d: MARKERS[i % len(MARKERS)] for i, d in enumerate(defenses)}
    for (setting, defense), row in table.iterrows():
        bars = {"xerr": _bar(row[f"{metric}_ci95"]), "yerr": _bar(row.acc_ci95)}
        axes.errorbar(row[metric], row.acc, **bars, marker=markers[defense], color=colours[setting],
                      capsize=3, linestyle="none")  # fmt: skip
    handles = [Line2D([], [], color=colours[s], linewidth=3, label=s) for s in settings]
    handles += [Line2D([], [], color="black", marker=markers[d], linestyle="none", label=d) for d in defenses]
    if CHANCE in table.columns:
        axes.axvline(table[CHANCE].mean(), color="grey", linestyle="--", linewidth=1)
        handles.append(Line2D([], [], color="grey", linestyle="--", label="chance (prior's guess)"))
    axes.set(xlabel=f"{attack}: {metric}", ylabel="final test accuracy (%)",
             title=f"Accuracy against {attack} leakage: mean over seeds, bars 95% interval")  # fmt: skip
    axes.legend(handles=handles, fontsize="x-small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    return figure


def _bar(half: float) -> float:
    return 0.0 if pd.isna(half) else half  # one seed: no interval to draw


def privacy_lines(rows: pd.DataFrame, directory: Path, save: Callable[[Figure, Path], None]) -> list[str]:
    """The report's privacy section from load_privacy's `rows`: a table and a plot per attack
    (saved by `save(figure, path)` under `directory/plots`); [] where there is no privacy table."""
    rows = rows[rows.attack != "accounting"] if not rows.empty else rows
    if rows.empty:
        return []
    lines = ["", "## Privacy: accuracy against leakage", "",
             "One row per method setting and defense (--defense, and --compress: the attacks see what the "
             "codec sends); means over seeds with 95% half-widths. mse: higher is less leakage; label_acc: "
             "lower is less leakage."]  # fmt: skip
    for attack in sorted(rows.attack.unique()):
        table = tradeoff_table(rows, attack)
        target = directory / "plots" / f"privacy_{attack}.png"
        save(plot_tradeoff(table, attack), target)
        link = target.relative_to(directory).as_posix()
        lines += [
            "",
            f"### {attack}",
            "",
            markdown_table(table),
            "",
            f"![{attack}: accuracy against leakage]({link})",
        ]
    return lines
