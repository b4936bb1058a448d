"""Controls read against their baseline study (analysis/controls.py, `sglr-ray report --baseline`).

The baseline is the committed results/paper-table12 (C = 10, seeds 0-2, PSL and SGLR (0.5, 0.5));
the controls are those runs' rows with precision fp32 and accuracies moved by known amounts, so
every pairing and difference below is known in advance."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from sglr_ray.analysis import controls
from sglr_ray.analysis.report import write_report
from sglr_ray.analysis.runs import load_runs

RESULTS = Path(__file__).resolve().parents[2] / "results"
BASELINE = RESULTS / "paper-table12"
PSL_SHIFT = {0: 1.0, 1: 1.2, 2: 0.8}  # points added to the control's PSL, per seed
SGLR_SHIFT = {0: 3.0, 1: 3.3, 2: 2.7}  # and to its SGLR (0.5, 0.5): gains change by 2.0, 2.1, 1.9


@pytest.fixture(scope="module")
def baseline() -> pd.DataFrame:
    return load_runs(BASELINE)


def _cell(runs: pd.DataFrame, alpha: float, phi: float) -> pd.DataFrame:
    picked = runs[
        (runs.clients == 10) & runs.seed.isin([0, 1, 2]) & (runs.alpha == alpha) & (runs.phi == phi)
    ]
    return picked[picked.status == "completed"].drop_duplicates("seed", keep="last")


@pytest.fixture(scope="module")
def fp32(baseline: pd.DataFrame) -> pd.DataFrame:
    parts = []
    for (alpha, phi), shift in [((0.0, 0.0), PSL_SHIFT), ((0.5, 0.5), SGLR_SHIFT)]:
        cell = _cell(baseline, alpha, phi)
        assert sorted(cell.seed) == [0, 1, 2], "the committed baseline lost a run this test reads"
        moved = cell.final_test_acc + cell.seed.map(shift) / 100
        parts.append(cell.assign(precision="fp32", final_test_acc=moved, run_id=cell.run_id + "-fp32"))
    lonely = parts[0].iloc[[0]].assign(seed=7, run_id="lonely-fp32")  # no baseline run has seed 7
    same = _cell(baseline, 0.0, 0.0).assign(run_id=lambda f: f.run_id + "-copy")  # bf16: no control
    return pd.concat([*parts, lonely, same], ignore_index=True)


def test_the_changed_setting_is_read_from_the_runs(fp32: pd.DataFrame, baseline: pd.DataFrame) -> None:
    assert controls.changed_settings(fp32, baseline) == ["precision"]
    sgd = fp32.assign(optimizer="sgd", lr=0.01)
    assert set(controls.changed_settings(sgd, baseline)) == {"optimizer", "lr", "precision"}


def test_each_control_pairs_with_its_baseline_run(fp32: pd.DataFrame, baseline: pd.DataFrame) -> None:
    pairs, unpaired = controls.control_pairs(fp32, baseline)
    assert len(pairs) == 6 and set(pairs.variant) == {"precision fp32"}
    for shift, setting in [(PSL_SHIFT, "psl"), (SGLR_SHIFT, "sglr a=0.5 phi=0.5")]:
        rows = pairs[pairs.setting == setting].set_index("seed")
        assert rows["diff"].to_dict() == pytest.approx(shift)
    assert unpaired == ["precision fp32: psl C=10 seed 7"]


def test_the_gain_over_psl_changes_by_the_difference_in_differences(
    fp32: pd.DataFrame, baseline: pd.DataFrame
) -> None:
    changes = controls.effect_changes(controls.control_pairs(fp32, baseline)[0]).set_index("seed")
    assert list(changes.setting.unique()) == ["sglr a=0.5 phi=0.5"]
    assert changes["diff"].to_dict() == pytest.approx({0: 2.0, 1: 2.1, 2: 1.9})
    assert (changes.treatment - changes.control).to_dict() == pytest.approx(changes["diff"].to_dict())


def test_the_report_section_tests_both_tables(fp32: pd.DataFrame, baseline: pd.DataFrame) -> None:
    text = "\n".join(controls.control_lines(fp32, baseline, [str(BASELINE)]))
    assert "Settings the controls change: precision" in text
    first, gains = text.split("### Does the control change a knob's gain over PSL?")
    row = "| precision fp32: sglr a=0.5 phi=0.5 | 10 | 3 |"
    assert next(line for line in first.splitlines() if line.startswith(row)).endswith(
        "| 3.00 | [+2.25, +3.75] | 0.00332 | 0.00663 | 3/3 | above |"
    )
    gain_row = next(line for line in gains.splitlines() if line.startswith(row))
    assert "| 2.00 |" in gain_row and gain_row.endswith("| above |")  # +2.0 with a spread of 0.1
    assert "No baseline run for precision fp32: psl C=10 seed 7." in text
    assert "TOST" not in text  # the paper ran no controls: no equivalence test against it


def test_report_command_pairs_a_directory_with_its_baseline(fp32: pd.DataFrame, tmp_path: Path) -> None:
    (tmp_path / "runs").mkdir()
    fp32.to_parquet(tmp_path / "runs" / "controls.parquet")
    path = write_report(tmp_path, baselines=[BASELINE])
    text = path.read_text()
    assert f"--baseline {BASELINE}" in text and "## Controls against the baseline studies" in text


def test_a_missing_baseline_is_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "runs").mkdir()
    missing = tmp_path / "nowhere"
    command = [sys.executable, "-m", "sglr_ray", "report", str(tmp_path), "--baseline", str(missing)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "--baseline" in done.stderr and str(missing) in done.stderr
    assert "Traceback" not in done.stderr
