"""`<out>/report.md` and `<out>/plots/*.png`: the paper's tables from a results directory.

  sglr-ray report results/table12

Each table that has data is written with the paper's figures beside it where
the paper has some, and one generated sentence on whether the paper's trend
holds. Where runs had --attack, a privacy section draws accuracy against each
attack's leakage (analysis/tradeoff.py). Files are written to a temporary name
and renamed, so a reader never sees half a report while a sweep is still adding
runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from sglr_ray.analysis import significance, systems
from sglr_ray.analysis import tables as analysis
from sglr_ray.analysis.controls import control_lines
from sglr_ray.analysis.markdown import CI_NOTE, collapse_stats, markdown_table
from sglr_ray.analysis.paper import paper_difference
from sglr_ray.analysis.phi_leakage import phi_lines
from sglr_ray.analysis.plots import save_figure_atomic, write_plots
from sglr_ray.analysis.provenance import left_out, provenance_lines
from sglr_ray.analysis.runs import load_privacy
from sglr_ray.analysis.sentences import (
    beats_sentence,
    leakage_sentence,
    method_sentence,
    rises_sentence,
    server_saving_sentence,
)
from sglr_ray.analysis.tables import means
from sglr_ray.analysis.tradeoff import privacy_lines
from sglr_ray.atomic import atomic_path

__all__ = ["write_report"]
PAPER = analysis.paper_reference()
PAPER_NOTE = "The paper's figures (Fashion-MNIST; ResNet-16 in Tables 1-2, AlexNet, 5 clients in Table 4):"


def write_report(
    out: str | Path, path: str | Path | None = None, include_superseded: bool = False,
    baselines: Sequence[str | Path] = (),
) -> Path:  # fmt: skip
    """Write the report for results directory `out` to `path` (default `<out>/report.md`) and its
    plots to `plots/` beside it; return the report's path. Superseded runs (provenance.py) are
    left out of every table unless `include_superseded`; the provenance section names them.
    `baselines`: the results directories whose cells `out`'s runs are controls of (controls.py)."""
    out, baselines = Path(out), [Path(b) for b in baselines]
    for directory in [out, *baselines]:
        if not (directory / "runs").is_dir():
            raise FileNotFoundError(
                f"{directory}/runs does not exist: pass a results directory (the --out of a run)"
            )
    path = Path(path) if path is not None else out / "report.md"
    recorded = analysis.load_runs(out)
    old = left_out(recorded, include_superseded)
    runs = recorded[~old]
    epochs, leakage = analysis.load_epochs(out), analysis.load_leakage(out)
    flags = (" --include-superseded" if include_superseded else "") + "".join(
        f" --baseline {b}" for b in baselines
    )
    lines = [
        f"# Results report: {out}",
        "",
        f"Regenerate with `sglr-ray report {out}{flags}`. "
        "Only completed runs count (see Provenance at the end). Accuracy: final test top-1 in percent. "
        f"Verdicts read Holm-adjusted p-values (family-wise error {significance.LEVEL:g} per table).",
    ]
    workloads = analysis.split_workloads(runs)
    if not workloads:
        lines += ["", "No completed runs yet."]
    for number, (label, group) in enumerate(workloads.items(), start=1):
        ids = group.run_id
        suffix = "" if len(workloads) == 1 else f"-{number}"
        lines += ["", f"## {label}"]
        lines += _tables(group, epochs[epochs.run_id.isin(ids)], _rows_of(leakage, ids))
        lines += write_plots(group, epochs[epochs.run_id.isin(ids)], path.parent, suffix)
    if baselines:
        lines += control_lines(
            runs, _current_runs(baselines, include_superseded), [str(b) for b in baselines]
        )
    lines += _virtual_clock(out, runs)
    privacy_rows = load_privacy(out)  # read once: the trade-off tables and Table 5 revisited
    lines += privacy_lines(privacy_rows, path.parent, save_figure_atomic)
    lines += phi_lines(privacy_rows)
    lines += provenance_lines(recorded, recorded[old])
    _write_text_atomic(path, "\n".join(lines) + "\n")
    return path


def _current_runs(directories: list[Path], include_superseded: bool) -> pd.DataFrame:
    """The runs of several results directories in one frame, without the rows left_out names."""
    recorded = pd.concat([analysis.load_runs(d) for d in directories], ignore_index=True)
    return recorded[~left_out(recorded, include_superseded)]


_CLOCK_NAMES = {"test_acc": "test acc %", "sim_epoch_s": "sim s per epoch", "sim_s": "sim s in all",
                "to_target_s": "sim s to target", "reached": "seeds reaching it", "mb": "MB on the wire",
                "mb_server": "MB sent by server",
                "waiting": "client time waiting"}  # fmt: skip


def _virtual_clock(out: Path, runs: pd.DataFrame) -> list[str]:
    """The directory-wide time-to-accuracy table, where runs use the systems model."""
    if runs.empty or not systems.uses_virtual_clock(analysis.completed_runs(runs)):
        return []
    table = systems.time_to_accuracy(out, runs)
    if table.empty:
        return []
    note = (
        "Every completed run of the directory (superseded runs left out), a row per setting and variant "
        "(a setting named where it differs from the most common value), mean over seeds; simulated "
        "seconds on the virtual clock (SPEC section 4). Target: the lowest of the rows' mean final "
        "validation accuracies, so every row reaches it on average; sim s to target: the clock at the end "
        "of a run's first epoch at or above it, mean over the seeds that reached it (blank: none did). "
        "MB on the wire: up + down over all "
        "clients and epochs; MB sent by server: a broadcast counted once. Client time waiting: the share "
        "of the clients' simulated time spent idle."
    )
    shown = table.rename(columns=_CLOCK_NAMES)
    return [
        "",
        "## Virtual clock: time to accuracy and bytes",
        "",
        markdown_table(shown, decimals=2),
        "",
        note,
    ]


def _rows_of(frame: pd.DataFrame, ids: pd.Series) -> pd.DataFrame:
    return frame[frame.run_id.isin(ids)] if not frame.empty else frame


def _tables(runs: pd.DataFrame, epochs: pd.DataFrame, leakage: pd.DataFrame) -> list[str]:
    return [
        *_clients_alpha(runs),
        *_clients_phi(runs),
        *_phase(runs),
        *_methods(runs),
        *_sglr_against_each(runs),
        *_paired(runs),
        *_leakage(leakage),
        *_communication(epochs),
        *_convergence(epochs),
    ]


def _section(title: str, table: pd.DataFrame, note: str, decimals: int | None = None) -> list[str]:
    return ["", f"### {title}", "", markdown_table(table, decimals=decimals), "", note]


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
            rises_sentence(ours, paper, "alpha"),
            beats_sentence(ours, paper, "SplitLr (best alpha > 0) has a higher mean than alpha 0", _is_psl),
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
            rises_sentence(ours, paper, "(alpha, phi)"),
            beats_sentence(ours, paper, "SGLR (its best setting) has a higher mean than PSL", _is_psl),
        ),
    ]


def _phase(runs: pd.DataFrame) -> list[str]:
    table = analysis.accuracy_by_phase(runs)
    if table.empty or not (table.index > 1).any() or table.columns.unique("phase").size < 2:
        return []  # the question is phased against every-epoch averaging
    cells, note = collapse_stats(table)
    what = "Phased averaging (the best phase){} has a higher mean than averaging every epoch"
    sentences = [
        beats_sentence(frame, None, what.format(alpha), _is_all) for alpha, frame in _by_alpha(means(table))
    ]
    return [
        *_section("Table 3: accuracy by clients C and averaging phase (phi = 1)", cells, note),
        *_paragraphs(*sentences),
        *_paired_phases(runs),
    ]


def _paired_phases(runs: pd.DataFrame) -> list[str]:
    """Each averaging phase minus averaging throughout, at the same C, alpha, seed and test images."""
    pairs = analysis.pairs_with_throughout(runs)
    what = "Each phase minus averaging throughout (phase all) at the same C, alpha, seed and test images."
    title = "Paired differences against averaging throughout (accuracy points)"
    return _tests_section(pairs, runs, "all", None, title, what) if not pairs.empty else []


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
    shown = table.assign(acc=[_pm(m, h) for m, h in zip(table.acc, table.acc_ci95, strict=True)])
    shown = shown.drop(columns=["acc_std", "acc_ci95"]).rename(columns=_COST_NAMES)
    note = f"Accuracy: mean ± {CI_NOTE} over seeds; costs: mean."
    return [
        *_section("Table 4: methods compared", shown, note),
        "",
        PAPER_NOTE,
        "",
        markdown_table(PAPER["table4"], exact=True),
        *_paragraphs(method_sentence(table, PAPER["table4"])),
    ]


_COST_NAMES = {
    "acc": "test acc %", "n": "seeds", "client_pflops": "PFLOPs per client", "server_pflops": "server PFLOPs",
    "mb_per_client": "MB per client", "mb_per_client_epoch": "MB per client per epoch",
}  # fmt: skip


def _pm(mean: float, half: float) -> str:
    return f"{mean:.2f}" if pd.isna(half) else f"{mean:.2f} ± {half:.2f}"


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
        *_paragraphs(leakage_sentence(means(table), PAPER["table5"])),
    ]


def _communication(epochs: pd.DataFrame) -> list[str]:
    table = analysis.communication_per_epoch(epochs) if not epochs.empty else pd.DataFrame()
    if table.empty:
        return []
    title = "Communication per epoch (MB, all clients; per client: up + down)"
    note = "Mean over epochs and seeds. Server-sent counts a broadcast once."
    shown = table.rename(columns=_COMM_NAMES)
    return [*_section(title, shown, note), *_paragraphs(server_saving_sentence(table))]


def _convergence(epochs: pd.DataFrame) -> list[str]:
    table = analysis.convergence(epochs) if not epochs.empty else pd.DataFrame()
    if table.empty or table.last_gain.isna().all():
        return []
    rule = analysis.CONVERGED_POINTS
    note = (
        "Validation accuracy of each run's last 2 epochs minus the 2 before (points; the largest over "
        f"seeds); over: runs that gained {rule} points or more. Largest in this table: "
        f"{table.last_gain.max():+.2f}; the epoch budget counts as converged where this stays under "
        f"{rule} points."
    )
    shown = table.rename(columns={"last_gain": "gain"})
    return [*_section("Convergence: the last epochs' gain", shown, note, 2), *_exceptions(epochs)]


def _exceptions(epochs: pd.DataFrame) -> list[str]:
    """The sentence that names the runs breaking the convergence rule (or says none does)."""
    gains = analysis.last_gains(epochs).dropna()
    over = gains[gains >= analysis.CONVERGED_POINTS]
    if over.empty:
        every = "The one run meets" if len(gains) == 1 else f"All {len(gains)} runs meet"
        return _paragraphs(f"{every} the convergence rule.")
    frame = over.reset_index()
    labels = analysis.setting_labels(frame)
    named = [
        f"{label} seed {seed} ({g:+.2f})" for label, seed, g in zip(labels, frame.seed, over, strict=True)
    ]
    return _paragraphs(
        f"{len(over)} of {len(gains)} runs break the convergence rule (gain {analysis.CONVERGED_POINTS} "
        f"points or more): {'; '.join(named)}. Their final accuracy may sit a few tenths under their plateau."
    )


_COMM_NAMES = {
    "mb_up": "MB up", "mb_down": "MB down", "mb_server_sent": "MB sent by server",
    "mb_per_client": "MB per client", "n": "seeds",
}  # fmt: skip


# ---------------------------------------------------------------- paired differences and their tests


def _paired(runs: pd.DataFrame) -> list[str]:
    """Every other setting minus the plain split engine (PSL) at the same C, seed and test images."""
    plain = analysis.PLAIN
    pairs, skipped = analysis.pairs_with(runs, {"method": plain, "phase": "all"})
    what = f"Each setting minus {plain.upper()} at the same C, the same seed and the same test images."
    title = f"Paired differences against {plain.upper()} (accuracy points)"
    lines = _tests_section(pairs, runs, plain, plain, title, what) if not pairs.empty else []
    return [*lines, *_paragraphs(*(f"Not paired: {s}" for s in skipped))]


def _sglr_against_each(runs: pd.DataFrame) -> list[str]:
    """Table 4's own comparison: SGLR minus each other method, paired by seed (only where the runs
    hold methods other than the grid's, as a Table 4 sweep does)."""
    if not (runs.method.eq("sglr").any() and (~runs.method.isin(analysis.GRID_METHODS)).any()):
        return []
    pairs, _ = analysis.pairs_with(runs, {"method": "sglr"})
    if pairs.empty:
        return []
    pairs = pairs.assign(treatment=pairs.control, control=pairs.treatment, diff=-pairs["diff"])
    what = "SGLR minus each method (rows) at the same C, the same seed and the same test images."
    title = "Paired differences: SGLR against each method (accuracy points)"
    return _tests_section(pairs, runs, "sglr", None, title, what, ("sglr %", "method %"))


def _tests_section(
    pairs: pd.DataFrame, runs: pd.DataFrame, control: str, control_label: str | None, title: str,
    what: str, columns: tuple[str, str] | None = None,
) -> list[str]:  # fmt: skip
    """A table of paired comparisons with their tests (significance.tests_lines); `control` names
    the paper's comparison (paper_difference)."""
    model = str(runs.model.iloc[0])
    paper = [paper_difference(model, control, row) for _, row in pairs.iterrows()]
    lines = significance.tests_lines(pairs.assign(paper=paper), control_label, control, columns)
    return ["", f"### {title}", "", what, *lines]


def _write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
