"""The baselines CL, FL and SSL: what each trains, and the bytes and FLOPs each is charged."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from sglr_ray.config import ConfigError
from sglr_ray.data import epoch_order, prepare_data, to_model_input
from sglr_ray.execution.driver import run_epoch, run_experiment
from sglr_ray.execution.local import LocalExecutor
from sglr_ray.measure.energy import NoMeter
from sglr_ray.measure.flops import bottom_step_flops, full_step_flops, top_step_flops
from sglr_ray.nodes.models import SPLIT_MODELS, bottom_state_nbytes, build_client_model, seeded, state_nbytes
from sglr_ray.nodes.optim import make_optimizer


def models(ex: LocalExecutor) -> list[torch.nn.Module]:
    return [shard.client_model(c) for shard in ex.shards for c in shard.client_ids]


def test_with_one_client_every_baseline_trains_exactly_like_psl(tiny_config, tmp_out):
    # One client: CL, FL and SSL all reduce to training the split model on its data,
    # which PSL with C = 1 does too (SPEC section 2), so losses and accuracy agree.
    # FL keeps its optimizer across rounds here, as the others do (by default it restarts it).
    keep = {"client_optimizer_state": "keep"}
    runs = {
        m: run_experiment(tiny_config(method=m, clients=1, epochs=2, out=tmp_out, run_id=m, **keep))
        for m in ("psl", "cl", "fl", "ssl")
    }
    for method in ("cl", "fl", "ssl"):
        for a, b in zip(runs["psl"].epochs, runs[method].epochs, strict=True):
            assert b.train_loss == pytest.approx(a.train_loss, abs=1e-5), method
            assert b.val.per_client == a.val.per_client, method
    assert runs["cl"].final_test_acc == pytest.approx(runs["psl"].final_test_acc, abs=1e-6)


def test_cl_trains_one_model_on_the_union_and_pays_raw_data_once(tiny_config, tmp_out):
    config = tiny_config(method="cl", clients=3, epochs=2, out=tmp_out)
    data = prepare_data(config)
    ex = LocalExecutor(config, data)
    assert ex.shard_client_ids == [[0]] and len(ex.shards[0].data[0]) == 3 * 32
    outcome = run_experiment(config)
    first, second = outcome.epochs
    raw = [p.images.nbytes + p.labels.nbytes for p in data.partitions]
    assert first.comm.bytes_up == raw and first.comm.bytes_down == [0, 0, 0]
    assert sum(second.comm.bytes_up) == 0 and second.comm.server_sent == 0
    assert len(set(first.val.per_client.values())) == 1 and set(first.val.per_client) == {0, 1, 2}
    # All compute is in the data centre, batch b over the union's 96 samples.
    assert first.flops.per_client == 0
    assert first.flops.server == (96 // 8) * full_step_flops(config.model, 8)


def test_fl_round_leaves_every_client_at_the_weighted_mean_with_weights_counted_both_ways(tiny_config):
    # One client per shard, so each shard's working model ends the round as its client trained it.
    config = tiny_config(method="fl", clients=3, clients_per_actor=1)
    ex = LocalExecutor(config, prepare_data(config))
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in models(ex)]
    for shard in ex.shards:
        shard.train_local(0)
    trained = [{k: v.clone() for k, v in m.state_dict().items()} for m in models(ex)]
    assert not torch.equal(trained[0]["0.0.weight"], trained[1]["0.0.weight"])  # clients drifted apart
    assert not torch.equal(trained[0]["0.0.weight"], before[0]["0.0.weight"])

    config_e = tiny_config(method="fl", clients=3, clients_per_actor=2)
    ex = LocalExecutor(config_e, prepare_data(config_e))
    result = run_epoch(ex, config_e, 0, None, NoMeter())
    for key in trained[0]:  # equal partitions: the plain mean of what each client trained
        expected = sum(s[key] for s in trained) / 3
        for model in models(ex):
            torch.testing.assert_close(model.state_dict()[key], expected, rtol=1e-5, atol=1e-6)
    full = state_nbytes(models(ex)[0])
    assert result.comm.bytes_up == [full] * 3 and result.comm.bytes_down == [full] * 3
    assert result.comm.server_sent == 3 * full
    assert result.flops.server == 0 and result.flops.per_client == 4 * full_step_flops("alexnet", 8)


def test_fl_local_epochs_are_passes_over_the_clients_own_data(tiny_config):
    one, two = (tiny_config(method="fl", clients=2, local_epochs=k) for k in (1, 2))
    results = [run_epoch(LocalExecutor(c, prepare_data(c)), c, 0, None, NoMeter()) for c in (one, two)]
    assert results[1].flops.per_client == 2 * results[0].flops.per_client
    assert results[1].train_loss < results[0].train_loss  # the second pass starts from trained weights
    assert two.iterations_per_epoch == 2 * (32 // 8)


def test_ssl_is_sequential_training_with_bottom_weights_handed_on(tiny_config):
    # Oracle: a plain loop. Each client has its own bottom copy and Adam state; before
    # its turn it takes the weights of the client before it; the top model is shared.
    config = tiny_config(method="ssl", clients=2, epochs=2)
    data = prepare_data(config)
    ex = LocalExecutor(config, data)
    results = [run_epoch(ex, config, e, None, NoMeter()) for e in range(config.epochs)]

    split = SPLIT_MODELS[config.model]
    bottoms = [build_client_model(config.model, config.seed, full=False) for _ in range(2)]
    top = seeded(split.build_top, config.seed + 1)
    client_opts = [make_optimizer(b.parameters(), "adam", config.lr) for b in bottoms]
    top_opt = make_optimizer(top.parameters(), "adam", config.lr)
    for epoch in range(config.epochs):
        for c in range(2):
            if epoch > 0 or c > 0:
                bottoms[c].load_state_dict(bottoms[(c - 1) % 2].state_dict())
            part = data.partitions[c]
            order = epoch_order(config.seed, c, epoch, len(part)).numpy()
            for step in range(config.steps_per_epoch):
                index = order[step * 8 : (step + 1) * 8]
                x, y = to_model_input(part.images[index]), torch.from_numpy(part.labels[index])
                loss = torch.nn.functional.cross_entropy(top(bottoms[c](x)), y)
                client_opts[c].zero_grad()
                top_opt.zero_grad()
                loss.backward()
                client_opts[c].step()
                top_opt.step()
    for mine, oracle in [(models(ex)[1], bottoms[1]), (ex.server.top, top)]:
        for p, q in zip(mine.parameters(), oracle.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=0, atol=1e-5)

    # Bytes: smashed data up and gradients down, plus a hand-over before every turn but the
    # very first: epoch 0 has 0 -> 1; epoch 1 has 1 -> 0 and 0 -> 1.
    up, down, h = 32 * (32 * 16 * 16 * 4 + 8), 32 * 32 * 16 * 16 * 4, bottom_state_nbytes(config.model)
    assert results[0].comm.bytes_up == [up + h, up] and results[0].comm.bytes_down == [down, down + h]
    assert results[1].comm.bytes_up == [up + h, up + h] and results[1].comm.bytes_down == [down + h] * 2
    # The server runs every turn at batch b; each client runs only its own.
    steps = config.steps_per_epoch
    assert results[0].flops.per_client == steps * bottom_step_flops("alexnet", 8)
    assert results[0].flops.server == 2 * steps * top_step_flops("alexnet", 8)


def test_baselines_write_the_shared_results_schema(tiny_config, tmp_out):
    for method in ("cl", "fl", "ssl"):
        run_experiment(tiny_config(method=method, clients=2, out=tmp_out, run_id=method))
    runs = pd.read_parquet(f"{tmp_out}/runs").set_index("run_id")
    assert set(runs.index) == {"cl", "fl", "ssl"} and (runs.status == "completed").all()
    assert runs.loc["cl", "client_pflops_mean"] == 0 and runs.loc["cl", "server_pflops"] > 0
    assert runs.loc["fl", "server_pflops"] == 0 and runs.loc["fl", "client_pflops_mean"] > 0
    clients = pd.read_parquet(f"{tmp_out}/clients")
    assert len(clients) == 3 * 2  # a row per client per epoch, for every method


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"method": "sglr", "local_epochs": 2}, "--local-epochs 2 applies to --method fl only"),
        ({"method": "fl", "local_epochs": 0}, "--local-epochs must be >= 1, got 0"),
        ({"method": "cl", "leakage": True}, "--leakage needs smashed data; --method cl sends none"),
        ({"method": "fl", "phi": 0.5}, "--phi 0.5 does not apply to --method fl"),
    ],
)
def test_baseline_settings_are_checked(tiny_config, settings, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        tiny_config(**settings)
