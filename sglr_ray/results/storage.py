"""Where results and checkpoints live: a local directory, or any URI pyarrow.fs understands.

`--out results/x` is a local directory; `--out s3://bucket/x` (or gs://, hdfs://...)
is an object store shared by every node of a cluster, so runs on different nodes
land in one place and `--resume` works from there. S3 options ride on the URI's
query (`s3://bucket/x?endpoint_override=127.0.0.1:9000&scheme=http`), credentials
on the usual AWS environment variables.

Every file is whole or absent for a reader: locally a write goes to a hidden
temporary name and is renamed; on an object store one PUT replaces an object
whole. Readers skip names starting with a dot.
"""

from __future__ import annotations

import io
import os
import posixpath
import secrets
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


def is_uri(out: str) -> bool:
    return "://" in out


class Storage:
    """Results and checkpoints under one root, addressed by '/'-separated relative paths."""

    def __init__(self, out: str) -> None:
        self.out = out
        if is_uri(out):
            self.fs, self.root = pafs.FileSystem.from_uri(out)
            self.local = False
        else:
            self.fs, self.root, self.local = pafs.LocalFileSystem(), os.path.abspath(out), True

    def path(self, rel: str) -> str:
        return posixpath.join(self.root, rel)

    def display(self, rel: str) -> str:
        """A path as the user wrote --out: for messages and `paths` in the run outcome."""
        if self.local:
            return os.path.join(self.out, rel)
        base = self.out.split("?", 1)[0].rstrip("/")
        return f"{base}/{rel}"

    def write_bytes(self, rel: str, data: bytes) -> None:
        target = self.path(rel)
        parent = posixpath.dirname(target)
        self.fs.create_dir(parent, recursive=True)
        if not self.local:  # one PUT: the object is replaced whole
            with self.fs.open_output_stream(target) as stream:
                stream.write(data)
            return
        tmp = posixpath.join(
            parent, f".{posixpath.basename(target)}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
        )
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self.path(rel)) as stream:
            return stream.read()

    def exists(self, rel: str) -> bool:
        return self.fs.get_file_info(self.path(rel)).type == pafs.FileType.File

    def delete(self, rel: str) -> None:
        if self.exists(rel):
            self.fs.delete_file(self.path(rel))

    def list(self, rel_dir: str, suffix: str = "") -> list[str]:
        """Names of the files directly under `rel_dir` ending in `suffix` (hidden ones skipped)."""
        selector = pafs.FileSelector(self.path(rel_dir), allow_not_found=True)
        names = [posixpath.basename(info.path) for info in self.fs.get_file_info(selector)]
        return sorted(n for n in names if n.endswith(suffix) and not n.startswith("."))

    def write_table(self, rows: list[dict[str, Any]], schema: pa.Schema | None, rel: str) -> None:
        """`rows` as one Parquet file at `rel` (schema None: inferred)."""
        sink = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), sink)
        self.write_bytes(rel, sink.getvalue().to_pybytes())

    def read_table(self, rel: str, columns: list[str] | None = None) -> pa.Table:
        return pq.read_table(io.BytesIO(self.read_bytes(rel)), columns=columns)

    def check_writable(self) -> None:
        """Write and remove a probe file; OSError (with the reason) if that fails."""
        probe = f".write-probe-{os.getpid()}-{secrets.token_hex(2)}"
        self.write_bytes(probe, b"ok")
        self.fs.delete_file(self.path(probe))
