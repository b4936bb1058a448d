"""ResNet-16 (SPEC section 3): CIFAR-style, a stem conv, then stages of basic blocks [2, 2, 3]
with widths 16/32/64, global pooling and a linear classifier.

Children: stem, stage 1, stage 2, stage 3, pooling, classifier. `--cut 1` puts
the stem on the client, 2 stage 1 too, 3 (the paper's cut: 9 convs, about 43k
parameters, smashed data 32 x H/2 x W/2) stage 2 too. Layers are built in the
order the original bottom/top pair built them, so the default cut starts from
the very weights it always did.
"""

from __future__ import annotations

import torch
from torch import nn

from sglr_ray.zoo import Block


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


def resnet16(input_shape: tuple[int, ...], num_classes: int) -> nn.Sequential:
    """(C, H, W) images -> logits; any H, W of at least 4 (global pooling at the end)."""
    return nn.Sequential(
        Block(
            nn.Conv2d(input_shape[0], 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True)
        ),
        _stage(16, 16, blocks=2, stride=1),
        _stage(16, 32, blocks=2, stride=2),  # -> 32 x H/2 x W/2: the paper's smashed data
        _stage(32, 64, blocks=3, stride=2),  # -> 64 x H/4 x W/4
        Block(nn.AdaptiveAvgPool2d(1), nn.Flatten()),
        nn.Linear(64, num_classes),
    )


resnet16.default_cut = 3
