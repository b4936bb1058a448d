"""AlexNet at the standard widths (issue 29 item 4): torchvision's convs 64, 192, 384, 256, 256 and
two 4096-wide fully connected layers, for small images.

A 32x32 image cannot take torchvision's 11x11 stride-4 stem and three 3x3 stride-2 pools (the
map is 1x1 before conv3), so the stem is 5x5 stride 1 and every pool 2x2, as in the narrow
`alexnet`: 32 -> 16 -> 8 -> 4, and the classifier sees 256 x 4 x 4 = 4096 features where
torchvision's sees 256 x 6 x 6. No dropout. The client holds the first conv block, as the
paper splits it (default cut 1; smashed data 64 x H/2 x W/2).
"""

from __future__ import annotations

from torch import nn

from sglr_ray.zoo import Block
from sglr_ray.zoo.alexnet import _conv_block


def alexnet_paper(input_shape: tuple[int, ...], num_classes: int) -> nn.Sequential:
    """(C, H, W) images, H and W multiples of 8 -> logits."""
    channels, height, width = input_shape
    return nn.Sequential(
        _conv_block(channels, 64, 5, pool=True),  # -> 64 x H/2 x W/2
        _conv_block(64, 192, 5, pool=True),
        _conv_block(192, 384, 3, pool=False),
        _conv_block(384, 256, 3, pool=False),
        _conv_block(256, 256, 3, pool=True),  # -> 256 x H/8 x W/8
        Block(nn.Flatten(), nn.Linear(256 * (height // 8) * (width // 8), 4096), nn.ReLU(inplace=True)),
        Block(nn.Linear(4096, 4096), nn.ReLU(inplace=True)),
        nn.Linear(4096, num_classes),
    )


alexnet_paper.default_cut = 1
