"""`<out>/report.md` and `<out>/plots/*.png`: the paper's tables from a results directory.

  sglr-ray report results/table12

Each table that has data is written with the paper's figures beside it where
the paper has some, and one generated sentence on whether the paper's trend
holds. Files are written to a temporary name and renamed, so a reader never
sees half a report while a sweep is still adding runs.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from sglr_ray.analysis import tables as analysis
from sglr_ray.analysis.markdown import column_label, decimals_for, markdown_table
from sglr_ray.analysis.tables import STATS, means
from sglr_ray.results.atomic import atomic_path

__all__ = ["write_report"]
PAPER = analysis.paper_reference()
PAPER_NOTE = "The paper's figures (Fashion-MNIST; ResNet-16 in Tables 1-2, AlexNet, 5 clients in Table 4):"


def write_report(out: str | Path, path: str | Path | None = None) -> Path:
    """Write the report for results directory `out` to `path` (default `<out>/report.md`) and its
    plots to `plots/` beside it; return the report's path."""
    out = Path(out)
    if not (out / "runs").is_dir():
        raise FileNotFoundError(f"{out}/runs does not exist: pass a results directory (the --out of a run)")
    path = Path(path) if path is not None else out / "report.md"
    runs = analysis.load_runs(out)
    epochs, leakage = analysis.load_epochs(out), analysis.load_leakage(out)
    counts = runs.status.value_counts()
    lines = [
        f"# Results report: {out}",
        "",
        f"Regenerate with `sglr-ray report {out}`. Only completed runs count "
        f"({counts.get('completed', 0)} completed, {counts.get('running', 0)} running, "
        f"{counts.get('failed', 0)} failed). Accuracy: final test top-1 in percent.",
    ]
    workloads = analysis.split_workloads(runs)
    if not workloads:
        lines += ["", "No completed runs yet."]
    for number, (label, group) in enumerate(workloads.items(), start=1):
        ids = group.run_id
        suffix = "" if len(workloads) == 1 else f"-{number}"
        lines += ["", f"## {label}"]
        lines += _tables(group, epochs[epochs.run_id.isin(ids)], _rows_of(leakage, ids))
        lines += _plots(group, epochs[epochs.run_id.isin(ids)], path.parent, suffix)
    _write_text_atomic(path, "\n".join(lines) + "\n")
    return path


def _rows_of(frame: pd.DataFrame, ids: pd.Series) -> pd.DataFrame:
    return frame[frame.run_id.isin(ids)] if not frame.empty else frame


def _tables(runs: pd.DataFrame, epochs: pd.DataFrame, leakage: pd.DataFrame) -> list[str]:
    return [
        *_clients_alpha(runs),
        *_clients_phi(runs),
        *_phase(runs),
        *_methods(runs),
        *_leakage(leakage),
        *_communication(epochs),
    ]


def _section(title: str, table: pd.DataFrame, note: str) -> list[str]:
    return ["", f"### {title}", "", markdown_table(table), "", note]


def _paragraphs(*sentences: str) -> list[str]:
    """Each non-empty sentence as its own markdown paragraph (a sentence is empty when its
    comparison has no data)."""
    return [line for sentence in sentences if sentence for line in ("", sentence)]


def _with_paper(ours: pd.DataFrame, paper: pd.DataFrame) -> list[str]:
    lines = ["", PAPER_NOTE, "", markdown_table(paper, exact=True)]
    diff = analysis.compare_with_paper(ours, paper)
    if not diff.empty:
        difference = markdown_table(diff["diff"], decimals=2)  # accuracy points
        lines += ["", "Ours minus the paper's, on the cells both have:", "", difference]
    return lines


def _clients_alpha(runs: pd.DataFrame) -> list[str]:
    table = analysis.accuracy_by_clients_alpha(runs)
    if len(table) < 2:  # the question is how accuracy moves with C
        return []
    (cells, note), ours, paper = collapse_stats(table), means(table), PAPER["table1"]
    return [
        *_section("Table 1: accuracy by clients C and SplitLr alpha (phi = 0)", cells, note),
        *_with_paper(table, paper),
        *_paragraphs(
            _rises_sentence(ours, paper, "alpha"),
            _beats_sentence(ours, paper, "SplitLr (the best alpha > 0) beats alpha = 0", _is_psl),
        ),
    ]


def _is_psl(label: object) -> bool:
    return label == 0 or label == (0, 0)


def _clients_phi(runs: pd.DataFrame) -> list[str]:
    table = analysis.accuracy_by_clients_phi(runs)
    if len(table) < 2 or not (means(table).columns.get_level_values("phi") > 0).any():
        return []  # without phi > 0 this is Table 1 again
    (cells, note), ours, paper = collapse_stats(table), means(table), PAPER["table2"]
    return [
        *_section("Table 2: accuracy by clients C and (alpha, phi)", cells, note),
        *_with_paper(table, paper),
        *_paragraphs(
            _rises_sentence(ours, paper, "(alpha, phi)"),
            _beats_sentence(ours, paper, "SGLR (its best setting) beats PSL (alpha 0, phi 0)", _is_psl),
        ),
    ]


def _phase(runs: pd.DataFrame) -> list[str]:
    table = analysis.accuracy_by_phase(runs)
    if table.empty or not (table.index > 1).any() or table.columns.unique("phase").size < 2:
        return []  # the question is phased against every-epoch averaging
    cells, note = collapse_stats(table)
    what = "Phased averaging (the best phase){} beats averaging every epoch"
    sentences = [
        _beats_sentence(frame, None, what.format(alpha), _is_all) for alpha, frame in _by_alpha(means(table))
    ]
    return [
        *_section("Table 3: accuracy by clients C and averaging phase (phi = 1)", cells, note),
        *_paragraphs(*sentences),
    ]


def _is_all(phase: object) -> bool:
    return phase == "all"


def _by_alpha(table: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    if table.columns.nlevels == 1:
        return [("", table)]
    alphas = table.columns.get_level_values("alpha").unique()
    return [(f" (alpha {a:g})", table.xs(a, axis=1, level="alpha")) for a in alphas]


def _methods(runs: pd.DataFrame) -> list[str]:
    table = analysis.method_comparison(runs)
    if table.empty:
        return []
    shown = table.assign(acc=[_pm(m, s) for m, s in zip(table.acc, table.acc_std, strict=True)])
    shown = shown.drop(columns="acc_std").rename(columns=_COST_NAMES)
    return [
        *_section("Table 4: methods compared", shown, "Accuracy: mean ± std over seeds; costs: mean."),
        "",
        PAPER_NOTE,
        "",
        markdown_table(PAPER["table4"], exact=True),
        *_paragraphs(_method_sentence(table, PAPER["table4"])),
    ]


_COST_NAMES = {
    "acc": "test acc %", "n": "seeds", "client_pflops": "PFLOPs per client", "server_pflops": "server PFLOPs",
    "mb_per_client": "MB per client", "mb_per_client_epoch": "MB per client per epoch",
}  # fmt: skip


def _pm(mean: float, std: float) -> str:
    return f"{mean:.2f}" if pd.isna(std) else f"{mean:.2f} ± {std:.2f}"


def _leakage(leakage: pd.DataFrame) -> list[str]:
    table = analysis.leakage_by_phi(leakage) if not leakage.empty else pd.DataFrame()
    if table.empty:
        return []
    cells, note = collapse_stats(table)
    cells.columns.name = None  # the metric names say enough
    title = "Table 5: information leakage by phi (decoder attack on smashed data)"
    return [
        *_section(title, cells, note + " Higher MSE, lower PSNR/SSIM: less leakage."),
        "",
        "The paper's reconstruction loss (6 clients; its own scale, so compare the trend only):",
        "",
        markdown_table(PAPER["table5"], exact=True),
        *_paragraphs(_leakage_sentence(means(table), PAPER["table5"])),
    ]


def _communication(epochs: pd.DataFrame) -> list[str]:
    table = analysis.communication_per_epoch(epochs) if not epochs.empty else pd.DataFrame()
    if table.empty:
        return []
    title = "Communication per epoch (MB, all clients; per client: up + down)"
    note = "Mean over epochs and seeds. Server-sent counts a broadcast once."
    shown = table.rename(columns=_COMM_NAMES)
    return [*_section(title, shown, note), *_paragraphs(_server_saving_sentence(table))]


_COMM_NAMES = {
    "mb_up": "MB up", "mb_down": "MB down", "mb_server_sent": "MB sent by server",
    "mb_per_client": "MB per client", "n": "seeds",
}  # fmt: skip


# ---------------------------------------------------------------- markdown


def collapse_stats(table: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """A table with a `stat` column level as text cells 'mean ± std', and a note saying over how
    many seeds (cells carry '(n)' when that differs between cells)."""
    mean, std, n = (table.xs(stat, axis=1, level="stat") for stat in STATS)
    counts = {int(k) for k in n.to_numpy().ravel() if not pd.isna(k)}
    show_n = len(counts) > 1

    def cell(m: float, s: float, k: float, decimals: int) -> str:
        if pd.isna(m):
            return ""
        text = f"{m:.{decimals}f}" + ("" if pd.isna(s) else f" ± {s:.{decimals}f}")
        return text + (f" ({int(k)})" if show_n else "")

    decimals = [decimals_for(mean[c]) for c in mean.columns]
    rows = zip(mean.to_numpy(), std.to_numpy(), n.to_numpy(), strict=True)
    cells = [[cell(*c) for c in zip(*row, decimals, strict=True)] for row in rows]
    if show_n:
        note = "Mean ± std over seeds; the number of seeds in brackets."
    elif counts == {1}:
        note = "One seed per cell."
    else:
        note = f"Mean ± std over {counts.pop()} seeds."
    return pd.DataFrame(cells, index=mean.index, columns=mean.columns), note


# ---------------------------------------------------------------- sentences on the paper's trends


def _rises_sentence(ours: pd.DataFrame, paper: pd.DataFrame, what: str) -> str:
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


def _beats_sentence(ours: pd.DataFrame, paper: pd.DataFrame | None, what: str, is_baseline) -> str:
    text = _gain_text(ours, is_baseline)
    if not text:
        return ""
    paper_text = _gain_text(paper, is_baseline) if paper is not None else ""
    return f"{what} at every C > 1: {text}" + (f"; in the paper: {paper_text}" if paper_text else "") + "."


def _gain_text(table: pd.DataFrame, is_baseline) -> str:
    gains = analysis.gain_over(table, is_baseline)
    if gains.empty:
        return ""
    names = table.columns.names
    shown = [f"C={c}: {g:+.2f} points with {column_label(b, names)}" for c, g, b in gains.itertuples()]
    return ("yes" if (gains.gain > 0).all() else "no") + " (" + "; ".join(shown) + ")"


def _method_sentence(table: pd.DataFrame, paper: pd.DataFrame) -> str:
    clients, best = analysis.best_per_method(table)
    ranking = ", ".join(f"{m} {a:.2f}" for m, a in best.sort_values(ascending=False).items())
    text = f"Best accuracy per method at C={clients}: {ranking}."
    versus, paper_versus = _versus(best), _versus(paper.acc)
    if versus:
        text += f" {versus}; in the paper (C=5): {paper_versus}."
    return text


def _versus(best: pd.Series) -> str:
    if "sglr" not in best.index:
        return ""
    rivals = [rival for rival in ("psl", "sfl", "fl", "cl") if rival in best.index]
    gaps = [(rival, best["sglr"] - best[rival]) for rival in rivals]
    return ", ".join(f"SGLR beats {r.upper()}: {'yes' if g > 0 else 'no'} ({g:+.2f} points)" for r, g in gaps)


def _leakage_sentence(ours: pd.DataFrame, paper: pd.DataFrame) -> str:
    mse = ours["mse"].groupby(level="phi").mean()
    if 0 not in mse.index or mse.index.max() == 0:
        return ""
    top = mse.index.max()
    low, high, paper_low, paper_high = mse.loc[0], mse.loc[top], paper.loss.loc[0.0], paper.loss.loc[1.0]
    return (
        f"Averaging leaks less (reconstruction MSE higher at phi={top:g} than at phi=0): "
        f"{'yes' if high > low else 'no'} ({low:.4g} to {high:.4g}); in the paper (phi=1): "
        f"{'yes' if paper_high > paper_low else 'no'} ({paper_low:g} to {paper_high:g})."
    )


def _server_saving_sentence(table: pd.DataFrame) -> str:
    saving = analysis.server_saving(table)
    if saving.empty:
        return ""
    verdict = "yes" if (saving > 0).all() else "no"
    ends = saving if len(saving) <= 4 else saving.sort_values().iloc[[0, -1]]  # a sweep: the extremes
    shown = "; ".join(f"{label}: {percent:.1f}% less" for label, percent in ends.items())
    what = "SplitAvg's broadcast cuts the bytes the server sends per epoch (against phi = 0 at the same C)"
    return f"{what}: {verdict} ({'from ' if len(saving) > 4 else ''}{shown})."


# ---------------------------------------------------------------- plots


def _plots(runs: pd.DataFrame, epochs: pd.DataFrame, directory: Path, suffix: str) -> list[str]:
    """Draw the plots that have data into `directory/plots`; return markdown that shows them."""
    drawn = []
    for name, title, draw in [
        ("accuracy_per_epoch", "Validation accuracy per epoch", lambda: _plot_epochs(epochs)),
        ("accuracy_vs_clients", "Final test accuracy against clients", lambda: _plot_clients(runs)),
        ("costs_per_client", "Bytes and PFLOPs per client", lambda: _plot_costs(runs)),
    ]:
        figure = draw()
        if figure is not None:
            target = directory / "plots" / f"{name}{suffix}.png"
            _save_figure_atomic(figure, target)
            drawn.append(f"![{title}]({target.relative_to(directory).as_posix()})")
    return ["", "### Plots", "", *drawn] if drawn else []


def _plot_epochs(epochs: pd.DataFrame) -> Figure | None:
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
    columns = 1 + len(table.columns) // 25  # a sweep has dozens of settings: wrap the legend
    axes.legend(fontsize="x-small", loc="center left", bbox_to_anchor=(1.01, 0.5), ncol=columns)
    return figure


def _plot_clients(runs: pd.DataFrame) -> Figure | None:
    table = means(analysis.accuracy_by_clients_phi(runs))
    if len(table) < 2:
        return None
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    axes = figure.subplots()
    for alpha, phi in table.columns:
        line = table[(alpha, phi)].dropna()
        axes.plot(line.index, line.values, marker="o", label=f"alpha {alpha:g}, phi {phi:g}")
    axes.set(xlabel="clients C", ylabel="final test accuracy (%)", xscale="log", title="Accuracy against C")
    axes.set_xticks(table.index, [str(c) for c in table.index])
    axes.legend(fontsize="small")
    return figure


def _plot_costs(runs: pd.DataFrame) -> Figure | None:
    table = analysis.method_comparison(runs)
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


def _save_figure_atomic(figure: Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)


def _write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
