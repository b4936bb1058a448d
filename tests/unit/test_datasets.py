"""Your own dataset, and CIFAR-10/100 from torchvision's on-disk format (issue 24)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from cifar_files import write_cifar

from sglr_ray import cli
from sglr_ray.data import load_dataset, prepare_data
from sglr_ray.execution import driver
from sglr_ray.execution.driver import run_experiment

EXAMPLES = Path(__file__).parents[2] / "examples"
TABULAR = f"{EXAMPLES / 'custom_dataset.py'}:tabular"
MLP = f"{EXAMPLES / 'custom_model.py'}:mlp"
SMALL_CNN = f"{EXAMPLES / 'custom_model.py'}:small_cnn"


@pytest.mark.parametrize("name, classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_reads_torchvisions_format_as_normalised_3_channel_inputs(tmp_path, name, classes):
    write_cifar(tmp_path, name)
    train, test, info = load_dataset(name, str(tmp_path))
    assert (len(train), len(test), info.num_classes, info.input_shape) == (1000, 200, classes, (3, 32, 32))
    x = train.inputs(np.arange(4))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.get_default_dtype()
    # Channel 0 of image 0, undone by hand: ((pixel / 255) - mean) / std.
    mean, std = train.codec.mean[0], train.codec.std[0]
    assert x[0, 0, 5, 7].item() == pytest.approx((train.images[0, 5, 7, 0] / 255 - mean) / std, rel=1e-6)
    pixels = torch.as_tensor(train.images[:4] / 255).permute(0, 3, 1, 2).to(x.dtype)
    assert torch.allclose(train.codec.to_unit_range(x), pixels, atol=1e-6)


def test_missing_cifar_is_one_line_naming_the_command_that_fetches_it(tmp_path, capsys):
    argv = ["run", "--dataset", "cifar10", "--data-dir", str(tmp_path), "--out", str(tmp_path / "out")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "`sglr-ray data --dataset cifar10 --download`" in err and err.count("\n") == 1


def test_a_custom_model_trains_on_cifar_with_its_shape_in_the_runs_table(tiny_config, tmp_path, tmp_out):
    write_cifar(tmp_path)
    config = tiny_config(model=SMALL_CNN, dataset="cifar10", data_dir=str(tmp_path), out=tmp_out, epochs=2)
    outcome = run_experiment(config)
    assert outcome.epochs[-1].train_loss < outcome.epochs[0].train_loss
    row = pd.read_parquet(outcome.paths["runs"]).iloc[0]
    assert (row.input_shape, row.num_classes, row.cut, row.dataset) == ("3x32x32", 10, "1", "cifar10")
    assert row.model.startswith("custom_model.py:small_cnn@")


def test_a_custom_dataset_gets_splits_partitions_and_digests_for_its_own_classes(tiny_config):
    config = tiny_config(dataset=TABULAR, model=MLP, partition="dirichlet", dirichlet_beta=0.3)
    data = prepare_data(config)
    assert (data.input_shape, data.num_classes) == ((24,), 6)
    assert set(np.bincount(data.val.labels)) == {100 // 6, 100 // 6 + 1}  # class-balanced subset
    assert all(len(p) == 32 for p in data.partitions) and data.val_digest and data.test_digest
    assert prepare_data(config).val_digest == data.val_digest  # fixed by the dataset and sizes
    skew = [np.bincount(p.labels, minlength=6).max() for p in data.partitions]
    assert max(skew) > 32 // 6 + 2  # Dirichlet(0.3): some client is dominated by a class


def test_a_dataset_file_enters_the_identity_with_a_hash_of_the_file(tmp_path, tiny_config):
    source = (EXAMPLES / "custom_dataset.py").read_text()
    file = tmp_path / "my_data.py"
    file.write_text(source)
    key = tiny_config(dataset=f"{file}:tabular", model=MLP).run_key
    file.write_text(source.replace("1.5 *", "1.25 *"))
    assert tiny_config(dataset=f"{file}:tabular", model=MLP).run_key != key


DATASET_FILE = """
import torch
from torch.utils.data import TensorDataset

def good():
    return (torch.randn(600, 5), torch.arange(600) % 3), (torch.randn(60, 5), torch.arange(60) % 3)

def float_labels():
    return (torch.randn(600, 5), torch.rand(600)), (torch.randn(60, 5), torch.arange(60) % 3)

def list_labels():
    return [(torch.randn(5), 0.5)] * 600, [(torch.randn(5), 1)] * 60

def negative_labels():
    return (torch.randn(600, 5), torch.arange(600) % 3 - 1), (torch.randn(60, 5), torch.arange(60) % 3)

def test_out_of_range():
    return (torch.randn(600, 5), torch.arange(600) % 3), (torch.randn(60, 5), torch.arange(60) % 5)

def empty():
    nothing = TensorDataset(torch.zeros(0, 5), torch.zeros(0, dtype=torch.long))
    return nothing, (torch.randn(60, 5), torch.arange(60) % 3)

def not_a_pair():
    return torch.randn(3)
"""

BAD_DATASETS = [
    ("{dir}/nofile.py:good", {}, "--dataset '{dir}/nofile.py:good': no file"),
    ("{dir}/data.py:missing", {}, "defines no 'missing'"),
    ("{dir}/data.py:float_labels", {}, "train labels must be integers, got torch.float32"),
    ("{dir}/data.py:list_labels", {}, "train labels must be integers, got 0.5"),
    ("{dir}/data.py:negative_labels", {}, "train labels must be in [0, 1]"),
    ("{dir}/data.py:test_out_of_range", {},
     "test labels must be in [0, 2] (the classes the training labels name), got 0..4"),
    ("{dir}/data.py:empty", {}, "the train set is empty"),
    ("{dir}/data.py:not_a_pair", {}, "NAME() must return (train, test), got Tensor"),
    ("{dir}/data.py:good", {"clients": 5, "samples-per-client": 120},
     "--clients 5 x --samples-per-client 120 = 600 samples, but {dir}/data.py:good has 540 training samples"),
]  # fmt: skip


@pytest.mark.parametrize("dataset, flags, message", BAD_DATASETS, ids=[m for _, _, m in BAD_DATASETS])
def test_bad_dataset_is_refused_in_one_line_before_training(
    dataset, flags, message, tmp_path, capsys, monkeypatch
):
    def forbidden(*args, **kwargs):
        raise AssertionError("training started despite bad input")

    monkeypatch.setattr(driver, "make_executor", forbidden)
    (tmp_path / "data.py").write_text(DATASET_FILE)
    argv = ["run", "--dataset", dataset.format(dir=tmp_path), "--model", MLP, "--out", str(tmp_path / "o"),
            "--samples-per-client", "16", "--val-samples", "0", "--test-samples", "0"]  # fmt: skip
    argv += [item for key, value in flags.items() for item in (f"--{key}", str(value))]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message.format(dir=tmp_path) in err, err
    assert "Traceback" not in err and err.count("\n") == 1
