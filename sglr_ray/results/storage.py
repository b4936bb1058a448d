"""Where results and checkpoints live: a local directory, or any URI pyarrow.fs understands.

`--out results/x` is a local directory; `--out s3://bucket/x` (or gs://, hdfs://...)
is an object store shared by every node of a cluster, so runs on different nodes
land in one place and `--resume` works from there. S3 options ride on the URI's
query (`s3://bucket/x?endpoint_override=127.0.0.1:9000&scheme=http`), credentials
on the usual AWS environment variables.

Every file is whole or absent for a reader: locally a write goes to a hidden
temporary name and is renamed; on an object store one PUT replaces an object
whole. Readers skip names starting with a dot.

A run is addressed as `<out>/<run_id>` (`sglr-ray run --resume`): for a URI the
run id is the last segment of the path, before the query, so
`s3://bucket/x/RUN_ID?endpoint_override=...` is run RUN_ID under
`s3://bucket/x?endpoint_override=...` (`split_run`, `join_run`).
"""

from __future__ import annotations

import io
import os
import posixpath
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from sglr_ray.settings import ConfigError


def is_uri(out: str) -> bool:
    return "://" in out


def split_run(address: str) -> tuple[str, str]:
    """`<out>/<run_id>` as (out, run_id); a URI keeps its query on `out`:
    `s3://b/x/RUN?endpoint_override=h:9000` -> (`s3://b/x?endpoint_override=h:9000`, `RUN`).
    ValueError when no run id follows an output location."""
    if not is_uri(address):
        path = Path(address)
        if not path.name:
            raise ValueError(f"{address!r} names no run: give OUT/RUN_ID")
        return str(path.parent), path.name
    base, mark, query = address.partition("?")
    head, _, run_id = base.rstrip("/").rpartition("/")
    if not run_id or head.endswith(":/"):  # s3://bucket alone: a bucket, no run under it
        raise ValueError(f"{address!r} names no run: give OUT/RUN_ID (s3://bucket/path/RUN_ID?query)")
    return head + mark + query, run_id


def join_run(out: str, run_id: str) -> str:
    """The address `split_run` takes apart: `<out>/<run_id>`, a URI's query kept at the end."""
    if not is_uri(out):
        return str(Path(out) / run_id)
    base, mark, query = out.partition("?")
    return f"{base.rstrip('/')}/{run_id}{mark}{query}"


class Storage:
    """Results and checkpoints under one root, addressed by '/'-separated relative paths."""

    def __init__(self, out: str) -> None:
        self.out = out
        if is_uri(out):
            self.fs, self.root = pafs.FileSystem.from_uri(out)
            self.local = False
        else:
            self.fs, self.root, self.local = pafs.LocalFileSystem(), os.path.abspath(out), True

    def file(self, rel: str) -> StoredFile:
        return StoredFile(self, rel)

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


@dataclass(frozen=True)
class StoredFile:
    """One file under a Storage root, used where a local Path was: exists, read, write, delete."""

    storage: Storage
    rel: str

    def exists(self) -> bool:
        return self.storage.exists(self.rel)

    def read_bytes(self) -> bytes:
        return self.storage.read_bytes(self.rel)

    def write_bytes(self, data: bytes) -> None:
        self.storage.write_bytes(self.rel, data)

    def delete(self) -> None:
        self.storage.delete(self.rel)

    def __str__(self) -> str:
        return self.storage.display(self.rel)


def check_writable(out: str) -> None:
    """Fail early, naming the location, if results cannot be written under `out`
    (a directory, or a URI such as s3://bucket/path)."""
    try:
        Storage(out).check_writable()
    except (OSError, ValueError) as ex:  # ValueError: pyarrow's ArrowInvalid, a URI it cannot parse
        raise ConfigError(f"--out {out!r} is not writable: {getattr(ex, 'strerror', None) or ex}") from ex
