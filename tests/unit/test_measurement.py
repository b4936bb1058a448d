"""FLOPs, energy meters and the communication model (SPEC section 4)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from sglr_ray.execution import driver
from sglr_ray.execution.driver import run_experiment
from sglr_ray.measure import energy
from sglr_ray.measure.comm import Sizes, comm_time_s, expected_epoch_bytes, paper_epoch_bytes, saving
from sglr_ray.measure.flops import bottom_step_flops, epoch_flops, full_step_flops, top_step_flops
from sglr_ray.nodes.models import INPUT_SHAPE, SPLIT_MODELS, smashed_shape, state_nbytes

ALEXNET_SMASHED_BYTES = 32 * 16 * 16 * 4


def test_alexnet_client_flops_match_hand_count():
    # conv 1->32, 5x5, on 32x32 outputs: 2 * 32 * 25 * 1024 FLOPs forward per sample, and the
    # same again for the weight gradient (no input gradient on the client).
    per_sample = 2 * (2 * 32 * 25 * 32 * 32)
    assert bottom_step_flops("alexnet", 8) == 8 * per_sample


def test_alexnet_paper_flops_match_hand_count():
    # Client: conv 1->64, 5x5, on 32x32 outputs, forward and weight gradient. Server forward: convs
    # 64->192 5x5 on 16x16, 192->384, 384->256, 256->256 3x3 on 8x8, then 4096->4096->4096->10.
    client = 2 * (2 * 64 * 25 * 32 * 32)
    convs = 2 * (192 * 64 * 25 * 16 * 16 + (384 * 192 + 256 * 384 + 256 * 256) * 9 * 8 * 8)
    linears = 2 * (4096 * 4096 * 2 + 4096 * 10)
    # Server backward: weight and input gradients everywhere, twice the forward.
    assert bottom_step_flops("alexnet-paper", 8) == 8 * client
    assert top_step_flops("alexnet-paper", 8) == 8 * 3 * (convs + linears)


def counted_by_torch(model: nn.Module, x: torch.Tensor, loss: bool) -> int:
    """torch's own FlopCounterMode over a real training step (forward, loss, backward)."""
    with FlopCounterMode(display=False) as counter:
        out = model(x)
        if loss:
            F.cross_entropy(out, torch.zeros(x.shape[0], dtype=torch.long)).backward()
        else:
            out.backward(torch.ones_like(out))
    return counter.get_total_flops()


@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("model", list(SPLIT_MODELS))
def test_flops_from_shapes_match_torch_flop_counter(model, batch):
    split = SPLIT_MODELS[model]
    x = torch.zeros(batch, *INPUT_SHAPE)
    s = torch.zeros(batch, *smashed_shape(model), requires_grad=True)
    whole = nn.Sequential(split.build_bottom(), split.build_top())
    assert bottom_step_flops(model, batch) == counted_by_torch(split.build_bottom(), x, loss=False)
    assert top_step_flops(model, batch) == counted_by_torch(split.build_top(), s, loss=True)
    assert full_step_flops(model, batch) == counted_by_torch(whole, x, loss=True)


@pytest.mark.parametrize("model", list(SPLIT_MODELS))
def test_flops_scale_with_batch_and_steps(model, tiny_config):
    assert top_step_flops(model, 32) == 4 * top_step_flops(model, 8)
    config = tiny_config(model=model, clients=4, samples_per_client=32, batch_size=8)
    flops = epoch_flops(config)
    assert flops.per_client == 4 * bottom_step_flops(model, 8)
    assert flops.server == 4 * top_step_flops(model, 32)
    assert flops.client_total == 4 * flops.per_client


def test_paper_worked_example():
    # SPEC section 4: C = 100, phi = 0.5, |D| = 50k, S(L) = 0.024 MB, S(w) = 200 MB, S(w_c) = 67 MB.
    sizes = Sizes(
        smashed_bytes=0.024e6, samples=50_000, clients=100, model_bytes=200e6, client_model_bytes=67e6
    )
    assert round(100 * saving("sglr", "sfl", sizes, phi=0.5), 1) == 88.6
    assert round(100 * saving("sglr", "fl", sizes, phi=0.5), 1) == 95.5
    with pytest.raises(ValueError, match="no analytic total for method 'ssl'"):
        paper_epoch_bytes("ssl", sizes)


@pytest.mark.parametrize(
    "method, phi", [("psl", 0.0), ("sfl", 0.0), ("sglr", 0.0), ("sglr", 0.5), ("sglr", 1.0)]
)
def test_measured_bytes_match_the_formulas(tiny_config, tmp_out, method, phi):
    knobs = {"phi": phi} if method == "sglr" else {}
    config = tiny_config(method=method, clients=4, out=tmp_out, run_id="r", **knobs)
    run_experiment(config)
    measured = pd.read_parquet(f"{tmp_out}/epochs").iloc[0]
    bottom = SPLIT_MODELS["alexnet"].build_bottom()
    sizes = Sizes(ALEXNET_SMASHED_BYTES, samples=4 * 32, clients=4, label_bytes=8,
                  client_model_bytes=state_nbytes(bottom))  # fmt: skip
    want = expected_epoch_bytes(sizes, 8, config.phi, True, method == "sfl")
    assert (measured.bytes_up, measured.bytes_down, measured.bytes_server_sent) == (
        want.up, want.down, want.server_sent,
    )  # fmt: skip
    # The paper's totals leave out the labels and count the averaged gradient as one S(L);
    # here it is a batch of b = 8 gradients broadcast once per step (4 steps).
    without_labels = Sizes(ALEXNET_SMASHED_BYTES, 4 * 32, 4, client_model_bytes=state_nbytes(bottom))
    paper = paper_epoch_bytes(method, without_labels, phi=config.phi)
    labels = 4 * 32 * 8
    paper_broadcast = ALEXNET_SMASHED_BYTES if method == "sglr" else 0
    broadcast = 4 * 8 * ALEXNET_SMASHED_BYTES if method == "sglr" and phi > 0 else 0
    assert want.on_the_wire - labels == pytest.approx(paper - paper_broadcast + broadcast)
    assert measured.comm_time_s == pytest.approx(8 * want.on_the_wire / config.link_rate_bps)


def test_comm_time_counts_a_broadcast_once():
    assert comm_time_s(bytes_up=1000, bytes_server_sent=500, link_rate_bps=8000) == pytest.approx(1.5)


def _fake_rapl(root, value, max_range=1000):
    domain = root / "intel-rapl:0"
    domain.mkdir(parents=True, exist_ok=True)
    (domain / "energy_uj").write_text(str(value))
    (domain / "max_energy_range_uj").write_text(str(max_range))
    sub = root / "intel-rapl:0:0"  # a sub-domain: must not be double-counted
    sub.mkdir(exist_ok=True)
    (sub / "energy_uj").write_text("5")
    (sub / "max_energy_range_uj").write_text(str(max_range))


def test_rapl_meter_reads_package_counters_across_a_wrap(tmp_path):
    _fake_rapl(tmp_path, 900)
    meter = energy.RaplMeter(tmp_path)
    start = meter.read_j()
    _fake_rapl(tmp_path, 100)  # wrapped: 900 -> 1000 -> 100 is 200 uJ
    assert meter.read_j() - start == pytest.approx(200e-6)


def test_open_meter_falls_back_to_none(monkeypatch, tmp_path):
    monkeypatch.setattr(energy, "NvmlMeter", _Unavailable)
    monkeypatch.setattr(energy, "RAPL_ROOT", tmp_path / "none-here")
    monkeypatch.setattr(energy.RaplMeter.__init__, "__defaults__", (tmp_path / "none-here",))
    meter = energy.open_meter()
    assert meter.source == "none" and meter.read_j() is None


class _Unavailable:
    source = "nvml"

    def __init__(self):
        raise RuntimeError("no GPU")


def test_attribution_is_proportional_to_flops():
    assert energy.attribute(10.0, [1, 1, 3]) == pytest.approx([2.0, 2.0, 6.0])
    assert energy.attribute(None, [1, 2]) == [None, None]


class _TenJoulesPerRead:
    source = "fake"

    def __init__(self):
        self.total = 0.0

    def read_j(self):
        self.total += 10.0
        return self.total


def test_run_records_measured_and_modelled_energy(tiny_config, tmp_out, monkeypatch):
    monkeypatch.setattr(driver, "open_meter", _TenJoulesPerRead)
    config = tiny_config(clients=2, epochs=2, out=tmp_out, run_id="e")
    run_experiment(config)
    epochs = pd.read_parquet(f"{tmp_out}/epochs")
    clients = pd.read_parquet(f"{tmp_out}/clients")
    runs = pd.read_parquet(f"{tmp_out}/runs").iloc[0]
    assert epochs.energy_j.tolist() == [10.0, 10.0] and set(epochs.energy_source) == {"fake"}
    flops = epoch_flops(config)
    client_share = 10.0 * flops.per_client / (flops.client_total + flops.server)
    assert clients.energy_j.tolist() == pytest.approx([client_share] * 4)
    assert epochs.compute_energy_model_j.tolist() == pytest.approx(
        [(flops.client_total + flops.server) * config.joules_per_flop] * 2
    )
    assert clients.tx_energy_model_j.tolist() == pytest.approx(
        (8 * clients.bytes_up * config.joules_per_bit).tolist()
    )
    assert runs.energy_j == 20.0 and runs.client_pflops_mean == pytest.approx(2 * flops.per_client / 1e15)


def test_no_meter_means_null_energy_not_zero(tiny_config, tmp_out, monkeypatch):
    monkeypatch.setattr(driver, "open_meter", energy.NoMeter)
    run_experiment(tiny_config(out=tmp_out))
    epochs = pd.read_parquet(f"{tmp_out}/epochs")
    assert epochs.energy_j.isna().all() and (epochs.energy_source == "none").all()
    assert (epochs.compute_energy_model_j > 0).all() and (epochs.tx_energy_model_j > 0).all()
