"""The systems model end to end (issue 25): simulated time in the tables, device profiles,
and bad input refused before any work. No Ray."""

from __future__ import annotations

import pandas as pd
import pytest

from sglr_ray import cli
from sglr_ray.config import identity_hash
from sglr_ray.execution.driver import run_experiment
from sglr_ray.measure.timing import timing_for
from sglr_ray.systems.clock import phase_time


def profile_file(tmp_path, clients: int, slow: float = 1.0) -> str:
    """Every client at the defaults (1e10 FLOP/s, 100 Mbit/s); client 0 `slow` times slower."""
    rows = [(c, 1e10 / (slow if c == 0 else 1), 1e8 / (slow if c == 0 else 1)) for c in range(clients)]
    path = tmp_path / "devices.csv"
    pd.DataFrame(rows, columns=["client_id", "flops_per_s", "up_bps"]).assign(
        down_bps=lambda f: f["up_bps"]
    ).to_csv(path, index=False)
    return str(path)


def test_a_ten_times_slower_client_makes_a_psl_epoch_at_least_five_times_longer(tiny_config, tmp_path):
    same = run_experiment(tiny_config(method="psl", out=str(tmp_path / "a")))
    slow = run_experiment(
        tiny_config(method="psl", out=str(tmp_path / "b"), devices=profile_file(tmp_path, 4, 10))
    )
    ratio = slow.epochs[0].clock.sim_s / same.epochs[0].clock.sim_s
    assert ratio >= 5, ratio
    busy = slow.epochs[0].clock.busy_s
    assert busy[0] == pytest.approx(10 * busy[1])  # the slow one is busy, the others wait for it
    assert slow.epochs[0].clock.wait_s[1] > slow.epochs[0].clock.wait_s[0]


def test_the_tables_hold_cumulative_sim_time_and_each_clients_busy_and_wait(tiny_config, tmp_out):
    outcome = run_experiment(tiny_config(method="sglr", epochs=2, out=tmp_out))
    epochs, clients = pd.read_parquet(f"{tmp_out}/epochs"), pd.read_parquet(f"{tmp_out}/clients")
    assert epochs["sim_epoch_s"].gt(0).all()
    assert epochs["sim_time_s"].tolist() == pytest.approx(epochs["sim_epoch_s"].cumsum().tolist())
    joined = clients.merge(epochs[["epoch", "sim_epoch_s"]], on="epoch")
    assert (joined["busy_s"] + joined["wait_s"]).tolist() == pytest.approx(joined["sim_epoch_s"].tolist())
    assert clients["steps"].eq(4).all()  # 32 samples, batches of 8
    assert pd.read_parquet(f"{tmp_out}/runs")["sim_time_s"].item() == pytest.approx(
        epochs["sim_time_s"].iloc[-1]
    )
    assert outcome.epochs[-1].clock.sim_s == pytest.approx(epochs["sim_epoch_s"].iloc[-1])


@pytest.mark.parametrize("method", ["psl", "sglr", "sfl", "ssl", "fl", "usl"])
def test_the_phases_hold_every_byte_the_ledger_counted(tiny_config, tmp_out, method):
    comm = run_experiment(tiny_config(method=method, out=tmp_out)).epochs[0].comm
    for c in range(4):
        assert sum(p.up.get(c, 0) for p in comm.phases) == comm.bytes_up[c]
        assert sum(p.down.get(c, 0) for p in comm.phases) == comm.bytes_down[c]
    assert sum(p.server_sent for p in comm.phases) == comm.server_sent


@pytest.mark.parametrize("compress", ["none", "int8", "topk:0.1"])
def test_the_predicted_bytes_per_sample_are_what_the_ledger_counts(tiny_config, tmp_out, compress):
    config = tiny_config(method="psl", out=tmp_out, compress=compress)
    comm = run_experiment(config).epochs[0].comm
    timing, samples = timing_for(config), 4 * 32
    assert sum(comm.bytes_up) == timing.up_bytes_per_sample * samples
    assert sum(comm.bytes_down) == timing.down_bytes_per_sample * samples


def test_sglrs_broadcast_shortens_the_step_on_a_slow_server_link(tiny_config, tmp_path):
    times = {}
    for method in ("psl", "sglr"):
        config = tiny_config(method=method, out=str(tmp_path / method), server_link_bps=1e6)
        if method == "sglr":
            config = config.replace(alpha=0.0, phi=1.0)
        comm = run_experiment(config).epochs[0].comm
        times[method] = sum(phase_time(p, timing_for(config)).total_s for p in comm.phases)
    assert times["sglr"] < times["psl"]


@pytest.mark.parametrize("flags, says", [
    (["--devices", "missing.csv"], "--devices"),
    (["--devices", "lognormal:-2"], "--devices"),
    (["--client-flops-per-s", "0"], "--client-flops-per-s must be > 0"),
    (["--server-link-bps", "-5"], "--server-link-bps must be > 0"),
])  # fmt: skip
def test_bad_systems_input_is_one_line_and_exit_2_before_any_training(tmp_path, capsys, flags, says):
    args = ["run", "--dataset", "synthetic", "--clients", "2", "--samples-per-client", "16",
            "--out", str(tmp_path / "out"), *flags]  # fmt: skip
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and "\n" not in err
    assert not (tmp_path / "out" / "runs").exists()


@pytest.mark.parametrize("name, value", [
    ("devices", "lognormal:0.5"), ("client_flops_per_s", 2e10), ("server_flops_per_s", 1e12),
    ("server_link_bps", 1e8),
])  # fmt: skip
def test_a_systems_setting_joins_the_run_key_only_away_from_its_old_value(tiny_config, name, value):
    config = tiny_config()
    # At its old value the setting stays out of the run key, so earlier runs keep their names.
    assert config.run_key == identity_hash({k: v for k, v in config.identity().items() if k != name})
    changed = config.replace(**{name: value})
    assert changed.identity()[name] == value and changed.run_key != config.run_key


def test_the_report_plots_accuracy_against_simulated_time(tiny_config, tmp_out):
    from pathlib import Path

    from sglr_ray.analysis.report import write_report
    from sglr_ray.analysis.tables import accuracy_against_sim_time

    for method in ("psl", "sglr"):
        run_experiment(
            tiny_config(method=method, epochs=2, devices="lognormal:0.5", out=tmp_out, run_id=method)
        )
    table = accuracy_against_sim_time(tmp_out)
    epochs = pd.read_parquet(f"{tmp_out}/epochs").sort_values(["run_id", "epoch"])
    assert len(table) == 4  # two settings, two epochs each
    for (setting, epoch), row in table.iterrows():
        recorded = epochs[epochs.run_id == setting.split()[0]].iloc[epoch - 1]
        assert row.sim_time_s == pytest.approx(recorded.sim_time_s)
        assert row.acc == pytest.approx(100 * recorded.val_acc)
    text = write_report(Path(tmp_out)).read_text()
    assert "(plots/accuracy_vs_sim_time.png)" in text
    assert (Path(tmp_out) / "plots" / "accuracy_vs_sim_time.png").read_bytes()[:4] == b"\x89PNG"
