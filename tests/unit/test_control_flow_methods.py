"""The methods that change control flow from their own files: U-shaped (usl) and local-loss (lsl)
split learning. What reaches the server, what the ledger counts, and an independent check of
usl's arithmetic against PSL where the two must agree."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import sglr_ray.execution.local as local_executor
from sglr_ray.data import prepare_data
from sglr_ray.execution.driver import run_experiment
from sglr_ray.methods.usl import TAIL_LAYERS
from sglr_ray.nodes.models import ModelParts, smashed_shape
from sglr_ray.nodes.server import Server
from tests.unit.test_engine import tensors_in


@pytest.fixture
def server_inbox(monkeypatch) -> list:
    """Every tensor in every call the in-process executor makes on the server, whatever its name."""
    seen: list = []
    real = local_executor.call_on

    def recording(target, method, *args):
        if isinstance(target, Server):
            seen.extend(t for arg in args for t in tensors_in(arg))
        return real(target, method, *args)

    monkeypatch.setattr(local_executor, "call_on", recording)
    return seen


def test_usl_labels_and_inputs_never_reach_the_server(tiny_config, tmp_out, server_inbox):
    config = tiny_config(method="usl", clients=2, phi=1.0, out=tmp_out)
    run_experiment(config)
    assert server_inbox, "the spy saw nothing"
    integer = [t for t in server_inbox if not t.is_floating_point() and t.numel() > 0]
    assert not integer, f"integer payloads reached the server: {[t.shape for t in integer]}"
    inputs = [t for t in server_inbox if tuple(t.shape[1:]) == (1, 32, 32)]
    assert not inputs
    data = prepare_data(config)
    labels = torch.from_numpy(data.partitions[0].labels)
    assert not [
        t for t in server_inbox if t.dim() == 1 and len(t) >= 8 and set(t.tolist()) <= set(labels.tolist())
    ]


def test_psl_sends_labels_up_so_the_spy_can_see_them(tiny_config, tmp_out, server_inbox):
    """The usl check above would pass for a spy that sees nothing: PSL's labels must show up."""
    run_experiment(tiny_config(method="psl", clients=2, out=tmp_out))
    assert [t for t in server_inbox if not t.is_floating_point() and t.numel() > 0]


def test_usl_with_one_client_trains_exactly_as_psl(tiny_config, tmp_out, float64):
    """With one client the U-shaped split and PSL compute the same model: the same layers, the same
    joint loss and the same Adam steps, only the last layer lives on the client."""
    runs = {
        m: run_experiment(tiny_config(method=m, clients=1, epochs=2, out=tmp_out, run_id=m))
        for m in ("psl", "usl")
    }
    for psl, usl in zip(runs["psl"].epochs, runs["usl"].epochs, strict=True):
        assert usl.train_loss == pytest.approx(psl.train_loss, rel=1e-9)
        assert usl.val == psl.val
    assert runs["usl"].final_test_acc == runs["psl"].final_test_acc


def test_usl_counts_both_cut_points_in_both_directions(tiny_config, tmp_out):
    config = tiny_config(method="usl", clients=3, out=tmp_out)
    epoch = run_experiment(config).epochs[0]
    parts = ModelParts(config.model, config.seed)
    with torch.no_grad():
        middle_out = parts.top()[:-TAIL_LAYERS].eval()(torch.zeros(2, *smashed_shape(config.model))).shape[1:]
    per_sample = 4 * (math.prod(smashed_shape(config.model)) + math.prod(middle_out))  # fp32
    samples = config.steps_per_epoch * config.batch_size
    assert epoch.comm.bytes_up == [samples * per_sample] * 3  # activations, then dL/dz
    assert epoch.comm.bytes_down == [samples * per_sample] * 3  # z, then dL/da
    assert epoch.comm.server_sent == 3 * samples * per_sample  # phi 0: no broadcast


def test_lsl_sends_nothing_down_and_psls_uplink_up(tiny_config, tmp_out):
    lsl = run_experiment(tiny_config(method="lsl", clients=3, out=tmp_out, run_id="lsl")).epochs[0]
    psl = run_experiment(tiny_config(method="psl", clients=3, out=tmp_out, run_id="psl")).epochs[0]
    assert lsl.comm.bytes_down == [0, 0, 0] and lsl.comm.server_sent == 0
    assert lsl.comm.bytes_up == psl.comm.bytes_up
    assert sum(psl.comm.bytes_down) > 0


def test_lsl_clients_learn_from_their_own_loss(tiny_config, tmp_out):
    """The bottoms move although no gradient comes down, and differently per client (own data)."""
    from sglr_ray.execution.local import LocalExecutor

    config = tiny_config(method="lsl", clients=2, out=tmp_out)
    ex = LocalExecutor(config, prepare_data(config))
    before = [ex.shards[0].model_state(c)["bottom.0.weight"] for c in (0, 1)]
    from sglr_ray.execution.engine import Engine

    config.spec.schedule.train_epoch(Engine(ex, config), 0)
    after = [ex.shards[0].model_state(c)["bottom.0.weight"] for c in (0, 1)]
    assert torch.equal(before[0], before[1])  # every client starts from the same weights
    assert not torch.equal(before[0], after[0]) and not torch.equal(after[0], after[1])


@pytest.mark.parametrize("method", ["usl", "lsl"])
def test_control_flow_methods_resume_from_a_checkpoint_with_the_same_numbers(tiny_config, tmp_out, method):
    from sglr_ray.execution import checkpoint

    config = tiny_config(method=method, clients=2, epochs=2, checkpoint_every=1, out=tmp_out)
    whole = run_experiment(config.replace(run_id="whole"))

    def crash_after_epoch_0(result):
        if result.epoch == 0:
            raise RuntimeError("the driver dies after epoch 0 was recorded")

    with pytest.raises(RuntimeError):
        run_experiment(config.replace(run_id="part"), on_epoch=crash_after_epoch_0)
    assert checkpoint.checkpoint_path(tmp_out, "part").exists()
    resumed = run_experiment(config.replace(run_id="part"), resume=True)
    assert [e.epoch for e in resumed.epochs] == [1]
    assert resumed.epochs[0].train_loss == pytest.approx(whole.epochs[1].train_loss, rel=1e-6)
    assert resumed.final_test_acc == whole.final_test_acc


def test_usl_dropout_in_the_tail_is_seeded_by_client_epoch_and_step(tiny_config, tmp_out):
    """A tail with dropout (small_cnn cut at 1,2: the tail holds its dropout) draws the same masks
    whatever the process's RNG did before: what makes both executors agree."""
    model = str(Path(__file__).parents[2] / "examples" / "custom_model.py") + ":small_cnn"
    losses = []
    for noise in (1, 2):
        torch.manual_seed(noise)  # a different global RNG state before each run
        config = tiny_config(method="usl", model=model, cut="1,2", clients=2, out=tmp_out, run_id=f"r{noise}")
        losses.append(run_experiment(config).epochs[0].train_loss)
    assert losses[0] == losses[1]
