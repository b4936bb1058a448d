"""A narrow AlexNet (SPEC section 3, Table 4: the client holds the first conv layer + max-pool).

Widths are sized so an epoch of 5 clients x 1000 samples of 1x32x32 trains in
seconds on two CPU cores. The children are the conv blocks, then the first
fully connected block, then the classifier, so `--cut K` puts the first K
blocks on the client; the paper's cut is 1 (smashed data 32 x H/2 x W/2).
Layers are built in the order the original bottom/top pair built them, so the
default cut starts from the very weights it always did.

No dropout: the paper's AlexNet here never had it, and recorded runs keep their numbers.
"""

from __future__ import annotations

from torch import nn

from sglr_ray.zoo import Block


def _conv_block(c_in: int, c_out: int, kernel: int, pool: bool) -> Block:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2), nn.ReLU(inplace=True)]
    return Block(*layers, nn.MaxPool2d(2)) if pool else Block(*layers)


def alexnet(input_shape: tuple[int, ...], num_classes: int) -> nn.Sequential:
    """(C, H, W) images, H and W multiples of 8 -> logits. Three 2x2 poolings: 64 x H/8 x W/8 at the end."""
    channels, height, width = input_shape
    return nn.Sequential(
        _conv_block(channels, 32, 5, pool=True),  # -> 32 x H/2 x W/2: the paper's smashed data
        _conv_block(32, 64, 3, pool=True),
        _conv_block(64, 128, 3, pool=False),
        _conv_block(128, 128, 3, pool=False),
        _conv_block(128, 64, 3, pool=True),  # -> 64 x H/8 x W/8
        Block(nn.Flatten(), nn.Linear(64 * (height // 8) * (width // 8), 256), nn.ReLU(inplace=True)),
        nn.Linear(256, num_classes),
    )


alexnet.default_cut = 1
