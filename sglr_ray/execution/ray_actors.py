"""The Ray executor: ClientShard and Server objects hosted in thin actors.

The actors add nothing to the math: each method forwards to the object it
holds. Calls return object references; the driver passes those references
on, so smashed data and gradients go from client actors to the server actor
and back through Ray's object store, never through the driver.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from typing import Any

import ray
import torch

from sglr_ray.config import RunConfig
from sglr_ray.data import PreparedData
from sglr_ray.errors import ActorLostError, ExecutorError, StaleActorError
from sglr_ray.execution.placement import plan_placement
from sglr_ray.nodes.client import ClientShard, client_partitions
from sglr_ray.nodes.server import Server

log = logging.getLogger(__name__)


__all__ = ["ActorLostError", "ClientActor", "ExecutorError", "RayExecutor", "ServerActor", "connect"]
RECOVERY_TIMEOUT_S = 120.0  # how long a restarted actor may take to come back


class _Host:
    """What both actors share: one plain object, and a guard against silent restarts.

    Ray rebuilds a dead actor from its constructor arguments, so a restarted
    actor holds initial weights. Calls that reach it before the driver has
    restored a snapshot would train on those and corrupt the run without an
    error; they raise StaleActorError instead, which the driver treats as the
    loss of the actor.
    """

    def __init__(self, torch_threads: int, held: Any) -> None:
        torch.set_num_threads(torch_threads)  # Ray sets OMP_NUM_THREADS from num_cpus otherwise
        self._held = held
        self._stale: bool | None = None  # unknown until the first call (see _checked)

    def _checked(self) -> Any:
        if self._stale is None:
            # Asked lazily: from inside __init__ this GCS lookup waits about a minute,
            # as the actor is still being created. Ray's property warns about an API it
            # uses itself; the warning says nothing to our users.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                self._stale = bool(ray.get_runtime_context().was_current_actor_reconstructed)
        if self._stale:
            raise StaleActorError("this actor was restarted and has not been restored from a snapshot")
        return self._held

    def load_state(self, state: Any) -> None:
        self._held.load_state(state)
        self._stale = False


class ClientActor(_Host):
    """Hosts one ClientShard in its own process."""

    def __init__(self, torch_threads: int, *shard_args: Any) -> None:
        super().__init__(torch_threads, ClientShard(*shard_args))

    @property
    def shard(self) -> ClientShard:
        return self._checked()

    def forward_batch(self, epoch: int, step: int, client_ids: Any = None) -> Any:
        return self.shard.forward_batch(epoch, step, client_ids)

    def apply_gradient(self, delivery: Any, averaged_gradient: Any) -> None:
        return self.shard.apply_gradient(delivery, averaged_gradient)

    def upload_models(self) -> Any:
        return self.shard.upload_models()

    def train_local(self, epoch: int) -> tuple[float, int]:
        return self.shard.train_local(epoch)

    def load_model_state(self, state: Any, client_ids: Any = None) -> None:
        return self.shard.load_model_state(state, client_ids)

    def model_state(self, client_id: int) -> Any:
        return self.shard.model_state(client_id)

    def evaluate(self, top_state: Any, split: str, client_ids: Any = None, whole: bool = False) -> Any:
        return self.shard.evaluate(top_state, split, client_ids, whole)

    def state(self) -> Any:
        return self.shard.state()


class ServerActor(_Host):
    """Hosts the Server in its own process."""

    def __init__(self, torch_threads: int, *server_args: Any) -> None:
        super().__init__(torch_threads, Server(*server_args))

    @property
    def server(self) -> Server:
        return self._checked()

    def train_step(self, epoch: int, step: int, *uploads: Any) -> tuple:
        return self.server.train_step(epoch, step, *uploads)

    def average_client_models(self, *uploads: Any) -> Any:
        return self.server.average_client_models(*uploads)

    def relay_model(self, from_client: int, to_client: int, nbytes: int) -> None:
        return self.server.relay_model(from_client, to_client, nbytes)

    def receive_raw_data(self, client_id: int, nbytes: int) -> None:
        return self.server.receive_raw_data(client_id, nbytes)

    def top_state(self) -> Any:
        return self.server.top_state()

    def average_server_copies(self) -> None:
        return self.server.average_server_copies()

    def state(self) -> Any:
        return self.server.state()

    def pop_epoch_comm(self) -> Any:
        return self.server.pop_epoch_comm()


def connect() -> bool:
    """Attach to RAY_ADDRESS when set, else start an embedded Ray. Returns True if we started it."""
    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS") or "local"
    log.info("ray.init(address=%r)", address)
    ray.init(address=address, log_to_driver=True, include_dashboard=False if address == "local" else None)
    return address == "local"


class RayExecutor:
    name = "ray"

    def __init__(self, config: RunConfig, data: PreparedData, run_id: str) -> None:
        self._owns_ray = connect()
        self.actors: list[Any] = []
        resources = ray.cluster_resources()
        partitions = client_partitions(config, data)
        placement = plan_placement(
            len(partitions), config.clients_per_actor, config.torch_threads,
            node_cpus=[n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n["Alive"]],
            memory_bytes=resources.get("memory", 8 * 2**30),
        )  # fmt: skip
        self.clients_per_shard = placement.clients_per_shard
        self.shard_client_ids = placement.shard_client_ids
        self.partition_nbytes = [p.nbytes for p in data.partitions]
        on_gpu = config.gpus_per_client > 0
        device = "cuda" if on_gpu else "cpu"
        # A dead actor is restarted by Ray with its constructor arguments; its calls in
        # flight fail rather than rerun (max_task_retries=0), and the driver replays the
        # epoch from the last snapshot (checkpoint.py).
        common = {
            "num_cpus": placement.cpus_per_actor, "max_concurrency": 1,
            "max_restarts": config.max_restarts, "max_task_retries": 0,
        }  # fmt: skip
        self.server = (
            ray.remote(ServerActor)
            .options(name=f"{run_id}/server", num_gpus=config.gpus_per_client if on_gpu else 0, **common)
            .remote(placement.torch_threads, config, device)
        )
        val, test = ray.put(data.val), ray.put(data.test)  # stored once, shared by every shard
        self._pinned = [val, test]  # kept alive: a restarted actor is rebuilt from them
        self.shards = []
        for ids in placement.shard_client_ids:
            own = ray.put([partitions[i] for i in ids])  # only this shard's clients' data
            self._pinned.append(own)
            self.shards.append(
                ray.remote(ClientActor)
                .options(
                    name=f"{run_id}/clients-{ids[0]}-{ids[-1]}",
                    num_gpus=config.gpus_per_client * len(ids),
                    scheduling_strategy="SPREAD",  # over the nodes of a cluster, not packed on one
                    **common,
                )
                .remote(placement.torch_threads, config, ids, own, val, test, device)
            )
        self.actors = [self.server, *self.shards]
        self.get([actor.__ray_ready__.remote() for actor in self.actors])  # start-up is not epoch time
        log.info(
            "%d client shards of up to %d clients; %.2f CPU and %d torch threads per actor",
            len(self.shards), self.clients_per_shard, placement.cpus_per_actor, placement.torch_threads,
        )  # fmt: skip

    def call(self, target: Any, method: str, *args: Any, num_returns: int = 1) -> Any:
        return getattr(target, method).options(num_returns=num_returns).remote(*args)

    def get(self, value: Any) -> Any:
        try:
            return ray.get(value)
        except ray.exceptions.RayActorError as ex:
            raise ActorLostError(f"a Ray actor died: {ex}") from ex
        except ray.exceptions.RayError as ex:
            if isinstance(ex, StaleActorError):  # Ray re-raises the actor's error as both types
                raise ActorLostError(f"a Ray actor was restarted: {ex}") from ex
            raise ExecutorError(f"a Ray actor failed: {ex}") from ex

    def recover(self) -> None:
        """Wait until every actor answers again (Ray restarts dead ones, up to max_restarts)."""
        deadline = time.monotonic() + RECOVERY_TIMEOUT_S
        for actor in self.actors:
            while True:
                try:
                    ray.get(actor.__ray_ready__.remote(), timeout=10)
                    break
                except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as ex:
                    if time.monotonic() > deadline:
                        raise ExecutorError(
                            f"an actor did not come back within {RECOVERY_TIMEOUT_S} s"
                        ) from ex
                    time.sleep(0.2)

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
        if self._owns_ray:
            ray.shutdown()
