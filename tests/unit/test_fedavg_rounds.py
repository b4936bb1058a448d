"""FedAvg rounds: FL against a plain-torch FedAvg loop, and what FL/SFL shards hold and checkpoint.

--client-optimizer-state reset starts every client's optimizer afresh each round
(as FedAvg and Flower do); keep carries each client's optimizer state on, which
is what FL did before the setting existed.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from sglr_ray.data import epoch_order, prepare_data, to_model_input
from sglr_ray.execution import checkpoint
from sglr_ray.execution.driver import run_epoch
from sglr_ray.execution.local import LocalExecutor
from sglr_ray.measure.energy import NoMeter
from sglr_ray.nodes.models import build_client_model


def fedavg_reference(config, keep_optimizers: bool) -> tuple[list[float], dict[str, torch.Tensor]]:
    """FedAvg in plain torch: (mean training loss per round, the final global weights).

    Each round every client copies the global model, trains it `local_epochs` passes
    over its own data with Adam (a new one each round, or its own one carried over
    with `keep_optimizers`), and the global model becomes the data-weighted mean.
    """
    torch.set_num_threads(config.torch_threads)  # as the executor does: float32 sums depend on it
    partitions = prepare_data(config).partitions
    global_model = build_client_model(config.model, config.seed, True)
    kept: dict[int, dict] = {}
    losses = []
    for epoch in range(config.epochs):
        start = copy.deepcopy(global_model.state_dict())
        trained, sizes, loss_sum, samples = [], [], 0.0, 0
        for client_id, part in enumerate(partitions):
            model = build_client_model(config.model, config.seed, True)
            model.load_state_dict(start)
            adam = torch.optim.Adam(model.parameters(), lr=config.lr, betas=(0.9, 0.999), fused=True)
            if keep_optimizers and client_id in kept:
                adam.load_state_dict(kept[client_id])
            passes = range(epoch * config.local_epochs, (epoch + 1) * config.local_epochs)
            for local_epoch in passes:
                order = epoch_order(config.seed, client_id, local_epoch, len(part))
                for step in range(len(part) // config.batch_size):
                    rows = order[step * config.batch_size : (step + 1) * config.batch_size].numpy()
                    x, y = to_model_input(part.images[rows]), torch.from_numpy(part.labels[rows])
                    loss = F.cross_entropy(model(x), y)
                    adam.zero_grad()
                    loss.backward()
                    adam.step()
                    loss_sum, samples = loss_sum + loss.item() * len(y), samples + len(y)
            kept[client_id] = copy.deepcopy(adam.state_dict())
            trained.append(model.state_dict())
            sizes.append(len(part))
        mean = {
            k: (sum(n * s[k].double() for s, n in zip(trained, sizes, strict=True)) / sum(sizes)).to(v.dtype)
            for k, v in start.items()
        }
        global_model.load_state_dict(mean)
        losses.append(loss_sum / samples)
    return losses, global_model.state_dict()


def run_rounds(config) -> tuple[LocalExecutor, list[float]]:
    ex = LocalExecutor(config, prepare_data(config))
    return ex, [run_epoch(ex, config, e, None, NoMeter()).train_loss for e in range(config.epochs)]


@pytest.mark.parametrize(("setting", "keep"), [("keep", True), ("reset", False), ("auto", False)])
def test_fl_matches_a_plain_fedavg_loop(tiny_config, setting, keep):
    config = tiny_config(
        method="fl", clients=3, clients_per_actor=2, epochs=2, local_epochs=2, client_optimizer_state=setting
    )
    want_losses, want_weights = fedavg_reference(config, keep_optimizers=keep)
    ex, losses = run_rounds(config)
    # The same operations in the same order: equal to the last bit (keep is what FL did before).
    assert losses == want_losses
    for shard, ids in zip(ex.shards, ex.shard_client_ids, strict=True):
        got = shard.model_state(ids[0])  # every client of every shard holds the global model
        assert all(torch.equal(got[k], want_weights[k]) for k in want_weights)


@pytest.mark.parametrize("setting", ["reset", "keep"])
def test_an_fl_shard_holds_one_model_however_many_clients(tiny_config, setting):
    config = tiny_config(method="fl", clients=5, client_optimizer_state=setting)
    (shard,) = LocalExecutor(config, prepare_data(config)).shards
    assert shard.states is None  # no per-client weights: the one working model
    # reset: one optimizer for the working model; keep: each client's state over the same weights
    assert len(shard._optimizers) == (1 if setting == "reset" else 5)


@pytest.mark.parametrize(
    ("method", "setting", "optimizers"),
    [("fl", "auto", False), ("fl", "keep", True), ("sfl", "auto", False), ("sfl", "keep", True),
     ("sflv1", "reset", False)],
)  # fmt: skip
def test_a_fedavg_checkpoint_holds_the_global_model_once(tiny_config, tmp_path, method, setting, optimizers):
    config = tiny_config(method=method, clients=3, clients_per_actor=2, client_optimizer_state=setting)
    ex, _ = run_rounds(config)
    checkpoint.save(ex, checkpoint.take_snapshot(ex, 0), checkpoint.checkpoint_path(str(tmp_path), "run"))
    payload = torch.load(tmp_path / "checkpoints" / "run.pt", weights_only=True)
    assert payload["model"].keys() == ex.shards[0].model_state(0).keys()
    assert {c: sorted(saved) for c, saved in payload["clients"].items()} == {
        c: ["optimizer"] if optimizers else [] for c in range(3)
    }


def test_psl_clients_keep_their_own_models_and_optimizers_in_a_checkpoint(tiny_config):
    config = tiny_config(method="psl", clients=2)
    ex, _ = run_rounds(config)
    state = ex.shards[0].state()
    assert state["model"] is None
    assert {c: sorted(saved) for c, saved in state["clients"].items()} == {
        c: ["model", "optimizer"] for c in (0, 1)
    }


@pytest.mark.parametrize("method", ["fl", "sfl"])
@pytest.mark.parametrize("setting", ["reset", "keep"])
def test_resuming_from_a_file_in_a_new_executor_replays_the_round_exactly(
    tiny_config, tmp_path, method, setting
):
    config = tiny_config(
        method=method, clients=3, clients_per_actor=2, epochs=2, client_optimizer_state=setting
    )
    ex = LocalExecutor(config, prepare_data(config))
    run_epoch(ex, config, 0, None, NoMeter())
    saved = checkpoint.checkpoint_path(str(tmp_path), "run")
    checkpoint.save(ex, checkpoint.take_snapshot(ex, 0), saved)
    whole = run_epoch(ex, config, 1, None, NoMeter())

    moved = config.replace(clients_per_actor=1)  # clients placed on shards differently
    fresh = LocalExecutor(moved, prepare_data(moved))
    checkpoint.restore(fresh, checkpoint.load(saved, fresh.shard_client_ids))
    resumed = run_epoch(fresh, moved, 1, None, NoMeter())
    assert resumed.train_loss == whole.train_loss and resumed.val == whole.val


@pytest.mark.parametrize("method", ["fl", "sfl"])
def test_reset_and_keep_differ_from_the_second_round_on(tiny_config, method):
    reset, keep = (
        run_rounds(tiny_config(method=method, clients=2, epochs=2, client_optimizer_state=s))[1]
        for s in ("reset", "keep")
    )
    assert reset[0] == keep[0] and reset[1] != keep[1]


@pytest.mark.parametrize("method", ["fl", "sfl", "sflv1"])
@pytest.mark.parametrize("setting", ["reset", "keep"])
def test_under_reset_no_optimizer_state_outlives_a_round(tiny_config, method, setting):
    ex, _ = run_rounds(
        tiny_config(method=method, clients=3, clients_per_actor=2, client_optimizer_state=setting)
    )
    held = [shard.holds_optimizer_state(c) for shard in ex.shards for c in shard.client_ids]
    assert held == [setting == "keep"] * 3
