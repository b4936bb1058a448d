"""Files that are either whole or absent: write to a hidden temporary name, then rename."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to; renamed to `path` if the block succeeds.

    The rename is atomic on one filesystem, so a reader or a crash never sees
    half a file. The name starts with a dot: pyarrow skips it when reading a
    directory of Parquet files.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
