"""ASL (methods/asl.py): the server serves uploads in their arrival order on the virtual clock,
clients never wait for one another, and staleness is recorded."""

from __future__ import annotations

import pandas as pd
import pytest
from test_clock import PROFILES
from test_systems import profile_file

from sglr_ray.config import ConfigError
from sglr_ray.execution.driver import run_experiment
from sglr_ray.execution.engine import Engine
from sglr_ray.measure.timing import timing_for
from sglr_ray.methods.asl import AsyncClock
from sglr_ray.systems.clock import Timing

# client 0 at 1e9 FLOP/s, client 1 at 2e9; 1e6 FLOPs a sample, half before the upload; 1000 B up
# and 500 B down a sample at 1 MB/s up, 2 MB/s down; the server at 1e12 FLOP/s and 1 GB/s.
TIMING = Timing(PROFILES, 1e6, 2e6, 0.5, up_bytes_per_sample=1000, down_bytes_per_sample=500)


def test_the_async_clock_by_hand():
    clock = AsyncClock(TIMING, batch=1, clients=2)
    a, b = clock.upload(0, 0, 0.0), clock.upload(1, 0, 0.0)
    # forward 0.5e6/1e9 = 5e-4 (client 0), 2.5e-4 (client 1); upload 8*1000/8e6 = 1e-3
    assert (a.sent_s, a.arrives_s) == pytest.approx((5e-4, 1.5e-3))
    assert (b.sent_s, b.arrives_s) == pytest.approx((2.5e-4, 1.25e-3))
    assert sorted([a, b])[0] is b  # client 1 arrives first
    done_b = clock.serve(b)  # server: 2e6/1e12 + 8*500/8e9 = 2.5e-6; down 8*500/16e6 + 2.5e-4
    assert done_b == pytest.approx(1.25e-3 + 2.5e-6 + 2.5e-4 + 2.5e-4)
    clock.serve(a)
    assert clock.staleness == [[1], [0]]  # b's step ended after a was sent, before a was served
    assert clock.epoch_clock().staleness_mean == [1.0, 0.0]
    assert clock.busy_s[1] == pytest.approx(1.25e-3 + 5e-4)


def test_the_server_takes_uploads_in_arrival_order_and_fast_clients_do_not_wait(
    tiny_config, tmp_path, monkeypatch
):
    served = []
    real = Engine.split_step

    def spy(self, epoch, step, clients):
        served.append((clients[0], step))
        return real(self, epoch, step, clients)

    monkeypatch.setattr(Engine, "split_step", spy)
    devices = profile_file(tmp_path, 4, slow=10)
    config = tiny_config(method="asl", devices=devices, out=str(tmp_path / "asl"))
    outcome = run_experiment(config)
    assert len(served) == 16 and sorted(served) == [(c, s) for c in range(4) for s in range(4)]
    assert served.index((0, 0)) >= 9  # the slow client's first upload arrives after most others
    for client in range(4):  # each client's batches in order
        assert [s for c, s in served if c == client] == [0, 1, 2, 3]
    psl = run_experiment(tiny_config(method="psl", devices=devices, out=str(tmp_path / "psl")))
    clock = outcome.epochs[0].clock
    assert clock.steps == [4, 4, 4, 4]
    assert max(clock.busy_s[1:]) < clock.sim_s / 5  # the fast ones finish long before the slow one
    assert psl.epochs[0].clock.wait_s[1] > clock.wait_s[1]  # in PSL they wait for it every step
    clients = pd.read_parquet(f"{tmp_path}/asl/clients")
    assert clients["staleness_mean"].notna().all() and clients["staleness_mean"].max() > 0


def test_asl_moves_the_bytes_its_clock_predicts(tiny_config, tmp_out):
    config = tiny_config(method="asl", compress="int8", out=tmp_out)
    comm = run_experiment(config).epochs[0].comm
    timing = timing_for(config)
    assert comm.bytes_up == [4 * 8 * timing.up_bytes_per_sample] * 4
    assert comm.bytes_down == [4 * 8 * timing.down_bytes_per_sample] * 4


def test_asl_with_dropout_skips_the_batches_a_client_misses(tiny_config, tmp_out):
    clock = run_experiment(tiny_config(method="asl", dropout=0.4, out=tmp_out)).epochs[0].clock
    assert 0 < sum(clock.steps) < 16


def test_asl_refuses_a_deadline(tiny_config):
    with pytest.raises(ConfigError, match="--deadline-s does not apply to --method asl"):
        tiny_config(method="asl", deadline_s=1.0)
