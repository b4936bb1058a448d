"""Errors the executors raise and the driver handles."""

from __future__ import annotations


class ExecutorError(RuntimeError):
    """An actor call failed for a reason a restart cannot fix; the cause is chained."""


class ActorLostError(ExecutorError):
    """An actor process died (killed, out of memory, node lost). Ray restarts it; the
    driver restores the last snapshot into every actor and replays the epoch."""


class StaleActorError(RuntimeError):
    """Raised inside a restarted actor that has not been restored from a snapshot yet."""
