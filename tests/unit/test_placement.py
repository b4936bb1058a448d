"""How clients are packed into shard actors, and whether a request fits the nodes (no Ray)."""

from __future__ import annotations

import pytest

from sglr_ray.errors import PlacementError
from sglr_ray.execution.placement import (
    WORKER_MEMORY_BYTES,
    ClusterView,
    NodeShape,
    choose_device,
    even_cpu_request,
    memory_shortfall,
    plan_for_cluster,
    plan_placement,
    plan_sweep_run,
    resolve_clients_per_shard,
    shard_clients,
    valid_gpu_request,
)

GIB = 2**30


def cpu_nodes(cpus: list[float]) -> list[NodeShape]:
    return [NodeShape(c) for c in cpus]


ONE_GPU_NODE = (NodeShape(16, 1),)


def plan(clients, per_actor=0, nodes=ONE_GPU_NODE, gpus_per_client=0.0, server_gpus=0.0):
    return plan_placement(
        clients, per_actor, 1, nodes=list(nodes), memory_bytes=64 * GIB,
        gpus_per_client=gpus_per_client, server_gpus=server_gpus,
    )  # fmt: skip


def test_shard_clients_covers_every_client_once():
    shards = shard_clients(10, 4)
    assert shards == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


@pytest.mark.parametrize("clients, cpus, memory, per_shard, shards", [
    (5, 16, 64 * GIB, 1, 5),  # resources allow one client per actor
    (5, 2, 24 * GIB, 3, 2),  # two CPUs: a shard per CPU; the server computes while they wait
    (1000, 2, 24 * GIB, 500, 2),
    (100, 64, 24 * GIB, 3, 34),  # memory-bound: about 39 workers fit, 34 shards of 3
    (100, 8, 24 * GIB, 13, 8),
])  # fmt: skip
def test_default_packing_fits_the_cluster(clients, cpus, memory, per_shard, shards):
    placement = plan_placement(clients, 0, 0, nodes=cpu_nodes([cpus]), memory_bytes=memory)
    assert placement.clients_per_shard == per_shard and len(placement.shard_client_ids) == shards
    assert (len(placement.shard_client_ids) + 1) * WORKER_MEMORY_BYTES <= memory
    assert placement.cpus_per_actor * (shards + 1) <= cpus + 1e-9
    assert placement.shortfall is None


def test_explicit_clients_per_actor_and_threads_win():
    placement = plan_placement(10, 4, 3, nodes=cpu_nodes([2]), memory_bytes=24 * GIB)
    assert placement.clients_per_shard == 4 and len(placement.shard_client_ids) == 3
    assert placement.torch_threads == 3


def test_derived_threads_never_exceed_one_nodes_cores():
    placement = plan_placement(2, 2, 0, nodes=cpu_nodes([1, 1, 1, 1]), memory_bytes=24 * GIB)
    assert len(placement.shard_client_ids) == 1 and placement.torch_threads == 1


@pytest.mark.parametrize("node_cpus, actors, expected", [
    ([2], 3, 0.6666), ([1, 1], 3, 0.5), ([1, 1], 2, 1.0),
    ([4, 1], 5, 1.0), ([2, 2], 5, 0.6666), ([16], 40, 0.4),
])  # fmt: skip
def test_cpu_request_fits_every_actor_on_some_node(node_cpus, actors, expected):
    got = even_cpu_request(node_cpus, actors)
    assert got == pytest.approx(expected, abs=1e-4)
    assert sum(int(c / got + 1e-9) for c in node_cpus) >= actors
    bigger = got + 1e-4  # the largest such request: one unit more leaves an actor without a node
    assert got == 1.0 or sum(int(c / bigger + 1e-9) for c in node_cpus) < actors


def test_two_one_cpu_nodes_with_three_actors_get_half_a_cpu_each():
    placement = plan_placement(4, 2, 1, nodes=cpu_nodes([1, 1]), memory_bytes=24 * GIB)
    assert len(placement.shard_client_ids) == 2 and placement.cpus_per_actor == 0.5


def test_gpu_actors_take_their_cpus_on_the_gpu_node():
    # Four 0.25-GPU shards and a CPU-only server: a whole CPU each would put the
    # shards on the 4-CPU node, which has no GPU; they share the 2-CPU GPU node.
    placement = plan(4, per_actor=1, nodes=[NodeShape(4, 0), NodeShape(2, 1)], gpus_per_client=0.25)
    assert placement.cpus_per_actor == 0.5 and placement.shortfall is None


def test_four_quarter_gpu_clients_share_one_gpu():
    placement = plan(4, per_actor=1, nodes=[NodeShape(2, 1)], gpus_per_client=0.25)
    assert placement.shortfall is None
    assert placement.shard_gpus == (0.25, 0.25, 0.25, 0.25)
    assert [b.get("GPU", 0.0) for b in placement.bundles()] == [0.25, 0.25, 0.25, 0.25, 0.0]


@pytest.mark.parametrize("per_actor", [1, 2])
def test_more_gpus_than_the_cluster_has_names_the_numbers(per_actor):
    placement = plan(4, per_actor=per_actor, nodes=[NodeShape(2, 1)], gpus_per_client=0.5)
    assert placement.shortfall == (
        "4 clients x 0.5 GPU = 2 GPUs for the client shards, plus 0 for the server; the cluster has "
        "1 GPU (set --gpus-per-client 0.25 or less)"
    )


def test_a_shard_must_fit_on_one_node():
    # Two 1-GPU nodes hold 2 GPUs in all, but a 2-GPU shard fits on neither.
    placement = plan(4, per_actor=4, nodes=[NodeShape(4, 1, count=2)], gpus_per_client=0.5)
    assert placement.shortfall is not None
    assert "a shard of 4 clients x 0.5 GPU = 2 GPUs must run on one node" in placement.shortfall
    assert "the largest node has 1 GPU (set --clients-per-actor 2 or less)" in placement.shortfall
    assert plan(4, per_actor=2, nodes=[NodeShape(4, 1, count=2)], gpus_per_client=0.5).shortfall is None


def test_many_actors_on_few_cpus_share_them():
    assert even_cpu_request([2], 1001) == pytest.approx(0.0019, abs=1e-4)
    assert even_cpu_request([0, 0], 3) is None


def test_gpu_nodes_without_cpus_cannot_host_gpu_actors():
    placement = plan(2, per_actor=1, nodes=[NodeShape(8, 0), NodeShape(0, 1)], gpus_per_client=0.25)
    assert placement.shortfall is not None and "needs its CPU on that GPU's node" in placement.shortfall


def test_a_cluster_without_cpus_falls_short_and_asks_for_whole_cpus():
    placement = plan(2, per_actor=1, nodes=[NodeShape(0, 0)])
    assert placement.shortfall is not None and placement.cpus_per_actor == 1.0
    assert placement.shortfall.startswith("the cluster has no CPUs for the 3 actors")


@pytest.mark.parametrize("gpus, ok", [(0, True), (0.25, True), (1, True), (2.0, True), (1.5, False),
                                      (0.00001, False)])  # fmt: skip
def test_ray_takes_fractions_below_one_or_whole_gpus(gpus, ok):
    assert valid_gpu_request(gpus) is ok


def test_a_shard_asking_for_a_fraction_above_one_gpu_is_refused():
    with pytest.raises(PlacementError, match=r"asks for 1\.5 GPUs.*--clients-per-actor 2 or less"):
        plan(4, per_actor=3, gpus_per_client=0.5)
    with pytest.raises(PlacementError, match=r"--server-gpus 1\.5"):
        plan(4, per_actor=1, server_gpus=1.5)


def test_default_packing_keeps_shard_gpu_requests_valid():
    placement = plan(6, nodes=[NodeShape(3, 2)], gpus_per_client=0.4)  # 3 CPUs: 2 shards of 3 would ask 1.2
    assert placement.clients_per_shard == 2 and placement.shard_gpus == (0.8, 0.8, 0.8)
    assert "3 GPUs" not in (placement.shortfall or "")


def test_memory_estimate_warns_past_the_cluster_memory():
    assert memory_shortfall(3, 3 * WORKER_MEMORY_BYTES) is None
    note = memory_shortfall(10, 2 * GIB)
    assert note is not None and "10 actors" in note and "--clients-per-actor" in note


@pytest.mark.parametrize("setting, given, cuda, device", [
    ("auto", True, True, "cuda"), ("auto", True, False, "cpu"), ("auto", False, True, "cpu"),
    ("cpu", True, True, "cpu"), ("cuda", False, True, "cuda"),
])  # fmt: skip
def test_device_follows_the_setting_and_what_the_process_was_given(setting, given, cuda, device):
    assert choose_device(setting, given, cuda) == device


def test_cuda_without_cuda_is_refused_naming_the_setting():
    with pytest.raises(PlacementError, match="--device cuda, but torch sees no CUDA device"):
        choose_device("cuda", True, False)


def cluster(nodes, autoscaler=False, node_types=None):
    return ClusterView(nodes=nodes, memory_bytes=64 * GIB, autoscaler=autoscaler, node_types=node_types)


def test_without_an_autoscaler_a_shortfall_is_refused_at_once(tiny_config):
    config = tiny_config(clients=4, clients_per_actor=1, gpus_per_client=0.5)
    with pytest.raises(PlacementError, match=r"the cluster has 1 GPU .*\[nodes now: 1 x \(2 CPU, 1 GPU\)\]"):
        plan_for_cluster(config, 4, cluster([NodeShape(2, 1)]))


def test_node_types_an_autoscaler_can_add_count(tiny_config):
    config = tiny_config(clients=4, clients_per_actor=1, gpus_per_client=0.5)
    grows = cluster([NodeShape(2, 0)], autoscaler=True, node_types=[NodeShape(4, 1, count=2)])
    placement = plan_for_cluster(config, 4, grows)
    assert placement.shortfall is None and placement.shard_gpus == (0.5,) * 4
    too_small = cluster([NodeShape(2, 0)], autoscaler=True, node_types=[NodeShape(4, 1, count=1)])
    with pytest.raises(PlacementError, match="counting the nodes the autoscaler can add"):
        plan_for_cluster(config, 4, too_small)


def test_an_autoscaler_that_does_not_say_what_it_adds_gets_the_timeout(tiny_config):
    config = tiny_config(clients=4, clients_per_actor=1, gpus_per_client=0.5)
    placement = plan_for_cluster(config, 4, cluster([NodeShape(0, 0)], autoscaler=True))
    assert placement.shortfall is not None and placement.cpus_per_actor == 1.0


@pytest.mark.parametrize("method, clients, shards, actors, threads", [
    ("fl", 100, 2, ["clients-0-49", "clients-50-99"], 1),  # no server actor: one shard per CPU
    ("fl", 1000, 2, ["clients-0-499", "clients-500-999"], 1),
    ("cl", 1, 1, ["clients-0-0"], 2),  # one data centre "client": one shard, both cores
    # the split methods' server computes, but in turn with the shards: a shard per CPU all the same
    ("sglr", 100, 2, ["clients-0-49", "clients-50-99", "server"], 1),
])  # fmt: skip
def test_whole_model_methods_give_the_server_s_cpu_to_the_shards(
    tiny_config, method, clients, shards, actors, threads
):
    config = tiny_config(method=method, clients=clients, torch_threads=0)
    placement = plan_for_cluster(config, clients, cluster([NodeShape(2)]))
    assert placement.server_actor is (method == "sglr")
    assert len(placement.shard_client_ids) == shards and placement.torch_threads == threads
    assert placement.actor_names() == actors
    assert placement.cpus_per_actor == (1.0 if method != "sglr" else 0.6666) and placement.shortfall is None


@pytest.mark.parametrize("node_cpus, torch_threads, shard_threads, server_threads", [
    ([2], 0, 1, 2),  # the server's turn: every core of its node
    ([8], 0, 1, 8),
    ([4, 4], 0, 1, 4),  # never more threads than one node has cores
    ([2], 3, 3, 3),  # an explicit --torch-threads holds for every actor
])  # fmt: skip
def test_the_server_takes_its_node_s_cores_for_its_turn(
    node_cpus, torch_threads, shard_threads, server_threads
):
    placement = plan_placement(100, 0, torch_threads, nodes=cpu_nodes(node_cpus), memory_bytes=64 * GIB)
    assert placement.torch_threads == shard_threads and placement.server_threads == server_threads


def test_default_packing_without_a_server_actor_counts_every_cpu_and_worker():
    placement = plan_placement(100, 0, 0, nodes=cpu_nodes([8]), memory_bytes=24 * GIB, server_actor=False)
    assert len(placement.shard_client_ids) == 8 and placement.cpus_per_actor == 1.0
    memory_bound = plan_placement(100, 0, 0, nodes=cpu_nodes([64]), memory_bytes=3 * WORKER_MEMORY_BYTES,
                                  server_actor=False)  # fmt: skip
    assert len(memory_bound.shard_client_ids) == 3


def test_server_gpus_for_a_method_without_a_server_actor_is_refused(tiny_config):
    config = tiny_config(method="fl", clients=4, server_gpus=1.0)
    with pytest.raises(PlacementError, match=r"--server-gpus 1: .* no server actor .*set --server-gpus 0"):
        plan_for_cluster(config, 4, cluster([NodeShape(2, 1)]))


@pytest.mark.parametrize("setting, clients, parallel, per_shard", [
    (0, 5, 1, 5),  # the local executor runs shards in turn: one shard of every client
    (0, 5, 2, 3),  # Ray: a shard per CPU
    (0, 5, 16, 1),
    (0, 5, 0, 5),  # no CPU counted yet: one shard
    (2, 5, 16, 2),  # an explicit --clients-per-actor always wins
])  # fmt: skip
def test_clients_per_actor_0_is_resolved_in_one_place(setting, clients, parallel, per_shard):
    assert resolve_clients_per_shard(setting, clients, parallel) == per_shard


def test_a_run_is_one_bundle_per_actor_with_the_shards_first():
    placement = plan(4, per_actor=2, nodes=[NodeShape(2, 1)], gpus_per_client=0.25, server_gpus=0.5)
    assert placement.actor_names() == ["clients-0-1", "clients-2-3", "server"]
    assert placement.bundles() == [{"CPU": 0.6666, "GPU": 0.5}] * 3
    assert placement.bundle_index("server") == 2 and placement.strategy == "SPREAD"


def test_a_sweep_run_reserves_its_task_and_actors_within_cpus_per_run(tiny_config):
    # The issue 23 grid on a 2-CPU head: each run's task took 1 CPU, its 3 actors 2/3 CPU each.
    config = tiny_config(method="sglr", clients=2, executor="ray", torch_threads=0)
    placement = plan_sweep_run(config, 2, 1.0, 0.1, cluster([NodeShape(2)]))
    assert placement.strategy == "PACK" and placement.bundle_index("clients-0-1") == 1
    assert placement.bundles()[0] == {"CPU": 0.1} and len(placement.bundles()) == 3  # task, 1 shard, server
    assert sum(b["CPU"] for b in placement.bundles()) <= 1.0
    assert placement.torch_threads == 1 and placement.shortfall is None


@pytest.mark.parametrize("cpus_per_run, message", [
    (4.0, r"--cpus-per-run 4: one run would reserve more CPUs than the cluster has \(2\).*"
          r"set --cpus-per-run 2 or less"),
    (0.1, r"--cpus-per-run 0\.1: a run needs more than 0\.1 CPU"),
])  # fmt: skip
def test_a_sweep_run_that_cannot_fit_is_refused_naming_cpus_per_run(tiny_config, cpus_per_run, message):
    config = tiny_config(method="sglr", clients=2, executor="ray")
    with pytest.raises(PlacementError, match=message):
        plan_sweep_run(config, 2, cpus_per_run, 0.1, cluster([NodeShape(2)]))
