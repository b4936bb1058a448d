"""The Ray executor: ClientShard and Server objects hosted in thin actors.

The actors add nothing to the math: one generic entry point, `call(method,
*args)`, runs a method of the object an actor holds, named by the function
itself (ClientShard.forward_batch), so there are no forwarders to keep in
step and no method names in strings. Calls return object references; the driver passes those references
on, so smashed data and gradients go from client actors to the server actor
and back through Ray's object store, never through the driver.

The whole-model methods (CL, FL) have no server actor: their server only sums
the shards' FedAvg uploads (one per shard, not per client) and counts bytes, so
the driver holds it, and the CPU and worker memory an idle actor would take go
to one more shard (placement.needs_server_actor).
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch

from sglr_ray.config import RunConfig
from sglr_ray.data import PreparedData
from sglr_ray.errors import (
    ActorLostError,
    ActorOutOfMemoryError,
    ExecutorError,
    PlacementError,
    StaleActorError,
)
from sglr_ray.execution import interrupt
from sglr_ray.execution.local import call_on
from sglr_ray.execution.memory_kill import describe_memory_kill
from sglr_ray.execution.placement import (
    ClusterView,
    Placement,
    choose_device,
    memory_shortfall,
    plan_for_cluster,
    shard_name,
)
from sglr_ray.execution.process import configure_process
from sglr_ray.execution.ray_cluster import read_cluster, wait_for_actors
from sglr_ray.nodes.client import ClientShard, client_partitions
from sglr_ray.nodes.server import Server

log = logging.getLogger(__name__)


__all__ = ["ActorLostError", "ClientActor", "ExecutorError", "RayExecutor", "ServerActor", "connect"]
RECOVERY_TIMEOUT_S = 120.0  # how long a restarted actor may take to come back
# Longest the driver waits inside Ray before Python runs a pending signal handler (see get).
GET_SLICE_S = 0.5


@dataclass(frozen=True)
class ActorStart:
    """What an actor reports once started: its torch device and the GPUs Ray gave it."""

    device: str | None
    gpu_ids: list[str]
    error: str | None  # why it cannot run here (then it holds nothing)


class _Host:
    """What both actors share: one plain object, and a guard against silent restarts.

    Ray rebuilds a dead actor from its constructor arguments, so a restarted
    actor holds initial weights. Calls that reach it before the driver has
    restored a snapshot would train on those and corrupt the run without an
    error; they raise StaleActorError instead, which the driver treats as the
    loss of the actor.
    """

    def __init__(self, torch_threads: int, device_setting: str, build: Callable[[str], Any]) -> None:
        configure_process(torch_threads)  # as the in-process executor does
        # The device depends on what Ray gave this process, so it is chosen here, not by the driver.
        gpu_ids = [str(i) for i in ray.get_gpu_ids()]
        self._held: Any = None
        try:
            device = choose_device(device_setting, bool(gpu_ids), torch.cuda.is_available())
        except PlacementError as ex:
            # Reported through started(): raised here, it would reach the driver as a Ray traceback.
            self._start = ActorStart(None, gpu_ids, str(ex))
        else:
            self._start = ActorStart(device, gpu_ids, None)
            self._held = build(device)
        self._stale: bool | None = None  # unknown until the first call (see _checked)

    def started(self) -> ActorStart:
        return self._start

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

    def call(self, method: Callable[..., Any], *args: Any) -> Any:
        """The one entry point: `method` is a function of the held object's class
        (e.g. ClientShard.forward_batch), passed by reference, never by name."""
        if method in _RESTORES:  # loading a snapshot is what makes a restarted actor current
            result = call_on(self._held, method, *args)
            self._stale = False
            return result
        return call_on(self._checked(), method, *args)


class ClientActor(_Host):
    """Hosts one ClientShard in its own process."""

    def __init__(self, torch_threads: int, device_setting: str, *shard_args: Any) -> None:
        super().__init__(torch_threads, device_setting, lambda device: ClientShard(*shard_args, device))


class ServerActor(_Host):
    """Hosts the Server in its own process."""

    def __init__(self, torch_threads: int, device_setting: str, config: RunConfig) -> None:
        super().__init__(torch_threads, device_setting, lambda device: Server(config, device))


_RESTORES = {ClientShard.load_state, Server.load_state}


# Ray starts its worker processes at niceness 15 (its `worker_niceness` setting), below
# the driver and its own daemons, so that busy workers cannot starve them. Here the
# workers ARE the run's computation, and at 15 every other busy process on the machine
# takes their CPU first. A multi-thread actor suffers most: its OpenMP threads meet at a
# barrier after every operation, so one preempted thread stalls them all. With two busy
# processes at niceness 10 on 2 cores, SSL's server step (2 threads) took 185 ms in its
# actor at niceness 15 against 14 ms at niceness 0, and 10 ms in process; SSL trained 30
# samples/s against 249 (benchmarks/profile_steps.py --load 2, results/README.md). An
# embedded Ray therefore starts its workers at the driver's niceness, unless
# RAY_worker_niceness says otherwise.
WORKER_NICENESS_ENV = "RAY_worker_niceness"


def start_local_ray(**init_kwargs: Any) -> None:
    """ray.init of an embedded Ray (no dashboard) whose workers run at the driver's niceness."""
    os.environ.setdefault(WORKER_NICENESS_ENV, str(os.nice(0)))
    ray.init(address="local", include_dashboard=False, **init_kwargs)


def connect() -> bool:
    """Attach to RAY_ADDRESS when set, else start an embedded Ray. Returns True if we started it."""
    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS") or "local"
    log.info("ray.init(address=%r)", address)
    with interrupt.keep_stop_handlers():  # ray.init takes SIGTERM over; a run's SIGTERM must stop it
        if address == "local":
            start_local_ray(log_to_driver=True)
        else:  # a cluster's workers run at the niceness its nodes were started with
            ray.init(address=address, log_to_driver=True)
    return address == "local"


def ship_modules(paths: list[Path]) -> dict[str, Any]:
    """A runtime environment that puts the files `paths` on every actor's sys.path, on any node.

    Ray accepts local paths only in a job's runtime environment, not an actor's, so the
    file is uploaded to the cluster here (as `ray.init` does for a job) and actors get
    its gcs:// URI. This uses Ray's own upload helper, which is not public API.
    """
    from ray._private.runtime_env.py_modules import upload_py_modules_if_needed

    node = ray._private.worker.global_worker.node
    scratch = node.get_runtime_env_dir_path() if node is not None else None
    return upload_py_modules_if_needed(
        {"py_modules": [str(path) for path in paths]}, include_gitignore=False, scratch_dir=scratch
    )


class RayExecutor:
    name = "ray"

    def __init__(self, config: RunConfig, data: PreparedData, run_id: str) -> None:
        self._owns_ray = connect()
        self.actors: list[Any] = []
        try:
            self._start_actors(config, data, run_id)
        except BaseException:
            self.close()  # the driver closes only an executor it got back
            raise

    def _start_actors(self, config: RunConfig, data: PreparedData, run_id: str) -> None:
        partitions = client_partitions(config, data)
        cluster = read_cluster()
        placement = plan_for_cluster(config, len(partitions), cluster)  # refuses what cannot fit
        self.server_in_driver = not placement.server_actor
        self.clients_per_shard = placement.clients_per_shard
        self.shard_client_ids = placement.shard_client_ids
        self.partition_nbytes = [p.nbytes for p in data.partitions]
        # A dead actor is restarted by Ray with its constructor arguments; its calls in
        # flight fail rather than rerun (max_task_retries=0), and the driver replays the
        # epoch from the last snapshot (checkpoint.py).
        common = {
            "num_cpus": placement.cpus_per_actor, "max_concurrency": 1,
            "max_restarts": config.max_restarts, "max_task_retries": 0,
        }  # fmt: skip
        if user_files := config.user_files:  # --method, --model, --dataset FILE.py: actors import them
            common["runtime_env"] = ship_modules(user_files)
        if self.server_in_driver:  # on the CPU: it only averages weights
            self.server = Server(config, "cpu")
        else:
            self.server = (
                ray.remote(ServerActor)
                .options(name=f"{run_id}/server", num_gpus=placement.server_gpus, **common)
                .remote(placement.server_threads, config.device, config)
            )
            self.actors = [self.server]  # from here on, close() has something to stop
        val, test = ray.put(data.val), ray.put(data.test)  # stored once, shared by every shard
        self._pinned = [val, test]  # kept alive: a restarted actor is rebuilt from them
        self.shards = []
        for ids, gpus in zip(placement.shard_client_ids, placement.shard_gpus, strict=True):
            own = ray.put([partitions[i] for i in ids])  # only this shard's clients' data
            self._pinned.append(own)
            self.shards.append(
                ray.remote(ClientActor)
                .options(
                    name=f"{run_id}/{shard_name(ids)}",
                    num_gpus=gpus,
                    scheduling_strategy="SPREAD",  # over the nodes of a cluster, not packed on one
                    **common,
                )
                .remote(placement.torch_threads, config.device, config, ids, own, val, test)
            )
            self.actors.append(self.shards[-1])
        self.actor_starts = self._wait_started(config, placement, cluster)  # start-up is not epoch time

    def _wait_started(
        self, config: RunConfig, placement: Placement, cluster: ClusterView
    ) -> dict[str, ActorStart]:
        """Wait for every actor (at most --placement-timeout-s for placement); what each reported."""
        requests = {r.name: r for r in placement.actor_requests()}
        if note := memory_shortfall(len(requests), cluster.memory_bytes):
            log.warning(note)
        reports = wait_for_actors(dict(zip(requests, self.actors, strict=True)), requests,
                                  config.placement_timeout_s, cluster)  # fmt: skip
        idle_gpus = [name for name, r in reports.items() if r.gpu_ids and r.device == "cpu"]
        if idle_gpus and config.device == "auto":
            log.warning("%s were given GPUs but run on cpu: torch sees no CUDA device there", idle_gpus)
        log.info(
            "%d client shards of up to %d clients; %.2f CPU per actor; %d torch threads per shard, "
            "%d for the server; devices %s%s",
            len(self.shards), self.clients_per_shard, placement.cpus_per_actor, placement.torch_threads,
            placement.server_threads,
            {name: f"{r.device} (GPUs {r.gpu_ids})" for name, r in reports.items()},
            "; the server in the driver" if self.server_in_driver else "",
        )  # fmt: skip
        return reports

    def call(self, target: Any, method: Callable[..., Any], *args: Any, num_returns: int = 1) -> Any:
        """`method` of the object `target` hosts, run in its actor; returns object references."""
        if target is self.server and self.server_in_driver:
            return self._call_in_driver(method, args, num_returns)
        return target.call.options(num_returns=num_returns).remote(method, *args)

    def _call_in_driver(self, method: Callable[..., Any], args: tuple, num_returns: int) -> Any:
        """A call on the server held in the driver, with an actor call's contract: references
        in (awaited as `get` does), references out, so the driver loop cannot tell."""
        values = [self.get(a) if isinstance(a, ray.ObjectRef) else a for a in args]
        result = getattr(self.server, method.__name__)(*values)
        return ray.put(result) if num_returns == 1 else [ray.put(r) for r in result]

    def get(self, value: Any) -> Any:
        """ray.get in slices of GET_SLICE_S, so a stop signal is acted on within about that.

        Ray checks for signals inside ray.get only once a second and turns the exception
        the handler raises into a plain KeyboardInterrupt (interrupt.RunInterrupted); between
        slices the handler runs in Python, and its exception comes through as raised.
        """
        try:
            while True:
                try:
                    return ray.get(value, timeout=GET_SLICE_S)
                except ray.exceptions.GetTimeoutError:
                    continue  # not ready yet; the objects keep arriving meanwhile
        except ray.exceptions.RayError as ex:
            if (memory_kill := describe_memory_kill(ex, self._actor_names())) is not None:
                raise ActorOutOfMemoryError(memory_kill) from ex
            if isinstance(ex, ray.exceptions.RayActorError):
                raise ActorLostError(f"a Ray actor died: {ex}") from ex
            if isinstance(ex, StaleActorError):  # Ray re-raises the actor's error as both types
                raise ActorLostError(f"a Ray actor was restarted: {ex}") from ex
            raise ExecutorError(f"a Ray actor failed: {ex}") from ex

    def _actor_names(self) -> dict[str, str]:
        """Actor id (hex) -> the actor's name without the run id, for describe_memory_kill."""
        names = {} if self.server_in_driver else {self.server._actor_id.hex(): "server"}
        for shard, ids in zip(self.shards, self.shard_client_ids, strict=True):
            names[shard._actor_id.hex()] = shard_name(ids)
        return names

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
