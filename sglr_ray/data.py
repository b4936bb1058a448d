"""Loading the run's dataset, the validation split and the client partitions.

The driver calls `prepare_data` once; each client shard then receives only its
own clients' partitions (plus the shared validation and test images, which it
needs to evaluate its bottom models). Which datasets exist and how their
samples become model inputs is datasets.py's; this module works for any of
them: any input shape, the classes the labels name.

Samples stay as stored (uint8 images) until a batch is drawn; the dataset's
codec (`ImageSet.inputs`) turns them into model inputs: Fashion-MNIST's 28x28
padded to 32x32 and normalised (`to_model_input`).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sglr_ray.datasets import (  # noqa: F401  (re-exported: callers read them here)
    CACHE_DIR,
    DATASETS,
    FASHION,
    FMNIST_MEAN,
    FMNIST_STD,
    DatasetInfo,
    DatasetNotFoundError,
    InputCodec,
    load_cifar,
    load_file_dataset,
)
from sglr_ray.settings import ConfigError

SYSTEM_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
FMNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
NUM_CLASSES = 10  # Fashion-MNIST's (and the synthetic stand-in's)
EVAL_SEED = 0xE7A1  # fixes the validation split and both evaluation subsets for every run


@dataclass
class ImageSet:
    """Samples as stored (Fashion-MNIST: uint8 images (n, 28, 28)), int64 labels (n,), and the
    codec that turns samples into model inputs."""

    images: np.ndarray
    labels: np.ndarray
    codec: InputCodec = field(default=FASHION)

    def __len__(self) -> int:
        return len(self.labels)

    def inputs(self, index: np.ndarray | slice | None = None) -> torch.Tensor:
        """Model inputs of the samples at `index` (all of them by default)."""
        return self.codec(self.images if index is None else self.images[index])

    def subset(self, index: np.ndarray | slice) -> ImageSet:
        return ImageSet(self.images[index], self.labels[index], self.codec)

    def writable_copy(self) -> ImageSet:
        return ImageSet(self.images.copy(), self.labels.copy(), self.codec)

    @classmethod
    def union(cls, parts: list[ImageSet]) -> ImageSet:
        images, labels = (np.concatenate([getattr(p, k) for p in parts]) for k in ("images", "labels"))
        return cls(images, labels, parts[0].codec)

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
    input_shape: tuple[int, ...] = (1, 32, 32)  # of a model input, per sample
    num_classes: int = NUM_CLASSES


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


SYNTHETIC_CHUNK = 50_000  # images drawn at a time


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
        images = np.empty((n, 28, 28), dtype=np.uint8)
        # In chunks: 520,000 images' float64 noise at once would be 3 GB. The generator draws
        # the same numbers in chunks as in one call, so the 60,000 images are as they were.
        for start in range(0, n, SYNTHETIC_CHUNK):
            rows = slice(start, min(start + SYNTHETIC_CHUNK, n))
            noise = rng.normal(0, 60, size=(rows.stop - rows.start, 28, 28))
            images[rows] = np.clip(templates[labels[rows]] + noise, 0, 255).astype(np.uint8)
        return ImageSet(images, labels)

    return draw(info.train_size), draw(info.test_size)


# --- splits and partitions -------------------------------------------------------


def _classes(labels: np.ndarray, num_classes: int | None) -> int:
    """The class count: given, or 1 + the largest label."""
    return int(labels.max()) + 1 if num_classes is None else num_classes


def _class_indices(labels: np.ndarray, rng: np.random.Generator, num_classes: int) -> list[np.ndarray]:
    return [rng.permutation(np.flatnonzero(labels == c)) for c in range(num_classes)]


def split_validation(
    labels: np.ndarray, val_size: int, rng: np.random.Generator, num_classes: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Class-balanced validation indices and the remaining training pool (both shuffled)."""
    num_classes = _classes(labels, num_classes)
    per_class = val_size // num_classes
    by_class = _class_indices(labels, rng, num_classes)
    val = np.concatenate([idx[:per_class] for idx in by_class])
    pool = np.concatenate([idx[per_class:] for idx in by_class])
    return rng.permutation(val), rng.permutation(pool)


def partition_iid(
    labels: np.ndarray,
    clients: int,
    per_client: int,
    rng: np.random.Generator,
    num_classes: int | None = None,
) -> list[np.ndarray]:
    """Class-stratified IID partitions: every client gets (nearly) the same count of each class."""
    k_classes = _classes(labels, num_classes)
    by_class = _class_indices(labels, rng, k_classes)
    taken = [0] * k_classes
    parts = []
    for client in range(clients):
        counts = [per_client // k_classes] * k_classes
        for k in range(per_client % k_classes):  # rotate the remainder over classes
            counts[(client + k) % k_classes] += 1
        chunks = []
        for c, n in enumerate(counts):
            if taken[c] + n > len(by_class[c]):
                raise ValueError(f"class {c} has only {len(by_class[c])} samples for {clients} clients")
            chunks.append(by_class[c][taken[c] : taken[c] + n])
            taken[c] += n
        parts.append(rng.permutation(np.concatenate(chunks)))
    return parts


def partition_dirichlet(
    labels: np.ndarray,
    clients: int,
    per_client: int,
    beta: float,
    rng: np.random.Generator,
    num_classes: int | None = None,
) -> list[np.ndarray]:
    """Label-skewed partitions of equal size: client class mix ~ Dirichlet(beta).

    Sizes stay equal so that every client runs the same number of iterations
    and SplitAvg's equal-batch requirement holds.
    """
    k_classes = _classes(labels, num_classes)
    by_class = _class_indices(labels, rng, k_classes)
    remaining = np.array([len(idx) for idx in by_class])
    parts = []
    for _ in range(clients):
        wanted = rng.multinomial(per_client, rng.dirichlet([beta] * k_classes))
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


def balanced_prefix(labels: np.ndarray, size: int, num_classes: int | None = None) -> np.ndarray:
    """Positions of the first `size` items of `labels` taken class by class in turn, so every
    class has size // K or one more (the remainder goes to the lowest classes)."""
    k_classes = _classes(labels, num_classes)
    by_class = [np.flatnonzero(labels == c) for c in range(k_classes)]
    counts = [size // k_classes + (c < size % k_classes) for c in range(k_classes)]
    short = [c for c in range(k_classes) if counts[c] > len(by_class[c])]
    if short:
        raise ValueError(f"classes {short} have too few images for a balanced subset of {size}")
    return np.sort(np.concatenate([idx[:n] for idx, n in zip(by_class, counts, strict=True)]))


def load_dataset(dataset: str, data_dir: str = "") -> tuple[ImageSet, ImageSet, DatasetInfo]:
    """The train and test sets of `--dataset`, and what it is."""
    if dataset == "fashion-mnist":
        return (*load_fashion_mnist(), DATASETS[dataset])
    if dataset in ("synthetic", "synthetic-large"):
        return (*make_synthetic(DATASETS[dataset]), DATASETS[dataset])
    loaded = load_cifar(dataset, data_dir) if dataset in DATASETS else load_file_dataset(dataset)
    train, test = (ImageSet(x, y, loaded.codec) for x, y in (loaded.train, loaded.test))
    return train, test, loaded.info


def check_sizes(config, info: DatasetInfo) -> None:  # config: RunConfig
    """What the run asks of the dataset, against what it has; a ConfigError naming the setting."""
    needed = config.clients * config.samples_per_client
    if needed > info.train_pool:
        raise ConfigError(
            f"--clients {config.clients} x --samples-per-client {config.samples_per_client} = "
            f"{needed} samples, but {info.name} has {info.train_pool} training samples "
            f"left after the {info.val_size}-sample validation split"
        )
    spare = info.train_pool - needed
    if getattr(config, "leakage", False) and config.leakage_aux_samples > spare:
        raise ConfigError(f"--leakage-aux-samples {config.leakage_aux_samples} exceeds the {spare} training "
                          "samples no client holds")  # fmt: skip
    for name, limit in (("val_samples", info.val_size), ("test_samples", info.test_size)):
        if getattr(config, name) > limit:
            raise ConfigError(f"--{name.replace('_', '-')} {getattr(config, name)} exceeds the {limit} "
                              "images of that split")  # fmt: skip


def prepare_data(config) -> PreparedData:  # config: RunConfig (not imported: avoids a cycle)
    """Load the dataset once and cut it into validation, test and per-client partitions.

    The validation split, the validation and test subsets depend on the dataset and
    their sizes alone, never on C, the method, the partition or the seed: every run
    of a table is scored on the same images (paired), and the digests say which.
    """
    train, test, info = load_dataset(config.dataset, getattr(config, "data_dir", ""))
    check_sizes(config, info)
    classes = info.num_classes
    fixed = np.random.default_rng(EVAL_SEED)
    val_idx, pool_idx = split_validation(train.labels, info.val_size, fixed, classes)
    val_idx = val_idx[balanced_prefix(train.labels[val_idx], config.val_samples or len(val_idx), classes)]
    test_idx = fixed.permutation(len(test))[: config.test_samples or None]
    rng = np.random.default_rng([config.seed, 0xDA7A])  # the partitions are the seed's
    pool = train.subset(pool_idx)
    if config.partition == "iid":
        parts = partition_iid(pool.labels, config.clients, config.samples_per_client, rng, classes)
    else:
        parts = partition_dirichlet(
            pool.labels, config.clients, config.samples_per_client, config.dirichlet_beta, rng, classes
        )
    spare = np.setdiff1d(np.arange(len(pool)), np.concatenate(parts))
    return PreparedData(
        config.dataset, [pool.subset(p) for p in parts], train.subset(val_idx), test.subset(test_idx),
        pool.subset(spare), val_digest=_digest(val_idx), test_digest=_digest(test_idx),
        input_shape=tuple(info.input_shape), num_classes=classes,
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
    return FASHION(images)


def epoch_order(seed: int, client_id: int, epoch: int, size: int) -> torch.Tensor:
    """The order in which a client visits its partition in an epoch.

    A pure function of (seed, client, epoch): no RNG state to carry between
    epochs, and the same order in every executor.
    """
    state = np.random.SeedSequence([seed, client_id, epoch]).generate_state(1, dtype=np.uint64)[0]
    generator = torch.Generator().manual_seed(int(state) & 0x7FFF_FFFF_FFFF_FFFF)
    return torch.randperm(size, generator=generator)
