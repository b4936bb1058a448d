"""SplitAvg's active sets, the phase schedule and FedAvg, as pure functions."""

from __future__ import annotations

import pytest
import torch

from sglr_ray.methods.aggregate import fedavg, weighted_state_sum
from sglr_ray.methods.phase import Phase
from sglr_ray.methods.sglr import active_set_size, sample_active_clients, split_layer_average


@pytest.mark.parametrize("phase, epochs, on_epochs", [
    ("all", 10, list(range(10))),
    ("initial:0.4", 10, [0, 1, 2, 3]),
    ("final:0.4", 10, [6, 7, 8, 9]),
    ("initial:0.6", 10, [0, 1, 2, 3, 4, 5]),
    ("final:0.25", 10, [7, 8, 9]),  # ceil(2.5) = 3
    ("final:0.7", 10, [3, 4, 5, 6, 7, 8, 9]),  # (1 - 0.7) * 10 = 3.0000000000000004 in floats
    ("initial:0.4", 6, [0, 1, 2]),  # ceil(2.4) = 3, and the same budget at either end:
    ("final:0.4", 6, [3, 4, 5]),
    ("final:0.3", 10, [7, 8, 9]),
    ("initial:0.29", 100, list(range(29))),  # 0.29 * 100 = 28.999999999999996 in floats
])  # fmt: skip
def test_phase_schedule_is_ceil_f_times_e_epochs_exactly(phase, epochs, on_epochs):
    on = [e for e in range(epochs) if Phase.parse(phase).is_on(e, epochs)]
    assert on == on_epochs


@pytest.mark.parametrize("phi, clients, size", [
    (0.0, 10, 0), (0.1, 10, 0), (0.3, 10, 3), (0.7, 10, 7), (0.29, 100, 29), (0.57, 100, 57),
    (0.5, 5, 2), (0.5, 3, 0), (0.75, 4, 3), (1.0, 20, 20),
])  # fmt: skip
def test_active_set_size_is_floor_phi_c_or_none_below_two(phi, clients, size):
    assert active_set_size(phi, clients) == size


def test_active_sets_are_seeded_distinct_and_vary_by_step():
    sets = [sample_active_clients(seed=0, epoch=0, step=s, phi=0.5, num_clients=10) for s in range(20)]
    for active in sets:
        assert len(active) == 5 == len(set(active)) and all(0 <= c < 10 for c in active)
    assert sets[3] == sample_active_clients(seed=0, epoch=0, step=3, phi=0.5, num_clients=10)
    assert len({tuple(a) for a in sets}) > 10
    # Uniform: over many steps every client is chosen about half the time.
    counts = torch.zeros(10)
    for step in range(2000):
        counts[sample_active_clients(1, 0, step, 0.5, 10)] += 1
    assert ((counts / 2000 - 0.5).abs() < 0.05).all()


def test_split_layer_average_is_elementwise_mean():
    grads = [torch.full((2, 3), float(v)) for v in (1, 2, 6)]
    grads[0][1, 2] = 10.0
    avg = split_layer_average(grads)
    assert avg[0, 0].item() == 3.0 and avg[1, 2].item() == pytest.approx((10 + 2 + 6) / 3)


def test_split_layer_average_needs_equal_batches():
    with pytest.raises(ValueError, match="equal batch shapes"):
        split_layer_average([torch.zeros(8, 4), torch.zeros(7, 4)])


def test_fedavg_of_shard_partials_is_the_data_weighted_mean():
    states = [{"w": torch.tensor(w), "n": torch.tensor(5)} for w in ([1.0, 2.0], [4.0, 8.0], [0.0, -1.0])]
    weights = [100.0, 300.0, 600.0]
    # Two shards: clients {0, 1} and {2}.
    partials = [
        (weighted_state_sum(states[:2], weights[:2]), 400.0),
        (weighted_state_sum(states[2:], weights[2:]), 600.0),
    ]
    mean = fedavg(partials)
    expected = (100 * states[0]["w"] + 300 * states[1]["w"] + 600 * states[2]["w"]) / 1000
    assert torch.allclose(mean["w"], expected) and mean["w"].dtype == torch.float32
    assert mean["n"].item() == 5
