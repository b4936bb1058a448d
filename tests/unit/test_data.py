"""Validation split, client partitions, shuffling and dataset lookup."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from sglr_ray import data
from sglr_ray.data import (
    DatasetNotFoundError,
    epoch_order,
    make_synthetic,
    partition_dirichlet,
    partition_iid,
    split_validation,
    to_model_input,
)  # fmt: skip


@pytest.fixture(scope="module")
def labels():
    train, _ = make_synthetic()
    return train.labels


def test_validation_split_is_class_balanced_and_disjoint(labels):
    val, pool = split_validation(labels, 10_000, np.random.default_rng(0))
    assert np.bincount(labels[val], minlength=10).tolist() == [1000] * 10
    assert len(pool) == 50_000 and not set(val) & set(pool)


def test_iid_partitions_are_stratified_and_disjoint(labels):
    parts = partition_iid(labels, clients=7, per_client=1000, rng=np.random.default_rng(1))
    for part in parts:
        assert np.bincount(labels[part], minlength=10).tolist() == [100] * 10
    flat = np.concatenate(parts)
    assert len(np.unique(flat)) == len(flat) == 7000


def test_iid_remainder_is_spread_over_classes(labels):
    parts = partition_iid(labels, clients=3, per_client=25, rng=np.random.default_rng(1))
    counts = np.array([np.bincount(labels[p], minlength=10) for p in parts])
    assert counts.sum(axis=1).tolist() == [25, 25, 25]
    assert counts.max() - counts.min() == 1


def test_dirichlet_partitions_are_equal_sized_disjoint_and_skewed(labels):
    rng = np.random.default_rng(2)
    parts = partition_dirichlet(labels, clients=10, per_client=500, beta=0.1, rng=rng)
    assert [len(p) for p in parts] == [500] * 10
    flat = np.concatenate(parts)
    assert len(np.unique(flat)) == len(flat)
    # With beta = 0.1 most clients are dominated by one or two classes (IID would give 10%).
    top_share = [np.bincount(labels[p], minlength=10).max() / 500 for p in parts]
    assert np.median(top_share) > 0.4


def test_epoch_order_is_a_seeded_permutation():
    a, b = epoch_order(0, 3, 0, 100), epoch_order(0, 3, 0, 100)
    assert a.tolist() == b.tolist() and sorted(a.tolist()) == list(range(100))
    assert a.tolist() != epoch_order(0, 3, 1, 100).tolist()  # reshuffled every epoch
    assert a.tolist() != epoch_order(0, 4, 0, 100).tolist()  # per client
    assert a.tolist() != epoch_order(1, 3, 0, 100).tolist()  # per run seed


def test_model_input_is_padded_and_normalised():
    images = np.zeros((2, 28, 28), dtype=np.uint8)
    images[:, 0, 0] = 255
    x = to_model_input(images)
    assert tuple(x.shape) == (2, 1, 32, 32)
    background = -data.FMNIST_MEAN / data.FMNIST_STD
    assert x[0, 0, 0, 0].item() == pytest.approx(background)
    assert x[0, 0, 2, 2].item() == pytest.approx((1 - data.FMNIST_MEAN) / data.FMNIST_STD)


def _write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def test_reads_idx_files_from_sglr_data_dir(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    images = {"train": rng.integers(0, 256, (60, 28, 28)), "t10k": rng.integers(0, 256, (10, 28, 28))}
    for prefix, array in images.items():
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", array)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", np.arange(len(array)) % 10)
    monkeypatch.setenv("SGLR_DATA_DIR", str(tmp_path))
    train, test = data.load_fashion_mnist()
    assert np.array_equal(train.images, images["train"]) and np.array_equal(test.images, images["t10k"])
    assert train.labels.tolist() == (np.arange(60) % 10).tolist()


def test_missing_dataset_error_names_every_place(tmp_path, monkeypatch):
    monkeypatch.setenv("SGLR_DATA_DIR", str(tmp_path / "mine"))
    monkeypatch.setattr(data, "SYSTEM_DATA_DIR", tmp_path / "system")
    monkeypatch.setattr(data, "CACHE_DIR", tmp_path / "cache")
    with pytest.raises(DatasetNotFoundError) as info:
        data.find_fashion_mnist()
    for place in ["mine", "system", "cache/FashionMNIST/raw"]:
        assert str(tmp_path / place) in str(info.value)


@pytest.mark.skipif(not data.SYSTEM_DATA_DIR.is_dir(), reason="Fashion-MNIST not installed system-wide")
def test_real_fashion_mnist_has_expected_shape():
    train, test = data.load_fashion_mnist()
    assert train.images.shape == (60_000, 28, 28) and test.images.shape == (10_000, 28, 28)
    assert np.bincount(train.labels).tolist() == [6000] * 10
