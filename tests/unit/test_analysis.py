"""sglr_ray.analysis (tables, report) on small hand-written results directories (no Ray, no training)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from analysis_results import (
    EPOCHS,
    grid_runs,
    leakage_row,
    run_row,
    write_results,
)

from sglr_ray.analysis import tables as analysis
from sglr_ray.analysis.markdown import markdown_table
from sglr_ray.analysis.report import write_report
from sglr_ray.results.writer import RUNS_SCHEMA, write_table_atomic

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def grid_out(tmp_path) -> Path:
    return write_results(tmp_path / "grid", grid_runs())


def methods_runs() -> list[dict]:
    """A Table 4 sweep at C = 5: cl, fl, sfl, psl and sglr (alpha 0.5, phi 0.5), seeds 0 and 1."""
    accs = {"cl": 0.90, "fl": 0.89, "sglr": 0.88, "sfl": 0.86, "psl": 0.84}
    runs = []
    for method, acc in accs.items():
        knobs = {"alpha": 0.5, "phi": 0.5} if method == "sglr" else {}
        client_pflops = 0.0 if method == "cl" else 0.03
        for seed in (0, 1):
            runs.append(run_row(f"{method}-s{seed}", method=method, clients=5, seed=seed,
                                final_test_acc=acc + 0.01 * seed, client_pflops_mean=client_pflops,
                                bytes_per_client_mean=6e6, **knobs))  # fmt: skip
    return runs


def leakage_runs() -> tuple[list[dict], list[dict]]:
    """Table 5: C = 6, alpha 0.5, phi in {0, 0.5, 1}, two seeds, 1000 samples per client; mse grows
    with phi."""
    runs, leakage = [], []
    for phi in (0.0, 0.5, 1.0):
        for seed in (0, 1):
            run = run_row(f"leak-p{phi:g}-s{seed}", clients=6, alpha=0.5, phi=phi, seed=seed,
                          samples_per_client=1000)  # fmt: skip
            runs.append(run)
            leakage.append(leakage_row(run, mse=0.004 + 0.001 * phi + 0.0002 * seed))
    return runs, leakage


# ---------------------------------------------------------------- loading and filtering


def test_load_runs_reads_every_status_and_completed_runs_keeps_completed(grid_out):
    runs = analysis.load_runs(grid_out)
    assert len(runs) == 20 and set(runs.status) == {"completed", "failed", "running"}
    assert len(analysis.completed_runs(runs)) == 18


def test_load_epochs_joins_the_run_settings_of_completed_runs_only(grid_out):
    epochs = analysis.load_epochs(grid_out)
    assert {"method", "clients", "C", "alpha", "phi", "phase", "seed", "cell_key"} <= set(epochs.columns)
    assert len(epochs) == 18 * EPOCHS and not epochs.run_id.isin(["failed", "running"]).any()
    assert len(analysis.load_epochs(grid_out, completed_only=False)) == 18 * EPOCHS + 1 + 2


def test_missing_or_empty_directories_give_empty_frames(tmp_path):
    assert analysis.load_runs(tmp_path).empty
    assert list(analysis.load_runs(tmp_path).columns) == RUNS_SCHEMA.names
    assert analysis.load_leakage(tmp_path).empty


def test_a_rerun_of_the_same_seed_counts_once_with_the_latest_result(tmp_path):
    old = run_row("old", final_test_acc=0.5, started_at="2025-01-01T00:00:00+00:00")
    new = run_row("new", final_test_acc=0.7, started_at="2025-01-02T00:00:00+00:00")
    other = run_row("other", clients=10, final_test_acc=0.6)
    table = analysis.accuracy_by_clients_alpha(write_results(tmp_path / "o", [new, old, other]))
    assert table.loc[4, (0.0, "mean")] == pytest.approx(70.0) and table.loc[4, (0.0, "n")] == 1


def test_sglr_with_alpha_0_and_phi_0_is_psl(tmp_path):
    runs = [run_row("as-sglr", method="sglr", seed=0), run_row("as-psl", method="psl", seed=1)]
    table = analysis.method_comparison(write_results(tmp_path / "o", runs))
    assert list(table.index.get_level_values("method")) == ["psl"] and table.n.iloc[0] == 2


def test_runs_of_different_models_are_not_averaged_together(tmp_path):
    runs = [run_row("a"), run_row("b", model="resnet16")]
    out = write_results(tmp_path / "o", runs)
    with pytest.raises(analysis.MixedWorkloadError, match="model"):
        analysis.accuracy_by_clients_alpha(out)
    assert len(analysis.split_workloads(out)) == 2


def test_runs_written_before_a_column_existed_still_load(tmp_path):
    out = write_results(tmp_path / "o", [run_row("new", clients=10)])
    old = {k: v for k, v in run_row("old").items() if k not in ("bytes_per_client_mean", "local_epochs")}
    write_table_atomic([old], None, out / "runs" / "old.parquet")  # an older schema, inferred
    table = analysis.method_comparison(out)
    assert math.isnan(table.loc[("psl", 4, 0.0, 0.0, "all"), "mb_per_client"])
    assert table.loc[("psl", 10, 0.0, 0.0, "all"), "mb_per_client"] == pytest.approx(3.0)


def test_fl_runs_with_different_local_epochs_stay_apart(tmp_path):
    runs = [run_row(f"fl-e{e}", method="fl", local_epochs=e, final_test_acc=0.8 + 0.01 * e) for e in (1, 2)]
    table = analysis.method_comparison(write_results(tmp_path / "o", runs))
    assert table.index.names[-1] == "local_epochs" and table.acc.tolist() == pytest.approx([81.0, 82.0])
    assert analysis.setting_labels(table.reset_index())[1] == "fl C=4 local_epochs=2"


# ---------------------------------------------------------------- Tables 1-3


def test_table1_means_std_and_seed_counts(grid_out):
    table = analysis.accuracy_by_clients_alpha(grid_out)
    assert list(table.index) == [1, 4, 10]
    assert list(analysis.means(table).columns) == [0.0, 1.0]
    # (80 + 82) / 2 at C=4, alpha 0; +1 point at C=10, +2 points per unit of alpha
    assert analysis.means(table).loc[4].tolist() == pytest.approx([81.0, 83.0])
    assert analysis.means(table).loc[10].tolist() == pytest.approx([82.0, 84.0])
    assert table.loc[10, (1.0, "std")] == pytest.approx(math.sqrt(2))  # seeds 2 points apart
    assert (table.xs("n", axis=1, level="stat") == 2).all().all()


def test_failed_and_running_runs_do_not_count(tmp_path):
    runs = grid_runs()
    runs[-2]["final_test_acc"], runs[-1]["final_test_acc"] = 0.1, 0.1  # would drag the mean down
    table = analysis.means(analysis.accuracy_by_clients_alpha(write_results(tmp_path / "o", runs)))
    assert table.loc[4, 0.0] == pytest.approx(81.0) and table.loc[10, 0.0] == pytest.approx(82.0)


def test_the_c1_row_is_filled_from_any_split_run_with_one_client(tmp_path):
    runs = [*grid_runs(), run_row("c1-sglr-s0", clients=1, alpha=1.0, phi=0.5, final_test_acc=0.7)]
    out = write_results(tmp_path / "o", runs)
    for table in (analysis.accuracy_by_clients_alpha(out), analysis.accuracy_by_clients_phi(out)):
        mean, n = (table.loc[1].xs(stat, level="stat").tolist() for stat in ("mean", "n"))
        assert mean == pytest.approx([71.0] * len(mean)) and set(n) == {
            2
        }  # the seed-0 sglr run repeats the seed-0 psl run


def test_table2_columns_are_alpha_phi_pairs(grid_out):
    table = analysis.means(analysis.accuracy_by_clients_phi(grid_out))
    assert list(table.columns) == [(0.0, 0.0), (0.0, 0.5), (1.0, 0.0), (1.0, 0.5)]
    assert table.loc[10, (1.0, 0.5)] == pytest.approx(84.5)


def test_table3_uses_phi_1_runs_by_phase_and_sfl_stays_out(tmp_path):
    runs = [
        run_row(f"p-{phase}-c{c}", clients=c, phi=1.0, phase=phase, final_test_acc=acc)
        for c, accs in ((4, (0.80, 0.82)), (10, (0.70, 0.83)))
        for phase, acc in zip(("all", "initial:0.4"), accs, strict=True)
    ] + [run_row("sfl", method="sfl", clients=4, final_test_acc=0.1)]
    out = write_results(tmp_path / "o", runs)
    table = analysis.means(analysis.accuracy_by_phase(out))
    assert list(table.columns) == ["all", "initial:0.4"]
    assert table.loc[10].tolist() == pytest.approx([70.0, 83.0])
    assert analysis.accuracy_by_clients_alpha(out).empty  # only phi = 1 and sfl runs
    assert analysis.accuracy_by_phase(write_results(tmp_path / "g", grid_runs())).empty


# ---------------------------------------------------------------- Tables 4-5, communication


def test_method_comparison_accuracy_costs_and_order(tmp_path):
    table = analysis.method_comparison(write_results(tmp_path / "m", methods_runs()))
    assert list(table.index.get_level_values("method")) == ["cl", "fl", "psl", "sglr", "sfl"]
    sglr = table.xs("sglr", level="method").iloc[0]
    assert sglr.acc == pytest.approx(88.5) and sglr.acc_std == pytest.approx(math.sqrt(0.5)) and sglr.n == 2
    assert sglr.mb_per_client == pytest.approx(6.0) and sglr.mb_per_client_epoch == pytest.approx(2.0)
    assert table.xs("cl", level="method").client_pflops.iloc[0] == 0


def test_leakage_by_phi_means_and_std(tmp_path):
    runs, leakage = leakage_runs()
    table = analysis.leakage_by_phi(write_results(tmp_path / "l", runs, leakage))
    assert list(table.index) == [0.0, 0.5, 1.0]
    assert table.loc[1.0, ("mse", "mean")] == pytest.approx(0.0051)
    assert table.loc[0.0, ("mse", "std")] == pytest.approx(0.0002 / math.sqrt(2))
    assert table.loc[0.5, ("ssim", "n")] == 2


def test_communication_per_epoch_in_mb(grid_out):
    table = analysis.communication_per_epoch(grid_out)
    psl10 = table.loc[("psl", 10, 0.0, 0.0, "all")]
    assert psl10.mb_up == pytest.approx(10.0) and psl10.mb_per_client == pytest.approx(2.0)
    assert table.loc[("sgl", 10, 0.0, 0.5, "all")].mb_server_sent == pytest.approx(7.5)
    saving = analysis.server_saving(table)
    assert saving["sgl phi=0.5 C=10"] == pytest.approx(25.0)


# ---------------------------------------------------------------- the paper


def test_compare_with_paper_grid(grid_out):
    paper = analysis.paper_reference()["table1"]
    both = analysis.compare_with_paper(analysis.accuracy_by_clients_alpha(grid_out), paper)
    assert list(both.index) == [1, 4, 10] and list(both["diff"].columns) == [0.0, 1.0]
    assert both["paper"].loc[10, 1.0] == 84.98
    assert both["diff"].loc[4, 0.0] == pytest.approx(81.0 - 82.68)
    assert both["diff"].loc[1, 1.0] == pytest.approx(71.0 - 82.45)


def test_compare_with_paper_methods_match_on_method(tmp_path):
    table = analysis.method_comparison(write_results(tmp_path / "m", methods_runs()))
    both = analysis.compare_with_paper(table, analysis.paper_reference()["table4"])
    diff = both[("diff", "acc")].droplevel(["C", "alpha", "phi", "phase"])
    assert diff["sglr"] == pytest.approx(88.5 - 89.3) and diff["cl"] == pytest.approx(90.5 - 90.5)
    assert list(both["ours"].columns) == ["acc"]


def test_paper_reference_figures():
    paper = analysis.paper_reference()
    assert paper["table1"].loc[10, 2.0] == 34.37 and math.isnan(paper["table1"].loc[20, 1.5])
    assert paper["table2"].loc[20, (0.5, 0.5)] == 87.48
    assert paper["table4"].acc.to_dict() == {"cl": 90.5, "fl": 89.7, "sglr": 89.3, "sfl": 86.0, "psl": 84.7}


def test_trend_helpers():
    paper = analysis.paper_reference()
    assert analysis.drops_with_clients(paper["table1"]) == [
        (2.0, 1, 4, 82.45, 82.14),
        (2.0, 4, 10, 82.14, 34.37),
    ]
    gains = analysis.gain_over(paper["table2"], lambda label: label == (0.0, 0.0))
    assert gains.gain.tolist() == pytest.approx([84.22 - 82.68, 85.93 - 83.49, 87.48 - 84.88])


# ---------------------------------------------------------------- the report


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_report_of_a_grid(grid_out):
    path = write_report(grid_out)
    text = path.read_text()
    assert path == grid_out / "report.md"
    assert f"sglr-ray report {grid_out}" in text and "18 completed, 1 running, 1 failed" in text
    assert "### Table 1" in text and "### Table 2" in text and "### Table 4" in text
    assert "### Table 3" not in text and "### Table 5" not in text  # no phi = 1 runs, no leakage
    # Two seeds 2 points apart: std sqrt(2), so the 95% half-width is t(1) * sqrt(2) / sqrt(2) = 12.71.
    assert "| C | alpha=0 | alpha=1 |" in text and "| 10 | 82.00 ± 12.71 | 84.00 ± 12.71 |" in text
    assert "95% confidence interval (Student t, n - 1 degrees of freedom), over 2 seeds." in text
    assert "### Paired differences against PSL" in text
    assert "| sglr a=1 phi=0.5 | 10 | 2 | 84.50 | 82.00 | 2.50 | [+2.50, +2.50] |" in text
    assert "| 82.45 | 82.45 | 82.45 | 82.45 | 82.45 |" in text  # the paper's C = 1 row
    assert "Accuracy rises with C for every alpha: yes; in the paper: no (alpha=2 falls" in text
    for name in ("accuracy_per_epoch", "accuracy_vs_clients", "difference_vs_clients", "costs_per_client"):
        assert f"(plots/{name}.png)" in text
        assert_png(grid_out / "plots" / f"{name}.png")
    assert not [p for p in grid_out.rglob(".*") if p.is_file()]  # no temporary files left


def test_report_sections_per_workload_skip_single_c_grids(tmp_path):
    runs, leakage = leakage_runs()  # 1000 samples per client: a second workload
    out = write_results(tmp_path / "ml", methods_runs() + runs, leakage)
    text = write_report(out, tmp_path / "elsewhere" / "r.md").read_text()
    assert text.count("\n## alexnet, fashion-mnist (iid), ") == 2
    assert "### Table 1" not in text and "### Table 2" not in text  # one C in each workload
    methods, leaks = text.split("\n## Provenance")[0].split("\n## ")[1:]
    assert "### Table 4" in methods and "### Table 5" not in methods
    assert "SGLR's mean above PSL's: yes (+4.00 points)" in methods and "in the paper (C=5)" in methods
    assert "### Table 5" in leaks
    assert "Averaging leaks less (reconstruction MSE higher at phi=1 than at phi=0): yes" in leaks
    plots = tmp_path / "elsewhere" / "plots"
    for number in (1, 2):
        assert_png(plots / f"costs_per_client-{number}.png")
        assert f"(plots/accuracy_per_epoch-{number}.png)" in text
    assert not list(plots.glob("accuracy_vs_clients*")) and not list(plots.glob("difference_vs_clients*"))


def test_report_pairs_each_phase_with_averaging_throughout(tmp_path):
    accs = {"all": (0.80, 0.81), "initial:0.4": (0.82, 0.84), "final:0.4": (0.79, 0.79)}
    runs = [
        run_row(f"{phase}-s{seed}", clients=4, alpha=1.0, phi=1.0, phase=phase, seed=seed, final_test_acc=acc)
        for phase, per_seed in accs.items()
        for seed, acc in enumerate(per_seed)
    ]
    text = write_report(write_results(tmp_path / "p", runs)).read_text()
    assert "### Paired differences against averaging throughout" in text
    # Per-seed differences 2 and 3 points: mean 2.5, 95% half-width t(1) * 0.707 / sqrt(2) = 6.35.
    assert "| initial:0.4 | 4 | 2 | 83.00 | 80.50 | 2.50 | [-3.85, +8.85] |" in text
    assert "| final:0.4 | 4 | 2 | 79.00 | 80.50 | -1.50 | [-7.85, +4.85] |" in text
    assert "| all | 4 |" not in text and "Paired differences against PSL" not in text


def test_report_with_no_completed_runs(tmp_path):
    out = write_results(tmp_path / "empty", [run_row("r", status="running", final_test_acc=None)])
    text = write_report(out).read_text()
    assert "No completed runs yet." in text and "###" not in text and not (out / "plots").exists()
    with pytest.raises(FileNotFoundError, match="runs"):
        write_report(tmp_path / "nowhere")


def test_markdown_table_formats_index_labels_and_numbers():
    index = pd.Index([0.5, 2.0], name="phi")
    frame = pd.DataFrame({"x": [12.5, float("nan")], "y": [0.00123, 2.0]}, index=index)
    # One number of decimals per column, enough for its smallest value.
    assert markdown_table(frame).splitlines() == [
        "| phi | x | y |", "|---|---|---|", "| 0.5 | 12.50 | 0.00123 |", "| 2 |  | 2.00000 |",
    ]  # fmt: skip
    assert markdown_table(frame, exact=True).splitlines()[2:] == ["| 0.5 | 12.5 | 0.00123 |", "| 2 |  | 2 |"]


def test_the_report_counts_completed_runs_per_machine(tmp_path):
    runs = [
        run_row("a", seed=0, machine="AMD EPYC x2, torch 2.14.1"),
        run_row("b", seed=1, machine="Intel Xeon x2, torch 2.14.1"),
        run_row("c", seed=2, machine="Intel Xeon x2, torch 2.14.1"),
        run_row("d", seed=3, machine="AMD EPYC x2, torch 2.14.1", status="failed"),
        run_row("e", seed=4),  # recorded before the column existed
    ]
    text = write_report(write_results(tmp_path / "o", runs)).read_text()
    provenance = text.split("## Provenance")[1]
    counts = (
        "| Intel Xeon x2, torch 2.14.1 | 2 |",
        "| AMD EPYC x2, torch 2.14.1 | 1 |",
        "| not recorded | 1 |",
    )
    assert all(line in provenance for line in counts)
    assert "5 runs recorded: 4 completed, 0 running, 1 failed" in provenance
