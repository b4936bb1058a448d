"""What every run records about what made it: the code version (package version plus git
commit when known) and the machine (CPU model, torch version), since bf16 and thread
counts make the last digits depend on the CPU."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from pathlib import Path

__version__ = "0.1.0"


@functools.cache
def code_version() -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{commit}{'.dirty' if dirty else ''}"


@functools.cache
def machine() -> str:
    """The driver's machine: CPU model, logical CPUs, torch version, e.g.
    "Intel(R) Xeon(R) Processor x2, torch 2.14.1". Shards on other nodes of a cluster
    may differ; `ray status` tells those."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass  # not Linux, or no model name: the architecture stays
    return f"{cpu} x{os.cpu_count()}, torch {torch.__version__}"
