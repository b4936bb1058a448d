"""sglr_ray.analysis (tables, report) on small hand-written results directories (no Ray, no training)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from sglr_ray.analysis import runs as run_keys
from sglr_ray.analysis import stats
from sglr_ray.analysis import tables as analysis
from sglr_ray.analysis.markdown import markdown_table
from sglr_ray.analysis.report import write_report
from sglr_ray.config import RunConfig, config_fields
from sglr_ray.methods import METHODS, Method, OwnGradients
from sglr_ray.results.writer import (
    CLIENTS_SCHEMA,
    EPOCHS_SCHEMA,
    LEAKAGE_SCHEMA,
    RUNS_SCHEMA,
    write_table_atomic,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EPOCHS = 3


SETTINGS = {f.name for f in config_fields()}
BASE_SETTINGS = {"method": "sglr", "alpha": 0.0, "phi": 0.0, "clients": 4, "samples_per_client": 200,
                 "epochs": EPOCHS}  # fmt: skip
RESULTS = {
    "val_set_digest": "val-a", "test_set_digest": "test-a", "epochs_done": EPOCHS, "final_test_acc": 0.8,
    "wall_s": 10.0, "client_pflops_mean": 0.03, "server_pflops": 0.5, "bytes_per_client_mean": 3e6,
    "energy_source": "none", "energy_j": None, "compute_energy_model_j": 1.0, "tx_energy_model_j": 1.0,
    "status": "completed", "started_at": "2025-01-01T00:00:00+00:00", "code_version": "test",
    "restarts": 0, "resumes": 0,
}  # fmt: skip


def run_row(run_id: str, **changes) -> dict:
    """A runs row as ResultsWriter writes it: the settings of a real RunConfig (BASE_SETTINGS
    changed by the settings in `changes`) with its run_key and cell_key, then the results (RESULTS
    changed by the rest of `changes`)."""
    config = RunConfig(**(BASE_SETTINGS | {k: v for k, v in changes.items() if k in SETTINGS}))
    row = config.to_dict() | {
        "run_id": run_id, "run_key": config.run_key, "cell_key": config.cell_key,
        "server_lr": config.server_lr, "config_json": config.to_json(),
    }  # fmt: skip
    return filled(RUNS_SCHEMA, row | RESULTS | {k: v for k, v in changes.items() if k not in SETTINGS})


def filled(schema: pa.Schema, row: dict) -> dict:
    """`row` with exactly the schema's columns: the schema grows while other work lands, and a
    column this file does not know yet is left null."""
    return {name: row.get(name) for name in schema.names}


def epoch_rows(run: dict) -> list[dict]:
    """Per-epoch rows whose val_acc climbs to the run's final accuracy; 1 MB up and down per client."""
    clients, rows = run["clients"], []
    for epoch in range(run["epochs_done"]):
        acc = (run["final_test_acc"] or 0.5) - 0.02 * (run["epochs_done"] - 1 - epoch)
        rows.append({
            "run_id": run["run_id"], "epoch": epoch, "train_loss": 1.0 / (epoch + 1), "val_acc": acc,
            "test_acc": acc, "averaging_on": run["phi"] > 0, "wall_s": 1.0, "train_wall_s": 0.8,
            "eval_wall_s": 0.2, "bytes_up": clients * 1_000_000, "bytes_down": clients * 1_000_000,
            "bytes_server_sent": int(clients * 1_000_000 * (1 - run["phi"] / 2)), "comm_time_s": 0.1,
            "modelled_time_s": 0.9, "client_flops": clients * 10**13, "server_flops": 10**14,
            "energy_j": None, "energy_source": "none", "compute_energy_model_j": 1.0,
            "tx_energy_model_j": 1.0, "restarts": 0,
        })  # fmt: skip
    return [filled(EPOCHS_SCHEMA, r) for r in rows]


def client_rows(run: dict) -> list[dict]:
    rows = [
        {"run_id": run["run_id"], "epoch": e, "client_id": c, "val_acc": 0.8, "test_acc": 0.8,
         "bytes_up": 1_000_000, "bytes_down": 1_000_000, "active_steps": 25, "flops": 10**13,
         "energy_j": None, "compute_energy_model_j": 1.0, "tx_energy_model_j": 1.0}
        for e in range(run["epochs_done"]) for c in range(run["clients"])
    ]  # fmt: skip
    return [filled(CLIENTS_SCHEMA, r) for r in rows]


def leakage_row(run: dict, mse: float) -> dict:
    row = {
        "run_id": run["run_id"], "method": run["method"], "model": run["model"],
        "num_clients": run["clients"], "alpha": run["alpha"], "phi": run["phi"], "epochs": EPOCHS,
        "client_id": 0, "samples": 100, "aux_samples": 500, "decoder_epochs": 2, "mse": mse,
        "psnr": 10 * math.log10(1 / mse), "ssim": 0.8, "distance_correlation": 0.9,
    }  # fmt: skip
    return filled(LEAKAGE_SCHEMA, row)


def write_results(out: Path, runs: list[dict], leakage: list[dict] = ()) -> Path:
    """Lay out `out` as ResultsWriter does: runs/, epochs/, clients/ and (if given) leakage/."""
    for name in ("runs", "epochs", "clients"):
        (out / name).mkdir(parents=True, exist_ok=True)
    for run in runs:
        write_table_atomic([run], RUNS_SCHEMA, out / "runs" / f"{run['run_id']}.parquet")
        write_table_atomic(epoch_rows(run), EPOCHS_SCHEMA, out / "epochs" / f"{run['run_id']}.parquet")
        write_table_atomic(client_rows(run), CLIENTS_SCHEMA, out / "clients" / f"{run['run_id']}.parquet")
    if leakage:
        (out / "leakage").mkdir(exist_ok=True)
        for row in leakage:
            write_table_atomic([row], LEAKAGE_SCHEMA, out / "leakage" / f"{row['run_id']}.parquet")
    return out


def grid_runs() -> list[dict]:
    """A Table 1-2 sweep: C in {4, 10}, alpha in {0, 1}, phi in {0, 0.5}, two seeds whose accuracies
    differ by 0.02 (so each cell's std is 1.414 points), a C = 1 PSL run per seed, and one failed
    and one running run that must not count."""
    runs = []
    for clients in (4, 10):
        for alpha in (0.0, 1.0):
            for phi in (0.0, 0.5):
                for seed in (0, 1):
                    acc = 0.80 + 0.01 * (clients == 10) + 0.02 * alpha + 0.005 * (phi > 0) + 0.02 * seed
                    run_id = f"c{clients}-a{alpha:g}-p{phi:g}-s{seed}"
                    runs.append(run_row(run_id, clients=clients, alpha=alpha, phi=phi, seed=seed,
                                        final_test_acc=acc))  # fmt: skip
    runs += [run_row(f"c1-s{seed}", method="psl", clients=1, seed=seed, final_test_acc=0.7 + 0.02 * seed)
             for seed in (0, 1)]  # fmt: skip
    runs.append(run_row("failed", clients=4, final_test_acc=None, status="failed", epochs_done=1))
    runs.append(run_row("running", clients=10, final_test_acc=None, status="running", epochs_done=2))
    return runs


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
    for name in ("accuracy_per_epoch", "accuracy_vs_clients", "costs_per_client"):
        assert f"(plots/{name}.png)" in text
        assert_png(grid_out / "plots" / f"{name}.png")
    assert not [p for p in grid_out.rglob(".*") if p.is_file()]  # no temporary files left


def test_report_sections_per_workload_skip_single_c_grids(tmp_path):
    runs, leakage = leakage_runs()  # 1000 samples per client: a second workload
    out = write_results(tmp_path / "ml", methods_runs() + runs, leakage)
    text = write_report(out, tmp_path / "elsewhere" / "r.md").read_text()
    assert text.count("\n## alexnet, fashion-mnist (iid), ") == 2
    assert "### Table 1" not in text and "### Table 2" not in text  # one C in each workload
    methods, leaks = text.split("\n## ")[1:]
    assert "### Table 4" in methods and "### Table 5" not in methods
    assert "SGLR beats PSL: yes (+4.00 points)" in methods and "in the paper (C=5)" in methods
    assert "### Table 5" in leaks
    assert "Averaging leaks less (reconstruction MSE higher at phi=1 than at phi=0): yes" in leaks
    plots = tmp_path / "elsewhere" / "plots"
    for number in (1, 2):
        assert_png(plots / f"costs_per_client-{number}.png")
        assert f"(plots/accuracy_per_epoch-{number}.png)" in text
    assert not list(plots.glob("accuracy_vs_clients*"))


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


# ---------------------------------------------------------------- keys and methods from their declarations


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"method": "sglr", "alpha": 0.5, "phi": 0.75, "clients": 10, "seed": 3},
        {"method": "fl", "local_epochs": 2, "test_each_epoch": True},
        {"partition": "dirichlet", "dirichlet_beta": 0.3, "lr": 3e-4, "phase": "final:0.4"},
    ],
)
def test_keys_from_a_runs_row_equal_the_configs(tmp_path, settings):
    # Beside a row written before local_epochs existed, the int columns read back as floats.
    old = {k: v for k, v in run_row("old").items() if k != "local_epochs"}
    out = write_results(tmp_path / "o", [run_row("new", **settings)])
    write_table_atomic([old], None, out / "runs" / "old.parquet")
    runs = analysis.load_runs(out).set_index("run_id")
    config = RunConfig(**(BASE_SETTINGS | settings))
    row = runs.loc["new"].to_dict()
    assert run_keys.settings_key(row) == config.run_key
    assert run_keys.settings_key(row, with_seed=False) == config.cell_key


def test_a_rerun_under_another_method_name_counts_once(tmp_path):
    runs = [
        run_row("as-sglr", method="sglr", final_test_acc=0.5, started_at="2025-01-01T00:00:00+00:00"),
        run_row("as-psl", method="psl", final_test_acc=0.7, started_at="2025-01-02T00:00:00+00:00"),
    ]
    done = analysis.completed_runs(write_results(tmp_path / "o", runs))
    assert done.run_id.tolist() == ["as-psl"] and done.recorded_method.tolist() == ["psl"]
    assert done.cell_key.iloc[0] == RunConfig(**BASE_SETTINGS | {"method": "psl"}).cell_key


def test_rows_from_before_the_clients_column_load(tmp_path):
    out = write_results(tmp_path / "o", [])
    for seed in (0, 1):
        row = run_row(f"legacy-s{seed}", clients=10, seed=seed, final_test_acc=0.8 + 0.01 * seed)
        row = {k: v for k, v in row.items() if k not in ("clients", "run_key", "cell_key")}
        write_table_atomic([row | {"num_clients": 10}], None, out / "runs" / f"legacy-s{seed}.parquet")
    table = analysis.method_comparison(out)
    assert table.index.tolist() == [("psl", 10, 0.0, 0.0, "all")]
    assert table.acc.iloc[0] == pytest.approx(80.5) and table.n.iloc[0] == 2


def test_method_families_derive_from_the_registry(monkeypatch):
    assert analysis.GRID_METHODS == ("psl", "slr", "sgl", "sglr")
    assert analysis.effective_method("sglr", 0.0, 0.0) == "psl"
    assert analysis.effective_method("sglr", 0.5, 0.0) == "slr"
    assert analysis.effective_method("sgl", 0.0, 0.5) == "sgl"
    for other in ("sfl", "sflv1", "cyclesl", "gpsl", "fl", "examples/custom_method.py:sgm"):
        assert analysis.effective_method(other, 0.0, 0.0) == other
    # A method that is PSL's engine with its own split rule is not an alias of psl, even at phi 0.
    monkeypatch.setitem(
        METHODS, "mine", Method("mine", "a rule of its own", rule=lambda config: OwnGradients())
    )
    assert analysis.effective_method("mine", 0.0, 0.0) == "mine" and run_keys.method_family("mine") == (
        "mine",
    )


def test_another_engine_at_the_same_knobs_stays_out_of_the_grid(tmp_path):
    runs = [
        run_row("psl", method="psl", final_test_acc=0.8),
        run_row("cyc", method="cyclesl", final_test_acc=0.6),
    ]
    out = write_results(tmp_path / "o", runs)
    assert analysis.means(analysis.accuracy_by_clients_alpha(out)).loc[4, 0.0] == pytest.approx(80.0)
    table = analysis.method_comparison(out)
    assert table.acc.droplevel(["C", "alpha", "phi", "phase"]).to_dict() == pytest.approx(
        {"psl": 80.0, "cyclesl": 60.0}
    )


def test_runs_differing_in_any_identity_setting_are_not_averaged(tmp_path):
    out = write_results(tmp_path / "o", [run_row("a"), run_row("b", val_samples=500)])
    with pytest.raises(analysis.MixedWorkloadError, match="val_samples"):
        analysis.accuracy_by_clients_alpha(out)
    labels = list(analysis.split_workloads(out))
    assert len(labels) == 2 and {label.rsplit("val_samples=", 1)[1] for label in labels} == {"500", "2000"}


def test_check_cells_refuses_a_cell_of_two_settings(tmp_path):
    runs = analysis.completed_runs(write_results(tmp_path / "o", [run_row("a"), run_row("b", lr=0.01)]))
    with pytest.raises(analysis.MixedWorkloadError, match="lr"):
        run_keys.check_cells(runs, ["method", "C"])
    run_keys.check_cells(runs, ["method", "C", "lr"])


# ---------------------------------------------------------------- statistics


T_975_PUBLISHED = {1: 12.706, 2: 4.303, 3: 3.182, 5: 2.571, 10: 2.228, 20: 2.086, 30: 2.042, 40: 2.021,
                   60: 2.000, 120: 1.980, 1000: 1.962}  # fmt: skip


def t_cdf_above_zero(x: float, dof: int, steps: int = 4000) -> float:
    """P(0 < T < x) for Student's t, by Simpson's rule on its density: a reference independent of
    the quantile table."""
    log_norm = math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2) - 0.5 * math.log(dof * math.pi)

    def density(t: float) -> float:
        return math.exp(log_norm - (dof + 1) / 2 * math.log1p(t * t / dof))

    h = x / steps
    inner = sum((4 if i % 2 else 2) * density(i * h) for i in range(1, steps))
    return h / 3 * (density(0.0) + inner + density(x))


@pytest.mark.parametrize("dof", [*range(1, 31), 31, 45, 100, 400])
def test_t_975_is_the_0975_quantile(dof):
    assert t_cdf_above_zero(stats.t_975(dof), dof) == pytest.approx(0.475, abs=2e-5)
    if dof in T_975_PUBLISHED:
        assert stats.t_975(dof) == pytest.approx(T_975_PUBLISHED[dof], abs=6e-4)


def test_confidence_intervals_of_means():
    assert math.isnan(stats.t_975(0)) and math.isnan(stats.ci95_half_width(1.0, 1))
    mean, half, n = stats.mean_ci([1.0, 2.0, 4.0, float("nan")])
    assert (mean, n) == (pytest.approx(7 / 3), 3)
    assert half == pytest.approx(4.3027 * math.sqrt(7 / 3) / math.sqrt(3))  # std of 1, 2, 4: sqrt(7/3)
    frame = pd.DataFrame({"g": ["a", "a", "b"], "v": [1.0, 3.0, 5.0]})
    table = stats.summarise(frame, ["g"], "v")
    assert list(table.columns) == ["mean", "std", "ci95", "n"]
    assert table.loc["a"].tolist() == pytest.approx([2.0, math.sqrt(2), 12.7062, 2])
    assert math.isnan(table.loc["b", "ci95"])


def test_table1_carries_confidence_intervals(grid_out):
    table = analysis.accuracy_by_clients_alpha(grid_out)
    assert table.loc[4, (0.0, "ci95")] == pytest.approx(12.7062)  # t(1) * sqrt(2) / sqrt(2)


# ---------------------------------------------------------------- paired differences


def paired_runs() -> list[dict]:
    """psl and sglr (alpha 0.5, phi 0.5): at C = 4 seeds 0-2 with differences 1, 2 and 4 points and
    an unpaired sglr seed 3; at C = 10 seeds 0-1, both 3 points apart."""
    runs = []
    for clients, gaps in ((4, (1, 2, 4)), (10, (3, 3))):
        for seed, gap in enumerate(gaps):
            base = 0.80 + 0.01 * seed
            runs.append(run_row(f"psl-c{clients}-s{seed}", method="psl", clients=clients, seed=seed,
                                final_test_acc=base))  # fmt: skip
            runs.append(run_row(f"sglr-c{clients}-s{seed}", alpha=0.5, phi=0.5, clients=clients, seed=seed,
                                final_test_acc=base + gap / 100))  # fmt: skip
    return [*runs, run_row("sglr-c4-s3", alpha=0.5, phi=0.5, seed=3, final_test_acc=0.99)]


def test_paired_difference_known_answer(tmp_path):
    out = write_results(tmp_path / "o", paired_runs())
    table = analysis.paired_difference(out, {"method": "sglr"}, {"method": "psl"})
    assert table.index.name == "clients" and list(table.index) == [4, 10]
    four, ten = table.loc[4], table.loc[10]
    half = 4.3027 * math.sqrt(7 / 3) / math.sqrt(3)  # t(2) * std(1, 2, 4) / sqrt(3)
    assert four.n == 3 and four["diff"] == pytest.approx(7 / 3) and four.ci95 == pytest.approx(half)
    assert (four.low, four.high) == (pytest.approx(7 / 3 - half), pytest.approx(7 / 3 + half))
    assert four.control == pytest.approx(81.0) and four.treatment == pytest.approx(81.0 + 7 / 3)
    assert ten.n == 2 and ten["diff"] == pytest.approx(3.0) and ten.ci95 == pytest.approx(0.0, abs=1e-9)


def test_paired_difference_pairs_only_the_same_test_images(tmp_path):
    runs = paired_runs()
    runs[0]["test_set_digest"] = "test-b"  # psl, C = 4, seed 0: scored on other images
    table = analysis.paired_difference(
        write_results(tmp_path / "o", runs), {"method": "sglr"}, {"method": "psl"}
    )
    assert table.loc[4].n == 2 and table.loc[4]["diff"] == pytest.approx(3.0)


def test_paired_difference_filters_must_pick_one_run_per_pair(tmp_path):
    runs = [*paired_runs(), run_row("sglr-a1", alpha=1.0, phi=0.5, seed=0, final_test_acc=0.9)]
    out = write_results(tmp_path / "o", runs)
    with pytest.raises(analysis.AmbiguousPairError, match="treatment"):
        analysis.paired_difference(out, {"method": "sglr"}, {"method": "psl"})
    narrowed = analysis.paired_difference(
        out, lambda r: (r.method == "sglr") & (r.alpha == 1.0), {"method": "psl"}
    )
    assert narrowed.index.tolist() == [4] and narrowed.loc[4]["diff"] == pytest.approx(10.0)
    treatment = {"method": "sglr", "alpha": 0.5}
    by_two = analysis.paired_difference(out, treatment, {"method": "psl"}, by=["clients", "batch_size"])
    assert by_two.index.names == ["clients", "batch_size"] and by_two.loc[(4, 8)].n == 3


def test_paired_difference_refuses_another_workload(tmp_path):
    runs = [run_row("psl", method="psl"), run_row("sglr", alpha=0.5, phi=0.5, lr=0.01)]
    with pytest.raises(analysis.MixedWorkloadError, match="lr"):
        analysis.paired_difference(write_results(tmp_path / "o", runs), {"method": "sglr"}, {"method": "psl"})
