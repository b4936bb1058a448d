"""benchmarks/compiled_steps.py runs the engine's step three ways and they compute alike."""

from __future__ import annotations

import pytest

from benchmarks.compiled_steps import MODES, measure
from sglr_ray.config import RunConfig
from sglr_ray.data import prepare_data


@pytest.mark.parametrize("method", ["psl", "ssl"])
def test_every_way_computes_the_in_process_losses_to_the_last_bit(ray_session, method):
    # The speeds it compares are of the same computation: the same steps from the same seed,
    # the shards on one thread and the server on every core in every way.
    config = RunConfig(method=method, model="alexnet", dataset="synthetic", clients=4,
                       samples_per_client=5 * 8, epochs=1, val_samples=10, test_samples=10)  # fmt: skip
    data = prepare_data(config)
    rows = {mode: measure(mode, config, data, method, warmup=2) for mode in MODES}
    losses = {mode: row["losses"] for mode, row in rows.items()}
    assert len(losses["in process"]) == 5 and len(set(losses["in process"])) > 1  # it trained
    assert losses["ray tasks"] == losses["in process"]
    assert losses["ray compiled graph"] == losses["in process"]
    for row in rows.values():
        assert row["timed_steps"] == 3 and row["samples_per_s"] > 0
    assert rows["ray tasks"]["server_cpu_s"] > 0 and rows["in process"]["server_cpu_s"] == 0
