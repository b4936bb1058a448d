"""examples/custom_method.py through the public API: the rule by hand, help, names and errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sglr_ray import cli
from sglr_ray.config import RunConfig
from sglr_ray.methods import get_method
from sglr_ray.nodes.server import Server
from tests.unit.test_server import uploads

EXAMPLE = str(Path(__file__).parents[2] / "examples" / "custom_method.py") + ":sgm"


def test_split_median_sends_everyone_the_elementwise_median(tiny_config):
    rule = get_method(EXAMPLE).rule(RunConfig(method=EXAMPLE))
    grads = {0: torch.tensor([1.0, 5.0]), 1: torch.tensor([2.0, -1.0]), 2: torch.tensor([9.0, 0.0])}
    delivery = rule.deliver(grads, epoch=0, step=0)
    assert delivery.own == {} and delivery.shared_to == [0, 1, 2]
    assert delivery.shared.tolist() == [2.0, 0.0]
    assert rule.deliver({4: grads[0]}, 0, 0).own == {4: grads[0]}  # one client: its own


def test_server_broadcasts_the_median_once(tiny_config):
    server = Server(tiny_config(method=EXAMPLE, clients=3))
    metrics, shared, delivery = server.train_step(0, 0, *uploads([3]))
    assert metrics.active_clients == [0, 1, 2] and delivery.own == {}
    assert server.ledger.server_sent == shared.numel() * shared.element_size()


def test_custom_method_runs_from_the_cli(tmp_path, capsys):
    args = ["run", "--method", EXAMPLE, "--dataset", "synthetic", "--clients", "3", "--samples-per-client",
            "16", "--epochs", "1", "--val-samples", "30", "--test-samples", "30", "--torch-threads", "1",
            "--out", str(tmp_path)]  # fmt: skip
    assert cli.main(args) == 0
    assert "run sgm-alexnet-c3-s0-" in capsys.readouterr().out


@pytest.mark.parametrize("spec, message", [
    ("examples/nothing.py:sgm", "no file"),
    (EXAMPLE.replace(":sgm", ":missing"), "defines no Method named 'missing'"),
])  # fmt: skip
def test_bad_method_file_is_refused_naming_it(spec, message, tmp_path, capsys):
    assert cli.main(["run", "--method", spec, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
