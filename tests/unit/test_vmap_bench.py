"""The claim benchmarks/vmap_vs_loop.py relies on: vmap over stacked clients computes the loop's gradients."""

from __future__ import annotations

import pytest
import torch

from benchmarks.vmap_vs_loop import (
    GRAD_TOLERANCE,
    LoopShard,
    VmapShard,
    check_equivalence,
    make_bottoms,
    make_inputs,
)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_vmap_gradients_equal_loop_gradients_for_three_alexnet_clients(dtype):
    diffs = check_equivalence("alexnet", clients=3, batch_size=8, dtype=dtype)
    # float64: equal outright; float32: equal up to summation-order rounding of gradients in the hundreds.
    assert diffs["grad" if dtype == torch.float64 else "grad_relative"] < GRAD_TOLERANCE
    assert diffs["param_after_adam"] < 1e-8  # Adam over the stacks is per-client Adam
    assert diffs["buffer"] == 0.0


def test_the_check_tells_clients_apart():
    # Control: the comparison is per client, so giving the clients each other's gradients shows up.
    bottoms = make_bottoms("alexnet", 3)
    x, g = make_inputs("alexnet", 3, batch_size=8)
    loop, vmapped = LoopShard(bottoms), VmapShard(bottoms)
    loop.forward_backward(x, g)
    vmapped.forward_backward(x, g.roll(1, dims=0))
    (name, grad), *_ = loop.gradients().items()
    assert (grad - vmapped.gradients()[name]).abs().max() > 1.0
