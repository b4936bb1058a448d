"""Partial participation, dropout and deadlines (issue 25, part 3): who takes part, what the
tables record, and what each method does with a missing client (systems/presence.py)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from test_systems import profile_file

from sglr_ray import cli
from sglr_ray.config import ConfigError
from sglr_ray.execution.driver import run_experiment
from sglr_ray.methods.phase import Phase
from sglr_ray.methods.sglr import SplitAvg
from sglr_ray.systems.presence import is_present, round_clients


def test_two_of_ten_fl_clients_a_round_are_recorded_as_the_rounds_participants(tiny_config, tmp_out):
    config = tiny_config(
        method="fl", clients=10, samples_per_client=16, clients_per_round=2, epochs=3, out=tmp_out
    )
    run_experiment(config)
    clients = pd.read_parquet(f"{tmp_out}/clients")
    took_part = clients[clients["steps"] > 0]
    assert took_part.groupby("epoch").size().tolist() == [2, 2, 2]
    for epoch, rows in took_part.groupby("epoch"):
        assert sorted(rows["client_id"]) == round_clients(config.seed, epoch, 2, 10)
    assert clients.loc[clients["steps"] == 0, "bytes_up"].eq(0).all()  # the others send nothing
    assert took_part["bytes_up"].gt(0).all()


def test_a_round_sample_is_seeded_and_changes_with_the_epoch():
    assert round_clients(0, 1, 3, 10) == round_clients(0, 1, 3, 10)
    assert len({tuple(round_clients(0, e, 3, 10)) for e in range(10)}) > 1
    assert round_clients(0, 1, 0, 4) == [0, 1, 2, 3]


def test_psl_with_dropout_trains_each_client_on_the_steps_it_is_present(tiny_config, tmp_out):
    config = tiny_config(method="psl", dropout=0.4, out=tmp_out)
    epoch = run_experiment(config).epochs[0]
    present = [[is_present(0, c, 0, step, 0.4) for step in range(4)] for c in range(4)]
    assert epoch.clock.steps == [sum(p) for p in present]
    assert 0 < sum(epoch.clock.steps) < 16  # some missed, some took part
    per_step = epoch.comm.bytes_up[0] // max(1, epoch.clock.steps[0])
    assert epoch.comm.bytes_up == [per_step * s for s in epoch.clock.steps]
    assert [p.samples for p in epoch.comm.phases] == [
        {c: 8 for c in range(4) if present[c][step]} for step in range(4) if any(p[step] for p in present)
    ]


def test_sfl_averages_only_the_rounds_clients(tiny_config, tmp_out):
    epoch = run_experiment(tiny_config(method="sfl", clients_per_round=2, out=tmp_out)).epochs[0]
    chosen = round_clients(0, 0, 2, 4)
    fedavg = epoch.comm.phases[-1]  # the round's model exchange
    assert sorted(fedavg.up) == chosen and sorted(fedavg.down) == chosen
    assert [c for c in range(4) if epoch.clock.steps[c]] == chosen


def test_a_deadline_bounds_the_epoch_of_a_ten_times_slower_client(tiny_config, tmp_path):
    devices = profile_file(tmp_path, 4, slow=10)
    slow = run_experiment(tiny_config(method="psl", devices=devices, out=str(tmp_path / "a"))).epochs[0]
    same = run_experiment(tiny_config(method="psl", out=str(tmp_path / "b"))).epochs[0]
    step_same = same.clock.sim_s / 4
    deadline = 2 * step_same  # the fast clients make it; the slow one (about 10x) does not
    bounded = run_experiment(
        tiny_config(method="psl", devices=devices, deadline_s=deadline, out=str(tmp_path / "c"))
    ).epochs[0]
    assert bounded.clock.late_steps == [4, 0, 0, 0] and bounded.clock.steps == [0, 4, 4, 4]
    assert bounded.clock.sim_s <= 4 * (deadline + step_same) < slow.clock.sim_s / 2
    assert bounded.comm.bytes_up[0] == slow.comm.bytes_up[0]  # its uploads were sent, and dropped
    assert bounded.comm.bytes_down[0] == 0


def test_a_late_client_discards_its_step(tiny_config, tmp_path):
    """Client 0 misses every deadline: its bottom model stays where it started."""
    config = tiny_config(method="psl", devices=profile_file(tmp_path, 4, slow=10), deadline_s=0.05)
    from sglr_ray.data import prepare_data
    from sglr_ray.execution.engine import Engine
    from sglr_ray.execution.local import LocalExecutor
    from sglr_ray.measure.timing import timing_for

    ex = LocalExecutor(config, prepare_data(config))
    before = {c: ex.shards[0].model_state(c) for c in (0, 1)}
    ex.server.use_timing(timing_for(config))
    Engine(ex, config).split_steps(0, None)
    assert ex.server.pop_epoch_comm().phases[0].late == (0,)
    after = {c: ex.shards[0].model_state(c) for c in (0, 1)}
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0])
    assert not all(torch.equal(before[1][k], after[1][k]) for k in before[1])


def test_splitavg_draws_its_active_set_from_the_clients_present():
    rule = SplitAvg(seed=0, phi=0.5, num_clients=8, phase=Phase.parse("all"), epochs=1)
    grads = {c: torch.full((2, 3), float(c)) for c in (1, 4, 5, 6)}
    delivery = rule.deliver(grads, epoch=0, step=0)
    assert len(delivery.shared_to) == 2 and set(delivery.shared_to) <= set(grads)  # floor(0.5 * 4)
    assert set(delivery.own) == set(grads) - set(delivery.shared_to)
    everyone = {c: torch.zeros(2, 3) for c in range(8)}
    assert len(rule.deliver(everyone, 0, 0).shared_to) == 4


@pytest.mark.parametrize("changes, says", [
    ({"dropout": 1.0}, "--dropout must be in [0, 1)"),
    ({"dropout": -0.1}, "--dropout must be >= 0"),
    ({"clients_per_round": 5}, "--clients-per-round 5 is more than --clients 4"),
    ({"method": "usl", "dropout": 0.1}, "--dropout does not apply to --method usl"),
    ({"method": "cl", "clients_per_round": 2}, "--clients-per-round does not apply to --method cl"),
    ({"method": "fl", "deadline_s": 1.0}, "--deadline-s does not apply to --method fl"),
    ({"method": "ssl", "clients_per_round": 2}, "--clients-per-round does not apply"),
    ({"deadline_s": -1.0}, "--deadline-s must be >= 0"),
])  # fmt: skip
def test_bad_participation_settings_are_refused(tiny_config, changes, says):
    with pytest.raises(ConfigError) as refused:
        tiny_config(**changes)
    assert says in str(refused.value)


def test_the_cli_refuses_k_larger_than_the_clients_in_one_line(tmp_path, capsys):
    args = ["run", "--dataset", "synthetic", "--clients", "2", "--clients-per-round", "3",
            "--out", str(tmp_path / "out")]  # fmt: skip
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "--clients-per-round" in err and "\n" not in err


def test_an_epoch_where_everyone_is_absent_trains_nothing_and_does_not_fail(tiny_config, tmp_out):
    epoch = run_experiment(tiny_config(method="fl", dropout=0.999, out=tmp_out)).epochs[0]
    assert epoch.clock.steps == [0, 0, 0, 0] and sum(epoch.comm.bytes_up) == 0
