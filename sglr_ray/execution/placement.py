"""How clients are grouped into shards, what each actor asks Ray for, and a pre-check of totals.

Pure arithmetic on numbers read from Ray elsewhere (ray_cluster.py), so every
rule here is unit-tested without Ray. Ray itself places the actors: a run's
actors are one placement group (a bundle for the server, one per shard; and,
for a run of a sweep, one for the run's own task), which Ray reserves all at
once or not at all. What is left here is Ray's rules for a valid request and
a check of the totals, so a request no cluster can hold gets a one-line error
naming the setting before any work starts:

- a bundle is placed whole on one node;
- a GPU request below 1 shares one GPU with others, a request of 1 or more
  takes whole GPUs and must be a whole number (Ray refuses 1.5);
- requests are counted in units of 1e-4.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from sglr_ray.errors import PlacementError

if TYPE_CHECKING:  # only its fields are read: no import of the settings machinery at run time
    from sglr_ray.config import RunConfig

RESOURCE_UNIT = 1e-4  # Ray's resource granularity
EPS = 1e-9
# A Ray worker that has imported torch costs about this much resident memory.
WORKER_MEMORY_BYTES = 600 * 2**20
UNLIMITED_NODES = 10**6  # the count of an autoscaler node type without a maximum


@dataclass(frozen=True)
class NodeShape:
    """Ray's logical CPUs and GPUs on one node, for `count` nodes alike (for a node type an
    autoscaler can add, the most it can add)."""

    cpus: float
    gpus: float = 0.0
    count: int = 1


@dataclass(frozen=True)
class Placement:
    shard_client_ids: list[list[int]]
    cpus_per_actor: float  # Ray scheduling request (and bundle) of every actor, server included
    torch_threads: int  # torch intra-op threads in each shard's process
    server_gpus: float = 0.0
    shard_gpus: tuple[float, ...] = ()  # each shard's GPU request, in shard order
    shortfall: str | None = None  # what the nodes lack for this request, with the numbers; None: it fits
    server_actor: bool = True  # False: the server lives in the driver (CL, FL: see needs_server_actor)
    server_threads: int = 1  # torch intra-op threads of the server actor
    driver_cpus: float = 0.0  # > 0: the run's own task holds the first bundle (a run of a sweep)
    strategy: str = "SPREAD"  # the placement group's: SPREAD over the nodes, or PACK (a sweep's runs)

    @property
    def clients_per_shard(self) -> int:
        return max(len(ids) for ids in self.shard_client_ids)

    def actor_names(self) -> list[str]:
        """One name per shard, then the server (when it has an actor): the bundles' order. Shards
        first: SPREAD gives equal bundles nodes in their order, so the shards get different
        nodes before a node takes a second bundle (server first, two shards could share one)."""
        return [shard_name(ids) for ids in self.shard_client_ids] + ["server"] * self.server_actor

    def bundles(self) -> list[dict[str, float]]:
        """The placement group's bundles: the run's task (if any), then one per actor_names()."""
        gpus = list(self.shard_gpus) + [self.server_gpus] * self.server_actor
        actors = [{"CPU": self.cpus_per_actor} | ({"GPU": g} if g > 0 else {}) for g in gpus]
        return [{"CPU": self.driver_cpus}] * (self.driver_cpus > 0) + actors

    def bundle_index(self, actor_name: str) -> int:
        return int(self.driver_cpus > 0) + self.actor_names().index(actor_name)

    def describe(self) -> str:
        bundles = "; ".join(f"{name}: {describe_bundle(b)}" for name, b in zip(
            ["run"] * (self.driver_cpus > 0) + self.actor_names(), self.bundles(), strict=True))  # fmt: skip
        return f"{len(self.bundles())} bundles ({bundles})"


@dataclass(frozen=True)
class ClusterView:
    nodes: list[NodeShape]  # the alive nodes now
    memory_bytes: float  # Ray's logical memory over the alive nodes
    autoscaler: bool  # whether something may add nodes
    node_types: list[NodeShape] | None  # what an autoscaler can add, each at its most; None: unknown

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


def resolve_clients_per_shard(setting: int, num_clients: int, parallel_shards: int) -> int:
    """--clients-per-actor, with 0 resolved: as many shards as run at once, `parallel_shards`
    (one per CPU on Ray; one in process, where the local executor runs shards in turn)."""
    return setting or math.ceil(num_clients / max(1, min(num_clients, parallel_shards)))


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


def even_cpu_request(node_cpus: list[float], actors: int) -> float | None:
    """The largest CPU request x <= 1 (in Ray's unit) such that `actors` bundles of x fit on
    nodes with `node_cpus`, or None when none does. For equal bundles placing them one node
    at a time is exact, so counting each node's whole bundles decides it: on two 1-CPU nodes,
    three bundles get 0.5 CPU, not the 0.67 a division of the total would give."""
    x = _unit_floor(min(1.0, sum(node_cpus) / max(actors, 1)))
    while x > 0:
        if sum(int(c / x + EPS) for c in node_cpus) >= actors:
            return x
        x = _unit_floor(max(c / (int(c / x + EPS) + 1) for c in node_cpus))  # the next size that frees a slot
    return None


def _unit_floor(value: float) -> float:
    return round(math.floor(value / RESOURCE_UNIT + EPS) * RESOURCE_UNIT, 4)


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
    """Shards, requests and threads for the clients on `nodes` (with `memory_bytes` in all).

    By default one single-thread shard per CPU, as far as memory holds a worker for
    each (at small batches that trains faster than fewer shards with more threads),
    keeping each shard's GPU request one Ray accepts. No CPU is kept for the server:
    in a split step the shards compute while the server waits for their activations,
    then the server computes while they wait, so the server takes every core of its
    node for its turn. `server_actor` False (CL and FL, whose server only sums FedAvg
    uploads, in the driver) starts no server actor. Requests Ray refuses outright raise
    PlacementError; requests the nodes cannot hold come back with `shortfall` set.
    """
    if not server_actor and server_gpus > 0:
        raise PlacementError(
            f"--server-gpus {server_gpus:g}: this method trains whole models on the clients and has no "
            "server actor (its FedAvg runs in the driver); set --server-gpus 0"
        )
    cpus = sum(s.cpus * s.count for s in nodes)
    workers = int(memory_bytes // WORKER_MEMORY_BYTES) - int(server_actor)
    per_shard = resolve_clients_per_shard(clients_per_actor, num_clients, min(int(cpus), workers))
    while (
        not clients_per_actor
        and per_shard > 1
        and not valid_gpu_request(gpu_quantity(gpus_per_client, per_shard))
    ):
        per_shard -= 1
    shards = shard_clients(num_clients, per_shard)
    shard_gpus = tuple(gpu_quantity(gpus_per_client, len(ids)) for ids in shards)
    check_gpu_requests(gpus_per_client, server_gpus, per_shard, shard_gpus)
    node_cpus = [s.cpus for s in nodes for _ in range(min(s.count, len(shards) + 1))]
    gpu_node_cpus = [s.cpus for s in nodes if s.gpus > 0 for _ in range(min(s.count, len(shards) + 1))]
    gpu_actors = sum(g > 0 for g in shard_gpus) + (server_gpus > 0)
    x = even_cpu_request(node_cpus, len(shards) + int(server_actor))
    if gpu_actors and x is not None:  # an actor that asks for a GPU needs its CPU on that GPU's node
        x = min(x, even_cpu_request(gpu_node_cpus, gpu_actors) or 0.0) or None
    node_max = int(max((s.cpus for s in nodes), default=0.0))
    placement = Placement(
        shard_client_ids=shards,
        cpus_per_actor=x or 1.0,  # nothing fits: ask for whole CPUs, which an autoscaler adds nodes for
        # Within a step the shards work while the server waits, then the other way round: only
        # the shards compete for CPUs (and no actor gets more threads than one node has cores).
        torch_threads=torch_threads or max(1, min(int(cpus) // len(shards), node_max)),
        server_threads=torch_threads or max(1, node_max),
        server_gpus=server_gpus, shard_gpus=shard_gpus, server_actor=server_actor,
    )  # fmt: skip
    return replace(placement, shortfall=describe_shortfall(placement, nodes, gpus_per_client, x is None))


def plan_for_cluster(config: RunConfig, num_clients: int, cluster: ClusterView) -> Placement:
    """Plan on the alive nodes; where they fall short, count what an autoscaler can add.

    PlacementError when nothing can hold the request: at once without an autoscaler, or
    when even every node the autoscaler can add falls short. A Placement that still has a
    shortfall (an autoscaler that does not say what it can add) gets --placement-timeout-s.
    """
    placement = plan_placement(nodes=cluster.nodes, **_wants(config, num_clients, cluster.memory_bytes))
    if placement.shortfall is None or (cluster.autoscaler and cluster.node_types is None):
        return placement
    if not cluster.autoscaler:
        raise PlacementError(f"{placement.shortfall} [{cluster.describe()}]")
    possible = cluster.nodes + (cluster.node_types or [])
    placement = plan_placement(nodes=possible, **_wants(config, num_clients, cluster.memory_bytes))
    if placement.shortfall is not None:
        raise PlacementError(
            f"{placement.shortfall}, counting the nodes the autoscaler can add [{cluster.describe()}]"
        )
    return placement


def plan_sweep_run(
    config: RunConfig, num_clients: int, cpus_per_run: float, driver_cpus: float, cluster: ClusterView
) -> Placement:
    """One run of a sweep: its task and its actors in one PACKed placement group of
    `cpus_per_run` CPUs in all, so as many runs go at once as the cluster holds such groups."""
    if cpus_per_run <= driver_cpus + RESOURCE_UNIT:
        raise PlacementError(f"--cpus-per-run {cpus_per_run:g}: a run needs more than {driver_cpus:g} CPU "
                             f"(its driver task holds {driver_cpus:g})")  # fmt: skip
    have = sum(s.cpus * s.count for s in cluster.nodes)
    if cpus_per_run > have + EPS and not cluster.autoscaler:
        raise PlacementError(
            f"--cpus-per-run {cpus_per_run:g}: one run would reserve more CPUs than the cluster has "
            f"({have:g}) [{cluster.describe()}]; set --cpus-per-run {have:g} or less"
        )
    budget = NodeShape(cpus_per_run - driver_cpus, sum(s.gpus * s.count for s in cluster.nodes))
    placement = plan_placement(nodes=[budget], **_wants(config, num_clients, cluster.memory_bytes))
    if placement.shortfall is not None and not cluster.autoscaler:
        raise PlacementError(
            f"{placement.shortfall}, within --cpus-per-run {cpus_per_run:g} [{cluster.describe()}]"
        )
    return replace(placement, shortfall=None, driver_cpus=driver_cpus, strategy="PACK")


def _wants(config: RunConfig, num_clients: int, memory_bytes: float) -> dict:
    return {"num_clients": num_clients, "clients_per_actor": config.clients_per_actor,
            "torch_threads": config.torch_threads, "memory_bytes": memory_bytes,
            "gpus_per_client": config.gpus_per_client, "server_gpus": config.server_gpus,
            "server_actor": needs_server_actor(config)}  # fmt: skip


def needs_server_actor(config: RunConfig) -> bool:
    """Whether the server gets an actor: only where it computes (the split methods' top
    model). The whole-model methods' server sums FedAvg uploads and counts bytes."""
    return not config.spec.client.whole_model


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


def describe_shortfall(
    placement: Placement, nodes: list[NodeShape], gpus_per_client: float, no_cpu_fit: bool
) -> str | None:
    """What the nodes lack for the placement's totals, naming the setting to change; None if nothing."""
    clients = sum(len(ids) for ids in placement.shard_client_ids)
    have_gpus = sum(s.gpus * s.count for s in nodes)
    shard_total = gpu_quantity(gpus_per_client, clients)
    if shard_total + placement.server_gpus > have_gpus + EPS:
        spare = max(0.0, have_gpus - placement.server_gpus)
        room = _unit_floor(spare / clients)
        server = ", or lower --server-gpus" if placement.server_gpus > 0 else ""
        hint = (
            f"set --gpus-per-client {room:g} or less"
            if room > 0
            else "set --gpus-per-client 0 to train the clients on CPUs"
        )
        return (
            f"{clients} clients x {gpus_per_client:g} GPU = {gpus_text(shard_total)} for the client shards, "
            f"plus {placement.server_gpus:g} for the server; the cluster has {gpus_text(have_gpus)} "
            f"({hint}{server})"
        )
    node_gpus = max((s.gpus for s in nodes), default=0.0)
    biggest = max(placement.shard_gpus, default=0.0)
    if biggest > node_gpus + EPS:
        fitting = [k for k in range(1, placement.clients_per_shard + 1)
                   if gpu_quantity(gpus_per_client, k) <= node_gpus + EPS
                   and valid_gpu_request(gpu_quantity(gpus_per_client, k))]  # fmt: skip
        return (
            f"a shard of {placement.clients_per_shard} clients x {gpus_per_client:g} GPU = "
            f"{gpus_text(biggest)} must run on one node, and the largest node has {gpus_text(node_gpus)} "
            f"(set --clients-per-actor {fitting[-1] if fitting else 1} or less)"
        )
    if placement.server_gpus > node_gpus + EPS:
        return f"--server-gpus {placement.server_gpus:g} must fit on one node; the largest has {node_gpus:g}"
    if not no_cpu_fit:
        return None
    who = f"the {len(placement.actor_names())} actors ({'server and ' * placement.server_actor}"
    who += f"{len(placement.shard_client_ids)} client shards)"
    if sum(s.cpus * s.count for s in nodes) <= 0:
        return f"the cluster has no CPUs for {who} (a head started with --num-cpus 0 and no workers yet?)"
    return (
        f"{who} ask for GPUs, and an actor that asks for a GPU needs its CPU on that GPU's node: the GPU "
        "nodes have no CPUs (set --gpus-per-client 0 or --server-gpus 0, or add CPUs to the GPU nodes)"
    )


def gpus_text(gpus: float) -> str:
    return f"{gpus:g} GPU" if gpus == 1 else f"{gpus:g} GPUs"


def describe_bundle(bundle: dict[str, float]) -> str:
    return ", ".join(f"{amount:g} {name}" for name, amount in bundle.items())


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
