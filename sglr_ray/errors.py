"""Errors the executors raise and the driver handles."""

from __future__ import annotations


class ExecutorError(RuntimeError):
    """An actor call failed for a reason a restart cannot fix; the cause is chained."""


class ActorLostError(ExecutorError):
    """An actor process died (killed, out of memory, node lost). Ray restarts it; the
    driver restores the last snapshot into every actor and replays the epoch."""


class StaleActorError(RuntimeError):
    """Raised inside a restarted actor that has not been restored from a snapshot yet."""


class PlacementError(ExecutorError):
    """The run asks for more than the cluster has or can get (GPUs, CPUs, one node's share), or
    for a device its processes lack. Raised before training starts; the message names the
    setting to change and the numbers."""


class ActorOutOfMemoryError(ExecutorError):
    """Ray's memory monitor killed an actor (a client shard or the server). Not replayed from
    a snapshot like other lost actors: the replay would need the same memory. The message
    names the actor, the memory Ray reported and the settings that lower it."""
