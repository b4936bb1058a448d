"""benchmarks/flower_peer.py compares like with like: Flower's client does sglr-ray FL's work."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.fedavg_client import train_client
from benchmarks.flower_peer import peer_config, sglr_command, write_partitions
from sglr_ray.cli import build_parser, config_from_args
from sglr_ray.data import prepare_data
from sglr_ray.methods.aggregate import fedavg
from sglr_ray.nodes.local_shard import LocalShard
from sglr_ray.nodes.models import build_client_model


def test_flower_clients_train_and_average_as_sglr_ray_fl(tiny_config):
    config = tiny_config(method="fl", clients=3, samples_per_client=24)
    data = prepare_data(config)
    shard = LocalShard(config, [0, 1, 2], data.partitions, data.val, data.test)
    loss_sum, samples = shard.train_local(0)
    upload = shard.upload_models()
    sglr_mean = fedavg([(upload.weighted_state_sum, upload.total_weight)])

    start = build_client_model(config.model, config.seed, full=True).state_dict()
    results = [
        train_client(start, p.images, p.labels, i, config.seed, config.batch_size, config.lr, config.model)
        for i, p in enumerate(data.partitions)
    ]
    assert sum(r[1] for r in results) == pytest.approx(loss_sum, rel=1e-6)
    assert sum(r[2] for r in results) == samples
    weights = [len(p) for p in data.partitions]
    for key, value in sglr_mean.items():
        flower = sum(w * r[0][key].double() for w, r in zip(weights, results, strict=True)) / sum(weights)
        torch.testing.assert_close(value.double(), flower, rtol=1e-5, atol=1e-6)


def test_partitions_file_holds_sglr_ray_partitions(tiny_config, tmp_path):
    config = tiny_config(method="fl", clients=3, samples_per_client=24, seed=7)
    write_partitions(config, tmp_path / "parts.npz")
    data = prepare_data(config)
    with np.load(tmp_path / "parts.npz") as npz:
        assert all(np.array_equal(npz["images"][i], p.images) for i, p in enumerate(data.partitions))
        assert all(np.array_equal(npz["labels"][i], p.labels) for i, p in enumerate(data.partitions))


@pytest.mark.parametrize("executor", ["ray", "local"])
def test_the_sglr_ray_side_runs_the_compared_config(executor, tmp_path):
    config = peer_config(100, 500, seed=0)
    command = sglr_command(config, executor, tmp_path)
    assert command[1:4] == ["-m", "sglr_ray", "run"]
    parsed = config_from_args(build_parser().parse_args(command[3:]))
    assert parsed.identity() == config.identity() and parsed.executor == executor
