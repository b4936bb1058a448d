"""Fashion-MNIST loading, the validation split and the client partitions.

The driver calls `prepare_data` once; each client shard then receives only its
own clients' partitions (plus the shared validation and test images, which it
needs to evaluate its bottom models).

Images stay uint8 (28x28) until a batch is drawn; `to_model_input` pads them to
32x32 and normalises them.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

SYSTEM_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sglr-ray"
FMNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
FMNIST_MEAN, FMNIST_STD = 0.2860, 0.3530
NUM_CLASSES = 10
EVAL_SEED = 0xE7A1  # fixes the validation split and both evaluation subsets for every run


class DatasetNotFoundError(FileNotFoundError):
    """No copy of the dataset was found in any of the places searched."""


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    train_size: int
    test_size: int
    val_size: int  # held out of the training set, class-balanced

    @property
    def train_pool(self) -> int:
        """Training samples left for clients after the validation split."""
        return self.train_size - self.val_size


DATASETS = {
    "fashion-mnist": DatasetInfo("fashion-mnist", 60_000, 10_000, 10_000),
    # Same shapes and sizes as Fashion-MNIST, for benchmarks and fast tests only.
    "synthetic": DatasetInfo("synthetic", 60_000, 10_000, 10_000),
}


@dataclass
class ImageSet:
    """uint8 images (n, 28, 28) and int64 labels (n,)."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray) -> ImageSet:
        return ImageSet(self.images[index], self.labels[index])

    def writable_copy(self) -> ImageSet:
        return ImageSet(self.images.copy(), self.labels.copy())

    @classmethod
    def union(cls, parts: list[ImageSet]) -> ImageSet:
        return cls(np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]))

    @property
    def nbytes(self) -> int:
        """Bytes of the raw images and labels: what CL's clients upload once."""
        return self.images.nbytes + self.labels.nbytes


@dataclass
class PreparedData:
    dataset: str
    partitions: list[ImageSet]  # one per client, in client_id order
    val: ImageSet
    test: ImageSet
    spare: ImageSet  # training images no client holds: the server's auxiliary data for attacks
    val_digest: str = ""  # which validation images were scored (see _digest)
    test_digest: str = ""


# --- locating and reading the files --------------------------------------------


def data_dirs() -> list[Path]:
    """Where Fashion-MNIST is looked for, in order."""
    dirs = []
    if os.environ.get("SGLR_DATA_DIR"):
        dirs.append(Path(os.environ["SGLR_DATA_DIR"]))
    dirs += [SYSTEM_DATA_DIR, CACHE_DIR / "FashionMNIST" / "raw"]
    return dirs


def _find_file(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format): magic, dims as big-endian int32, then uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def find_fashion_mnist() -> Path:
    """The first directory holding all four Fashion-MNIST files; a clear error otherwise."""
    searched = data_dirs()
    for directory in searched:
        if all(_find_file(directory, stem) for stem in FMNIST_FILES.values()):
            return directory
    places = "\n  ".join(str(d) for d in searched)
    raise DatasetNotFoundError(
        "Fashion-MNIST was not found. Looked in:\n  "
        f"{places}\n(SGLR_DATA_DIR is read first when set.) Install it with "
        "`apt-get install dataset-fashion-mnist`, or run `make data` on a machine with internet."
    )


def load_fashion_mnist() -> tuple[ImageSet, ImageSet]:
    directory = find_fashion_mnist()
    arrays = {key: _read_idx(_find_file(directory, stem)) for key, stem in FMNIST_FILES.items()}
    train = ImageSet(arrays["train_images"], arrays["train_labels"].astype(np.int64))
    test = ImageSet(arrays["test_images"], arrays["test_labels"].astype(np.int64))
    return train, test


def download_fashion_mnist(root: Path = CACHE_DIR) -> Path:
    """Fetch Fashion-MNIST with torchvision's downloader (needs internet); returns its raw dir."""
    from torchvision.datasets import FashionMNIST

    for train in (True, False):
        FashionMNIST(str(root), train=train, download=True)
    return root / "FashionMNIST" / "raw"


@functools.cache
def make_synthetic(info: DatasetInfo = DATASETS["synthetic"], seed: int = 1234) -> tuple[ImageSet, ImageSet]:
    """Learnable stand-in data: each class is a fixed random blob pattern plus pixel noise.

    Cached (a few seconds to draw); callers only index it, which copies."""
    rng = np.random.default_rng(seed)
    templates = rng.uniform(0, 255, size=(NUM_CLASSES, 7, 7))
    templates = templates.repeat(4, axis=1).repeat(4, axis=2)  # 28 x 28, coarse blobs

    def draw(n: int) -> ImageSet:
        labels = np.arange(n, dtype=np.int64) % NUM_CLASSES
        rng.shuffle(labels)
        noise = rng.normal(0, 60, size=(n, 28, 28))
        images = np.clip(templates[labels] + noise, 0, 255).astype(np.uint8)
        return ImageSet(images, labels)

    return draw(info.train_size), draw(info.test_size)


# --- splits and partitions -------------------------------------------------------


def _class_indices(labels: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    return [rng.permutation(np.flatnonzero(labels == c)) for c in range(NUM_CLASSES)]


def split_validation(
    labels: np.ndarray, val_size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Class-balanced validation indices and the remaining training pool (both shuffled)."""
    per_class = val_size // NUM_CLASSES
    by_class = _class_indices(labels, rng)
    val = np.concatenate([idx[:per_class] for idx in by_class])
    pool = np.concatenate([idx[per_class:] for idx in by_class])
    return rng.permutation(val), rng.permutation(pool)


def partition_iid(
    labels: np.ndarray, clients: int, per_client: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Class-stratified IID partitions: every client gets (nearly) the same count of each class."""
    by_class = _class_indices(labels, rng)
    taken = [0] * NUM_CLASSES
    parts = []
    for client in range(clients):
        counts = [per_client // NUM_CLASSES] * NUM_CLASSES
        for k in range(per_client % NUM_CLASSES):  # rotate the remainder over classes
            counts[(client + k) % NUM_CLASSES] += 1
        chunks = []
        for c, n in enumerate(counts):
            if taken[c] + n > len(by_class[c]):
                raise ValueError(f"class {c} has only {len(by_class[c])} samples for {clients} clients")
            chunks.append(by_class[c][taken[c] : taken[c] + n])
            taken[c] += n
        parts.append(rng.permutation(np.concatenate(chunks)))
    return parts


def partition_dirichlet(
    labels: np.ndarray, clients: int, per_client: int, beta: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """Label-skewed partitions of equal size: client class mix ~ Dirichlet(beta).

    Sizes stay equal so that every client runs the same number of iterations
    and SplitAvg's equal-batch requirement holds.
    """
    by_class = _class_indices(labels, rng)
    remaining = np.array([len(idx) for idx in by_class])
    parts = []
    for _ in range(clients):
        wanted = rng.multinomial(per_client, rng.dirichlet([beta] * NUM_CLASSES))
        counts = np.minimum(wanted, remaining)
        while counts.sum() < per_client:  # a class ran dry: top up from the fullest class
            counts[np.argmax(remaining - counts)] += 1
        chunks = []
        for c, n in enumerate(counts):
            start = len(by_class[c]) - remaining[c]
            chunks.append(by_class[c][start : start + n])
        remaining -= counts
        parts.append(rng.permutation(np.concatenate(chunks)))
    return parts


def _digest(indices: np.ndarray) -> str:
    """8 hex digits identifying a set of image indices (the same images give the same digest)."""
    return hashlib.sha256(np.asarray(indices, dtype=np.int64).tobytes()).hexdigest()[:8]


def balanced_prefix(labels: np.ndarray, size: int) -> np.ndarray:
    """Positions of the first `size` items of `labels` taken class by class in turn, so every
    class has size // 10 or one more (the remainder goes to the lowest classes)."""
    by_class = [np.flatnonzero(labels == c) for c in range(NUM_CLASSES)]
    counts = [size // NUM_CLASSES + (c < size % NUM_CLASSES) for c in range(NUM_CLASSES)]
    short = [c for c in range(NUM_CLASSES) if counts[c] > len(by_class[c])]
    if short:
        raise ValueError(f"classes {short} have too few images for a balanced subset of {size}")
    return np.sort(np.concatenate([idx[:n] for idx, n in zip(by_class, counts, strict=True)]))


def prepare_data(config) -> PreparedData:  # config: RunConfig (not imported: avoids a cycle)
    """Load the dataset once and cut it into validation, test and per-client partitions.

    The validation split, the validation and test subsets depend on the dataset and
    their sizes alone, never on C, the method, the partition or the seed: every run
    of a table is scored on the same images (paired), and the digests say which.
    """
    info = DATASETS[config.dataset]
    train, test = load_fashion_mnist() if config.dataset == "fashion-mnist" else make_synthetic(info)
    fixed = np.random.default_rng(EVAL_SEED)
    val_idx, pool_idx = split_validation(train.labels, info.val_size, fixed)
    val_idx = val_idx[balanced_prefix(train.labels[val_idx], config.val_samples or len(val_idx))]
    test_idx = fixed.permutation(len(test))[: config.test_samples or None]
    rng = np.random.default_rng([config.seed, 0xDA7A])  # the partitions are the seed's
    pool = train.subset(pool_idx)
    if config.partition == "iid":
        parts = partition_iid(pool.labels, config.clients, config.samples_per_client, rng)
    else:
        parts = partition_dirichlet(
            pool.labels, config.clients, config.samples_per_client, config.dirichlet_beta, rng
        )
    spare = np.setdiff1d(np.arange(len(pool)), np.concatenate(parts))
    return PreparedData(
        config.dataset, [pool.subset(p) for p in parts], train.subset(val_idx), test.subset(test_idx),
        pool.subset(spare), val_digest=_digest(val_idx), test_digest=_digest(test_idx),
    )  # fmt: skip


def eval_slice(size: int, num_clients: int, client_id: int) -> slice:
    """Client `client_id`'s disjoint slice of an evaluation subset of `size` images:
    consecutive, sizes differing by at most one, together covering the subset."""
    base, extra = divmod(size, num_clients)
    start = client_id * base + min(client_id, extra)
    return slice(start, start + base + (client_id < extra))


# --- batches -----------------------------------------------------------------------


def to_model_input(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (n, 28, 28) -> normalised (n, 1, 32, 32) in torch's default dtype (float32, or
    float64 in the golden tests), padded by 2 pixels of the normalised zero."""
    x = torch.as_tensor(images).to(torch.get_default_dtype()).div_(255.0)
    x = (x - FMNIST_MEAN) / FMNIST_STD
    return torch.nn.functional.pad(x, (2, 2, 2, 2), value=-FMNIST_MEAN / FMNIST_STD).unsqueeze(1)


def epoch_order(seed: int, client_id: int, epoch: int, size: int) -> torch.Tensor:
    """The order in which a client visits its partition in an epoch.

    A pure function of (seed, client, epoch): no RNG state to carry between
    epochs, and the same order in every executor.
    """
    state = np.random.SeedSequence([seed, client_id, epoch]).generate_state(1, dtype=np.uint64)[0]
    generator = torch.Generator().manual_seed(int(state) & 0x7FFF_FFFF_FFFF_FFFF)
    return torch.randperm(size, generator=generator)
