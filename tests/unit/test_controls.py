"""The authors' code as controls (issue 29): its loss (--loss bce-softmax) and its unscaled
split-layer gradient (--split-gradient joint-slice), both absent at today's values."""

from __future__ import annotations

import pytest
import torch

from sglr_ray.config import RunConfig
from sglr_ray.execution.driver import run_experiment
from sglr_ray.nodes.optim import classification_loss
from sglr_ray.nodes.server import Server
from tests.unit.test_server import uploads


def test_bce_softmax_is_the_mean_binary_cross_entropy_over_samples_and_classes():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    labels = torch.tensor([0, 1])
    p = torch.softmax(logits, dim=1)
    onehot = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    by_hand = -(onehot * p.log() + (1 - onehot) * (1 - p).log()).mean()
    assert classification_loss(logits, labels, "bce-softmax").item() == pytest.approx(by_hand.item())
    assert classification_loss(logits, labels, "cross-entropy").item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, labels).item()
    )


def test_joint_slice_sends_each_client_one_cth_of_its_gradient(tiny_config):
    ups = uploads([2, 2])  # 4 clients, equal batches
    per_client = Server(tiny_config(method="psl", clients=4)).train_step(0, 0, *ups)
    joint = Server(tiny_config(method="psl", clients=4, split_gradient="joint-slice")).train_step(0, 0, *ups)
    for mine, theirs in zip(per_client[2:], joint[2:], strict=True):
        for client, grad in mine.own.items():
            torch.testing.assert_close(theirs.own[client] * 4, grad)


def test_controls_stay_out_of_earlier_run_names_and_change_the_numbers(tiny_config, tmp_out):
    plain = RunConfig(dataset="synthetic", method="psl")
    assert (
        "loss" not in plain.identity()
        or plain.run_key
        == RunConfig(
            dataset="synthetic", method="psl", loss="cross-entropy", split_gradient="per-client"
        ).run_key
    )
    assert RunConfig(dataset="synthetic", method="psl", loss="bce-softmax").run_key != plain.run_key
    ce = run_experiment(tiny_config(method="fl", clients=2, out=tmp_out, run_id="ce"))
    bce = run_experiment(tiny_config(method="fl", clients=2, loss="bce-softmax", out=tmp_out, run_id="bce"))
    assert bce.epochs[0].train_loss < ce.epochs[0].train_loss  # BCE over 10 classes is far smaller
