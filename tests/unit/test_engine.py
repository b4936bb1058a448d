"""End-to-end behaviour of the engine on the in-process executor."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import numpy as np
import pytest
import torch

from sglr_ray.data import epoch_order, prepare_data, to_model_input
from sglr_ray.execution.driver import run_epoch, run_experiment
from sglr_ray.execution.engine import Engine
from sglr_ray.execution.local import LocalExecutor
from sglr_ray.measure.energy import NoMeter
from sglr_ray.methods.schedules import PARALLEL
from sglr_ray.nodes.models import SPLIT_MODELS, seeded
from sglr_ray.nodes.optim import load_optimizer_state, make_optimizer
from sglr_ray.nodes.protocol import tensor_nbytes
from sglr_ray.nodes.server import Server


def bottoms(ex: LocalExecutor) -> list[torch.nn.Module]:
    return [shard.client_model(c) for shard in ex.shards for c in shard.client_ids]


@pytest.mark.parametrize("model", ["alexnet", "resnet16"])
def test_psl_with_one_client_is_centralised_training_step_for_step(tiny_config, model):
    # One step per epoch, so the per-epoch hook sees every step.
    config = tiny_config(method="psl", model=model, clients=1, samples_per_client=8, epochs=4)
    data = prepare_data(config)
    ex = LocalExecutor(config, data)

    split = SPLIT_MODELS[model]
    full = torch.nn.Sequential(
        seeded(split.build_bottom, config.seed), seeded(split.build_top, config.seed + 1)
    )
    optimizers = [make_optimizer(part.parameters(), "adam", config.lr) for part in full]
    images, labels = data.partitions[0].images, data.partitions[0].labels
    for epoch in range(config.epochs):
        psl_loss = PARALLEL.train_epoch(Engine(ex, config), epoch)
        index = epoch_order(config.seed, 0, epoch, len(labels)).numpy()
        loss = torch.nn.functional.cross_entropy(
            full(to_model_input(images[index])), torch.from_numpy(labels[index])
        )
        for opt in optimizers:
            opt.zero_grad()
        loss.backward()
        for opt in optimizers:
            opt.step()
        assert psl_loss == pytest.approx(loss.item(), abs=1e-6)
        for split_part, central_part in [(bottoms(ex)[0], full[0]), (ex.server.top, full[1])]:
            for p, q in zip(split_part.parameters(), central_part.parameters(), strict=True):
                torch.testing.assert_close(p, q, rtol=0, atol=1e-6)


def test_sfl_leaves_every_bottom_model_at_the_data_weighted_mean(tiny_config):
    config = tiny_config(method="sfl", clients=3, clients_per_actor=2)
    ex = LocalExecutor(config, prepare_data(config))
    PARALLEL.train_epoch(Engine(ex, config), 0)
    models = bottoms(ex)
    assert not torch.equal(models[0][0].weight, models[1][0].weight)  # clients drifted apart
    # Give the clients unequal data sizes so the weighting matters.
    first = ex.shards[0]
    first.data[0] = first.data[0].subset(np.arange(8))
    weights = torch.tensor([8.0, 32.0, 32.0])
    states = [{k: v.clone() for k, v in m.state_dict().items()} for m in models]
    Engine(ex, config).average_client_models()
    for key in states[0]:
        expected = sum(w * s[key] for w, s in zip(weights, states, strict=True)) / weights.sum()
        for model in models:
            torch.testing.assert_close(model.state_dict()[key], expected, rtol=1e-6, atol=1e-7)


def test_sfl_bytes_include_model_weights_both_ways(tiny_config):
    config = tiny_config(method="sfl", clients=2)
    ex = LocalExecutor(config, prepare_data(config))
    result = run_epoch(ex, config, 0, None, NoMeter())
    psl = tiny_config(method="psl", clients=2)
    psl_result = run_epoch(LocalExecutor(psl, prepare_data(psl)), psl, 0, None, NoMeter())
    weights_bytes = sum(tensor_nbytes(t) for t in bottoms(ex)[0].state_dict().values())
    assert result.comm.bytes_up[0] - psl_result.comm.bytes_up[0] == weights_bytes
    assert result.comm.bytes_down[0] - psl_result.comm.bytes_down[0] == weights_bytes


def test_byte_counts_psl_and_sglr_broadcast(tiny_config, tmp_out):
    import pandas as pd

    per_sample_smashed = 32 * 16 * 16 * 4
    psl = run_experiment(tiny_config(method="psl", out=tmp_out, run_id="psl"))
    sglr = run_experiment(tiny_config(method="sglr", phi=1.0, out=tmp_out, run_id="sglr"))
    epochs = pd.read_parquet(f"{tmp_out}/epochs").set_index("run_id")
    samples = 4 * 32  # clients x samples per client, all used (32 is a multiple of b = 8)
    assert epochs.loc["psl", "bytes_up"] == samples * (per_sample_smashed + 8)
    assert epochs.loc["psl", "bytes_down"] == samples * per_sample_smashed  # gradients mirror smashed data
    assert epochs.loc["psl", "bytes_server_sent"] == epochs.loc["psl", "bytes_down"]
    steps = 32 // 8
    assert epochs.loc["sglr", "bytes_down"] == samples * per_sample_smashed
    assert epochs.loc["sglr", "bytes_server_sent"] == steps * 8 * per_sample_smashed  # one broadcast a step
    clients = pd.read_parquet(f"{tmp_out}/clients")
    assert (clients[clients.run_id == "sglr"].active_steps == steps).all()
    assert psl.final_test_acc == epochs.loc["psl", "test_acc"]
    assert sglr.paths["runs"].endswith("runs/sglr.parquet")


class RecordingServer(Server):
    """A server that keeps everything the clients send it."""

    received: list = []

    def train_step(self, epoch, step, *uploads):
        RecordingServer.received.extend(uploads)
        return super().train_step(epoch, step, *uploads)

    def average_client_models(self, *uploads):
        RecordingServer.received.extend(uploads)
        return super().average_client_models(*uploads)


def tensors_in(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from tensors_in(v)
    elif isinstance(obj, list | tuple):
        for v in obj:
            yield from tensors_in(v)
    elif hasattr(obj, "__dict__"):
        for v in vars(obj).values():
            yield from tensors_in(v)


@pytest.mark.parametrize("method", ["psl", "sglr", "sfl", "ssl"])
def test_raw_inputs_never_reach_the_server(tiny_config, tmp_out, monkeypatch, method):
    import sglr_ray.execution.local as local_executor

    RecordingServer.received = []
    monkeypatch.setattr(local_executor, "Server", RecordingServer)
    config = tiny_config(method=method, clients=2, out=tmp_out)
    run_experiment(config)
    data = prepare_data(config)
    raw = [to_model_input(p.images) for p in data.partitions]
    raw_rows = {tuple(np.round(r.flatten().numpy(), 4)) for part in raw for r in part}
    tensors = [t for payload in RecordingServer.received for t in tensors_in(payload)]
    assert tensors, "the spy saw nothing"
    for t in tensors:
        assert tuple(t.shape[1:]) not in {(1, 32, 32), (28, 28), (1, 28, 28)}, (
            f"input-shaped payload {t.shape}"
        )
        if t.dim() > 1 and t.is_floating_point() and t[0].numel() == 1024:
            assert not {tuple(np.round(r.flatten().numpy(), 4)) for r in t} & raw_rows


def test_crash_mid_run_leaves_complete_tables_and_failed_status(tiny_config, tmp_out, monkeypatch):
    import pandas as pd

    from sglr_ray.nodes import client

    calls = {"n": 0}
    real = client.ClientShard.evaluate

    @functools.wraps(real)  # the executors dispatch by the method's name
    def evaluate_then_crash(self, *args):
        calls["n"] += 1
        if calls["n"] > 1:  # epoch 0's validation passes, epoch 1's fails
            raise RuntimeError("simulated crash")
        return real(self, *args)

    monkeypatch.setattr(client.ClientShard, "evaluate", evaluate_then_crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_experiment(tiny_config(epochs=3, out=tmp_out, run_id="crashy"))
    runs = pd.read_parquet(f"{tmp_out}/runs")
    assert runs.status.tolist() == ["failed"] and runs.epochs_done.tolist() == [1]
    assert pd.read_parquet(f"{tmp_out}/epochs").epoch.tolist() == [0]
    assert len(pd.read_parquet(f"{tmp_out}/clients")) == 4
    leftovers = [p.name for sub in ("runs", "epochs", "clients") for p in Path(tmp_out, sub).iterdir()]
    assert sorted(leftovers) == ["crashy.parquet"] * 3


def test_leakage_run_writes_its_table_and_image(tiny_config, tmp_out):
    import pandas as pd

    config = tiny_config(clients=2, leakage=True, leakage_client=1, leakage_aux_samples=300,
                         leakage_epochs=1, out=tmp_out, run_id="leaky")  # fmt: skip
    outcome = run_experiment(config)
    leakage = pd.read_parquet(f"{tmp_out}/leakage")
    assert leakage.run_id.tolist() == ["leaky"] and leakage.client_id.tolist() == [1]
    assert leakage.samples.tolist() == [100]  # the test subset of tiny_config
    assert 0 < leakage.mse.iloc[0] < 1 and 0 <= leakage.ssim.iloc[0] <= 1
    assert 0 <= leakage.distance_correlation.iloc[0] <= 1
    assert Path(tmp_out, "leakage_images", "leaky.png").stat().st_size > 0
    assert outcome.paths["leakage"].endswith("leakage/leaky.parquet")


def test_leakage_auxiliary_data_is_held_by_no_client(tiny_config):
    data = prepare_data(tiny_config(clients=3))
    held = {img.tobytes() for part in data.partitions for img in part.images}
    assert len(data.spare) == 50_000 - 3 * 32
    assert not held & {img.tobytes() for img in data.spare.images[:2000]}


def _train_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor
) -> None:
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()


def test_adam_is_fused_and_steps_as_the_per_parameter_loop():
    """make_optimizer's fused Adam (the speed-up of benchmarks/adam_step.py) makes the same
    update as torch's per-parameter loop: float64 weights agree to rounding after a few steps."""
    torch.manual_seed(0)
    fused_model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3)).double()
    loop_model = copy.deepcopy(fused_model)
    start = [p.detach().clone() for p in fused_model.parameters()]
    fused = make_optimizer(fused_model.parameters(), "adam", 1e-2)
    loop = torch.optim.Adam(loop_model.parameters(), lr=1e-2, betas=(0.9, 0.999), fused=False)
    assert fused.defaults["fused"] is True
    for _ in range(5):
        x, y = torch.randn(4, 6, dtype=torch.float64), torch.randint(0, 3, (4,))
        for model, optimizer in ((fused_model, fused), (loop_model, loop)):
            _train_step(model, optimizer, x, y)
    for got, want, before in zip(fused_model.parameters(), loop_model.parameters(), start, strict=True):
        assert (got - before).abs().max() > 1e-3  # both trained: five steps of lr 1e-2 moved every tensor
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_a_loop_adam_checkpoint_resumes_fused_with_its_state():
    """Checkpoints written before Adam was fused hold `fused: False` in their groups; a resume
    takes their moments and step counts but keeps stepping fused, and matches the loop."""
    torch.manual_seed(0)
    loop_model = torch.nn.Linear(4, 3).double()
    loop = torch.optim.Adam(loop_model.parameters(), lr=1e-2, betas=(0.9, 0.999), fused=False)

    batches = [(torch.randn(5, 4, dtype=torch.float64), torch.randint(0, 3, (5,))) for _ in range(6)]
    for x, y in batches[:3]:
        _train_step(loop_model, loop, x, y)
    resumed_model = copy.deepcopy(loop_model)
    resumed = make_optimizer(resumed_model.parameters(), "adam", 1e-2)
    saved = loop.state_dict()
    load_optimizer_state(resumed, saved)
    assert all(
        resumed.state[p]["exp_avg"] is not saved["state"][i]["exp_avg"]
        for i, p in enumerate(resumed_model.parameters())
    )
    assert [g["fused"] for g in resumed.param_groups] == [True]
    assert all(float(s["step"]) == 3 for s in resumed.state.values())
    for x, y in batches[3:]:
        _train_step(loop_model, loop, x, y)
        _train_step(resumed_model, resumed, x, y)
    for got, want in zip(resumed_model.parameters(), loop_model.parameters(), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
