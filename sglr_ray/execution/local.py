"""The in-process executor: the same ClientShard and Server objects, called directly.

It is the oracle for the Ray executor (same seed, same numbers) and the
baseline for its overhead.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch

from sglr_ray.config import RunConfig
from sglr_ray.data import PreparedData
from sglr_ray.execution.placement import choose_device, resolve_clients_per_shard, shard_clients
from sglr_ray.execution.process import configure_process
from sglr_ray.nodes.client import client_partitions
from sglr_ray.nodes.server import Server
from sglr_ray.nodes.shards import make_shard


def call_on(target: Any, method: Callable[..., Any], *args: Any) -> Any:
    """Run `method` on `target`, in process or in an actor. A function of a class (ClientShard.
    forward_batch) is looked up by name on the target, so a subclass's override runs (the tests'
    spies); any other function (a method's own, methods/usl.py) gets the target first."""
    if "." in method.__qualname__:
        return getattr(target, method.__name__)(*args)
    return method(target, *args)


class LocalExecutor:
    name = "local"

    def __init__(self, config: RunConfig, data: PreparedData, run_id: str = "") -> None:
        configure_process(config.torch_threads or os.cpu_count() or 1)  # as every Ray actor does
        # One process holds everything: it "was given a GPU" when the run asks for any.
        gpus_requested = config.gpus_per_client > 0 or config.server_gpus > 0
        self.device = choose_device(config.device, gpus_requested, torch.cuda.is_available())
        partitions = client_partitions(config, data)
        self.partition_nbytes = [p.nbytes for p in data.partitions]
        # One process runs its shards in turn: by default all clients in one shard (one grouped model).
        self.clients_per_shard = resolve_clients_per_shard(config.clients_per_actor, len(partitions), 1)
        self.shard_client_ids = shard_clients(len(partitions), self.clients_per_shard)
        self.server = Server(config, self.device)
        self.shards = [
            make_shard(config, ids, [partitions[i] for i in ids], data.val, data.test, self.device)
            for ids in self.shard_client_ids
        ]

    def call(self, target: Any, method: Callable[..., Any], *args: Any, num_returns: int = 1) -> Any:
        return call_on(target, method, *args)

    def get(self, value: Any) -> Any:
        return value

    def recover(self) -> None:
        pass  # nothing in-process dies and comes back

    def close(self) -> None:
        pass
