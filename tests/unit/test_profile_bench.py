"""benchmarks/profile_steps.py and flower_peer.py's memory split read what they claim to."""

from __future__ import annotations

import os
import subprocess
import sys

import psutil
import pytest
import torch

from benchmarks.flower_peer import tree_memory
from benchmarks.memory_by_mapping import rss_by_mapping
from benchmarks.profile_steps import actor_tasks, gaps_before, subnormal_count


def task(tid: str, ts: float, dur: float) -> dict:
    cat = "task::ServerActor.call" if tid == "server-worker" else "task::ClientActor.call"
    return {"ph": "X", "cat": cat, "name": "call", "tid": tid, "ts": ts, "dur": dur}


def phase(tid: str, name: str, ts: float, dur: float) -> dict:
    return {"ph": "X", "cat": name, "name": name, "tid": tid, "ts": ts, "dur": dur}


def test_actor_tasks_attributes_phases_and_skips_earlier_events() -> None:
    kinds = {"server-worker": "server", "client-worker": "client"}
    events = [
        task("client-worker", 0, 500),  # before `since`: the warm-up epoch
        phase("client-worker", "task:execute", 10, 400),
        task("server-worker", 2000, 1000),
        phase("server-worker", "task:deserialize_arguments", 2000, 100),
        phase("server-worker", "task:execute", 2100, 800),
        phase("server-worker", "task:store_outputs", 2900, 100),
        task("client-worker", 1000, 500),  # listed out of order
        phase("client-worker", "task:execute", 1100, 300),
        phase("client-worker", "task:execute", 5000, 300),  # outside every task: ignored
    ]
    tasks = actor_tasks(events, since_us=1000, actor_kinds=kinds)
    assert [t["kind"] for t in tasks] == ["client", "server"]
    client, server = tasks
    assert client["execute_ms"] == pytest.approx(0.3) and "store_ms" not in client
    assert (server["deserialize_ms"], server["execute_ms"], server["store_ms"]) == pytest.approx(
        (0.1, 0.8, 0.1)
    )
    assert gaps_before(tasks) == {"server": [pytest.approx(0.5)]}


def test_gaps_skip_overlapping_and_same_actor_tasks() -> None:
    tasks = [
        {"kind": "client", "tid": "a", "start": 0, "end": 100},
        {"kind": "client", "tid": "b", "start": 50, "end": 150},  # overlaps: two shards at once
        {"kind": "server", "tid": "s", "start": 2150, "end": 3000},
        {"kind": "server", "tid": "s", "start": 4000, "end": 5000},  # same actor: queued, not a hop
    ]
    assert gaps_before(tasks) == {"server": [pytest.approx(2.0)]}


def test_subnormal_count_counts_only_subnormals() -> None:
    flushing = torch.tensor([1e-40]).item() == 0  # an executor built earlier in this process turned it on
    torch.set_flush_denormal(False)  # else the subnormals below become zeros as they are made
    try:
        values = torch.tensor([0.0, 1e-40, -1e-39, 1e-37, 1.0, float(torch.finfo(torch.float32).tiny)])
        assert subnormal_count([values, torch.tensor([3, 0])]) == 2
    finally:
        torch.set_flush_denormal(flushing)


def test_tree_memory_splits_rss_by_kind() -> None:
    # A process of its own, without children (pytest's has Ray's daemons below it here).
    script = "import sys, time; kept = b'1' * (64 << 20); print('ready', flush=True); time.sleep(60)"
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        memory = tree_memory(psutil.Process(child.pid), pss=True)
        rss_only = tree_memory(psutil.Process(child.pid), pss=False)
    finally:
        child.kill()
        child.wait()
    split = memory["anon"] + memory["file"] + memory["shmem"]
    assert split == pytest.approx(memory["rss"], rel=0.05)
    assert memory["anon"] > 64 << 20  # the bytes it wrote
    assert memory["largest_file"] == memory["file"] > 0  # one process: it holds all of it
    assert 0 < memory["pss"] <= memory["rss"] * 1.05
    assert rss_only["pss"] == 0 and rss_only["rss"] > 64 << 20


def test_rss_by_mapping_finds_this_process_libraries() -> None:
    resident = rss_by_mapping(os.getpid())
    torch_libraries = [name for name in resident if "libtorch_cpu" in name]
    assert torch_libraries and resident[torch_libraries[0]] > 0  # torch is imported here
    assert sum(resident.values()) == pytest.approx(psutil.Process().memory_info().rss, rel=0.05)
