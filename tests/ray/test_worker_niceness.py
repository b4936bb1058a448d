"""An embedded Ray runs its workers at the driver's niceness, not Ray's default of 15 (ray_actors.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import ray

from sglr_ray.execution import ray_actors


def test_start_local_ray_asks_for_no_increment_over_the_driver(monkeypatch) -> None:
    started = {}
    monkeypatch.setenv(ray_actors.WORKER_NICENESS_ENV, "")  # so that teardown restores what was there
    monkeypatch.delenv(ray_actors.WORKER_NICENESS_ENV)
    monkeypatch.setattr(ray, "init", lambda **kwargs: started.update(kwargs))
    ray_actors.start_local_ray(num_cpus=1)
    assert os.environ[ray_actors.WORKER_NICENESS_ENV] == "0"
    assert started == {"address": "local", "include_dashboard": False, "num_cpus": 1}


def test_start_local_ray_keeps_a_niceness_the_user_set(monkeypatch) -> None:
    monkeypatch.setenv(ray_actors.WORKER_NICENESS_ENV, "19")
    monkeypatch.setattr(ray, "init", lambda **kwargs: None)
    ray_actors.start_local_ray()
    assert os.environ[ray_actors.WORKER_NICENESS_ENV] == "19"


def test_workers_of_the_session_ray_run_at_the_drivers_niceness(ray_session) -> None:
    @ray.remote(num_cpus=0)
    def niceness() -> int:
        return os.nice(0)

    assert ray.get(niceness.remote()) == os.nice(0)


_NICED_DRIVER = """
import os, ray
from sglr_ray.execution.ray_actors import start_local_ray
start_local_ray(num_cpus=1, log_to_driver=False)
print(os.nice(0), ray.get(ray.remote(num_cpus=0)(lambda: os.nice(0)).remote()))
ray.shutdown()
"""


def test_a_driver_started_under_nice_gets_workers_at_its_own_niceness() -> None:
    """Ray adds its setting to the niceness its raylet inherited from the driver, so a driver under
    `nice -n 3` (a background sweep) must not pass its own niceness on: workers would get 6."""
    env = {k: v for k, v in os.environ.items() if k != ray_actors.WORKER_NICENESS_ENV}
    done = subprocess.run(
        ["nice", "-n", "3", sys.executable, "-c", _NICED_DRIVER],
        env=env, capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    driver, worker = map(int, done.stdout.split()[-2:])
    assert driver == min(os.nice(0) + 3, 19)
    assert worker == driver
