"""Within one shard: the clients' bottom models as a per-client loop, as grouped convolutions
(nodes/grouped.py, what ClientShard runs for PSL-style methods), and as one vmapped call.

One shard step is one training step of every client of the shard: forward of its
batch, backward of the split-layer gradient the server sent, optimizer step. On
the same random inputs x (K, b, 1, 32, 32) and upstream gradients g:

  loop           each client's own model and Adam, one after another (the per-client path);
  grouped        GroupedBottoms with its CPU default of CPU_CLIENTS_PER_GROUP clients per
                 grouped model (Conv2d(G*cin, G*cout, groups=G), BatchNorm2d(G*c)), one Adam;
  grouped_all    GroupedBottoms with all K clients in one grouped model;
  vmap           torch.func.functional_call under torch.vmap over stacked parameters, one Adam
                 (benchmarks/vmap_vs_loop.py's VmapShard).

Before timing, grouped is checked against loop in float64: the largest difference of any
client's parameters after one step (printed and recorded; it is ~1e-16).
Times: the best of --repeats rounds of --steps shard steps (the ways alternate within a
round), after a warm-up, with time.perf_counter. The machine may be shared: compare the
ways within a row, not rows taken at different times.

  .venv/bin/python -m benchmarks.grouped_clients --clients 8 64 256 --model alexnet --threads 1
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch

from benchmarks.common import write_results
from benchmarks.vmap_vs_loop import LR, LoopShard, VmapShard, make_bottoms, make_inputs
from sglr_ray.nodes.grouped import CPU_CLIENTS_PER_GROUP, GroupedBottoms
from sglr_ray.nodes.models import SPLIT_MODELS


class GroupedShard:
    """The clients as GroupedBottoms sees them (clients_per_group None: the CPU default)."""

    def __init__(self, bottoms: list[torch.nn.Module], clients_per_group: int | None) -> None:
        self.group = GroupedBottoms.from_models(bottoms, "adam", LR, clients_per_group)
        self.models = [self.group.states.module(k) for k in range(len(bottoms))]  # views of the store

    def step(self, x: torch.Tensor, g: torch.Tensor) -> None:
        smashed = self.group.forward(x)
        self.group.step(smashed, g.reshape(smashed.shape))


def _loop_step(shard: LoopShard, x: torch.Tensor, g: torch.Tensor) -> None:
    shard.forward_backward(x, g)
    shard.optimizer_step()


def _vmap_step(shard: VmapShard, x: torch.Tensor, g: torch.Tensor) -> None:
    shard.forward_backward(x, g)
    shard.optimizer_step()


def grouped_vs_loop_difference(model: str, clients: int = 5, batch_size: int = 8) -> float:
    """Largest |difference| of any client parameter after one float64 step, grouped (groups of 2)
    against the loop."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        bottoms = make_bottoms(model, clients)
        x, g = make_inputs(model, clients, batch_size)
        loop, grouped = LoopShard(bottoms), GroupedShard(bottoms, clients_per_group=2)
        _loop_step(loop, x, g)
        grouped.step(x, g)
        return max(
            float((a.detach() - b.detach()).abs().max())
            for la, gr in zip(loop.models, grouped.models, strict=True)
            for a, b in zip(la.parameters(), gr.parameters(), strict=True)
        )
    finally:
        torch.set_default_dtype(before)


def time_ways(model: str, clients: int, batch_size: int, steps: int | None, repeats: int) -> dict:
    """ms per shard step of each way: the best of `repeats` rounds of `steps` steps."""
    bottoms = make_bottoms(model, clients)
    x, g = make_inputs(model, clients, batch_size)
    shards = {
        "loop": (LoopShard(bottoms), _loop_step),
        "grouped": (GroupedShard(bottoms, None), GroupedShard.step),
        "grouped_all": (GroupedShard(bottoms, clients), GroupedShard.step),
        "vmap": (VmapShard(bottoms), _vmap_step),
    }
    for shard, step in shards.values():
        step(shard, x, g)  # warm-up
    if steps is None:  # about 2 s per way per round
        started = time.perf_counter()
        shards["loop"][1](shards["loop"][0], x, g)
        steps = max(2, math.ceil(2.0 / (time.perf_counter() - started)))
    best = dict.fromkeys(shards, math.inf)
    for _ in range(repeats):
        for way, (shard, step) in shards.items():
            started = time.perf_counter()
            for _ in range(steps):
                step(shard, x, g)
            best[way] = min(best[way], (time.perf_counter() - started) / steps)
    out = {"steps": steps, **{f"{way}_ms": 1000 * s for way, s in best.items()}}
    for way in ("grouped", "grouped_all", "vmap"):
        out[f"{way}_over_loop"] = best[way] / best["loop"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[8, 64, 256], help="K, clients a shard")
    parser.add_argument("--model", nargs="+", default=["alexnet"], choices=sorted(SPLIT_MODELS))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per round (default: ~2 s)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; the best is reported")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for model in args.model:
        diff = grouped_vs_loop_difference(model, batch_size=args.batch_size)
        print(f"{model}: grouped vs loop, float64, max |parameter difference| after a step: {diff:.1e}")
        for clients in args.clients:
            timed = time_ways(model, clients, args.batch_size, args.steps, args.repeats)
            rows.append({
                "model": model, "clients": clients, "batch_size": args.batch_size, "threads": args.threads,
                "clients_per_group": CPU_CLIENTS_PER_GROUP, **timed, "f64_param_diff": f"{diff:.0e}",
            })  # fmt: skip
            print(
                f"{model} K={clients}: " + ", ".join(f"{w} {timed[f'{w}_ms']:.1f} ms" for w in
                                                     ("loop", "grouped", "grouped_all", "vmap"))
            )  # fmt: skip
    command = "  .venv/bin/python -m benchmarks.grouped_clients " + " ".join(argv or sys.argv[1:])
    write_results(
        rows, "grouped_clients",
        "Clients of one shard: loop vs grouped convolutions vs vmap, ms per shard step (shared machine)",
        command,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
