"""A user's method from a file (examples/custom_method.py) runs on both executors with the same numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

from sglr_ray.execution.driver import run_experiment

EXAMPLE = str(Path(__file__).parents[2] / "examples" / "custom_method.py") + ":sgm"


def test_custom_method_file_runs_on_ray_like_in_process(ray_session, tiny_config, tmp_out):
    config = tiny_config(method=EXAMPLE, clients=4, clients_per_actor=2, epochs=2)
    local = run_experiment(config.replace(executor="local", out=tmp_out, run_id="local"))
    remote = run_experiment(config.replace(executor="ray", out=tmp_out, run_id="ray"))
    for a, b in zip(local.epochs, remote.epochs, strict=True):
        assert b.train_loss == pytest.approx(a.train_loss, abs=1e-6)
        assert b.val == a.val and b.comm.server_sent == a.comm.server_sent
    assert all(e.averaging_on for e in local.epochs)  # every client got the shared median


def test_custom_client_hook_file_runs_on_ray_like_in_process(ray_session, tiny_config, tmp_out):
    """examples/custom_client.py: a client-side hook with seeded noise draws the same on both."""
    example = str(Path(__file__).parents[2] / "examples" / "custom_client.py") + ":nsd"
    config = tiny_config(method=example, clients=4, clients_per_actor=2, epochs=2)
    local = run_experiment(config.replace(executor="local", out=tmp_out, run_id="local"))
    remote = run_experiment(config.replace(executor="ray", out=tmp_out, run_id="ray"))
    for a, b in zip(local.epochs, remote.epochs, strict=True):
        assert b.train_loss == pytest.approx(a.train_loss, abs=1e-6)
        assert b.val == a.val and b.comm.bytes_up == a.comm.bytes_up
