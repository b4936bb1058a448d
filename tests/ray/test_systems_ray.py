"""The systems model on the Ray executor: the same numbers, bytes and simulated time as in process."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("method, extra", [
    ("psl", {"compress": "int8"}),
    ("sglr", {"compress": "topk:0.2", "phi": 1.0, "devices": "lognormal:1"}),
    ("sfl", {"clients_per_round": 3, "dropout": 0.3}),
    ("psl", {"deadline_s": 0.03, "devices": "lognormal:1"}),
    ("fl", {"clients_per_round": 2}),
    ("asl", {"devices": "lognormal:1", "dropout": 0.2}),
])  # fmt: skip
def test_ray_matches_local_with_the_systems_model(ray_session, tiny_config, tmp_out, method, extra):
    from sglr_ray.execution.driver import run_experiment

    config = tiny_config(method=method, clients=4, clients_per_actor=2, **extra)
    local = run_experiment(config.replace(executor="local", out=tmp_out, run_id="local"))
    remote = run_experiment(config.replace(executor="ray", out=tmp_out, run_id="ray"))
    for a, b in zip(local.epochs, remote.epochs, strict=True):
        assert b.train_loss == pytest.approx(a.train_loss, abs=1e-6)
        assert (b.comm.bytes_up, b.comm.bytes_down, b.comm.server_sent) == (
            a.comm.bytes_up, a.comm.bytes_down, a.comm.server_sent,
        )  # fmt: skip
        assert b.clock.sim_s == pytest.approx(a.clock.sim_s) and b.clock.steps == a.clock.steps
