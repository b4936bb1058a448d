"""A user's method from a file (examples/custom_method.py) runs on both executors with the same numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

from sglr_ray.execution.driver import run_experiment

EXAMPLES = Path(__file__).parents[2] / "examples"


@pytest.mark.parametrize("example", ["custom_method.py:sgm", "custom_client.py:nsd"])
def test_custom_method_file_runs_on_ray_like_in_process(ray_session, tiny_config, tmp_out, example):
    """A split rule (sgm) and a client hook with seeded noise (nsd), each from a user's file."""
    config = tiny_config(method=str(EXAMPLES / example), clients=4, clients_per_actor=2, epochs=2)
    local = run_experiment(config.replace(executor="local", out=tmp_out, run_id="local"))
    remote = run_experiment(config.replace(executor="ray", out=tmp_out, run_id="ray"))
    for a, b in zip(local.epochs, remote.epochs, strict=True):
        assert b.train_loss == pytest.approx(a.train_loss, abs=1e-6)
        assert b.val == a.val and b.comm.server_sent == a.comm.server_sent
        assert b.comm.bytes_up == a.comm.bytes_up
    if example.endswith(":sgm"):
        assert all(e.averaging_on for e in local.epochs)  # every client got the shared median
