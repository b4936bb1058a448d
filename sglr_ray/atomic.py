"""Files that are either whole or absent: write to a hidden temporary name, then rename."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to; renamed to `path` if the block succeeds.

    The rename is atomic on one filesystem, so a reader or a crash never sees
    half a file. The name starts with a dot: pyarrow skips it when reading a
    directory of Parquet files. It is unique to this call, not only to this process:
    threads, and processes on other hosts sharing the directory, may write the same
    path at once (the last rename wins, whole).
    """
    path.parent.mkdir(parents=True, exist_ok=True)  # safe when another process creates it too
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
