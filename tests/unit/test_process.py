"""Process set-up shared by both executors (execution/process.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

# A PSL server step on AlexNet's top (the step the Ray executor's server actor runs),
# ten times after a warm-up, counting minor page faults; run in a fresh process
# so that this test process's own malloc settings do not matter.
#
# The reference is glibc's malloc at its documented starting thresholds (128 KiB for
# mmap and trim), set explicitly: left alone, glibc raises its mmap threshold the first
# time it frees a large mapped block, and whether that happens during the warm-up
# varies from run to run (0, 10,688 and 42,560 faults in three runs on one machine),
# which is the unpredictability configure_process removes.
SERVER_STEPS = """
import ctypes, ctypes.util, resource, sys, torch
from sglr_ray.config import RunConfig
from sglr_ray.execution.process import M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, configure_process
from sglr_ray.nodes.models import SPLIT_MODELS
from sglr_ray.nodes.protocol import SmashedBatch
from sglr_ray.nodes.server import Server

if sys.argv[1] == "configured":
    configure_process(1)
else:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    assert libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024) == 1 and libc.mallopt(M_TRIM_THRESHOLD, 128 * 1024) == 1
    torch.set_num_threads(1)
config = RunConfig(method="psl", model="alexnet", dataset="synthetic", clients=10, torch_threads=1)
server = Server(config, "cpu")
smashed = SPLIT_MODELS["alexnet"].build_bottom()(torch.randn(80, 1, 32, 32)).detach()
upload = SmashedBatch(list(range(10)), [8] * 10, smashed, torch.randint(0, 10, (80,)))
for step in range(3):  # warm-up: the heap grows to the step's size once
    server.train_step(0, step, upload)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for step in range(3, 13):
    server.train_step(0, step, upload)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def minor_faults(mode: str) -> int:
    command = [sys.executable, "-c", SERVER_STEPS, mode]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_configured_processes_stop_refaulting_freed_memory():
    default, configured = minor_faults("glibc-start"), minor_faults("configured")
    # glibc hands the step's buffers back and faults them in again: tens of thousands of
    # faults over ten steps, against 600-1,300 once configured
    assert default > 3000
    assert configured < default / 3


FLUSH_CHECK = """
import torch
from sglr_ray.execution.process import configure_process

def tiny():
    return float(torch.tensor([1e-39], dtype=torch.float32)[0] * 1.0)

before = tiny()
configure_process(1)
print(before, tiny())
"""


@pytest.mark.skipif(not torch.set_flush_denormal(False), reason="this CPU cannot flush subnormals to zero")
def test_configured_processes_flush_subnormal_floats_to_zero():
    # 1e-39 is below float32's smallest normal number (1.2e-38): stored as a subnormal,
    # it reads back as 0 once flushing is on, in a fresh process as each executor starts one
    done = subprocess.run([sys.executable, "-c", FLUSH_CHECK], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    before, after = map(float, done.stdout.split()[-2:])
    assert before != 0.0 and after == 0.0
