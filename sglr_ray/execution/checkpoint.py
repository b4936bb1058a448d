"""Checkpoints: the state that makes a run resumable, in memory and on disk.

A run's state after an epoch is the clients' models and optimizer states and
the server's; nothing else is needed, because shuffles and SplitAvg's active
sets are pure functions of (seed, client, epoch, step). Where clients' models
are averaged (FL, SFL, SFLv1) every client holds the global model after an
epoch, so it is stored once; clients' optimizer states are stored only with
--client-optimizer-state keep (ClientShard.state). An FL checkpoint under the
default reset is one model, whatever the number of clients. Restoring that state
and replaying from the next epoch reproduces an uninterrupted run exactly.

Two copies serve two failures:
- `Snapshot`, after every epoch, holds what the actors returned (object
  references under Ray, values in process). When an actor dies and Ray
  restarts it, the driver loads the snapshot into every actor and replays
  the epoch in progress; nothing passes through the driver.
- The file `<out>/checkpoints/<run_id>.pt`, every `--checkpoint-every`
  epochs, lets `sglr-ray run --resume` carry on after the driver itself died,
  on this node or another when --out is shared storage (s3://...). It is
  serialized in memory and written whole (results/storage.py: a temporary
  name and a rename locally, one PUT on an object store), so a crash never
  leaves a half-written checkpoint.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import torch

from sglr_ray.nodes.client import ClientShard
from sglr_ray.nodes.server import Server
from sglr_ray.results.storage import Storage, StoredFile


@dataclass
class Snapshot:
    epoch: int  # the last epoch the state includes; -1 = before training
    shards: list[Any]  # per shard: ClientShard.state() (a reference under Ray)
    server: Any  # Server.state()


def checkpoint_path(out: str, run_id: str) -> StoredFile:
    """Where run `run_id`'s checkpoint lives under `out` (a directory or a URI)."""
    return Storage(out).file(f"checkpoints/{run_id}.pt")


def take_snapshot(ex: Any, epoch: int) -> Snapshot:
    return Snapshot(
        epoch, [ex.call(s, ClientShard.state) for s in ex.shards], ex.call(ex.server, Server.state)
    )


def restore(ex: Any, snapshot: Snapshot) -> None:
    """Load `snapshot` into every shard and the server, and wait until they have."""
    calls = [
        ex.call(s, ClientShard.load_state, state) for s, state in zip(ex.shards, snapshot.shards, strict=True)
    ]
    ex.get([*calls, ex.call(ex.server, Server.load_state, snapshot.server)])


def save(ex: Any, snapshot: Snapshot, path: StoredFile) -> None:
    """Write `snapshot` to `path` whole, with client states keyed by client id,
    so a resumed run may place clients on shards differently. The global model
    that every shard holds (FedAvg methods) is written once."""
    clients: dict[int, Any] = {}
    states = ex.get(snapshot.shards)
    for state in states:
        clients.update(state["clients"])
    payload = {
        "epoch": snapshot.epoch,
        "model": states[0]["model"],  # None where clients keep their own models
        "clients": clients,
        "server": ex.get(snapshot.server),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    path.write_bytes(buffer.getvalue())


def load(path: StoredFile, shard_client_ids: list[list[int]]) -> Snapshot:
    """The checkpoint at `path`, split over shards holding `shard_client_ids`."""
    payload = torch.load(io.BytesIO(path.read_bytes()), weights_only=True)
    if "model" not in payload:
        raise ValueError(
            f"checkpoint {str(path)!r} was written by an older sglr-ray (one model per client); "
            "start the run again under a new --run-id"
        )
    clients = payload["clients"]
    missing = sorted({c for ids in shard_client_ids for c in ids} - set(clients))
    if missing:
        raise ValueError(f"checkpoint {str(path)!r} has no state for clients {missing}")
    shards = [
        {"model": payload["model"], "clients": {c: clients[c] for c in ids}} for ids in shard_client_ids
    ]
    return Snapshot(payload["epoch"], shards, payload["server"])
