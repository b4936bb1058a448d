"""Within one shard: the clients' bottom models as a Python loop against one vmapped call.

One shard step is one training step of every client of the shard: forward of
its batch, backward of the split-layer gradient the server sent, Adam step.
Two ways, on the same random inputs x (K, b, 1, 32, 32) and upstream
gradients g (K, b, 32, 16, 16):

  loop  what ClientShard does: for each client, s = bottom_i(x_i); s.backward(g_i),
        then each client's own torch.optim.Adam steps;
  vmap  the K clients' parameters (and buffers) stacked with torch.func.stack_module_state,
        torch.func.functional_call under torch.vmap over clients for the forward,
        autograd through that forward with g for all clients' gradients at once,
        then one torch.optim.Adam over the stacked parameters, one tensor per
        parameter name (the same update as K per-client Adams: Adam is elementwise).

Both ways include the Adam step in their time (it is also timed on its own:
the *_adam_ms columns); both zero gradients with set_to_none. Before timing,
the two ways are checked, for 3 clients, to give the same per-client parameter
gradients: max abs difference < 1e-5 in float64, and in float32 (the dtype
timed) < 1e-5 relative to each parameter's largest gradient: with unit-normal
g the float32 gradients are in the hundreds, and the two ways' different
summation orders leave absolute differences of about 1e-4 to 1e-2 there.
Parameters after the Adam step and buffers are compared too (printed).
Times: the best of --repeats rounds of --steps shard steps (loop and vmap
alternate in each round), after a warm-up, with time.perf_counter.

resnet16's BatchNorm layers run in training mode: their running statistics
are stacked as buffers with the parameters, so each client keeps its own,
updated in place under vmap as in the loop.

  .venv/bin/python -m benchmarks.vmap_vs_loop --clients 10 100 --model alexnet --threads 2
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, stack_module_state

from benchmarks.common import write_results
from sglr_ray.nodes.models import INPUT_SHAPE, SPLIT_MODELS, build_client_model, smashed_shape
from sglr_ray.nodes.optim import make_optimizer

GRAD_TOLERANCE = 1e-5
LR = 1e-3  # RunConfig's default client learning rate


def make_bottoms(model: str, clients: int, seed: int = 0) -> list[nn.Module]:
    """K bottom models with different weights (seed + i), so the check compares distinct clients."""
    return [build_client_model(model, seed + i, full=False) for i in range(clients)]


def make_inputs(
    model: str, clients: int, batch_size: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, g): every client's input batch and the upstream gradient at its split layer."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(clients, batch_size, *INPUT_SHAPE, generator=gen)
    g = torch.randn(clients, batch_size, *smashed_shape(model), generator=gen)
    return x, g


class LoopShard:
    """The clients as ClientShard holds them: a model and an Adam optimizer each, stepped in a loop."""

    def __init__(self, bottoms: list[nn.Module], lr: float = LR) -> None:
        self.models = [copy.deepcopy(m) for m in bottoms]
        self.optimizers = [make_optimizer(m.parameters(), "adam", lr) for m in self.models]

    def forward_backward(self, x: torch.Tensor, g: torch.Tensor) -> None:
        for model, optimizer, x_i, g_i in zip(self.models, self.optimizers, x, g, strict=True):
            optimizer.zero_grad(set_to_none=True)
            model(x_i).backward(g_i)

    def optimizer_step(self) -> None:
        for optimizer in self.optimizers:
            optimizer.step()

    def gradients(self) -> dict[str, torch.Tensor]:
        """Per-parameter-name gradients, stacked over clients: (K, *shape)."""
        return _stack_named([dict(m.named_parameters()) for m in self.models], lambda p: p.grad)

    def parameters(self) -> dict[str, torch.Tensor]:
        return _stack_named([dict(m.named_parameters()) for m in self.models], lambda p: p.detach())

    def buffers(self) -> dict[str, torch.Tensor]:
        return _stack_named([dict(m.named_buffers()) for m in self.models], lambda b: b)


def _stack_named(dicts: list[dict[str, torch.Tensor]], get: Callable) -> dict[str, torch.Tensor]:
    return {name: torch.stack([get(d[name]) for d in dicts]) for name in dicts[0]}


class VmapShard:
    """The same clients as stacked tensors: one vmapped functional_call, one Adam over the stacks."""

    def __init__(self, bottoms: list[nn.Module], lr: float = LR) -> None:
        params, buffers = stack_module_state(bottoms)  # copies; params are leaves that require grad
        self.params: dict[str, torch.Tensor] = params
        self.buffers_: dict[str, torch.Tensor] = buffers
        self.base = copy.deepcopy(bottoms[0]).to("meta")  # structure only; weights come from the stacks
        self.optimizer = make_optimizer(self.params.values(), "adam", lr)

        def one_client(p: dict, b: dict, x: torch.Tensor) -> torch.Tensor:
            return functional_call(self.base, (p, b), (x,))

        self._forward = torch.vmap(one_client, in_dims=(0, 0, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Smashed data of every client, (K, b, *smashed shape); keeps the graph for backward."""
        return self._forward(self.params, self.buffers_, x)

    def forward_backward(self, x: torch.Tensor, g: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.forward(x).backward(g)

    def optimizer_step(self) -> None:
        self.optimizer.step()

    def gradients(self) -> dict[str, torch.Tensor]:
        return {name: p.grad for name, p in self.params.items()}

    def parameters(self) -> dict[str, torch.Tensor]:
        return {name: p.detach() for name, p in self.params.items()}

    def buffers(self) -> dict[str, torch.Tensor]:
        return self.buffers_


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], relative: bool = False) -> float:
    """Max over names of max |a - b|; relative: each divided by max |a| of its name."""
    if a.keys() != b.keys():
        raise ValueError(f"different names: {sorted(a)} vs {sorted(b)}")
    diffs = []
    for k in a:
        diff = float((a[k].double() - b[k].double()).abs().max())
        diffs.append(diff / max(float(a[k].double().abs().max()), 1e-30) if relative else diff)
    return max(diffs, default=0.0)


def check_equivalence(
    model: str, clients: int, batch_size: int, seed: int = 0, dtype: torch.dtype = torch.float64
) -> dict[str, float]:
    """Max differences between loop and vmap: of gradients after one forward/backward (absolute,
    and relative to each parameter's largest gradient), then of parameters and of buffers
    (BatchNorm running statistics) after the Adam step.

    float64 shows the two compute the same thing; in float32 the gradients (hundreds, with unit
    upstream gradients summed over b x 32 x 16 x 16 positions) differ by summation-order rounding.
    """
    bottoms = [m.to(dtype) for m in make_bottoms(model, clients, seed)]
    x, g = (t.to(dtype) for t in make_inputs(model, clients, batch_size, seed))
    loop, vmapped = LoopShard(bottoms), VmapShard(bottoms)
    for shard in (loop, vmapped):
        shard.forward_backward(x, g)
    diffs = {
        "grad": max_abs_diff(loop.gradients(), vmapped.gradients()),
        "grad_relative": max_abs_diff(loop.gradients(), vmapped.gradients(), relative=True),
    }
    for shard in (loop, vmapped):
        shard.optimizer_step()
    diffs["param_after_adam"] = max_abs_diff(loop.parameters(), vmapped.parameters())
    diffs["buffer"] = max_abs_diff(loop.buffers(), vmapped.buffers())
    return diffs


def _time_steps(
    shard: LoopShard | VmapShard, x: torch.Tensor, g: torch.Tensor, steps: int
) -> tuple[float, float]:
    """(seconds in total, seconds of that in the Adam step) over `steps` shard steps."""
    total = adam = 0.0
    for _ in range(steps):
        started = time.perf_counter()
        shard.forward_backward(x, g)
        mid = time.perf_counter()
        shard.optimizer_step()
        ended = time.perf_counter()
        total, adam = total + ended - started, adam + ended - mid
    return total, adam


def time_ways(
    model: str,
    clients: int,
    batch_size: int,
    steps: int | None,
    repeats: int,
    target_s: float,
    warmup: int = 2,
) -> dict[str, float]:
    """ms per shard step (and of it, ms of Adam) for loop and vmap: best of `repeats` rounds.

    steps None: as many as take about `target_s` per way per round, judged from 3 steps after the warm-up.
    """
    bottoms = make_bottoms(model, clients)
    x, g = make_inputs(model, clients, batch_size)
    shards = {"loop": LoopShard(bottoms), "vmap": VmapShard(bottoms)}
    for shard in shards.values():
        _time_steps(shard, x, g, warmup)  # warm-up: first calls, allocator, lazy initialisation
    if steps is None:
        per_step_s = max(_time_steps(shard, x, g, 3)[0] / 3 for shard in shards.values())
        steps = max(5, math.ceil(target_s / per_step_s))
    best = {way: (math.inf, math.inf) for way in shards}
    for _ in range(repeats):
        for way, shard in shards.items():
            total, adam = _time_steps(shard, x, g, steps)
            if total < best[way][0]:
                best[way] = (total, adam)
    out = {"steps": steps}
    for way, (total, adam) in best.items():
        out[f"{way}_ms"] = 1000 * total / steps
        out[f"{way}_adam_ms"] = 1000 * adam / steps
        out[f"{way}_samples_per_s"] = clients * batch_size * steps / total
    out["vmap_over_loop_time"] = out["vmap_ms"] / out["loop_ms"]
    return out


def gradient_check(model: str, batch_size: int, clients: int = 3) -> tuple[bool, dict[str, str]]:
    """Loop against vmap before timing: float64 gradients within GRAD_TOLERANCE (absolute), float32
    within it relative to each parameter's largest gradient.

    Prints the outcome; returns (passed, the row's record of it).
    """
    f64 = check_equivalence(model, clients, batch_size, dtype=torch.float64)
    f32 = check_equivalence(model, clients, batch_size, dtype=torch.float32)
    ok = f64["grad"] < GRAD_TOLERANCE and f32["grad_relative"] < GRAD_TOLERANCE
    print(
        f"{model}, {clients} clients, loop vs vmap, max |difference| of per-client gradients: "
        f"float64 {f64['grad']:.1e}; float32 {f32['grad']:.1e} absolute, {f32['grad_relative']:.1e} "
        f"relative to the largest gradient ({'OK' if ok else 'FAILED'}: tolerance {GRAD_TOLERANCE:g}). "
        f"Parameters after the Adam step: float64 {f64['param_after_adam']:.1e}, float32 "
        f"{f32['param_after_adam']:.1e}; buffers: {max(f64['buffer'], f32['buffer']):.1e}"
    )
    # A string, as the markdown table would round the floats to 0.00; the print above has them all.
    return ok, {"grad_diff": f"f64 {f64['grad']:.1e}, f32 rel {f32['grad_relative']:.1e}"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 100], help="K, clients in the shard")
    parser.add_argument("--model", nargs="+", default=["alexnet"], choices=sorted(SPLIT_MODELS))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--steps", type=int, default=None, help="timed shard steps per round (default: ~--target-s)"
    )
    parser.add_argument(
        "--target-s", type=float, default=2.0, help="seconds per way per round when no --steps"
    )
    parser.add_argument("--warmup", type=int, default=2, help="untimed shard steps per way first")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; the best is reported")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    rows = []
    for model in args.model:
        ok, check = gradient_check(model, args.batch_size)
        if not ok:
            print(f"{model}: skipped, vmap's gradients are not the loop's")
            continue
        for clients in args.clients:
            timed = time_ways(
                model, clients, args.batch_size, args.steps, args.repeats, args.target_s, args.warmup
            )
            rows.append({
                "model": model, "clients": clients, "batch_size": args.batch_size, "threads": threads,
                **timed, **check,
            })  # fmt: skip
            print(
                f"{model} K={clients}: loop {timed['loop_ms']:.2f} ms, vmap {timed['vmap_ms']:.2f} ms "
                f"per shard step; vmap/loop {timed['vmap_over_loop_time']:.2f}"
            )
    if not rows:
        return 1
    command = "  .venv/bin/python -m benchmarks.vmap_vs_loop " + " ".join(argv or sys.argv[1:])
    write_results(
        rows, "vmap_vs_loop", "Clients of one shard: per-client loop vs vmap, time per shard step", command
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
