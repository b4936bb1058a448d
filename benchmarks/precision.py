"""fp32 against bf16 autocast: training samples/s and accuracy, both models, in one run.

The same short training (PSL, 5 clients, Fashion-MNIST when present) in each
precision; samples/s is over the training epochs only, accuracy on a fixed 2000
of the test split (--test-samples) after them. The ratio bf16/fp32 is the figure (target: >= 1.3 on a
CPU with bf16 matrix units, accuracy within 1.5 points). Which CPU features
the machine has is recorded beside the numbers: without AMX or AVX512-BF16,
bf16 runs through slow emulation paths.

  .venv/bin/python -m benchmarks.precision --epochs 1 --samples-per-client 100 --test-samples 500
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch

from benchmarks.common import write_results
from sglr_ray.config import RunConfig
from sglr_ray.data import DatasetNotFoundError, find_fashion_mnist
from sglr_ray.execution.driver import run_experiment


def cpu_bf16_features() -> str:
    """The CPU's bf16-relevant flags (x86 /proc/cpuinfo), or 'unknown'."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags")[1].split("\n")[0].split()
    except (OSError, IndexError):
        return "unknown"
    found = [f for f in ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f") if f in flags]
    return " ".join(found) or "none of amx_bf16, avx512_bf16, avx512f"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--samples-per-client", type=int, default=1000)
    parser.add_argument("--models", nargs="+", default=["alexnet", "resnet16"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--test-samples", type=int, default=2000)
    args = parser.parse_args(argv)
    try:
        find_fashion_mnist()
        dataset = "fashion-mnist"
    except DatasetNotFoundError:
        dataset = "synthetic"
    rows = []
    for model in args.models:
        for precision in ("fp32", "bf16"):
            config = RunConfig(
                method="psl", model=model, dataset=dataset, clients=5, epochs=args.epochs,
                samples_per_client=args.samples_per_client, precision=precision, val_samples=500,
                test_samples=args.test_samples,
                torch_threads=args.threads, checkpoint_every=0, out="/tmp/sglr-precision-bench",
            )  # fmt: skip
            outcome = run_experiment(config)
            train_s = sum(e.train_wall_s for e in outcome.epochs)
            samples = config.epochs * config.steps_per_epoch * config.batch_size * config.clients
            rows.append({
                "model": model, "precision": precision, "samples_per_s": samples / train_s,
                "test_acc_%": 100 * outcome.final_test_acc, "train_s": train_s,
            })  # fmt: skip
            print(rows[-1], flush=True)
    for row in rows:
        fp32 = next(r for r in rows if r["model"] == row["model"] and r["precision"] == "fp32")
        row["speed_vs_fp32"] = row["samples_per_s"] / fp32["samples_per_s"]
        row["acc_minus_fp32"] = row["test_acc_%"] - fp32["test_acc_%"]
    title = (
        f"Precision: fp32 vs bf16 autocast ({dataset}, PSL, 5 clients, {args.epochs} epochs, "
        f"{args.threads} torch thread(s); torch {torch.__version__}; {platform.machine()}; "
        f"CPU bf16 features: {cpu_bf16_features()})"
    )
    command = "python -m benchmarks.precision " + " ".join(argv or sys.argv[1:])
    write_results(rows, "precision", title, command)


if __name__ == "__main__":
    main()
