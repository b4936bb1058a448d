"""A two-node Ray cluster on this machine: the client shards land on both nodes, and the numbers stay the
local executor's.

The cluster is ``ray.cluster_utils.Cluster`` in this process (a head node and one worker node, each with
its own raylet and object store; one GCS), not the `ray start` head of ``conftest.py``, and it keeps out of
that head's and any other Ray instance's way:

* ``RAY_TMPDIR`` points at a private directory: ``Cluster`` writes its address to
  ``<default temp dir>/ray_current_cluster`` and deletes that file on shutdown, whoever wrote it, and its
  nodes keep their sessions, sockets and logs there; the same value in every child process's environment
  also finds all of them afterwards (workers rename themselves ``ray::...``, so command lines would not);
* no dashboard UI, and free ports, not fixed ones another head may hold, for what the head starts anyway:
  the minimal dashboard process (8265 by default), the dashboard agent (52365) and the autoscaler's and
  dashboard's metrics (44217, 44227);
* every node on 127.0.0.1: ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` keeps the nodes' processes from
  swapping in the host's routable address, and the constant this process read from it when it imported
  ray is patched too (else ``ray.init(address="127.0.0.1:...")`` dials the routable address and retries
  for minutes);
* token authentication on with a token of the test's own (``RAY_AUTH_MODE=token``,
  ``RAY_AUTH_TOKEN``), set in this process's environment before the nodes start so that GCS, raylets,
  workers and the driver all have it. This process caches the mode in its RayConfig, so it is re-read
  when the test sets the variables and again when it restores them.

Two logical CPUs a node. With one a node the run never starts: the planner gives each of the 3 actors
(server and two shards) 2 / 3 of the cluster's 2 CPUs, one such actor fills a 1-CPU node, and the third
stays pending for want of a node with 2 / 3 CPU free.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import ray
from ray._private import ray_constants
from ray._private.services import resolve_ip_for_localhost
from ray._raylet import AuthenticationTokenLoader, Config
from ray.cluster_utils import Cluster

from sglr_ray.execution import ray_actors as ray_executor
from sglr_ray.execution.driver import run_experiment

CPUS_PER_NODE = 2
OBJECT_STORE_BYTES = 200 * 2**20
STOP_TIMEOUT_S = 20
# A GCS client with a given token: the driver's `ray.init()` would retry for about 20 s before giving up.
GCS_PROBE = (
    "import sys; from ray._raylet import GcsClient; GcsClient(address=sys.argv[1]); print('CONNECTED')"
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def refresh_auth_state() -> None:
    """Make this process re-read RAY_AUTH_MODE and the token (config first, then the token cache)."""
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def processes_with_env(name: str, value: str) -> list[int]:
    """Pids (this one excluded) started with ``name=value`` in their environment."""
    wanted = f"{name}={value}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if wanted in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
    return pids


def end_processes(pids: list[int], timeout_s: float) -> list[int]:
    """Wait for ``pids`` to exit; SIGKILL the ones still there. Returns those."""
    deadline = time.monotonic() + timeout_s
    alive = pids
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [pid for pid in alive if Path(f"/proc/{pid}").exists()]
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return alive


@pytest.fixture
def two_node_cluster(request):
    """(cluster, worker node). `request.param`, when parametrized indirectly: the head's CPUs."""
    head_cpus = getattr(request, "param", CPUS_PER_NODE)
    temp_root = tempfile.mkdtemp(prefix="rtn", dir="/tmp")  # short: Unix sockets live under it
    token = secrets.token_hex(32)
    cluster = None
    try:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("RAY_TMPDIR", temp_root)
            env.setenv("RAY_AUTH_MODE", "token")
            env.setenv("RAY_AUTH_TOKEN", token)
            env.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
            env.delenv("RAY_ADDRESS", raising=False)
            env.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # for the nodes' processes
            # ... and for this one, which read it when it imported ray: `ray.init(address="127.0.0.1:...")`
            # would otherwise dial the host's routable address, where this GCS does not listen.
            env.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
            env.setenv("RAY_gcs_server_port_wait_time_s", "30")  # connect attempts: 20 by default
            env.setenv("AUTOSCALER_METRIC_PORT", str(free_port()))
            env.setenv("DASHBOARD_METRIC_PORT", str(free_port()))
            refresh_auth_state()
            try:
                node_args = {
                    "num_cpus": CPUS_PER_NODE,
                    "object_store_memory": OBJECT_STORE_BYTES,
                    "node_ip_address": "127.0.0.1",
                }
                cluster = Cluster(
                    initialize_head=True,
                    head_node_args=node_args
                    | {
                        "num_cpus": head_cpus,
                        "include_dashboard": False,
                        "dashboard_port": free_port(),
                        "dashboard_agent_listen_port": free_port(),
                    },
                )
                worker = cluster.add_node(**node_args)
                cluster.wait_for_nodes()
                assert resolve_ip_for_localhost("127.0.0.1") == "127.0.0.1"
                ray.init(address=cluster.address, log_to_driver=False)
                yield cluster, worker
            finally:
                ray.shutdown()
                if cluster is not None:
                    cluster.shutdown()
    finally:
        refresh_auth_state()  # the environment is this process's own again
        strays = end_processes(processes_with_env("RAY_TMPDIR", temp_root), STOP_TIMEOUT_S)
        shutil.rmtree(temp_root, ignore_errors=True)
    assert not strays, f"processes of the two-node cluster outlived its shutdown: {strays}"


def probe_gcs(address: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", GCS_PROBE, address], env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.cluster
def test_shards_spread_over_both_nodes_and_match_the_local_run(two_node_cluster, tiny_config, tmp_path):
    cluster, worker = two_node_cluster
    head_id, worker_id = cluster.head_node.node_id, worker.node_id
    nodes = {n["NodeID"]: n for n in ray.nodes() if n["Alive"]}
    assert set(nodes) == {head_id, worker_id}, nodes
    assert all(n["NodeManagerAddress"] == "127.0.0.1" for n in nodes.values()), nodes
    assert cluster.address.startswith("127.0.0.1:"), cluster.address

    # Token authentication is really on: a GCS client with a wrong token, or with none, is refused.
    wrong = probe_gcs(cluster.address, os.environ | {"RAY_AUTH_TOKEN": "0" * 64})
    assert wrong.returncode != 0 and "InvalidAuthToken" in wrong.stderr, wrong.stdout + wrong.stderr[-2000:]
    unauthenticated = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    none = probe_gcs(cluster.address, unauthenticated)
    assert none.returncode != 0 and "InvalidAuthToken" in none.stderr, none.stdout + none.stderr[-2000:]

    # Where each actor runs, asked of the actor itself once the executor has started them all.
    placed: dict[str, tuple[str, int]] = {}
    real_init = ray_executor.RayExecutor.__init__

    def where(actor) -> tuple[str, int]:
        return ray.get(
            actor.__ray_call__.remote(lambda _: (ray.get_runtime_context().get_node_id(), os.getpid()))
        )

    def init_and_locate(self, *args):
        real_init(self, *args)
        placed.update({"server": where(self.server)})
        placed.update({f"shard-{i}": where(shard) for i, shard in enumerate(self.shards)})

    config = tiny_config(
        method="sglr",
        clients=4,
        clients_per_actor=2,
        epochs=2,
        test_each_epoch=True,
        out=str(tmp_path / "out"),
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ray_executor.RayExecutor, "__init__", init_and_locate)
        remote = run_experiment(config.replace(executor="ray", run_id="two-nodes"))
    local = run_experiment(config.replace(executor="local", run_id="local"))

    shards = {name: node for name, (node, _) in placed.items() if name.startswith("shard-")}
    assert len(shards) == 2, placed
    assert set(shards.values()) == {head_id, worker_id}, (
        f"shards not on both nodes (head {head_id}, worker {worker_id}): {placed}"
    )

    assert len(remote.epochs) == len(local.epochs) == 2
    for r, lo in zip(remote.epochs, local.epochs, strict=True):
        assert r.train_loss == pytest.approx(lo.train_loss, abs=1e-6)
        assert r.val.per_client.keys() == lo.val.per_client.keys() == {0, 1, 2, 3}
        assert r.val == lo.val and r.test == lo.test
    assert remote.final_test_acc == pytest.approx(local.final_test_acc, abs=1e-6)

    # The executor killed its actors: their worker processes exit (the nodes stay up for the next run).
    gone_late = end_processes([pid for _, pid in placed.values()], STOP_TIMEOUT_S)
    assert not gone_late, f"actor processes still alive {STOP_TIMEOUT_S} s after the run: {gone_late}"


def node_of(actor) -> str:
    return ray.get(actor.__ray_call__.remote(lambda _: ray.get_runtime_context().get_node_id()), timeout=60)


# Every bundle must fit on the head once the worker is gone: 5 actors of 1 CPU (the server and a shard per
# client) on a 6-CPU head and a 2-CPU worker. SPREAD puts 2 of them on the worker, so a shard at least.
@pytest.mark.cluster
@pytest.mark.parametrize("two_node_cluster", [6], indirect=True)
def test_a_lost_worker_node_s_shards_restart_on_the_head_and_the_numbers_hold(
    two_node_cluster, tiny_config, tmp_path
):
    cluster, worker = two_node_cluster
    head_id, worker_id = cluster.head_node.node_id, worker.node_id
    executors = []
    real_init = ray_executor.RayExecutor.__init__

    def init_and_keep(self, *args):
        real_init(self, *args)
        executors.append(self)

    placed: dict[str, dict[str, str]] = {}

    def remove_worker_mid_epoch_1(epoch, steps, loss):
        ex = executors[0]
        names = ["server", *(f"shard-{i}" for i in range(len(ex.shards)))]
        if epoch == 1 and steps == 2 and not placed:
            placed["before"] = {n: node_of(a) for n, a in zip(names, ex.actors, strict=True)}
            cluster.remove_node(worker)  # its raylet and every process on it: the node is lost
        elif epoch == 2 and steps == 1 and "after" not in placed:
            placed["after"] = {n: node_of(a) for n, a in zip(names, ex.actors, strict=True)}

    config = tiny_config(method="sglr", clients=4, clients_per_actor=1, epochs=3, test_each_epoch=True,
                         out=str(tmp_path / "out"))  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ray_executor.RayExecutor, "__init__", init_and_keep)
        remote = run_experiment(
            config.replace(executor="ray", run_id="lost-node"), progress=remove_worker_mid_epoch_1
        )
    local = run_experiment(config.replace(executor="local", run_id="local"))

    moved = [n for n, node in placed["before"].items() if node == worker_id]
    assert any(n.startswith("shard-") for n in moved), placed  # the lost node held shards
    assert set(placed["after"].values()) == {head_id}, placed  # ... which now run on the head
    assert [r.restarts for r in remote.epochs] == [0, 1, 0]
    for r, lo in zip(remote.epochs, local.epochs, strict=True):  # the replay changed no number
        assert r.train_loss == pytest.approx(lo.train_loss, abs=1e-6)
        assert r.val == lo.val and r.test == lo.test
        assert (r.comm.bytes_up, r.comm.server_sent) == (lo.comm.bytes_up, lo.comm.server_sent)
    assert remote.final_test_acc == pytest.approx(local.final_test_acc, abs=1e-6)
