"""The Ray executor: ClientShard and Server objects hosted in thin actors.

The actors add nothing to the math: one generic entry point, `call(method,
*args)`, runs a method of the object an actor holds, named by the function
itself (SplitShard.forward_batch), so there are no forwarders to keep in
step and no method names in strings. Calls return object references; the driver passes those references
on, so smashed data and gradients go from client actors to the server actor
and back through Ray's object store, never through the driver.

The whole-model methods (CL, FL) have no server actor: their server only sums
the shards' FedAvg uploads (one per shard, not per client) and counts bytes, so
the driver holds it, and the CPU and worker memory an idle actor would take go
to one more shard (placement.needs_server_actor).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import ray
import torch
from ray.util.placement_group import PlacementGroup

from sglr_ray.config import RunConfig
from sglr_ray.data import PreparedData
from sglr_ray.errors import (
    ActorLostError,
    ActorOutOfMemoryError,
    ExecutorError,
    PlacementError,
    StaleActorError,
)
from sglr_ray.execution import interrupt, ray_internals
from sglr_ray.execution.local import call_on
from sglr_ray.execution.memory_kill import describe_memory_kill
from sglr_ray.execution.placement import (
    Placement,
    choose_device,
    memory_shortfall,
    plan_for_cluster,
    shard_name,
)
from sglr_ray.execution.process import configure_process
from sglr_ray.execution.ray_cluster import (
    create_group,
    in_bundle,
    read_cluster,
    release,
    wait_placed,
    wait_started,
)
from sglr_ray.nodes.client import ClientShard, client_partitions
from sglr_ray.nodes.server import Server
from sglr_ray.nodes.shards import make_shard

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
    loss of the actor. The constructor arguments are small values, never object
    references: Ray cannot restart an actor whose arguments sit in the object
    store once they are lost (ray-project/ray#53727), and says so at error level.
    """

    def __init__(self, torch_threads: int, device_setting: str) -> None:
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
        (e.g. SplitShard.forward_batch), passed by reference, never by name."""
        if method in _RESTORES:  # loading a snapshot is what makes a restarted actor current
            result = call_on(self._held, method, *args)
            self._stale = False
            return result
        return call_on(self._checked(), method, *args)


class ClientActor(_Host):
    """Hosts one ClientShard in its own process; its data comes with `attach_data`."""

    def __init__(
        self, torch_threads: int, device_setting: str, config: RunConfig, client_ids: list[int]
    ) -> None:
        super().__init__(torch_threads, device_setting)
        self._shard_args = (config, client_ids)

    def attach_data(self, data_refs: list[ray.ObjectRef]) -> bool:
        """Build the shard from [its partitions, val, test], fetched here from the object store,
        unless it is built already (the driver calls this again after any actor restarted).
        The references come inside a list so that Ray does not fetch them for a no-op.
        Returns whether it built the shard."""
        if self._held is not None or self._start.error:
            return False
        partitions, val, test = ray.get(data_refs)
        self._held = make_shard(*self._shard_args, partitions, val, test, self._start.device)
        return True


class ServerActor(_Host):
    """Hosts the Server in its own process."""

    def __init__(self, torch_threads: int, device_setting: str, config: RunConfig) -> None:
        super().__init__(torch_threads, device_setting)
        if not self._start.error:
            self._held = Server(config, self._start.device)


_RESTORES = {ClientShard.load_state, Server.load_state}
_SNAPSHOTS = {ClientShard.state, Server.state}  # what checkpoint.take_snapshot keeps (see _copy_here)


# Ray starts its worker processes at niceness 15 (its `worker_niceness` setting), below
# the driver and its own daemons, so that busy workers cannot starve them. Here the
# workers ARE the run's computation, and at 15 every other busy process on the machine
# takes their CPU first. A multi-thread actor suffers most: its OpenMP threads meet at a
# barrier after every operation, so one preempted thread stalls them all. With two busy
# processes at niceness 10 on 2 cores, SSL's server step (2 threads) took 185 ms in its
# actor at niceness 15 against 14 ms at niceness 0, and 10 ms in process; SSL trained 30
# samples/s against 249 (benchmarks/profile_steps.py --load 2, results/README.md). An
# embedded Ray therefore starts its workers at the driver's niceness, unless
# RAY_worker_niceness says otherwise. Ray applies that setting as an increment over the
# raylet's niceness, which an embedded raylet inherits from the driver, so 0 keeps the
# driver's: a driver under `nice -n 5` with 5 there got workers at 10.
WORKER_NICENESS_ENV = "RAY_worker_niceness"


def start_local_ray(**init_kwargs: Any) -> None:
    """ray.init of an embedded Ray (no dashboard) whose workers run at the driver's niceness."""
    os.environ.setdefault(WORKER_NICENESS_ENV, "0")
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


_reserved: tuple[PlacementGroup, Placement] | None = None  # see reserved_placement


@contextlib.contextmanager
def reserved_placement(group: PlacementGroup, placement: Placement) -> Iterator[None]:
    """Within it, a RayExecutor in this process schedules its actors into `group` as `placement`
    says instead of planning and reserving its own: a sweep's run task and its actors share one
    placement group, reserved by the sweep before the task started (ray_sweep.py)."""
    global _reserved
    _reserved = (group, placement)
    try:
        yield
    finally:
        _reserved = None


class RayExecutor:
    name = "ray"

    def __init__(self, config: RunConfig, data: PreparedData, run_id: str) -> None:
        self._owns_ray = connect()
        self.actors: list[Any] = []  # the server's (if any) first, then the shards'
        self._actor_names_started: list[str] = []  # in the order of self.actors
        self._group: PlacementGroup | None = None  # the placement group this executor made (and removes)
        try:
            self._start_actors(config, data, run_id)
        except BaseException:
            self.close()  # the driver closes only an executor it got back
            raise

    def _reserve(self, config: RunConfig, num_clients: int, run_id: str) -> tuple[PlacementGroup, Placement]:
        """The run's placement group, placed: the sweep's, or one of its own planned on the cluster
        (refused at once when the totals cannot fit; else given --placement-timeout-s)."""
        if _reserved is not None:
            return _reserved
        cluster = read_cluster()
        placement = plan_for_cluster(config, num_clients, cluster)
        if placement.shortfall is not None:
            log.warning("%s [%s]; waiting up to %g s (--placement-timeout-s) for the autoscaler",
                        placement.shortfall, cluster.describe(), config.placement_timeout_s)  # fmt: skip
        if note := memory_shortfall(len(placement.actor_names()), cluster.memory_bytes):
            log.warning(note)
        self._group = create_group(placement, name=f"{run_id}/{uuid.uuid4().hex[:8]}")
        wait_placed(self._group, placement, config.placement_timeout_s, cluster)
        return self._group, placement

    def _start_actors(self, config: RunConfig, data: PreparedData, run_id: str) -> None:
        partitions = client_partitions(config, data)
        group, placement = self._reserve(config, len(partitions), run_id)
        self.server_in_driver = not placement.server_actor
        self.clients_per_shard = placement.clients_per_shard
        self.shard_client_ids = placement.shard_client_ids
        self.partition_nbytes = [p.nbytes for p in data.partitions]
        actor = self._actor_factory(config, run_id, group, placement)
        if self.server_in_driver:  # on the CPU: it only averages weights
            self.server = Server(config, "cpu")
        else:
            self.server = actor(ServerActor, "server", placement.server_gpus,
                                placement.server_threads, config.device, config)  # fmt: skip
        val, test = ray.put(data.val), ray.put(data.test)  # stored once, shared by every shard
        self._shard_data = []  # held here for as long as the run: a restarted shard fetches its data again
        self.shards = []
        for ids, gpus in zip(placement.shard_client_ids, placement.shard_gpus, strict=True):
            self._shard_data.append([ray.put([partitions[i] for i in ids]), val, test])  # only its clients'
            self.shards.append(actor(ClientActor, shard_name(ids), gpus,
                                     placement.torch_threads, config.device, config, ids))  # fmt: skip
        attached = self._attach_data()
        self.actor_starts = self._wait_started(placement, config.device)  # start-up is not epoch time
        self.get(attached)

    def _actor_factory(
        self, config: RunConfig, run_id: str, group: PlacementGroup, placement: Placement
    ) -> Callable[..., Any]:
        """actor(cls, name, gpus, *args): a new actor in its bundle of `group`, kept in self.actors.

        A dead actor is restarted by Ray with its constructor arguments, in its bundle (which Ray
        places again if its node died); its calls in flight fail rather than rerun
        (max_task_retries=0), and the driver replays the epoch from the last snapshot (checkpoint.py).
        """
        common = {"max_concurrency": 1, "max_restarts": config.max_restarts, "max_task_retries": 0}
        if user_files := config.user_files:  # --method, --model, --dataset FILE.py: actors import them
            common["runtime_env"] = ray_internals.upload_modules(user_files)

        def actor(cls: type, name: str, gpus: float, *args: Any) -> Any:
            options = {"name": f"{run_id}/{name}", "num_cpus": placement.cpus_per_actor, "num_gpus": gpus,
                       "scheduling_strategy": in_bundle(group, placement.bundle_index(name))}  # fmt: skip
            self.actors.append(ray.remote(cls).options(**options, **common).remote(*args))
            self._actor_names_started.append(name)
            return self.actors[-1]

        return actor

    def _attach_data(self) -> list[ray.ObjectRef]:
        return [s.attach_data.remote(refs) for s, refs in zip(self.shards, self._shard_data, strict=True)]

    def _wait_started(self, placement: Placement, device_setting: str) -> dict[str, ActorStart]:
        """Wait for every actor to start; what each reported (its device and GPUs)."""
        reports = wait_started(dict(zip(self._actor_names_started, self.actors, strict=True)))
        idle_gpus = [name for name, r in reports.items() if r.gpu_ids and r.device == "cpu"]
        if idle_gpus and device_setting == "auto":
            log.warning("%s were given GPUs but run on cpu: torch sees no CUDA device there", idle_gpus)
        log.info(
            "%d client shards of up to %d clients; %.4g CPU per actor; %d torch threads per shard, "
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
        result = target.call.options(num_returns=num_returns).remote(method, *args)
        if method in _SNAPSHOTS:
            self._copy_here(result)
        return result

    def _copy_here(self, ref: ray.ObjectRef) -> None:
        """Wait for a snapshot part and copy it into this node's object store. Its only copy
        would otherwise sit on the actor's node, and a lost node would take the snapshot the
        epoch is replayed from with it; Ray recovers a lost object from any copy. The copy is
        Ray's own, made without fetching the state into this process."""
        while True:  # in slices, so a stop signal is acted on (see get)
            ready, _ = ray.wait([ref], timeout=GET_SLICE_S, fetch_local=True)
            if ready:
                return

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
        names = {} if self.server_in_driver else {ray_internals.actor_id_hex(self.server): "server"}
        for shard, ids in zip(self.shards, self.shard_client_ids, strict=True):
            names[ray_internals.actor_id_hex(shard)] = shard_name(ids)
        return names

    def recover(self) -> None:
        """Wait until every actor answers again (Ray restarts dead ones, up to max_restarts, in
        their bundles), then give each restarted shard its data again."""
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
        rebuilt = self.get(self._attach_data())
        log.info("data attached again to %d restarted shards", sum(rebuilt))

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
        release(self._group)
        self._group = None
        if self._owns_ray:
            ray.shutdown()
