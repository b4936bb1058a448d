"""benchmarks/grouped_clients.py times the ways it claims to: the grouped shard is the loop's math."""

from __future__ import annotations

import pytest
import torch

from benchmarks.grouped_clients import grouped_vs_loop_difference, time_ways


@pytest.mark.parametrize("model", ["alexnet", "resnet16"])
def test_grouped_shard_of_the_benchmark_steps_like_the_loop(model):
    assert grouped_vs_loop_difference(model, clients=3, batch_size=2) < 1e-12


def test_every_way_is_timed():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        row = time_ways("alexnet", clients=3, batch_size=2, steps=1, repeats=1)
    finally:
        torch.set_num_threads(threads)
    assert all(row[f"{way}_ms"] > 0 for way in ("loop", "grouped", "grouped_all", "vmap"))
