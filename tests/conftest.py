"""Shared fixtures: tiny, fast configurations on the synthetic dataset."""

from __future__ import annotations

import pytest

from sglr_ray.config import RunConfig


def tiny(**changes) -> RunConfig:
    """A run of a few seconds: synthetic data, 32 samples per client, small evaluation sets."""
    base = {
        "dataset": "synthetic",
        "clients": 4,
        "samples_per_client": 32,
        "batch_size": 8,
        "epochs": 1,
        "val_samples": 100,
        "test_samples": 100,
        "torch_threads": 1,
        "executor": "local",
    }
    return RunConfig(**(base | changes))


@pytest.fixture
def tiny_config():
    return tiny


@pytest.fixture
def tmp_out(tmp_path):
    return str(tmp_path / "out")
