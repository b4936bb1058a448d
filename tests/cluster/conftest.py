"""A Ray head of the test's own, started with `ray start --head --block`, token authentication on.

Other Ray instances may be running on the machine (embedded ``ray.init()`` in other tests, other work),
so this never runs ``ray stop``: the head runs in its own process group and the finalizer ends that
group only. Its private ``--temp-dir`` also keeps a plain ``ray.init()`` elsewhere from attaching to it
(that looks for ``/tmp/ray/ray_current_cluster``).

Token authentication in Ray 2.60: ``ray get-auth-token --generate`` prints the token (creating
``~/.ray/auth_token`` if there is none); ``ray start --head`` turns token mode on by itself only when a
token already exists, so ``RAY_AUTH_MODE=token`` is set for the head anyway; every client (``ray job
submit`` included) sends the token only when ``RAY_AUTH_MODE=token`` is set in its own environment, even
with ``~/.ray/auth_token`` present. The token itself goes to the head and to clients as
``RAY_AUTH_TOKEN``, so nothing depends on which token file a process would find.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

DASHBOARD_HOST = "127.0.0.1"
DASHBOARD_PORT = 8265  # the project's dashboard address; another free port when it is taken
START_TIMEOUT_S = 90
STOP_TIMEOUT_S = 20
TAIL_CHARS = 4000


@dataclass(frozen=True)
class RayHead:
    dashboard_url: str
    temp_dir: Path  # the head's --temp-dir (sessions, logs, unpacked working_dir packages)
    log_path: Path  # stdout and stderr of `ray start`
    ray_bin: str
    token: str
    env: dict  # environment for clients of this head: PATH, RAY_AUTH_MODE, RAY_AUTH_TOKEN

    def request(self, path: str, authenticated: bool = True):
        """GET a dashboard API path, with the token unless told otherwise; returns (status, body)."""
        headers = {"x-ray-authorization": f"Bearer {self.token}"} if authenticated else {}
        req = urllib.request.Request(self.dashboard_url + path, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as response:
                return response.status, response.read().decode(errors="replace")
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(errors="replace")

    def job_info(self, submission_id: str) -> dict:
        status, body = self.request(f"/api/jobs/{submission_id}")
        assert status == 200, f"GET /api/jobs/{submission_id}: HTTP {status}: {body[-TAIL_CHARS:]}"
        return json.loads(body)

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-TAIL_CHARS:]
        except OSError as error:
            return f"(no head log: {error})"


def tail(text: str | None, chars: int = TAIL_CHARS) -> str:
    return (text or "")[-chars:]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((DASHBOARD_HOST, port))
        except OSError:
            return False
        return True


def ray_binary() -> str | None:
    """The `ray` next to this interpreter (the project's venv), else one on PATH."""
    beside = Path(sys.executable).parent / "ray"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("ray")


def client_env(bin_dir: str, token: str) -> dict:
    """This process's environment for Ray clients and the head: no inherited cluster address, the venv's
    bin first on PATH (the job's `python` entrypoint resolves through the head's PATH), token mode on."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env["RAY_AUTH_MODE"] = "token"
    env["RAY_AUTH_TOKEN"] = token
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    return env


def processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains ``text`` (Linux /proc), this process excluded."""
    pids = []
    proc = Path("/proc")
    if not proc.is_dir():
        return pids
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                pids.append(int(entry.name))
    return pids


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_group_gone(pgid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not group_alive(pgid):
            return True
        time.sleep(0.2)
    return not group_alive(pgid)


def stop_head(proc: subprocess.Popen, temp_dir: str) -> list[int]:
    """End this head only: SIGTERM to `ray start --block` (it stops its own processes), then SIGTERM and
    SIGKILL to its process group, then SIGKILL to any process still naming its private temp dir.
    Returns the pids that had to be killed in the last step."""
    pgid = proc.pid  # start_new_session=True: the leader's pid is the group id
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=STOP_TIMEOUT_S)
    for sig, wait_s in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        if wait_group_gone(pgid, 0.5):
            break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        wait_group_gone(pgid, wait_s)
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=5)
    strays = processes_mentioning(temp_dir)
    for pid in strays:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return strays


@pytest.fixture(scope="module")
def ray_head():
    ray_bin = ray_binary()
    if ray_bin is None:
        pytest.skip("no `ray` executable next to the interpreter or on PATH")
    bin_dir = str(Path(ray_bin).parent)

    generated = subprocess.run(
        [ray_bin, "get-auth-token", "--generate"], capture_output=True, text=True, timeout=60
    )
    token = generated.stdout.strip()
    assert generated.returncode == 0 and token, (
        f"`ray get-auth-token --generate` failed (rc {generated.returncode}):\n"
        f"{tail(generated.stdout)}\n{tail(generated.stderr)}"
    )

    # Ray 2.60 keeps 8265 as the dashboard port when it is free. When another Ray dashboard holds it,
    # this head takes a free port rather than skipping: the test submits to the URL it started.
    dashboard_port = DASHBOARD_PORT if port_is_free(DASHBOARD_PORT) else free_port()
    dashboard_url = f"http://{DASHBOARD_HOST}:{dashboard_port}"

    # Short path: Ray's Unix sockets live under it (limit about 107 characters).
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    log_path = Path(temp_dir) / "ray-start.log"
    env = client_env(bin_dir, token)
    head_env = env | {
        # Without this a SIGTERM'd `ray start --block` first drains the node for up to 30 s.
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
        # On Linux Ray replaces --node-ip-address 127.0.0.1 with the host's routable address and binds
        # GCS and raylet to it; this switch (meant for single-node Windows and macOS) keeps the node on
        # loopback, so every port of this head listens on 127.0.0.1 only.
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        # Fixed defaults (44217, 44227) would clash with another head on the machine.
        "AUTOSCALER_METRIC_PORT": str(free_port()),
        "DASHBOARD_METRIC_PORT": str(free_port()),
    }
    command = [
        ray_bin, "start", "--head", "--block", "--disable-usage-stats",
        "--node-ip-address", "127.0.0.1",
        "--port", "0",  # GCS: Ray picks a free port
        "--include-dashboard", "true",
        "--dashboard-host", DASHBOARD_HOST,
        "--dashboard-port", str(dashboard_port),
        "--dashboard-agent-listen-port", str(free_port()),
        "--ray-client-server-port", str(free_port()),
        "--num-cpus", "2",
        "--num-gpus", "0",
        "--temp-dir", temp_dir,
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=head_env, start_new_session=True,
        )  # fmt: skip
    head = RayHead(dashboard_url, Path(temp_dir), log_path, ray_bin, token, env)

    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"`ray start --head` exited with {proc.returncode}:\n{head.log_tail()}")
            try:
                status, _ = head.request("/api/jobs/")  # answers once the job module is up
            except OSError:
                status = None
            if status == 200:
                break
            if time.monotonic() > deadline:
                pytest.fail(f"dashboard {dashboard_url} not ready in {START_TIMEOUT_S} s:\n{head.log_tail()}")
            time.sleep(0.5)
        yield head
    finally:
        strays = stop_head(proc, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not strays, f"processes of the Ray head outlived its process group: {strays}"
