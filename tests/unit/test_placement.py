"""How clients are packed into shard actors."""

from __future__ import annotations

import pytest

from sglr_ray.execution.placement import WORKER_MEMORY_BYTES, fit_cpu_request, plan_placement, shard_clients

GIB = 2**30


def test_shard_clients_covers_every_client_once():
    shards = shard_clients(10, 4)
    assert shards == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


@pytest.mark.parametrize("clients, cpus, memory, per_shard, shards", [
    (5, 16, 64 * GIB, 1, 5),  # resources allow one client per actor
    (5, 2, 24 * GIB, 5, 1),  # two CPUs: one shard actor next to the server
    (1000, 2, 24 * GIB, 1000, 1),
    (100, 64, 24 * GIB, 3, 34),  # memory-bound: about 39 workers fit, 34 shards of 3
    (100, 8, 24 * GIB, 15, 7),
])  # fmt: skip
def test_default_packing_fits_the_cluster(clients, cpus, memory, per_shard, shards):
    placement = plan_placement(clients, 0, 0, node_cpus=[cpus], memory_bytes=memory)
    assert placement.clients_per_shard == per_shard and len(placement.shard_client_ids) == shards
    assert (len(placement.shard_client_ids) + 1) * WORKER_MEMORY_BYTES <= memory
    assert placement.cpus_per_actor * (shards + 1) <= cpus + 1e-9


def test_explicit_clients_per_actor_and_threads_win():
    placement = plan_placement(10, 4, 3, node_cpus=[2], memory_bytes=24 * GIB)
    assert placement.clients_per_shard == 4 and len(placement.shard_client_ids) == 3
    assert placement.torch_threads == 3


@pytest.mark.parametrize("node_cpus, actors, expected", [
    ([2], 3, 0.6666), ([1, 1], 3, 0.5), ([1, 1], 2, 1.0),
    ([4, 1], 5, 1.0), ([2, 2], 5, 0.6666), ([16], 40, 0.4),
])  # fmt: skip
def test_cpu_request_fits_every_actor_on_some_node(node_cpus, actors, expected):
    got = fit_cpu_request(node_cpus, actors)
    assert got == pytest.approx(expected, abs=1e-4)
    assert sum(int(c / got + 1e-9) for c in node_cpus) >= actors


def test_two_one_cpu_nodes_with_three_actors_get_half_a_cpu_each():
    placement = plan_placement(4, 2, 1, node_cpus=[1, 1], memory_bytes=24 * GIB)
    assert len(placement.shard_client_ids) == 2 and placement.cpus_per_actor == 0.5
