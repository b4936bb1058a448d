"""How clients are grouped into shards, what each process asks Ray for, and whether that fits.

Pure arithmetic on numbers read from Ray elsewhere (ray_cluster.py), so every
rule here is unit-tested without Ray. The rules are Ray's own:

- an actor runs whole on one node;
- a GPU request below 1 shares one GPU with others, a request of 1 or more
  takes whole GPUs and must be a whole number (Ray refuses 1.5);
- requests are counted in units of 1e-4.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from sglr_ray.errors import PlacementError
from sglr_ray.execution.packing import (
    EPS,
    RESOURCE_UNIT,
    ActorRequest,
    NodeShape,
    fit_cpu_request,
)

if TYPE_CHECKING:  # only its fields are read: no import of the settings machinery at run time
    from sglr_ray.config import RunConfig

log = logging.getLogger(__name__)

# A Ray worker that has imported torch costs about this much resident memory.
WORKER_MEMORY_BYTES = 600 * 2**20
UNLIMITED_NODES = 10**6  # the count of an autoscaler node type without a maximum


@dataclass(frozen=True)
class Placement:
    clients_per_shard: int
    shard_client_ids: list[list[int]]
    cpus_per_actor: float  # Ray scheduling request for every actor, server included
    torch_threads: int  # torch intra-op threads in each shard's process
    server_gpus: float = 0.0
    shard_gpus: tuple[float, ...] = ()  # each shard's GPU request, in shard order
    shortfall: str | None = None  # what the nodes lack for this request, with the numbers; None: it fits
    server_actor: bool = True  # False: the server lives in the driver (CL, FL: see plan_placement)
    server_threads: int = 1  # torch intra-op threads of the server actor

    def actor_requests(self) -> list[ActorRequest]:
        """The server first (when it has an actor), then one request per shard."""
        shards = [
            ActorRequest(shard_name(ids), self.cpus_per_actor, gpus)
            for ids, gpus in zip(self.shard_client_ids, self.shard_gpus, strict=True)
        ]
        if not self.server_actor:
            return shards
        return [ActorRequest("server", self.cpus_per_actor, self.server_gpus), *shards]


@dataclass(frozen=True)
class ClusterView:
    nodes: list[NodeShape]  # the alive nodes now
    memory_bytes: float  # Ray's logical memory over the alive nodes
    autoscaler: bool  # whether something may add nodes
    node_types: list[NodeShape] | None  # what an autoscaler can add, each at its most; None: unknown

    @property
    def nodes_possible(self) -> list[NodeShape]:
        """The alive nodes plus every node the autoscaler could add (an upper bound)."""
        return self.nodes + (self.node_types or [])

    def describe(self) -> str:
        text = f"nodes now: {describe_nodes(self.nodes)}"
        if self.node_types:
            return f"{text}; the autoscaler can add up to: {describe_nodes(self.node_types)}"
        return f"{text}; an autoscaler runs but does not say what it can add" if self.autoscaler else text


def shard_name(client_ids: list[int]) -> str:
    return f"clients-{client_ids[0]}-{client_ids[-1]}"


def shard_clients(num_clients: int, clients_per_shard: int) -> list[list[int]]:
    """Consecutive client ids, `clients_per_shard` to a shard (the last may hold fewer)."""
    return [
        list(range(start, min(start + clients_per_shard, num_clients)))
        for start in range(0, num_clients, clients_per_shard)
    ]


def gpu_quantity(gpus_per_client: float, clients: int) -> float:
    """A shard's GPU request, rounded to Ray's unit (0.1 x 3 is 0.3, not 0.30000000000000004)."""
    return round(round(gpus_per_client * clients / RESOURCE_UNIT) * RESOURCE_UNIT, 4)


def valid_gpu_request(gpus: float) -> bool:
    """Whether Ray takes `gpus` as a request: 0, a fraction of one GPU, or whole GPUs."""
    if gpus <= EPS:
        return True
    if gpus < RESOURCE_UNIT - EPS:
        return False
    return gpus < 1 + EPS or abs(gpus - round(gpus)) < EPS


# --- the plan -------------------------------------------------------------------------


def plan_placement(
    num_clients: int,
    clients_per_actor: int,
    torch_threads: int,
    nodes: list[NodeShape],
    memory_bytes: float,
    gpus_per_client: float = 0.0,
    server_gpus: float = 0.0,
    server_actor: bool = True,
) -> Placement:
    """Fit the clients to `nodes` (with `memory_bytes` of memory in all).

    With clients_per_actor = 0, give each client its own actor when the
    cluster has a CPU for each (plus one for the server) and memory for each
    worker; otherwise pack clients into as many shards as fit, keeping each
    shard's GPU request one Ray accepts. Requests Ray would refuse outright
    raise PlacementError; requests the nodes cannot hold come back with
    `shortfall` set (an autoscaler may still add what is missing).

    By default there is one single-thread shard per CPU: at small batches that
    trains faster than fewer shards with more torch threads each. No CPU is kept
    for the server: in a split step the shards compute while the server waits for
    their activations, then the server computes while they wait for gradients,
    so the server takes every core of its node for its own turn. `server_actor`
    False (the whole-model methods, CL and FL, whose server only sums FedAvg
    uploads and counts bytes, in the driver) starts no server actor at all.
    """
    if not server_actor and server_gpus > 0:
        raise PlacementError(
            f"--server-gpus {server_gpus:g}: this method trains whole models on the clients and has no "
            "server actor (its FedAvg runs in the driver); set --server-gpus 0"
        )
    cpus = sum(s.cpus * s.count for s in nodes)
    per_shard = clients_per_actor or default_clients_per_shard(
        num_clients, cpus, memory_bytes, server_actors=int(server_actor)
    )
    if clients_per_actor == 0:
        while per_shard > 1 and not valid_gpu_request(gpu_quantity(gpus_per_client, per_shard)):
            per_shard -= 1
    shards = shard_clients(num_clients, per_shard)
    shard_gpus = tuple(gpu_quantity(gpus_per_client, len(ids)) for ids in shards)
    check_gpu_requests(gpus_per_client, server_gpus, per_shard, shard_gpus)
    cpus_per_actor = fit_cpu_request(nodes, [server_gpus, *shard_gpus] if server_actor else list(shard_gpus))
    placement = Placement(
        clients_per_shard=per_shard,
        shard_client_ids=shards,
        # Nothing fits: ask for whole CPUs, which an autoscaler adds nodes for.
        cpus_per_actor=cpus_per_actor or 1.0,
        # Within a step the shards work while the server waits, then the other
        # way round: only the shards compete for CPUs with each other (and no
        # actor gets more threads than one node has cores).
        torch_threads=torch_threads or max(1, min(int(cpus) // len(shards), int(max_node_cpus(nodes)))),
        server_threads=torch_threads or max(1, int(max_node_cpus(nodes))),
        server_gpus=server_gpus,
        shard_gpus=shard_gpus,
        server_actor=server_actor,
    )
    if cpus_per_actor is None:
        return replace(placement, shortfall=describe_shortfall(placement, nodes, gpus_per_client))
    return placement


def max_node_cpus(nodes: list[NodeShape]) -> float:
    return max((s.cpus for s in nodes), default=0.0)


def plan_for_cluster(config: RunConfig, num_clients: int, cluster: ClusterView) -> Placement:
    """Plan on the alive nodes; where they fall short, count what an autoscaler can add.

    PlacementError when nothing can hold the request: at once without an
    autoscaler, or when even every node the autoscaler can add falls short. An
    autoscaler that does not say what it can add gets --placement-timeout-s.
    """
    want = {"num_clients": num_clients, "clients_per_actor": config.clients_per_actor,
            "torch_threads": config.torch_threads, "memory_bytes": cluster.memory_bytes,
            "gpus_per_client": config.gpus_per_client, "server_gpus": config.server_gpus,
            "server_actor": needs_server_actor(config)}  # fmt: skip
    placement = plan_placement(nodes=cluster.nodes, **want)
    if placement.shortfall is None:
        return placement
    if not cluster.autoscaler:
        raise PlacementError(f"{placement.shortfall} [{cluster.describe()}]")
    if cluster.node_types is not None:
        placement = plan_placement(nodes=cluster.nodes_possible, **want)
        if placement.shortfall is not None:
            raise PlacementError(f"{placement.shortfall}, counting the nodes the autoscaler can add "
                                 f"[{cluster.describe()}]")  # fmt: skip
        return placement
    log.warning(
        "%s [%s]; waiting up to %g s (--placement-timeout-s) for the autoscaler",
        placement.shortfall, cluster.describe(), config.placement_timeout_s,
    )  # fmt: skip
    return placement


def needs_server_actor(config: RunConfig) -> bool:
    """Whether the server gets an actor: only where it computes (the split methods' top
    model). The whole-model methods' server sums FedAvg uploads and counts bytes."""
    return not config.spec.client.whole_model


def default_clients_per_shard(
    num_clients: int, cpus: float, memory_bytes: float, server_actors: int = 1
) -> int:
    """Clients per shard for one shard per CPU, as far as memory holds a worker for each
    shard and for each of the `server_actors` (1, or 0 where the server lives in the
    driver). The server needs no CPU of its own: it computes while the shards wait."""
    workers = int(memory_bytes // WORKER_MEMORY_BYTES)
    max_shards = max(1, min(int(cpus), workers - server_actors))
    return math.ceil(num_clients / min(num_clients, max_shards))


def check_gpu_requests(
    gpus_per_client: float, server_gpus: float, per_shard: int, shard_gpus: tuple[float, ...]
) -> None:
    """Raise PlacementError for a GPU request Ray refuses whatever the cluster (1.5 GPUs)."""
    if not valid_gpu_request(server_gpus):
        raise PlacementError(
            f"--server-gpus {server_gpus:g}: Ray takes a GPU request of at least {RESOURCE_UNIT:g} and "
            "below 1 (a share of one GPU) or a whole number of GPUs"
        )
    bad = next((g for g in shard_gpus if not valid_gpu_request(g)), None)
    if bad is None:
        return
    fitting = [k for k in range(1, per_shard + 1) if gpu_quantity(gpus_per_client, k) <= 1 + EPS]
    hint = f"set --clients-per-actor {fitting[-1]} or less" if fitting else "change --gpus-per-client"
    raise PlacementError(
        f"a shard of {round(bad / gpus_per_client)} clients x --gpus-per-client {gpus_per_client:g} asks "
        f"for {bad:g} GPUs; Ray takes a share of one GPU (below 1) or whole GPUs, not {bad:g} ({hint})"
    )


def describe_shortfall(placement: Placement, nodes: list[NodeShape], gpus_per_client: float) -> str:
    """What the nodes lack for the placement's actors, naming the setting to change."""
    clients = sum(len(ids) for ids in placement.shard_client_ids)
    have_gpus = sum(s.gpus * s.count for s in nodes)
    shard_total = gpu_quantity(gpus_per_client, clients)
    if shard_total + placement.server_gpus > have_gpus + EPS:
        spare = max(0.0, have_gpus - placement.server_gpus)
        room = round(math.floor(spare / clients / RESOURCE_UNIT) * RESOURCE_UNIT, 4)
        server = ", or lower --server-gpus" if placement.server_gpus > 0 else ""
        if room > 0:
            hint = f"set --gpus-per-client {room:g} or less{server}"
        else:
            hint = f"set --gpus-per-client 0 to train the clients on CPUs{server}"
        return (
            f"{clients} clients x {gpus_per_client:g} GPU = {gpus_text(shard_total)} for the client shards, "
            f"plus {placement.server_gpus:g} for the server; the cluster has {gpus_text(have_gpus)} ({hint})"
        )
    node_gpus = max((s.gpus for s in nodes), default=0.0)
    biggest = max(placement.shard_gpus, default=0.0)
    if biggest > node_gpus + EPS:
        sizes = [gpu_quantity(gpus_per_client, k) for k in range(1, placement.clients_per_shard + 1)]
        fitting = [k for k, g in enumerate(sizes, 1) if valid_gpu_request(g) and g <= node_gpus + EPS]
        per_node = fitting[-1] if fitting else 1
        return (
            f"a shard of {placement.clients_per_shard} clients x {gpus_per_client:g} GPU = "
            f"{gpus_text(biggest)} must run on one node, and the largest node has {gpus_text(node_gpus)} "
            f"(set --clients-per-actor {per_node} or less)"
        )
    if placement.server_gpus > node_gpus + EPS:
        return f"--server-gpus {placement.server_gpus:g} must fit on one node; the largest has {node_gpus:g}"
    actors = placement.actor_requests()
    shards = len(placement.shard_client_ids)
    server = "server and " if placement.server_actor else ""
    who = f"the {len(actors)} actors ({server}{shards} client shards)"
    cpus = sum(s.cpus * s.count for s in nodes)
    if cpus <= 0:
        return f"the cluster has no CPUs for {who} (a head started with --num-cpus 0 and no workers yet?)"
    wanted = ", ".join(f"{a.name}: {a.gpus:g} GPU" for a in actors if a.gpus > 0)
    return (
        f"{who} do not fit on the nodes with any CPU request: the cluster has {cpus:g} CPUs"
        + (f"; {wanted}, and an actor that asks for a GPU needs its CPU on that GPU's node" if wanted else "")
        + " (set --clients-per-actor, --gpus-per-client or --server-gpus)"
    )


def gpus_text(gpus: float) -> str:
    return f"{gpus:g} GPU" if gpus == 1 else f"{gpus:g} GPUs"


def describe_nodes(nodes: list[NodeShape]) -> str:
    def count(s: NodeShape) -> str:
        return "any number" if s.count >= UNLIMITED_NODES else str(s.count)

    return ", ".join(f"{count(s)} x ({s.cpus:g} CPU, {s.gpus:g} GPU)" for s in nodes) or "none"


def memory_shortfall(actors: int, memory_bytes: float) -> str | None:
    """A warning when the actors' worker processes likely exceed the cluster's memory; Ray does
    not schedule by it (the actors ask for none), so it is an estimate, not a refusal."""
    need = actors * WORKER_MEMORY_BYTES
    if need <= memory_bytes:
        return None
    return (
        f"{actors} actors x about {WORKER_MEMORY_BYTES / 2**20:.0f} MiB per torch worker = "
        f"{need / 2**30:.1f} GiB, and the cluster has {memory_bytes / 2**30:.1f} GiB of Ray memory: "
        "workers may be killed for memory (set --clients-per-actor to put more clients in one actor)"
    )


def choose_device(setting: str, given_gpus: bool, cuda_available: bool) -> str:
    """The torch device for a process: --device cpu or cuda as asked, or auto: cuda when the
    process was given a GPU and torch sees one. PlacementError for cuda where torch sees none."""
    if setting == "cuda" and not cuda_available:
        raise PlacementError(
            "--device cuda, but torch sees no CUDA device in this process "
            f"(torch.cuda.is_available() is False{'' if given_gpus else '; no GPU was requested for it'}): "
            "use --device auto or cpu, or a torch build and node with CUDA"
        )
    if setting == "auto":
        return "cuda" if given_gpus and cuda_available else "cpu"
    return setting
