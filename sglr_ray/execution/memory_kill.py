"""Ray's memory monitor killing an actor, told to the user: which actor, how much memory, what to change.

When a node runs low on memory, Ray's memory monitor kills a worker process. A
call on that actor then fails with `ray.exceptions.OutOfMemoryError` (its
`message` is the monitor's report) or, for calls that reach the dead actor, an
`ActorDiedError` whose text says `Worker exit type: NODE_OUT_OF_MEMORY`.
Neither carries the numbers as fields, only as text, which differs between Ray
versions, for example (Ray 2.60):

  1 worker(s) were killed due to the node running low on memory. Memory on the
  node (IP: 10.0.0.5, ID: ...) was 30.10GB used / 32.00GB limit (0.940000) ...
  (... task name=ClientActor.train_local, ..., pid=4242, actual memory used=5.20GB, ...)

and (older) "Memory on the node (IP: ..., ID: ...) where the task (actor ID: ...,
name=..., pid=..., memory used=5.2GB) was running was 30.1GB / 32.0GB (0.94)".
So the text is searched leniently, and Ray's own first line stands in for the
numbers when they cannot be read.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import ray

# What marks a memory kill in an ActorDiedError's text. Not "OOM killer": Ray names it
# among the possible causes of every unexpected worker death.
_KILLED_FOR_MEMORY = re.compile(
    r"NODE_OUT_OF_MEMORY|running low on memory|killed by the memory monitor", re.IGNORECASE
)
_NODE_MEMORY = re.compile(
    r"Memory on the node \(IP: (?P<ip>[^,)\s]+)[^)]*\)(?:.*?\))?[^.]*? was (?P<used>[\d.]+)\s*GB(?: used)?"
    r" / (?P<total>[\d.]+)\s*GB",
    re.DOTALL,
)
_PROCESS_MEMORY = re.compile(r"memory used=(?P<used>[\d.]+)\s*GB")
_THRESHOLD = re.compile(r"threshold of (?P<fraction>\d+(?:\.\d+)?)")
# Our actor names: RUN_ID/clients-A-B (a shard of clients A..B) and RUN_ID/server.
_ACTOR_NAME = re.compile(r"/(?P<name>clients-\d+-\d+|server)\b")
_SHARD = re.compile(r"clients-(?P<first>\d+)-(?P<last>\d+)")
_HEX_ID = re.compile(r"\b[0-9a-f]{32}\b")


def describe_memory_kill(ex: BaseException, actor_names: Mapping[str, str] | None = None) -> str | None:
    """A message for a Ray exception `ex` that reports an actor killed for memory; None otherwise.

    `actor_names` maps actor ids (hex) to our actor names without the run id
    (`clients-A-B`, `server`), for reports that carry only the id. The message
    names the actor, the memory Ray reported, and the settings that lower it.
    """
    text = str(ex)
    is_oom = isinstance(ex, ray.exceptions.OutOfMemoryError)
    if not is_oom and not (isinstance(ex, ray.exceptions.RayActorError) and _KILLED_FOR_MEMORY.search(text)):
        return None
    return (
        f"{_which_actor(ex, text, actor_names or {})} was killed by Ray's memory monitor: "
        f"{_memory_reported(text)}. To use less memory per actor: host fewer clients per actor "
        "(--clients-per-actor; a shard holds its clients' data and, for most methods, their models "
        "and optimizer states), give Ray's object store less of the node's memory "
        "(`ray start --object-store-memory BYTES`, then RAY_ADDRESS), or write no checkpoint "
        "files (--checkpoint-every 0); a node with more memory also helps"
    )


def _which_actor(ex: BaseException, text: str, actor_names: Mapping[str, str]) -> str:
    ids = [getattr(ex, "actor_id", None), *_HEX_ID.findall(text)]
    name = next((actor_names[i] for i in ids if i in actor_names), None)
    if name is None and (match := _ACTOR_NAME.search(text)):
        name = match["name"]
    if name == "server":
        return "the server actor"
    if name and (shard := _SHARD.fullmatch(name)):
        first, last = shard["first"], shard["last"]
        held = f"client {first}" if first == last else f"clients {first}-{last}"
        return f"the client shard actor holding {held}"
    if "ServerActor" in text:
        return "the server actor"
    if "ClientActor" in text:
        return "a client shard actor (Ray did not say which)"
    return "a Ray actor (Ray did not say which)"


def _memory_reported(text: str) -> str:
    parts = []
    if node := _NODE_MEMORY.search(text):
        parts.append(f"the node {node['ip']} had {node['used']} GB of {node['total']} GB in use")
        if threshold := _THRESHOLD.search(text):
            parts[-1] += f" (kill threshold {threshold['fraction']})"
    if process := _PROCESS_MEMORY.search(text):
        parts.append(f"the actor's process used {process['used']} GB")
    if parts:
        return "; ".join(parts)
    first_line = text.strip().splitlines()[0] if text.strip() else "no details"
    return f"Ray reported: {first_line[:300]}"
