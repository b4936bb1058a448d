"""sglr_ray.analysis: keys and methods derived from their declarations, confidence intervals and
paired differences, on hand-made results directories (no Ray, no training)."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from analysis_results import BASE_SETTINGS, grid_runs, run_row, write_results

from sglr_ray.analysis import runs as run_keys
from sglr_ray.analysis import stats
from sglr_ray.analysis import tables as analysis
from sglr_ray.config import RunConfig
from sglr_ray.methods import METHODS, Method, OwnGradients
from sglr_ray.results.writer import write_table_atomic


@pytest.fixture
def grid_out(tmp_path):
    return write_results(tmp_path / "grid", grid_runs())


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
        # Seed 1 is older still: from before local_epochs and eval_mode, which ran as their defaults.
        gone = ("clients", "run_key", "cell_key", *(("local_epochs", "eval_mode") if seed else ()))
        row = {k: v for k, v in row.items() if k not in gone}
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


# Closed forms of the 0.975 quantile: t(1) is Cauchy, tan(0.475 pi); t(2) is (2p - 1) / sqrt(2p(1 - p)).
T1_975 = math.tan(0.475 * math.pi)
T2_975 = 0.95 / math.sqrt(2 * 0.975 * 0.025)
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
    assert half == pytest.approx(T2_975 * math.sqrt(7 / 3) / math.sqrt(3))  # std of 1, 2, 4: sqrt(7/3)
    frame = pd.DataFrame({"g": ["a", "a", "b"], "v": [1.0, 3.0, 5.0]})
    table = stats.summarise(frame, ["g"], "v")
    assert list(table.columns) == ["mean", "std", "ci95", "n"]
    assert table.loc["a"].tolist() == pytest.approx([2.0, math.sqrt(2), T1_975, 2])
    assert math.isnan(table.loc["b", "ci95"])


def test_table1_carries_confidence_intervals(grid_out):
    table = analysis.accuracy_by_clients_alpha(grid_out)
    assert table.loc[4, (0.0, "ci95")] == pytest.approx(T1_975)  # t(1) * sqrt(2) / sqrt(2)


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
    half = T2_975 * math.sqrt(7 / 3) / math.sqrt(3)  # t(2) * std(1, 2, 4) / sqrt(3)
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


def test_runs_from_before_a_setting_existed_form_their_own_cell_beside_the_new_default(tmp_path):
    # FL runs recorded before client_optimizer_state existed kept their optimizers ("keep"); FL's
    # default is now "reset". One table shows both, told apart by the setting, never averaged.
    old = [
        {k: v for k, v in run_row(f"fl-old-s{s}", method="fl", seed=s, client_optimizer_state="keep",
                                  final_test_acc=0.80).items() if k != "client_optimizer_state"}
        for s in (0, 1)
    ]  # fmt: skip
    new = [run_row(f"fl-new-s{s}", method="fl", seed=s, final_test_acc=0.90) for s in (0, 1)]
    psl = [run_row(f"psl-s{s}", method="psl", seed=s, final_test_acc=0.85) for s in (0, 1)]
    out = write_results(tmp_path / "o", [*new, *psl])
    for row in old:
        write_table_atomic([row], None, out / "runs" / f"{row['run_id']}.parquet")
    done = analysis.completed_runs(out).set_index("run_id")
    assert done.loc["fl-old-s0", "client_optimizer_state"] == "keep"
    assert done.loc["fl-new-s0", "client_optimizer_state"] == "reset"
    assert (
        done.loc["fl-old-s0", "run_key"]
        == run_row("x", method="fl", client_optimizer_state="keep")["run_key"]
    )
    table = analysis.method_comparison(out)
    assert "client_optimizer_state" in table.index.names
    acc = table.acc.droplevel(["C", "alpha", "phi", "phase"])
    assert acc[("fl", "keep")] == pytest.approx(80) and acc[("fl", "reset")] == pytest.approx(90)
    assert acc[("psl", "keep")] == pytest.approx(85)


def test_convergence_is_the_last_epochs_gain_per_setting(tmp_path):
    # epoch_rows climbs 2 points an epoch: the last 2 epochs sit 4 points over the 2 before.
    rows = [run_row(f"psl-s{s}", method="psl", seed=s, epochs_done=6) for s in (0, 1)]
    rows.append(run_row("short", method="sglr", alpha=0.5, epochs_done=3))  # too few epochs: no figure
    table = analysis.convergence(write_results(tmp_path / "o", rows)).droplevel(["C", "phi", "phase"])
    assert table.loc[("psl", 0.0), "last_gain"] == pytest.approx(4.0)
    assert table.loc[("psl", 0.0), "runs"] == 2
    assert math.isnan(table.loc[("slr", 0.5), "last_gain"])
