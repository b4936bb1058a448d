"""An embedded Ray runs its workers at the driver's niceness, not Ray's default of 15 (ray_actors.py)."""

from __future__ import annotations

import os

import ray

from sglr_ray.execution import ray_actors


def test_start_local_ray_asks_for_the_drivers_niceness(monkeypatch) -> None:
    started = {}
    monkeypatch.setenv(ray_actors.WORKER_NICENESS_ENV, "")  # so that teardown restores what was there
    monkeypatch.delenv(ray_actors.WORKER_NICENESS_ENV)
    monkeypatch.setattr(ray, "init", lambda **kwargs: started.update(kwargs))
    monkeypatch.setattr(os, "nice", lambda increment: 7)  # a driver started under `nice -n 7`
    ray_actors.start_local_ray(num_cpus=1)
    assert os.environ[ray_actors.WORKER_NICENESS_ENV] == "7"
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

    assert ray.get(niceness.remote()) == int(os.environ[ray_actors.WORKER_NICENESS_ENV]) == os.nice(0)
