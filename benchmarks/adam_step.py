"""Adam's step: torch's default per-parameter loop against the fused kernel make_optimizer uses.

One model's parameters, one gradient, then timed steps of each implementation in the same run;
the figure is the ratio loop / fused (target: > 1, the reason make_optimizer fuses Adam), beside
the forward and backward pass of a batch of 8 for scale, and how far apart the two
implementations leave the float64 weights after a few identical steps.

  .venv/bin/python -m benchmarks.adam_step --models alexnet-paper resnet16 alexnet
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Callable

import torch

from benchmarks.common import write_results
from sglr_ray.nodes.models import declaration


def seconds_per_call(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: allocates the optimizer state
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def measure(name: str, repeats: int) -> dict:
    torch.manual_seed(0)
    model = declaration(name)((1, 32, 32), 10)
    x, y = torch.randn(8, 1, 32, 32), torch.randint(0, 10, (8,))

    def forward_backward() -> None:
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()

    forward_backward_s = seconds_per_call(forward_backward, repeats)
    step_s = {}
    for fused in (False, True):
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused)
        step_s[fused] = seconds_per_call(optimizer.step, repeats)
    return {
        "model": name,
        "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "forward_backward_s": forward_backward_s,
        "step_loop_s": step_s[False],
        "step_fused_s": step_s[True],
        "loop_over_fused": step_s[False] / step_s[True],
        "float64_max_abs_diff": float64_gap(name),
    }


def float64_gap(name: str, steps: int = 5) -> float:
    """Largest weight difference after `steps` identical float64 training steps, loop vs fused."""
    torch.manual_seed(0)
    base = declaration(name)((1, 32, 32), 10).double()
    models = [base, copy.deepcopy(base)]
    optimizers = [
        torch.optim.Adam(m.parameters(), lr=1e-3, fused=fused)
        for m, fused in zip(models, (False, True), strict=True)
    ]
    for _ in range(steps):
        x, y = torch.randn(8, 1, 32, 32, dtype=torch.float64), torch.randint(0, 10, (8,))
        for model, optimizer in zip(models, optimizers, strict=True):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    pairs = zip(models[0].parameters(), models[1].parameters(), strict=True)
    return max((a - b).abs().max().item() for a, b in pairs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["alexnet-paper", "resnet16", "alexnet"])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [measure(name, args.repeats) | {"threads": args.threads} for name in args.models]
    write_results(
        rows, "adam_step", "Adam's step, per-parameter loop against fused (seconds per call)",
        "python -m benchmarks.adam_step " + " ".join(sys.argv[1:]),
        formats={"step_loop_s": ".4f", "step_fused_s": ".4f", "forward_backward_s": ".4f",
                 "float64_max_abs_diff": ".1e"},
    )  # fmt: skip


if __name__ == "__main__":
    main()
