"""Which datasets there are, how their samples become model inputs, and reading the new ones.

Built in: fashion-mnist (read by data.py), synthetic (a stand-in of its
shape), cifar10 and cifar100 (torchvision's on-disk format: --data-dir, or
fetched with `sglr-ray data --dataset cifar10 --download`). A user's dataset is
`--dataset FILE.py:NAME`: NAME() returns (train, test), each a
torch.utils.data.Dataset of (tensor, int) or a pair of tensors (x, y), with
any input shape; the number of classes is 1 + the largest training label.

Samples are stored compactly (uint8 images, or the file's tensors) and become
model inputs a batch at a time through the dataset's `InputCodec`.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sglr_ray.declared import DeclarationError, identity_name, load
from sglr_ray.settings import ConfigError

CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sglr-ray"
FMNIST_MEAN, FMNIST_STD = 0.2860, 0.3530
# Per-channel statistics of the CIFAR training sets (the usual published figures).
CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
CIFAR_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}


class DatasetNotFoundError(FileNotFoundError):
    """No copy of the dataset was found in any of the places searched."""


@dataclass(frozen=True)
class InputCodec:
    """How stored samples become model inputs, and back for the leakage attack.

    kind "fmnist": uint8 (n, 28, 28) -> normalised (n, 1, 32, 32), padded by 2;
    "rgb": uint8 (n, H, W, C) -> normalised (n, C, H, W) per channel;
    "float": the file's tensors as they are, in torch's default dtype; `low`/`high` (the
    training inputs' range) map them onto [0, 1] for the decoder attack.
    """

    kind: str = "fmnist"
    mean: tuple[float, ...] = (FMNIST_MEAN,)
    std: tuple[float, ...] = (FMNIST_STD,)
    low: float = 0.0
    high: float = 1.0

    def __call__(self, raw: np.ndarray | torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(raw).to(torch.get_default_dtype())
        if self.kind == "float":
            return x
        x = x.div_(255.0)
        if self.kind == "fmnist":  # these exact steps: recorded runs keep their numbers
            x = (x - FMNIST_MEAN) / FMNIST_STD
            return torch.nn.functional.pad(x, (2, 2, 2, 2), value=-FMNIST_MEAN / FMNIST_STD).unsqueeze(1)
        mean, std = (torch.tensor(v, dtype=x.dtype).view(-1, 1, 1) for v in (self.mean, self.std))
        return (x.permute(0, 3, 1, 2) - mean) / std

    def to_unit_range(self, x: torch.Tensor) -> torch.Tensor:
        """Model inputs -> [0, 1]: undoes the normalisation (for "float", the training range)."""
        if self.kind == "fmnist":
            return (x * FMNIST_STD + FMNIST_MEAN).clamp_(0.0, 1.0)
        if self.kind == "float":
            return ((x - self.low) / max(self.high - self.low, 1e-12)).clamp_(0.0, 1.0)
        mean, std = (torch.tensor(v, dtype=x.dtype).view(-1, 1, 1) for v in (self.mean, self.std))
        return (x * std + mean).clamp_(0.0, 1.0)

    def client_view(self, images: torch.Tensor) -> torch.Tensor:
        """What a client holds of a model-sized image: Fashion-MNIST's padding cropped off."""
        return images[..., 2:-2, 2:-2] if self.kind == "fmnist" else images


FASHION = InputCodec()


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    train_size: int
    test_size: int
    val_size: int  # held out of the training set, class-balanced
    input_shape: tuple[int, ...] = (1, 32, 32)
    num_classes: int = 10

    @property
    def train_pool(self) -> int:
        """Training samples left for clients after the validation split."""
        return self.train_size - self.val_size


def val_size_for(train_size: int, num_classes: int) -> int:
    """New datasets hold a tenth of the training set out for validation, a multiple of the classes."""
    return train_size // 10 // num_classes * num_classes


DATASETS = {
    "fashion-mnist": DatasetInfo("fashion-mnist", 60_000, 10_000, 10_000),
    # Same shapes and sizes as Fashion-MNIST, for benchmarks and fast tests only.
    "synthetic": DatasetInfo("synthetic", 60_000, 10_000, 10_000),
    # The same, drawn larger: 10,000 clients x 50 samples (benchmarks/scale_10k.py).
    "synthetic-large": DatasetInfo("synthetic-large", 520_000, 10_000, 10_000),
    "cifar10": DatasetInfo("cifar10", 50_000, 10_000, val_size_for(50_000, 10), (3, 32, 32), 10),
    "cifar100": DatasetInfo("cifar100", 50_000, 10_000, val_size_for(50_000, 100), (3, 32, 32), 100),
}


@dataclass
class LoadedDataset:
    """A dataset's samples as stored (see InputCodec), labels as int64, and what it is."""

    train: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    info: DatasetInfo
    codec: InputCodec


# --- CIFAR ---------------------------------------------------------------------------


def cifar_root(data_dir: str) -> Path:
    return Path(data_dir or os.environ.get("SGLR_DATA_DIR") or CACHE_DIR)


def _cifar_reader(name: str) -> type:
    """torchvision's CIFAR class, checking that the files exist rather than their checksums (those
    of the published archives), so a copy generated in the same format loads as well."""
    from torchvision.datasets import CIFAR10, CIFAR100

    class Reader(CIFAR10 if name == "cifar10" else CIFAR100):
        def _check_integrity(self) -> bool:
            folder = Path(self.root) / self.base_folder
            return all((folder / f).is_file() for f, _ in self.train_list + self.test_list)

        def _load_meta(self) -> None:  # class names: not needed, and checksummed
            self.classes = []

    return Reader


def load_cifar(name: str, data_dir: str = "") -> LoadedDataset:
    root, reader = cifar_root(data_dir), _cifar_reader(name)
    folder = root / CIFAR_FOLDERS[name]
    if not all((folder / f).is_file() for f, _ in reader.train_list + reader.test_list):
        raise DatasetNotFoundError(
            f"--dataset {name}: {folder} not found; fetch it with `sglr-ray data --dataset {name} "
            "--download`, or point --data-dir at the folder holding it"
        )
    train, test = (reader(str(root), train=flag) for flag in (True, False))
    mean, std = CIFAR_STATS[name]
    classes = DATASETS[name].num_classes
    # Sizes as found (the published sets give the table's): a smaller copy in the format loads too.
    info = DatasetInfo(name, len(train.data), len(test.data), val_size_for(len(train.data), classes),
                       (3, 32, 32), classes)  # fmt: skip
    return LoadedDataset(
        (train.data, np.asarray(train.targets, dtype=np.int64)),
        (test.data, np.asarray(test.targets, dtype=np.int64)), info, InputCodec("rgb", mean, std),
    )  # fmt: skip


def download_cifar(name: str, data_dir: str = "") -> Path:
    """Fetch CIFAR-10 or CIFAR-100 with torchvision (needs internet); returns the root it went to."""
    from torchvision.datasets import CIFAR10, CIFAR100

    root = cifar_root(data_dir)
    for train in (True, False):
        (CIFAR10 if name == "cifar10" else CIFAR100)(str(root), train=train, download=True)
    return root


# --- a user's dataset ----------------------------------------------------------------


def _as_arrays(part: object, which: str, spec: str) -> tuple[np.ndarray, np.ndarray]:
    """A Dataset of (tensor, int) or a pair of tensors (x, y) -> (inputs, int64 labels)."""
    if isinstance(part, tuple | list) and len(part) == 2 and all(torch.is_tensor(t) for t in part):
        x, y = part
    else:
        try:
            items = [part[i] for i in range(len(part))]
        except TypeError as ex:
            raise ConfigError(
                f"--dataset {spec!r}: {which} must be a torch Dataset of (tensor, int) or a pair of tensors "
                f"(x, y), got {type(part).__name__}"
            ) from ex
        if not items:
            raise ConfigError(f"--dataset {spec!r}: the {which} set is empty")
        x = torch.stack([torch.as_tensor(item[0]) for item in items])
        y = torch.as_tensor([_label(item[1], which, spec) for item in items])
    if len(x) == 0:
        raise ConfigError(f"--dataset {spec!r}: the {which} set is empty")
    if len(x) != len(y) or y.dim() != 1:
        raise ConfigError(
            f"--dataset {spec!r}: {which} has {len(x)} inputs but labels of shape {tuple(y.shape)}"
        )
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise ConfigError(f"--dataset {spec!r}: {which} labels must be integers, got {y.dtype}")
    return x.detach().cpu().numpy(), y.to(torch.int64).numpy()


def _label(value: object, which: str, spec: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer | torch.Tensor):
        raise ConfigError(f"--dataset {spec!r}: {which} labels must be integers, got {value!r}")
    if torch.is_tensor(value) and (value.numel() != 1 or value.dtype.is_floating_point):
        raise ConfigError(f"--dataset {spec!r}: {which} labels must be integers, got {value!r}")
    return int(value)


@functools.cache
def _load_file_dataset(spec: str, identity: str) -> LoadedDataset:
    """Cached per process by the file's hash (`identity`): the driver reads it once."""
    try:
        make = load(spec, "--dataset")
    except DeclarationError as ex:
        raise ConfigError(str(ex)) from ex
    made = make() if callable(make) else make
    if not (isinstance(made, tuple | list) and len(made) == 2):
        raise ConfigError(f"--dataset {spec!r}: NAME() must return (train, test), got {type(made).__name__}")
    train, test = (_as_arrays(part, which, spec) for part, which in zip(made, ("train", "test"), strict=True))
    num_classes = int(train[1].max()) + 1
    for (x, y), which in ((train, "train"), (test, "test")):
        if y.min() < 0 or y.max() >= num_classes:
            raise ConfigError(
                f"--dataset {spec!r}: {which} labels must be in [0, {num_classes - 1}] (the classes the "
                f"training labels name), got {int(y.min())}..{int(y.max())}"
            )
        if x.shape[1:] != train[0].shape[1:]:
            raise ConfigError(
                f"--dataset {spec!r}: {which} inputs are {x.shape[1:]}, train {train[0].shape[1:]}"
            )
    size = len(train[1])
    info = DatasetInfo(
        spec, size, len(test[1]), val_size_for(size, num_classes), train[0].shape[1:], num_classes
    )
    codec = InputCodec("float", (), (), float(train[0].min()), float(train[0].max()))
    return LoadedDataset(train, test, info, codec)


def load_file_dataset(spec: str) -> LoadedDataset:
    return _load_file_dataset(spec, identity_name(spec))


def dataset_info(spec: str) -> DatasetInfo:
    """Sizes, input shape and class count: a built-in's from the table, a file's by loading it."""
    return DATASETS[spec] if spec in DATASETS else load_file_dataset(spec).info


def check_dataset_name(spec: str) -> None:
    """A built-in name or FILE.py:NAME, else a ConfigError naming --dataset (nothing is loaded)."""
    if spec in DATASETS:
        return
    if ":" not in spec:
        raise ConfigError(
            f"--dataset {spec!r} is unknown; choose one of: {', '.join(DATASETS)}, or FILE.py:NAME"
        )
    try:
        load(spec, "--dataset")  # imports the file; NAME() is called when the data is loaded
    except DeclarationError as ex:
        raise ConfigError(str(ex)) from ex
