"""The privacy suite on the Ray executor: the same privacy rows as in one process."""

from __future__ import annotations

import pandas as pd
import pytest

from sglr_ray.execution.driver import run_experiment


@pytest.mark.parametrize(
    "settings",
    [{"method": "usl", "attack": "label", "defense": "label-rr:1"},
     {"method": "sglr", "attack": "inversion", "defense": "noise:0.5", "leakage_aux_samples": 64,
      "leakage_epochs": 1},
     {"method": "sglr", "phi": 0.5, "attack": "broadcast", "compress": "int8"},
     {"method": "sglr", "attack": "fsha", "leakage_aux_samples": 64}],
    ids=["usl-label", "sglr-inversion", "sglr-broadcast-int8", "sglr-fsha"],
)  # fmt: skip
def test_privacy_rows_are_the_same_on_both_executors(ray_session, tiny_config, tmp_out, settings):
    config = tiny_config(clients=4, clients_per_actor=2, epochs=2, out=tmp_out, **settings)
    rows = [
        pd.read_parquet(run_experiment(config.replace(executor=e, run_id=e)).paths["privacy"])
        for e in ("local", "ray")
    ]
    local, remote = (r.drop(columns="run_id") for r in rows)
    assert len(local) >= 2
    pd.testing.assert_frame_equal(local, remote, atol=1e-6, rtol=0)
