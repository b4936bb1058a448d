"""Whether a set of actors fits on a set of nodes, by Ray's rules (see placement.py).

Bin packing with a first-fit pass and, for mixed requests that first fit cannot
place, a bounded exact search; plus the largest CPU request that still packs.
Pure arithmetic, unit-tested without Ray (tests/unit/test_placement.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

RESOURCE_UNIT = 1e-4  # Ray's resource granularity
EPS = 1e-9
# Past this many tries the packing search gives up and answers "unknown", which
# callers treat as "may fit": refusing a run that would fit is the worse mistake.
SEARCH_STEPS = 20_000
SEARCH_MAX_ACTORS = 60  # beyond this, only the first-fit pass (the search recurses once per actor)


@dataclass(frozen=True)
class NodeShape:
    """Ray's logical CPUs and GPUs on one node, for `count` nodes alike (for a node type an
    autoscaler can add, the most it can add)."""

    cpus: float
    gpus: float = 0.0
    count: int = 1


@dataclass(frozen=True)
class ActorRequest:
    name: str
    cpus: float
    gpus: float


class _Node:
    """One node's free CPUs and the free share of each of its GPUs."""

    def __init__(self, shape: NodeShape) -> None:
        self.cpus = shape.cpus
        whole = int(shape.gpus + EPS)
        self.gpus = [1.0] * whole + ([shape.gpus - whole] if shape.gpus - whole > EPS else [])

    def key(self) -> tuple:
        return round(self.cpus, 6), tuple(sorted(round(g, 6) for g in self.gpus))

    def take(self, actor: ActorRequest) -> list[tuple[int, float]] | None:
        """Reserve the actor here; the GPU shares taken (to give back), or None if it does not fit."""
        if actor.cpus > self.cpus + EPS:
            return None
        if actor.gpus <= EPS:
            used: list[tuple[int, float]] = []
        elif actor.gpus < 1 - EPS:  # a share of one GPU: the fullest GPU it still fits on
            fits = [i for i, free in enumerate(self.gpus) if free + EPS >= actor.gpus]
            if not fits:
                return None
            used = [(min(fits, key=lambda i: self.gpus[i]), actor.gpus)]
        else:
            wanted = round(actor.gpus)
            whole = [i for i, free in enumerate(self.gpus) if free >= 1 - EPS][:wanted]
            if len(whole) < wanted:
                return None
            used = [(i, 1.0) for i in whole]
        self.cpus -= actor.cpus
        for i, amount in used:
            self.gpus[i] -= amount
        return used

    def give_back(self, actor: ActorRequest, used: list[tuple[int, float]]) -> None:
        self.cpus += actor.cpus
        for i, amount in used:
            self.gpus[i] += amount


def pack_actors(actors: list[ActorRequest], nodes: list[NodeShape]) -> bool | None:
    """Whether every actor fits whole on some node, all at once.

    True or False when decided; None when the search ran out of steps (only
    possible for mixed requests that first fit cannot pack).
    """
    order = sorted(actors, key=lambda a: (a.gpus, a.cpus), reverse=True)
    bins = [_Node(s) for s in nodes for _ in range(min(s.count, len(actors)))]
    if _first_fit(order, bins):
        return True
    # First fit is exact for identical actors (each node takes as many as it holds).
    if len({(a.cpus, a.gpus) for a in order}) == 1 or not _within_totals(order, nodes):
        return False
    if len(order) > SEARCH_MAX_ACTORS:
        return None
    bins = [_Node(s) for s in nodes for _ in range(min(s.count, len(actors)))]
    steps = [0]
    try:
        return _search(order, 0, bins, steps)
    except _SearchExhaustedError:
        return None


def _within_totals(actors: list[ActorRequest], nodes: list[NodeShape]) -> bool:
    """What any packing needs: the totals within the nodes', and each actor on some empty node."""
    n = len(actors)
    if sum(a.cpus for a in actors) > sum(s.cpus * min(s.count, n) for s in nodes) + EPS:
        return False
    if sum(a.gpus for a in actors) > sum(s.gpus * min(s.count, n) for s in nodes) + EPS:
        return False
    return all(any(_Node(s).take(a) is not None for s in nodes) for a in actors)


def _first_fit(order: list[ActorRequest], bins: list[_Node]) -> bool:
    # take() reserves as it goes: each actor lands on the first node with room.
    return all(any(b.take(actor) is not None for b in bins) for actor in order)


class _SearchExhaustedError(Exception):
    """The packing search used up SEARCH_STEPS."""


def _search(order: list[ActorRequest], i: int, bins: list[_Node], steps: list[int]) -> bool:
    if i == len(order):
        return True
    steps[0] += 1
    if steps[0] > SEARCH_STEPS:
        raise _SearchExhaustedError
    tried = set()  # nodes in the same state are interchangeable: try one of them
    for b in bins:
        if b.key() in tried:
            continue
        tried.add(b.key())
        used = b.take(order[i])
        if used is None:
            continue
        if _search(order, i + 1, bins, steps):
            return True
        b.give_back(order[i], used)
    return False


def fit_cpu_request(nodes: list[NodeShape], actor_gpus: list[float]) -> float | None:
    """The largest CPU request x <= 1 such that one actor per entry of `actor_gpus`
    (its GPU request), each asking x CPUs, packs onto the nodes; None if none does.

    Dividing the cluster's total by the actor count is not enough: on two
    1-CPU nodes, three actors of 0.67 CPU leave one that fits on neither; and
    actors that ask for GPUs need their CPUs on the nodes with GPUs.
    """
    n = len(actor_gpus)
    candidates = sorted(
        {round(math.floor(min(1.0, s.cpus / k) / RESOURCE_UNIT + EPS) * RESOURCE_UNIT, 4)
         for s in nodes if s.cpus > 0 for k in range(1, n + 1)} - {0.0},
        reverse=True,
    )  # fmt: skip

    def packs(x: float) -> bool:
        # "Unknown" counts as a fit: the start-up wait catches what does not place.
        return pack_actors([ActorRequest("", x, g) for g in actor_gpus], nodes) is not False

    # A smaller request packs wherever a larger one does: binary search for the largest.
    low, high = 0, len(candidates)
    while low < high:
        mid = (low + high) // 2
        if packs(candidates[mid]):
            high = mid
        else:
            low = mid + 1
    return candidates[low] if low < len(candidates) else None
