"""Parameter counts and smashed-data shapes of the split models (SPEC section 3)."""

from __future__ import annotations

import pytest
import torch

from sglr_ray.nodes.models import SPLIT_MODELS, count_parameters, seeded


@pytest.mark.parametrize("name, bottom_params, top_params", [
    ("alexnet", 832, 578_698),
    # conv 1->64 5x5: 64*25 + 64; convs 192, 384, 256, 256 and 4096, 4096, 10 linear on the server
    ("alexnet-paper", 1_664, 307_392 + 663_936 + 884_992 + 590_080 + 16_781_312 + 16_781_312 + 40_970),
    ("resnet16", 42_608, 206_346),  # SPEC: about 43k client, about 206k server
])  # fmt: skip
def test_parameter_counts(name, bottom_params, top_params):
    split = SPLIT_MODELS[name]
    assert count_parameters(split.build_bottom()) == bottom_params
    assert count_parameters(split.build_top()) == top_params


SMASHED_CHANNELS = {"alexnet": 32, "alexnet-paper": 64, "resnet16": 32}


@pytest.mark.parametrize("name", SPLIT_MODELS)
def test_smashed_shape_and_logits(name):
    split = SPLIT_MODELS[name]
    smashed = split.build_bottom()(torch.zeros(3, 1, 32, 32))
    assert tuple(smashed.shape) == (3, SMASHED_CHANNELS[name], 16, 16)
    assert tuple(split.build_top()(smashed).shape) == (3, 10)


def test_resnet16_client_has_nine_convs_server_six_plus_linear():
    def convs(module):  # main-path convs; 1x1 shortcut projections are not counted as layers
        return sum(isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1) for m in module.modules())

    split = SPLIT_MODELS["resnet16"]
    top = split.build_top()
    assert convs(split.build_bottom()) == 9
    assert convs(top) == 6 and sum(isinstance(m, torch.nn.Linear) for m in top.modules()) == 1


def test_seeded_build_is_reproducible_and_leaves_global_rng():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = seeded(SPLIT_MODELS["alexnet"].build_bottom, 7)
    after = torch.rand(1)
    b = seeded(SPLIT_MODELS["alexnet"].build_bottom, 7)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert torch.equal(before, after)
