"""The decoder that inverts smashed data back to model inputs: the honest-but-curious server's
(measure/leakage.py) and the FSHA server's (privacy/attacks/fsha.py), one architecture, so the
two attacks differ only in how the client's model was trained. Here, below both, because
measure/ sits above config and privacy/ below it."""

from __future__ import annotations

import math

from torch import nn


def build_decoder(
    smashed_shape: tuple[int, ...] = (32, 16, 16), input_shape: tuple[int, ...] = (1, 32, 32)
) -> nn.Module:
    """Decoder: smashed data (n, *smashed_shape) -> inputs (n, *input_shape) in [0, 1].

    Image-like smashed data (C, H, W) whose size divides the input's by an integer r
    gets convolutions at its own resolution and a sub-pixel upsampling by r (on CPU
    several times faster than a transposed convolution); for the paper's 32x16x16
    cut of 1x32x32 images that is 14,452 parameters. Anything else (a flat feature
    vector, a tabular input) gets two fully connected layers. Deliberately small:
    cheap to train on thousands of samples in seconds on a couple of CPU cores. A
    stronger attacker could only leak more, so the numbers are a lower bound.
    """
    if len(smashed_shape) == 3 and len(input_shape) == 3:
        (c_s, h_s, w_s), (c_in, h_in, w_in) = smashed_shape, input_shape
        r = h_in // h_s
        if r >= 1 and h_in == r * h_s and w_in == r * w_s:
            return nn.Sequential(
                nn.Conv2d(c_s, 32, kernel_size=3, padding=1),
                nn.ReLU(inplace=True),
                nn.Conv2d(32, 16, kernel_size=3, padding=1),
                nn.ReLU(inplace=True),
                nn.Conv2d(16, c_in * r * r, kernel_size=3, padding=1),  # c_in * r * r -> r x r pixels
                nn.PixelShuffle(r),
                nn.Sigmoid(),  # inputs live in [0, 1] once mapped there (InputCodec.to_unit_range)
            )
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(math.prod(smashed_shape), 256),
        nn.ReLU(inplace=True),
        nn.Linear(256, math.prod(input_shape)),
        nn.Unflatten(1, tuple(input_shape)),
        nn.Sigmoid(),
    )
