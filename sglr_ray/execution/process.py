"""What every process that trains sets up first, in both executors alike.

Two settings that change speed, never numbers:

- torch's intra-op thread count, set explicitly (Ray sets OMP_NUM_THREADS from
  an actor's CPU request, and the two executors only agree to the last bit when
  they run the same thread count);
- glibc's malloc keeps freed memory instead of handing it back to the kernel.
  By default every tensor above its mmap threshold is a fresh mapping, so each
  step zeroes its activations and gradients again page by page: in a Ray actor
  whose inputs arrive through the object store that doubled the minor page
  faults of a server step (7,800 against 3,900 in process for PSL at C = 10) and
  made it 15% slower. With the limits raised, both executors fault almost never.
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
    """Set torch's thread count and keep freed memory mapped (glibc only; elsewhere a no-op)."""
    torch.set_num_threads(torch_threads)
    keep_freed_memory()


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
