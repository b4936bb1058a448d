"""What every process that trains sets up first, in both executors alike.

Three settings that change speed; the first two never change numbers, the third
only values below float32's smallest normal number (1.2e-38):

- torch's intra-op thread count, set explicitly (Ray sets OMP_NUM_THREADS from
  an actor's CPU request, and the two executors only agree to the last bit when
  they run the same thread count);
- glibc's malloc keeps freed memory instead of handing it back to the kernel.
  By default every tensor above its mmap threshold is a fresh mapping, so each
  step zeroes its activations and gradients again page by page: in a Ray actor
  whose inputs arrive through the object store that doubled the minor page
  faults of a server step (7,800 against 3,900 in process for PSL at C = 10) and
  made it 15% slower. With the limits raised, both executors fault almost never;
- subnormal floats are flushed to zero (torch.set_flush_denormal). On Intel CPUs
  every arithmetic operation on a subnormal takes a slow microcode path: PSL's
  server step on AlexNet at C = 10 (the overhead benchmark's synthetic data, where
  some of the top model's values decay into that range) took 367 ms instead of
  48 ms, 7.6 times as long, on a 2-core Intel Xeon; the AMD EPYC of earlier
  sessions showed no such slowdown. Both executors flush alike, so they still
  agree to the last bit.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

import torch

log = logging.getLogger(__name__)

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit
TRIM_THRESHOLD = 1 * 2**30  # free memory kept before the heap's top is returned


def configure_process(torch_threads: int) -> None:
    """Set torch's thread count, keep freed memory mapped (glibc only; elsewhere a no-op) and
    flush subnormal floats to zero (where the CPU supports it: x86 with SSE3, ARM)."""
    torch.set_num_threads(torch_threads)
    keep_freed_memory()
    if not torch.set_flush_denormal(True):  # False: not supported here
        log.debug("this CPU cannot flush subnormals to zero; they are computed as IEEE 754 says")


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds; False where there is no glibc malloc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if not ok:
        log.debug("mallopt refused the thresholds; malloc keeps its defaults")
    return ok
