"""The virtual clock's time-to-accuracy table (analysis/systems.py) and its report section, read
from the committed smoke study (results/systems-study-smoke: 14 real runs, one seed)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from sglr_ray.analysis import systems
from sglr_ray.analysis.report import write_report
from sglr_ray.analysis.runs import load_epochs

RESULTS = Path(__file__).resolve().parents[2] / "results"


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return systems.time_to_accuracy(RESULTS / "systems-study-smoke")


def test_one_row_per_setting_and_variant(table: pd.DataFrame) -> None:
    assert len(table) == 14 and (table.seeds == 1).all()
    variants = {"psl", "psl deadline_s=0.3", "psl compress=int8", "psl server_link_bps=1e+09", "fl"}
    assert variants <= set(table.index)


def test_target_is_the_lowest_final_accuracy_and_every_row_reaches_it(table: pd.DataFrame) -> None:
    epochs = load_epochs(RESULTS / "systems-study-smoke")
    finals = epochs.sort_values("epoch").groupby("run_id").val_acc.last()
    assert f"{100 * finals.min():.2f}%" in table.index.name
    assert table.to_target_s.notna().all() and (table.reached == 1).all()
    assert (table.to_target_s <= table.sim_s + 1e-9).all()


def test_variants_move_the_clock_and_bytes_as_built(table: pd.DataFrame) -> None:
    psl = table.loc["psl"]
    assert table.loc["psl compress=int8", "mb"] < psl.mb / 3  # a byte a value, plus scales
    assert table.loc["psl deadline_s=0.3", "sim_epoch_s"] < psl.sim_epoch_s
    assert table.loc["psl server_link_bps=1e+09", "sim_epoch_s"] < psl.sim_epoch_s
    # SGLR's broadcast leaves the server once: less sent by the server, the same received by clients.
    sglr = table.loc["sglr a=0.5 phi=0.5"]
    assert sglr.mb_server < psl.mb_server and sglr.mb == pytest.approx(psl.mb)


def test_time_to_target_counts_the_seeds_that_reach_it() -> None:
    """The full study (3 seeds): FL's mean final accuracy is the target, and seed 1 ends under it."""
    table = systems.time_to_accuracy(RESULTS / "systems-study")
    epochs = load_epochs(RESULTS / "systems-study")
    best = epochs.groupby("run_id").val_acc.max()
    target = float(table.index.name.split(": ")[1].split("%")[0]) / 100
    assert (table.seeds == 3).all()
    fl = table.loc["fl"]
    fl_runs = [run for run in best.index if run.startswith("fl-")]
    assert fl.reached == sum(best[run] >= target - 5e-5 for run in fl_runs) < 3
    assert (table.reached <= table.seeds).all() and table.to_target_s.notna().all()
    # A higher target: fewer seeds reach it, and those that do take no less time.
    higher = systems.time_to_accuracy(RESULTS / "systems-study", target=0.85)
    assert "85.00%" in higher.index.name
    higher = higher.reindex(table.index)
    assert (higher.reached <= table.reached).all() and higher.reached.sum() < table.reached.sum()
    timed = higher.reached == table.reached  # the same seeds: each takes at least as long
    assert (higher.to_target_s[timed] >= table.to_target_s[timed] - 1e-9).all()


def test_report_shows_the_table_only_for_systems_runs(tmp_path: Path) -> None:
    study = tmp_path / "study"
    shutil.copytree(RESULTS / "systems-study-smoke", study)
    text = write_report(study).read_text()
    assert "## Virtual clock: time to accuracy and bytes" in text
    assert "| psl deadline_s=0.3 | 1 |" in text

    plain = tmp_path / "plain"
    shutil.copytree(RESULTS / "reduced-table4", plain, ignore=shutil.ignore_patterns("plots", "report.md"))
    assert "Virtual clock" not in write_report(plain).read_text()
