"""Split models: each architecture is a (bottom, top) pair of nn.Modules.

The bottom runs on a client and turns an input image into smashed data; the
top runs on the server and turns smashed data into class logits. Inputs are
1x32x32 (Fashion-MNIST padded by 2 pixels on each side, see data.py).

Neither model uses dropout: the server's randomness would then depend on the
process it runs in, and the in-process and Ray executors must agree exactly.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

INPUT_SHAPE = (1, 32, 32)
NUM_CLASSES = 10


# --- AlexNet (SPEC section 3: client = first conv layer + max-pool) ----------
# Widths are a narrow AlexNet for 32x32 greyscale input, sized so an epoch of
# 5 clients x 1000 samples trains in seconds on two CPU cores ("alexnet"; the
# standard widths are "alexnet-paper" below).


def alexnet_bottom() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, kernel_size=5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),  # -> 32 x 16 x 16
    )


def alexnet_top() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(32, 64, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),  # -> 64 x 8 x 8
        nn.Conv2d(64, 128, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(128, 128, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(128, 64, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),  # -> 64 x 4 x 4
        nn.Flatten(),
        nn.Linear(64 * 4 * 4, 256),
        nn.ReLU(inplace=True),
        nn.Linear(256, NUM_CLASSES),
    )


# --- AlexNet at the standard widths (issue 29 item 4) --------------------------
# torchvision's AlexNet widths: convs 64, 192, 384, 256, 256 and two 4096-wide fully
# connected layers, for 1x32x32 input. A 32x32 image cannot take torchvision's 11x11
# stride-4 stem and three 3x3 stride-2 pools (the map is 1x1 before conv3), so the stem is
# 5x5 stride 1 and every pool 2x2, as in the narrow model above: 32 -> 16 -> 8 -> 4, and the
# classifier sees 256 x 4 x 4 = 4096 features where torchvision's sees 256 x 6 x 6. No
# dropout (module docstring). The client holds the first conv block, as the paper splits it.


def alexnet_paper_bottom() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 64, kernel_size=5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),  # -> 64 x 16 x 16
    )


def alexnet_paper_top() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(64, 192, kernel_size=5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),  # -> 192 x 8 x 8
        nn.Conv2d(192, 384, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),  # -> 256 x 4 x 4
        nn.Flatten(),
        nn.Linear(256 * 4 * 4, 4096),
        nn.ReLU(inplace=True),
        nn.Linear(4096, 4096),
        nn.ReLU(inplace=True),
        nn.Linear(4096, NUM_CLASSES),
    )


# --- ResNet-16 (SPEC section 3) ------------------------------------------------
# CIFAR-style: stem conv, then stages of basic blocks [2, 2, 3] with widths
# 16/32/64. The client holds the stem and the first two stages (9 convs), the
# server the third stage, global pooling and the classifier (6 convs + linear).


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


def _stage(in_ch: int, out_ch: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [BasicBlock(in_ch, out_ch, stride)]
    layers += [BasicBlock(out_ch, out_ch, 1) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def resnet16_bottom() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(inplace=True),
        _stage(16, 16, blocks=2, stride=1),
        _stage(16, 32, blocks=2, stride=2),  # -> 32 x 16 x 16
    )


def resnet16_top() -> nn.Module:
    return nn.Sequential(
        _stage(32, 64, blocks=3, stride=2),  # -> 64 x 8 x 8
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, NUM_CLASSES),
    )


# --- registry ------------------------------------------------------------------


@dataclass(frozen=True)
class SplitModel:
    """How to build one architecture's two halves."""

    name: str
    build_bottom: Callable[[], nn.Module]
    build_top: Callable[[], nn.Module]


SPLIT_MODELS: dict[str, SplitModel] = {
    "alexnet": SplitModel("alexnet", alexnet_bottom, alexnet_top),
    "alexnet-paper": SplitModel("alexnet-paper", alexnet_paper_bottom, alexnet_paper_top),
    "resnet16": SplitModel("resnet16", resnet16_bottom, resnet16_top),
}


def seeded(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    """Build a module with parameters drawn from `seed`, leaving the global RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


@dataclass(frozen=True)
class ModelParts:
    """The run's model as a method's ClientRole builds from it (methods/roles.py): the bottom is
    drawn from `seed` and the top from seed + 1, so every client starts from the same weights
    and CL's whole model starts from the very weights the split methods start from."""

    model: str
    seed: int

    def bottom(self) -> nn.Module:
        return seeded(SPLIT_MODELS[self.model].build_bottom, self.seed)

    def top(self) -> nn.Module:
        return seeded(SPLIT_MODELS[self.model].build_top, self.seed + 1)

    def seeded(self, build: Callable[[], nn.Module], salt: int) -> nn.Module:
        """Anything else a role adds (an auxiliary head), drawn from seed + salt."""
        return seeded(build, self.seed + salt)

    @property
    def smashed_shape(self) -> tuple[int, ...]:
        return smashed_shape(self.model)

    @property
    def num_classes(self) -> int:
        return NUM_CLASSES


def build_client_model(model: str, seed: int, full: bool) -> nn.Module:
    """A client's starting model: the bottom half, or for cl/fl the whole model (ModelParts)."""
    parts = ModelParts(model, seed)
    return nn.Sequential(parts.bottom(), parts.top()) if full else parts.bottom()


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def weights_copy(module: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of a module's state dict: what leaves its process or outlives a step."""
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def state_nbytes(module: nn.Module) -> int:
    """Bytes of a module's state dict (parameters and buffers): what a weight transfer moves."""
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


@functools.cache
def bottom_state_nbytes(model: str) -> int:
    """Bytes of a client's bottom model weights: what SFL and SSL move per transfer."""
    return state_nbytes(SPLIT_MODELS[model].build_bottom())


def smashed_shape(model: str) -> tuple[int, ...]:
    """Per-sample shape of the smashed data at the split layer of `model`."""
    with torch.no_grad():
        return tuple(SPLIT_MODELS[model].build_bottom()(torch.zeros(1, *INPUT_SHAPE)).shape[1:])
