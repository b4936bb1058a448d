"""Your own model and cut (issue 24): declarations, cuts, what follows the cut, and bad input."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from sglr_ray import cli
from sglr_ray.config import ConfigError, RunConfig
from sglr_ray.execution import driver
from sglr_ray.execution.driver import run_experiment
from sglr_ray.measure.flops import bottom_step_flops, full_step_flops, step_flops, top_step_flops
from sglr_ray.nodes.models import ModelParts, model_layout

EXAMPLES = Path(__file__).parents[2] / "examples"
SMALL_CNN = f"{EXAMPLES / 'custom_model.py'}:small_cnn"
MLP = f"{EXAMPLES / 'custom_model.py'}:mlp"
# (model, input shape, classes): every built-in and example model on an input it takes.
MODELS = [("alexnet", (1, 32, 32), 10), ("resnet16", (1, 32, 32), 10), ("alexnet", (3, 32, 32), 100),
          (SMALL_CNN, (3, 32, 32), 10), (MLP, (24,), 6)]  # fmt: skip


def every_cut(model: str, shape: tuple, classes: int) -> list[ModelParts]:
    count, pair, _ = model_layout(model, shape, classes)
    return [ModelParts(model, 0, shape, classes, (k,)) for k in ([1] if pair else range(1, count))]


def torch_flops(model: nn.Module, x: torch.Tensor, loss: bool) -> int:
    """torch's FlopCounterMode over one training step: forward, loss (or a given gradient), backward."""
    with FlopCounterMode(display=False) as counter:
        out = model(x)
        if loss:
            F.cross_entropy(out, torch.zeros(len(x), dtype=torch.long)).backward()
        else:
            out.backward(torch.ones_like(out))
    return counter.get_total_flops()


@pytest.mark.parametrize("model, shape, classes", MODELS, ids=[f"{Path(m).name}-{s}" for m, s, _ in MODELS])
def test_every_cut_composes_and_flops_match_torch_flop_counter(model, shape, classes):
    for parts in every_cut(model, shape, classes):
        bottom, top = parts.bottom().train(), parts.top().train()
        x = torch.randn(4, *shape)
        smashed = bottom(x)
        assert tuple(smashed.shape[1:]) == parts.smashed_shape
        assert tuple(top(smashed).shape) == (4, classes)
        s = torch.zeros(4, *parts.smashed_shape, requires_grad=True)
        assert bottom_step_flops(parts, 4) == torch_flops(bottom, torch.zeros(4, *shape), loss=False)
        assert top_step_flops(parts, 4) == torch_flops(top, s, loss=True), parts.cut
        whole = nn.Sequential(parts.bottom(), parts.top())
        assert full_step_flops(parts, 4) == torch_flops(whole, torch.zeros(4, *shape), loss=True)


class Scaled(nn.Module):
    """A layer with weights of its own and a functional matmul: the shape rules do not know it."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(16, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight


def test_a_layer_the_shape_rules_do_not_know_is_counted_by_torch():
    model = nn.Sequential(nn.Linear(4, 16), Scaled(), nn.ReLU(), nn.Linear(8, 3))
    x = torch.zeros(5, 4)
    assert step_flops(model, x) == torch_flops(model, x, loss=True) > 2 * 5 * 16 * 8 * 2


def test_default_cuts_are_the_papers_and_resnet_cut_one_is_after_the_stem():
    assert ModelParts("alexnet", 0).smashed_shape == (32, 16, 16)
    assert ModelParts("resnet16", 0).smashed_shape == (32, 16, 16)
    stem = ModelParts("resnet16", 0, cut=(1,))
    assert stem.smashed_shape == (16, 32, 32)
    assert sum(p.numel() for p in stem.bottom().parameters()) == 16 * 9 + 2 * 16  # conv + batch norm


@pytest.mark.parametrize("cut, smashed", [("", (32, 16, 16)), ("1", (16, 32, 32))])
def test_resnet16_bytes_per_sample_are_what_the_smashed_shape_implies(tiny_config, tmp_out, cut, smashed):
    config = tiny_config(method="psl", model="resnet16", cut=cut, clients=2, out=tmp_out)
    outcome = run_experiment(config)
    samples = config.steps_per_epoch * config.batch_size
    per_sample = 4 * math.prod(smashed)  # fp32 values
    (epoch,) = outcome.epochs
    assert epoch.comm.bytes_up == [samples * (per_sample + 8)] * 2  # + an int64 label
    assert epoch.comm.bytes_down == [samples * per_sample] * 2
    row = pd.read_parquet(outcome.paths["runs"]).iloc[0]
    # The model column names the model as the run's identity does: with a cut other than its own.
    model = f"resnet16 cut {cut}" if cut else "resnet16"
    assert (row.model, row.cut, row.input_shape, row.num_classes) == (model, cut or "3", "1x32x32", 10)


def test_a_cut_is_one_run_whether_given_or_default_and_another_cut_is_another_run(tiny_config):
    default = tiny_config(model="resnet16")
    assert default.replace(cut="3").run_key == default.run_key
    assert default.replace(cut="1").run_key != default.run_key
    assert default.replace(cut="1").run_id == default.replace(cut="1").run_id


def test_usl_takes_two_cut_points_and_defaults_to_the_last_child_as_tail(tiny_config):
    default = tiny_config(method="usl").model_parts
    assert default.cut == (1, 6)
    # Blocks run as their layers: the tail is the classifier, the middle the 13 layers before it.
    assert (
        isinstance(default.tail()[0], nn.Linear) and len(default.tail()) == 1 and len(default.middle()) == 13
    )
    parts = tiny_config(method="usl", cut="2,5").model_parts
    assert [len(parts.bottom()), len(parts.middle()), len(parts.tail())] == [3 + 3, 2 + 2 + 3, 3 + 1]
    # The tail is drawn with the top (seed + 1): the same weights as the top's last children.
    assert torch.equal(parts.tail()[-1].weight, parts.top()[-1].weight)
    assert tiny_config(method="usl", cut="2,5").run_key != tiny_config(method="usl").run_key


def test_each_part_starts_from_the_same_weights_whatever_was_built_before(tiny_config):
    parts = tiny_config(model="resnet16").model_parts
    torch.manual_seed(99)
    a = parts.top()
    torch.rand(1000)
    b = parts.top()
    assert all(
        torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def test_a_model_file_enters_the_identity_with_a_hash_of_the_file(tmp_path, tiny_config):
    source = (EXAMPLES / "custom_model.py").read_text()
    file = tmp_path / "my_model.py"
    file.write_text(source)
    config = tiny_config(model=f"{file}:small_cnn")
    key = config.run_key
    assert config.identity()["model"].startswith("my_model.py:small_cnn@")
    file.write_text(source + "\n# edited\n")
    assert tiny_config(model=f"{file}:small_cnn").run_key != key


# --- bad input: one line naming the setting, exit 2, before any training ----------------------

MODEL_FILE = """
from torch import nn

def not_a_model(input_shape, num_classes):
    return 3

def mismatched(input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(1024, 10)), nn.Linear(99, num_classes)

def wrong_classes(input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(1024, 7))
"""

BAD_MODELS = [
    ({"model": "{dir}/nofile.py:net"}, "--model '{dir}/nofile.py:net': no file"),
    ({"model": "{dir}/models.py:nothing"}, "defines no 'nothing'"),
    ({"model": "{dir}/models.py:not_a_model"},
     "returned int; expected an nn.Sequential (to be cut) or a (bottom, top)"),
    ({"model": "alexnet", "cut": "9"},
     "--cut '9' is out of range for --model 'alexnet' (7 children): valid cuts are 1 <= K <= 6"),
    ({"model": "alexnet", "cut": "0"}, "valid cuts are 1 <= K <= 6"),
    ({"method": "usl", "cut": "3,2"}, "valid cuts are 1 <= K1 < K2 <= 6"),
    ({"cut": "1,2"}, "this method cuts the model 1 time(s); give K"),
    ({"cut": "a"}, "--cut 'a' must be K or K1,K2"),
    ({"model": "{dir}/models.py:mismatched"},
     "--cut 1: the bottom puts out (10,) per sample, which the top cannot take (it starts with Linear, "
     "taking (..., 99))"),
    ({"model": "{dir}/models.py:wrong_classes"}, "outputs (7,) per sample; expected (10,)"),
]  # fmt: skip


@pytest.fixture
def no_training(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("training started despite bad input")

    monkeypatch.setattr(driver, "make_executor", forbidden)


@pytest.mark.parametrize("settings, message", BAD_MODELS, ids=[m for _, m in BAD_MODELS])
def test_bad_model_or_cut_is_refused_in_one_line_before_training(
    settings, message, tmp_path, capsys, no_training
):
    (tmp_path / "models.py").write_text(MODEL_FILE)
    argv = ["run", "--dataset", "synthetic", "--out", str(tmp_path / "out"), "--samples-per-client", "16"]
    for key, value in settings.items():
        argv.append(f"--{key}={value.format(dir=tmp_path)}")
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message.format(dir=tmp_path) in err, err
    assert "Traceback" not in err and err.count("\n") == 1


def test_config_refuses_an_unknown_model_by_name():
    with pytest.raises(
        ConfigError, match="--model 'vgg11' is unknown; choose one of: alexnet, alexnet-paper, resnet16"
    ):
        RunConfig(model="vgg11")
