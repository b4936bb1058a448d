"""Your own split model: a declaration `NAME(input_shape, num_classes)` returning an nn.Sequential
(cut between its top-level children) or a (bottom, top) pair of modules.

  sglr-ray run --model examples/custom_model.py:small_cnn --dataset cifar10            # cut 1
  sglr-ray run --model examples/custom_model.py:small_cnn --dataset cifar10 --cut 2
  sglr-ray run --model examples/custom_model.py:mlp --dataset examples/custom_dataset.py:tabular

`--cut K` puts the first K children on the client; `default_cut` (optional, else 1) is the
cut when none is given. The bottom's weights are drawn from the run's seed and the top's from
seed + 1, so runs are reproducible and every client starts equal. BatchNorm and dropout work:
each client's BatchNorm statistics are its own (its bottom's), the server's are its top's, and
dropout masks are seeded by (seed, client, epoch, step), so both executors agree.
"""

from __future__ import annotations

from torch import nn


def small_cnn(input_shape: tuple[int, ...], num_classes: int) -> nn.Sequential:
    """A small CNN for (C, H, W) images with H and W multiples of 4 (CIFAR: 3x32x32)."""
    channels, height, width = input_shape
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2)),
        nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2)),
        nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(32 * (height // 4) * (width // 4), 64)),
        nn.Sequential(nn.ReLU(), nn.Linear(64, num_classes)),
    )


small_cnn.default_cut = 1  # the client holds the first conv block: smashed data 16 x H/2 x W/2


def mlp(input_shape: tuple[int, ...], num_classes: int) -> tuple[nn.Module, nn.Module]:
    """A (bottom, top) pair for flat inputs of any shape (tabular data): cut at 1 only."""
    features = 1
    for size in input_shape:
        features *= size
    bottom = nn.Sequential(nn.Flatten(), nn.Linear(features, 32), nn.ReLU())
    top = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, num_classes))
    return bottom, top
