"""GPU check (issue 27 item 3): one table in at most 8 minutes on one GPU, written to
results/benchmarks/gpu.md (and gpu.parquet) with the device named.

Parts, in order, each a function with its own time budget (seconds, BUDGETS_S): a part that
cannot start with its budget left before the 8-minute deadline is skipped and says so; a part
that overran its budget is marked. Every part is a real short run of this project's code:

  smoke        PSL, AlexNet, 5 clients x 200 samples, 1 epoch, in process, --device cuda:
               does a CUDA run train (test accuracy above chance)?
  c100-fp32    C = 100 clients x 100 samples on the Ray executor, 4 shards of 25 sharing the one
  c100-bf16    GPU (--gpus-per-client 0.008: 0.2 GPU a shard; --server-gpus 0.2), fp32 and bf16:
               samples/s against this machine's CPU figure and GPU memory per client
  c100-local   the same C = 100 epoch in process (one process, the GPU unshared): Ray against it
  loop-100     one shard step of 100 AlexNet bottoms on the GPU, grouped convolutions
               (nodes/grouped.py, what a shard runs on CUDA: all K in one group) against a
               per-client loop; the grouped path's aim is at least 3x at C = 100
  table2-c20   one Table 2 point, ResNet-16, SGLR (alpha 0.5, phi 0.5), C = 20 x 1000 samples:
               seconds per epoch (train + evaluation), in process

The CPU reference is results/benchmarks/precision.parquet (PSL, 5 clients, one torch thread,
fp32 and bf16, per model), as committed; where that file is missing it is measured here in a
short CPU run. Where torch sees no CUDA device the script says so in one line and exits 0.

  .venv/bin/python -m benchmarks.gpu_check     (or: .venv/bin/python benchmarks/gpu_check.py)
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch

if __package__ in (None, ""):  # run as a file (python benchmarks/gpu_check.py): find the repo's packages
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import OUT_DIR, PeakBytes, write_results
from benchmarks.vmap_vs_loop import LR, make_bottoms, make_inputs
from sglr_ray.config import RunConfig
from sglr_ray.execution.driver import run_experiment
from sglr_ray.nodes.grouped import GroupedBottoms
from sglr_ray.nodes.optim import make_optimizer

TOTAL_BUDGET_S = 480.0  # the 8 minutes on one GPU
BUDGETS_S = {
    "smoke": 45,
    "c100-fp32": 90,
    "c100-bf16": 90,
    "c100-local": 75,
    "loop-100": 40,
    "table2-c20": 110,
}
CPU_REFERENCE = OUT_DIR / "precision.parquet"
MB = 2**20
Row = dict[str, object]


def no_gpu_line() -> str | None:
    """The one line printed where no GPU can be used, else None."""
    if torch.cuda.is_available():
        return None
    return "gpu_check: no CUDA device here (torch.cuda.is_available() is False); nothing measured."


def base_config(out: Path, **changes: object) -> RunConfig:
    """A short run's settings: Fashion-MNIST, small validation and test subsets, results under `out`."""
    settings = {
        "method": "psl", "model": "alexnet", "clients": 5, "samples_per_client": 200, "batch_size": 8,
        "epochs": 1, "val_samples": 500, "test_samples": 1000, "seed": 0, "out": str(out),
        "device": "cuda", "torch_threads": 1,
    }  # fmt: skip
    return RunConfig(**(settings | changes))


def timed_run(config: RunConfig) -> tuple[dict, float]:
    """Run `config`; return (its figures, peak GPU bytes in use on the device during the run,
    over every process: Ray's actors included, the driver's CUDA context excluded)."""
    free, total = torch.cuda.mem_get_info()
    baseline = total - free
    with PeakBytes(lambda: total - torch.cuda.mem_get_info()[0], interval_s=0.2) as peak:
        outcome = run_experiment(config)
    epoch = outcome.epochs[-1]
    samples = config.clients * config.samples_per_client
    figures = {
        "samples_per_s": samples / epoch.train_wall_s, "epoch_s": epoch.train_wall_s + epoch.eval_wall_s,
        "test_acc_%": 100 * outcome.final_test_acc,
    }  # fmt: skip
    return figures, max(0.0, peak.peak_bytes - baseline)


def cpu_samples_per_s(model: str, precision: str, out: Path) -> tuple[float, str]:
    """This machine's CPU figure (samples/s, PSL, 5 clients, one thread) and where it came from."""
    if CPU_REFERENCE.exists():
        table = pd.read_parquet(CPU_REFERENCE)
        row = table[(table.model == model) & (table.precision == precision)]
        if len(row):
            return float(row.samples_per_s.iloc[0]), f"{CPU_REFERENCE} ({model}, {precision})"
    config = base_config(out / "cpu", model=model, precision=precision, device="cpu", samples_per_client=100)
    figures, _ = timed_run_cpu(config)
    return figures["samples_per_s"], f"measured here ({model}, {precision}, 5 x 100 samples, CPU)"


def timed_run_cpu(config: RunConfig) -> tuple[dict, float]:
    outcome = run_experiment(config)
    epoch = outcome.epochs[-1]
    return {"samples_per_s": config.clients * config.samples_per_client / epoch.train_wall_s}, 0.0


# ---------------------------------------------------------------- the parts


def smoke(out: Path) -> Row:
    figures, peak = timed_run(base_config(out / "smoke"))
    ok = figures["test_acc_%"] > 10.0  # ten classes: chance is 10%
    return {**figures, "gpu_mb_per_client": peak / MB / 5, "note": "trains" if ok else "does NOT train"}


def clients_100(out: Path, precision: str, executor: str = "ray") -> Row:
    ray_gpus = {"gpus_per_client": 0.008, "server_gpus": 0.2, "clients_per_actor": 25}
    config = base_config(
        out / f"c100-{precision}-{executor}", clients=100, samples_per_client=100, precision=precision,
        executor=executor, **(ray_gpus if executor == "ray" else {}),
    )  # fmt: skip
    figures, peak = timed_run(config)
    cpu, source = cpu_samples_per_s("alexnet", precision, out)
    return {
        **figures, "vs_cpu": figures["samples_per_s"] / cpu, "gpu_mb_per_client": peak / MB / 100,
        "note": f"CPU: {cpu:.0f} samples/s from {source}",
    }  # fmt: skip


def c100_local(out: Path, ray_row: Row | None) -> Row:
    row = clients_100(out, "fp32", executor="local")
    if ray_row and "samples_per_s" in ray_row:
        row["note"] = f"Ray (c100-fp32) / in process: {ray_row['samples_per_s'] / row['samples_per_s']:.2f}"
    return row


def loop_against_grouped(out: Path, clients: int = 100, steps: int = 20) -> Row:
    """ms per shard step of `clients` AlexNet bottoms on the GPU: a per-client loop, and one
    GroupedBottoms of all of them (the CUDA default)."""
    device = torch.device("cuda")
    x, g = (t.to(device) for t in make_inputs("alexnet", clients, 8))
    loop_models = [m.to(device) for m in make_bottoms("alexnet", clients)]
    loop_opts = [make_optimizer(m.parameters(), "adam", LR) for m in loop_models]
    grouped_models = [m.to(device) for m in make_bottoms("alexnet", clients)]
    group = GroupedBottoms.from_models(grouped_models, "adam", LR)

    def loop_step() -> None:
        for model, opt, x_i, g_i in zip(loop_models, loop_opts, x, g, strict=True):
            opt.zero_grad(set_to_none=True)
            model(x_i).backward(g_i)
            opt.step()

    def grouped_step() -> None:
        smashed = group.forward(x)
        group.step(smashed, g.reshape(smashed.shape))

    loop_ms, grouped_ms = (_cuda_ms(step, steps) for step in (loop_step, grouped_step))
    aim = "meets" if loop_ms / grouped_ms >= 3 else "misses"
    return {"loop_ms": loop_ms, "grouped_ms": grouped_ms, "vs_loop": loop_ms / grouped_ms,
            "note": f"{aim} the 3x aim"}  # fmt: skip


def _cuda_ms(step: Callable[[], None], steps: int) -> float:
    step()  # warm-up: kernels chosen, optimizer state made
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - started) / steps


def table2_point(out: Path) -> Row:
    config = base_config(
        out / "table2", method="sglr", model="resnet16", clients=20, samples_per_client=1000,
        alpha=0.5, phi=0.5, val_samples=2000, test_samples=2000,
    )  # fmt: skip
    figures, peak = timed_run(config)
    note = f"20 epochs (the paper setting's budget): about {20 * figures['epoch_s'] / 60:.1f} min"
    return {**figures, "gpu_mb_per_client": peak / MB / 20, "note": note}


# ---------------------------------------------------------------- the harness


def run_parts(out: Path, total_budget_s: float = TOTAL_BUDGET_S) -> list[Row]:
    """Every part in order within `total_budget_s`: a row each (skipped parts included)."""
    done: dict[str, Row] = {}
    parts: dict[str, Callable[[], Row]] = {
        "smoke": lambda: smoke(out),
        "c100-fp32": lambda: clients_100(out, "fp32"),
        "c100-bf16": lambda: clients_100(out, "bf16"),
        "c100-local": lambda: c100_local(out, done.get("c100-fp32")),
        "loop-100": lambda: loop_against_grouped(out),
        "table2-c20": lambda: table2_point(out),
    }
    deadline = time.monotonic() + total_budget_s
    for name, part in parts.items():
        budget = BUDGETS_S[name]
        if time.monotonic() + budget > deadline:
            done[name] = {"note": "skipped: not enough of the 8 minutes left"}
            continue
        started = time.monotonic()
        try:
            row = part()
        except Exception as ex:  # a failed part is a result: the table says why
            row = {"note": f"failed: {type(ex).__name__}: {str(ex)[:120]}"}
        wall = time.monotonic() - started
        over = " (over its budget)" if wall > budget else ""
        done[name] = {**row, "wall_s": wall, "budget_s": budget, "note": str(row.get("note", "")) + over}
    return [{"part": name, **row} for name, row in done.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/sglr-gpu-check"), help="runs' results")
    parser.add_argument("--budget-s", type=float, default=TOTAL_BUDGET_S, help="the whole check's limit")
    args = parser.parse_args(argv)
    line = no_gpu_line()
    if line is not None:
        print(line)
        return 0
    rows = run_parts(args.scratch, args.budget_s)
    device = torch.cuda.get_device_name(0)
    title = f"GPU check on {device} (torch {torch.__version__}; issue 27 item 3)"
    command = "  .venv/bin/python -m benchmarks.gpu_check " + " ".join(argv or sys.argv[1:])
    formats = {"samples_per_s": ".0f", "vs_cpu": ".2f", "vs_loop": ".2f", "gpu_mb_per_client": ".1f"}
    write_results(rows, "gpu", title, command, formats={k: v for k, v in formats.items() if _has(rows, k)})
    return 0


def _has(rows: list[Row], column: str) -> bool:
    return any(column in row for row in rows)


if __name__ == "__main__":
    sys.exit(main())
