"""Results and checkpoints on a local directory or an S3 object store (moto's server on loopback)."""

from __future__ import annotations

import pytest

from sglr_ray.results.storage import Storage


@pytest.fixture(scope="module")
def s3_server():
    """An S3-compatible server on 127.0.0.1 for this module, with one bucket; yields its address."""
    moto_server = pytest.importorskip("moto.server")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    with pytest.MonkeyPatch.context() as env:
        for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                           "AWS_DEFAULT_REGION": "us-east-1"}.items():  # fmt: skip
            env.setenv(key, value)
        import pyarrow.fs as pafs

        s3 = pafs.S3FileSystem(endpoint_override=f"{host}:{port}", scheme="http", allow_bucket_creation=True)
        s3.create_dir("results")
        yield f"{host}:{port}"
    server.stop()


@pytest.fixture(params=["local", "s3"])
def out(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "out")
    address = request.getfixturevalue("s3_server")
    return f"s3://results/{tmp_path.name}?endpoint_override={address}&scheme=http&region=us-east-1"


def test_tables_and_bytes_round_trip(out):
    store = Storage(out)
    store.check_writable()
    store.write_table([{"run_id": "a", "x": 1.5}], None, "runs/a.parquet")
    store.write_bytes("checkpoints/a.pt", b"\x00\x01")
    assert store.exists("runs/a.parquet") and not store.exists("runs/b.parquet")
    assert store.read_table("runs/a.parquet").to_pylist() == [{"run_id": "a", "x": 1.5}]
    assert store.read_bytes("checkpoints/a.pt") == b"\x00\x01"
    assert store.list("runs", ".parquet") == ["a.parquet"] and store.list("missing") == []
    store.delete("checkpoints/a.pt")
    assert not store.exists("checkpoints/a.pt")
