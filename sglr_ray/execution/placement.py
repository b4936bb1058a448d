"""How clients are grouped into shards, and what each process is given to run on."""

from __future__ import annotations

import math
from dataclasses import dataclass

# A Ray worker that has imported torch costs about this much resident memory.
WORKER_MEMORY_BYTES = 600 * 2**20


@dataclass(frozen=True)
class Placement:
    clients_per_shard: int
    shard_client_ids: list[list[int]]
    cpus_per_actor: float  # Ray scheduling request for every actor, server included
    torch_threads: int  # torch intra-op threads in each process


def shard_clients(num_clients: int, clients_per_shard: int) -> list[list[int]]:
    """Consecutive client ids, `clients_per_shard` to a shard (the last may hold fewer)."""
    return [
        list(range(start, min(start + clients_per_shard, num_clients)))
        for start in range(0, num_clients, clients_per_shard)
    ]


def fit_cpu_request(node_cpus: list[float], actors: int) -> float:
    """The largest CPU request x <= 1 such that `actors` actors of x CPUs fit on the nodes.

    Dividing the cluster's total by the actor count is not enough: on two
    1-CPU nodes, three actors of 0.67 CPU leave one that fits on neither.
    """
    candidates = {min(1.0, c / k) for c in node_cpus if c > 0 for k in range(1, actors + 1)}
    for request in sorted(candidates, reverse=True):
        request = math.floor(request * 1e4) / 1e4  # Ray's resource granularity
        if sum(math.floor(c / request + 1e-9) for c in node_cpus) >= actors:
            return request
    raise ValueError(f"{actors} actors do not fit on nodes with CPUs {node_cpus}")


def plan_placement(
    num_clients: int, clients_per_actor: int, torch_threads: int, node_cpus: list[float], memory_bytes: float
) -> Placement:
    """Fit the clients to a cluster whose nodes have `node_cpus` CPUs and `memory_bytes` in all.

    With clients_per_actor = 0, give each client its own actor when the
    cluster has a CPU for each (plus one for the server) and memory for each
    worker; otherwise pack clients into as many shards as fit.
    """
    cpus = sum(node_cpus)
    per_shard = clients_per_actor
    if per_shard == 0:
        max_shards = max(1, min(int(cpus) - 1, int(memory_bytes // WORKER_MEMORY_BYTES) - 1))
        per_shard = math.ceil(num_clients / min(num_clients, max_shards))
    shards = shard_clients(num_clients, per_shard)
    return Placement(
        clients_per_shard=per_shard,
        shard_client_ids=shards,
        cpus_per_actor=fit_cpu_request(node_cpus, len(shards) + 1),
        # Within a step the shards work while the server waits, then the other
        # way round: only the shards compete for CPUs with each other.
        torch_threads=torch_threads or max(1, int(cpus) // len(shards)),
    )
