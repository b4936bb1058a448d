"""Both examples (a custom model on CIFAR-format data, a custom dataset with its own model) run on
the Ray executor with the numbers of the in-process one: the files travel to the actors, and
BatchNorm and dropout (masks seeded by seed, client, epoch and step) agree."""

from __future__ import annotations

from pathlib import Path

import pytest
from cifar_files import write_cifar

from sglr_ray.execution.driver import run_experiment

EXAMPLES = Path(__file__).parents[2] / "examples"
SMALL_CNN = f"{EXAMPLES / 'custom_model.py'}:small_cnn"
MLP = f"{EXAMPLES / 'custom_model.py'}:mlp"
TABULAR = f"{EXAMPLES / 'custom_dataset.py'}:tabular"


@pytest.mark.parametrize("settings", [
    {"model": SMALL_CNN, "dataset": "cifar10", "cut": "2"},
    {"model": MLP, "dataset": TABULAR, "method": "sfl"},
], ids=["custom-model", "custom-dataset"])  # fmt: skip
def test_example_runs_on_ray_like_in_process(ray_session, tiny_config, tmp_out, tmp_path, settings):
    write_cifar(tmp_path)
    config = tiny_config(clients=4, clients_per_actor=2, epochs=2, data_dir=str(tmp_path), **settings)
    local = run_experiment(config.replace(executor="local", out=tmp_out, run_id="local"))
    remote = run_experiment(config.replace(executor="ray", out=tmp_out, run_id="ray"))
    for a, b in zip(local.epochs, remote.epochs, strict=True):
        assert b.train_loss == pytest.approx(a.train_loss, abs=1e-6)
        assert b.val == a.val and b.comm.bytes_up == a.comm.bytes_up
        assert b.flops == a.flops
    assert remote.final_test_acc == local.final_test_acc
