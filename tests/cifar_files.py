"""A small dataset written in torchvision's CIFAR on-disk format, for tests (never a download)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np


def write_cifar(root: Path, name: str = "cifar10", train_per_batch: int = 200, test: int = 200) -> Path:
    """cifar-10-batches-py/ (5 training batches, a test batch, meta) or cifar-100-python/ under
    `root`: class-dependent colour blobs, so a model can learn them. Returns `root`."""
    rng = np.random.default_rng(7)
    classes = 10 if name == "cifar10" else 100
    means = rng.uniform(40, 215, size=(classes, 3))

    def draw(n: int) -> dict:
        labels = np.arange(n) % classes
        rng.shuffle(labels)
        images = means[labels][:, :, None, None] + rng.normal(0, 40, size=(n, 3, 32, 32))
        data = np.clip(images, 0, 255).astype(np.uint8).reshape(n, 3072)
        key = "labels" if name == "cifar10" else "fine_labels"
        return {"data": data, key: labels.tolist()}

    if name == "cifar10":
        folder = root / "cifar-10-batches-py"
        files = {f"data_batch_{i}": draw(train_per_batch) for i in range(1, 6)} | {"test_batch": draw(test)}
        files["batches.meta"] = {"label_names": [f"c{i}" for i in range(classes)]}
    else:
        folder = root / "cifar-100-python"
        files = {"train": draw(5 * train_per_batch), "test": draw(test)}
        files["meta"] = {"fine_label_names": [f"c{i}" for i in range(classes)]}
    folder.mkdir(parents=True, exist_ok=True)
    for file, content in files.items():
        (folder / file).write_bytes(pickle.dumps(content))
    return root
