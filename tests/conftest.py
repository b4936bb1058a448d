"""Shared fixtures: tiny, fast configurations on the synthetic dataset."""

from __future__ import annotations

import pytest
import torch

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


@pytest.fixture
def float64():
    """Float64 as torch's default dtype for one test: golden numbers that hold on any CPU."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)
