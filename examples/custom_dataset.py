"""Your own dataset: a callable `NAME()` returning (train, test), each a torch.utils.data.Dataset
of (tensor, int) or a pair of tensors (x, y).

  sglr-ray run --dataset examples/custom_dataset.py:tabular --model examples/custom_model.py:mlp

Inputs may have any shape and reach the model as they are (in torch's default dtype); the
number of classes is 1 + the largest training label. A tenth of the training set is held out,
class-balanced, for validation; the partitions, evaluation subsets and their digests work as
for the built-in datasets. The file is hashed into the run's identity: edit it, and a sweep
runs it again instead of skipping it.
"""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

FEATURES, CLASSES = 24, 6


def tabular() -> tuple[tuple[torch.Tensor, torch.Tensor], TensorDataset]:
    """Six Gaussian classes in 24 dimensions, overlapping enough that accuracy has room to grow:
    30,000 training rows as a pair of tensors, 6,000 test rows as a Dataset of (tensor, int)."""
    generator = torch.Generator().manual_seed(2024)  # the data is fixed: the same in every process
    centres = torch.randn(CLASSES, FEATURES, generator=generator)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(n) % CLASSES
        return centres[labels] + 1.5 * torch.randn(n, FEATURES, generator=generator), labels

    train = draw(30_000)
    test_x, test_y = draw(6_000)
    return train, TensorDataset(test_x, test_y)
