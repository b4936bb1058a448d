"""examples/custom_client.py: a user's client-side hook (a ClientRole) from a file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sglr_ray.execution.driver import run_experiment
from sglr_ray.methods import get_method
from sglr_ray.methods.roles import StepContext

EXAMPLE = str(Path(__file__).parents[2] / "examples" / "custom_client.py") + ":nsd"


def test_the_hook_clips_then_adds_noise_seeded_by_client_epoch_and_step():
    role = get_method(EXAMPLE).client
    example = __import__("custom_client")  # loaded by get_method under its stem
    model = torch.nn.Identity()
    x = torch.zeros(3, 2)
    x[0, 0] = 1000.0  # far above the clip norm
    ctx = StepContext(seed=0, client_id=1, epoch=2, step=3)
    first, _ = role.forward(model, None, x, None, ctx)
    again, _ = role.forward(model, None, x, None, ctx)
    other, _ = role.forward(model, None, x, None, StepContext(0, 2, 2, 3))
    assert torch.equal(first, again) and not torch.equal(first, other)
    noise = torch.randn((3, 2), generator=ctx.generator()) * example.SIGMA * example.CLIP_NORM
    assert torch.allclose(first - noise, torch.tensor([[example.CLIP_NORM, 0.0], [0.0, 0.0], [0.0, 0.0]]))


def test_noise_changes_training_against_psl(tiny_config, tmp_out):
    noisy = run_experiment(tiny_config(method=EXAMPLE, clients=2, out=tmp_out, run_id="nsd"))
    plain = run_experiment(tiny_config(method="psl", clients=2, out=tmp_out, run_id="psl"))
    assert noisy.epochs[0].train_loss != pytest.approx(plain.epochs[0].train_loss, rel=1e-6)
    assert noisy.epochs[0].comm.bytes_up == plain.epochs[0].comm.bytes_up
