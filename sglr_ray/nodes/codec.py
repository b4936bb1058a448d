"""Compression of what crosses the split (--compress): smashed data up, gradients down.

SPEC section 4: fp16 halves the values; int8 sends one byte a value plus an fp32
scale and an fp32 zero point per row (a row is one sample); top-k:F keeps the
ceil(F * n) largest-magnitude values of each row's n, sent as the values and
their int32 indices. Bytes are counted as a real sender would send them
(`nbytes`); between actors the simulator moves what the receiver decodes
(`roundtrip`), which is the same tensor on both executors.

`none` returns its input untouched, so runs without compression compute
exactly what they did before this existed.
"""

from __future__ import annotations

import math

import torch

INDEX_BYTES = 4  # int32 indices of top-k
SCALE_BYTES = 8  # int8: an fp32 scale and an fp32 zero point per row


class Codec:
    """No compression: the tensor as it is."""

    name = "none"

    def roundtrip(self, tensor: torch.Tensor) -> torch.Tensor:
        """What the receiver decodes from what was sent."""
        return tensor

    def nbytes(self, tensor: torch.Tensor) -> int:
        """Bytes sent for `tensor`, whose first dimension is the rows (samples)."""
        return tensor.numel() * tensor.element_size()


class Fp16(Codec):
    name = "fp16"

    def roundtrip(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(torch.float16).to(tensor.dtype)

    def nbytes(self, tensor: torch.Tensor) -> int:
        return tensor.numel() * 2


class Int8(Codec):
    """Affine quantization per row: q = round((x - min) / scale), scale = (max - min) / 255."""

    name = "int8"

    def roundtrip(self, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.numel() == 0:
            return tensor
        rows = tensor.detach().reshape(len(tensor), -1).float()
        low, high = rows.min(dim=1, keepdim=True).values, rows.max(dim=1, keepdim=True).values
        scale = torch.where(high > low, (high - low) / 255, torch.ones_like(high))  # a constant row: exact
        q = torch.round((rows - low) / scale).clamp(0, 255)
        return (q * scale + low).reshape(tensor.shape).to(tensor.dtype)

    def nbytes(self, tensor: torch.Tensor) -> int:
        return tensor.numel() + len(tensor) * SCALE_BYTES if tensor.dim() else tensor.numel()


class TopK(Codec):
    """The ceil(fraction * n) largest-magnitude values of each row; the rest decode as zero."""

    def __init__(self, fraction: float) -> None:
        self.fraction, self.name = fraction, f"topk:{fraction:g}"

    def kept(self, row_numel: int) -> int:
        return min(row_numel, max(1, math.ceil(self.fraction * row_numel)))

    def roundtrip(self, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.numel() == 0:
            return tensor
        rows = tensor.detach().reshape(len(tensor), -1)
        index = rows.abs().topk(self.kept(rows.shape[1]), dim=1).indices
        sparse = torch.zeros_like(rows).scatter_(1, index, rows.gather(1, index))
        return sparse.reshape(tensor.shape)

    def nbytes(self, tensor: torch.Tensor) -> int:
        if tensor.numel() == 0:
            return 0
        row_numel = tensor.numel() // len(tensor)
        return len(tensor) * self.kept(row_numel) * (tensor.element_size() + INDEX_BYTES)


def parse_codec(spec: str) -> Codec:
    """--compress: none, fp16, int8 or topk:F with F in (0, 1]; ValueError says what is wrong."""
    fixed = {"none": Codec(), "fp16": Fp16(), "int8": Int8()}
    if spec in fixed:
        return fixed[spec]
    if spec.startswith("topk:"):
        try:
            fraction = float(spec.partition(":")[2])
        except ValueError as ex:
            raise ValueError(f"{spec!r}: F must be a number, as in topk:0.1") from ex
        if not 0 < fraction <= 1:
            raise ValueError(f"{spec!r}: F must be in (0, 1]")
        return TopK(fraction)
    raise ValueError(f"{spec!r} is unknown; choose none, fp16, int8 or topk:F")
