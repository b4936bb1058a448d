"""Peer benchmark: one FedAvg round in Flower's simulation against sglr-ray `--method fl`.

Same work on both sides: sglr-ray's narrow AlexNet (the whole model, bottom + top,
from the same initial weights), the same IID Fashion-MNIST partitions (built by
sglr_ray.data and handed to Flower as an .npz), Adam 1e-3 afresh each round, batch 8,
one local epoch, every client in the round, one round; each client visits its
partition in the same order, so the mean round-1 training losses agree.

Sides, each run as its own process and measured from outside:

  flower   benchmarks/flower_side.py under benchmarks/.flower-venv (flwr 1.42 with its
           own Ray 2.55; `make flower-venv`), one CPU per ClientApp actor
  ray      `python -m sglr_ray run --method fl ... --executor ray`, defaults otherwise
  local    the same command with `--executor local` (one process, no Ray)

samples/s = samples trained / training time: Flower's round timed inside its strategy
(configuring the round to the end of aggregation); sglr-ray's `train_wall_s` of the
epoch (training and FedAvg). Neither includes start-up or evaluation (sglr-ray scores
a cheap --val-samples/--test-samples 200). peak_GiB: the largest resident memory (RSS)
of the side's whole process tree (driver, Ray's GCS, raylet and workers), summed over
processes and sampled every 0.25 s with psutil; peak_pss_GiB the same with shared
pages split between the processes that map them (PSS: what the tree occupies; RSS
counts torch's libraries once per process), sampled every 2 s. At the PSS peak the tree's RSS is also
split by kind (/proc/<pid>/status): anonymous (what the processes allocated), file-backed (resident
pages of mapped libraries, which RSS counts once per process) and shared memory (Ray's object
store); largest_file_MiB is the most file-backed RSS of one process. The sglr-ray command's peak
includes its end-of-epoch checkpoint.

  make flower-venv
  .venv/bin/python -m benchmarks.flower_peer                     # 100x500 and 1000x50
  .venv/bin/python -m benchmarks.flower_peer --sizes 100x500 --sides ray local
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import ray

from benchmarks.common import write_results
from sglr_ray.config import RunConfig
from sglr_ray.data import prepare_data

GIB = 2**30
REPO = Path(__file__).resolve().parent.parent
FLOWER_PYTHON = REPO / "benchmarks/.flower-venv/bin/python"
SIDES = ("flower", "ray", "local")
SAMPLE_INTERVAL_S = 0.25  # RSS; PSS every PSS_EVERY samples (reading it walks a process's page tables)
PSS_EVERY = 8


def peer_config(clients: int, samples: int, seed: int) -> RunConfig:
    """The sglr-ray run both sides train: FL, the defaults, and what the comparison fixes."""
    return RunConfig(
        method="fl", model="alexnet", dataset="fashion-mnist", clients=clients, samples_per_client=samples,
        epochs=1, batch_size=8, lr=1e-3, optimizer="adam", val_samples=200, test_samples=200, seed=seed,
    )  # fmt: skip


def sglr_command(config: RunConfig, executor: str, out: Path) -> list[str]:
    flags = {
        "method": config.method, "model": config.model, "dataset": config.dataset,
        "clients": config.clients, "samples-per-client": config.samples_per_client, "epochs": 1,
        "batch-size": config.batch_size, "lr": config.lr, "optimizer": config.optimizer,
        "val-samples": config.val_samples, "test-samples": config.test_samples, "seed": config.seed,
        "executor": executor, "out": out, "run-id": f"peer-{executor}",
    }  # fmt: skip
    return [sys.executable, "-m", "sglr_ray", "run", *(f"--{k}={v}" for k, v in flags.items())]


def write_partitions(config: RunConfig, path: Path) -> None:
    """The clients' partitions as sglr_ray.data cuts them, for Flower's side."""
    data = prepare_data(config)
    settings = {"seed": config.seed, "lr": config.lr, "batch_size": config.batch_size}
    np.savez(
        path,
        images=np.stack([p.images for p in data.partitions]),
        labels=np.stack([p.labels for p in data.partitions]),
        settings=json.dumps(settings),
    )


def status_kib(pid: int) -> dict[str, int]:
    """RssAnon, RssFile and RssShmem of a process in KiB (/proc/<pid>/status, cheap to read)."""
    with open(f"/proc/{pid}/status") as status:
        return {k: int(v.split()[0]) for k, _, v in (line.partition(":") for line in status)
                if k in ("RssAnon", "RssFile", "RssShmem")}  # fmt: skip


def tree_memory(root: psutil.Process, pss: bool) -> dict[str, int]:
    """Memory of `root` and all its descendants (Ray's GCS, raylet and workers are), summed,
    in bytes: `rss`; with `pss` also `pss` and RSS split into `anon` (private memory the
    processes allocated), `file` (pages of mapped files: libraries) and `shmem` (Ray's
    object store), and `largest_file` (the most file-backed RSS one process holds).

    RSS counts a page shared by several processes (torch's libraries, Ray's object store)
    once per process; PSS splits it between them, so its sum is what the tree occupies.
    """
    total = dict.fromkeys(("rss", "pss", "anon", "file", "shmem", "largest_file"), 0)
    for proc in [root, *root.children(recursive=True)]:
        try:
            total["rss"] += proc.memory_info().rss
            if pss:
                total["pss"] += proc.memory_full_info().pss
                kib = status_kib(proc.pid)
                total["anon"] += kib["RssAnon"] * 1024
                total["file"] += kib["RssFile"] * 1024
                total["shmem"] += kib["RssShmem"] * 1024
                total["largest_file"] = max(total["largest_file"], kib["RssFile"] * 1024)
        except (psutil.Error, OSError, KeyError):  # gone between listing and reading
            continue
    return total


def run_measured(command: list[str], log_path: Path, env: dict[str, str]) -> dict:
    """Run `command`, sampling its process tree's memory: exit code, peak RSS, peak PSS (with
    RSS split by kind at that moment), wall s."""
    started, peak_rss, at_peak_pss, samples = time.perf_counter(), 0, {"pss": 0}, 0
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        root = psutil.Process(proc.pid)
        while proc.poll() is None:
            with_pss = samples % PSS_EVERY == 0
            memory = tree_memory(root, pss=with_pss)
            peak_rss = max(peak_rss, memory["rss"])
            if with_pss and memory["pss"] > at_peak_pss["pss"]:
                at_peak_pss = memory
            samples += 1
            time.sleep(SAMPLE_INTERVAL_S)
    breakdown = {
        f"{kind}_at_pss_peak_GiB": at_peak_pss.get(kind, 0) / GIB for kind in ("anon", "file", "shmem")
    }
    return {"code": proc.returncode, "peak_GiB": peak_rss / GIB, "peak_pss_GiB": at_peak_pss["pss"] / GIB,
            **breakdown, "largest_file_MiB": at_peak_pss.get("largest_file", 0) / 2**20,
            "wall_s": time.perf_counter() - started}  # fmt: skip


def failure(side: str, code: int, log_path: Path) -> dict:
    tail = log_path.read_text().strip().splitlines()[-5:]
    print(f"{side} failed (exit {code}); last lines of {log_path}:\n  " + "\n  ".join(tail), file=sys.stderr)
    return {"status": f"failed (exit {code})", "error": tail[-1] if tail else ""}


def measure_flower(config: RunConfig, scratch: Path, cpus_per_client: float) -> dict:
    if not FLOWER_PYTHON.exists():
        return {"status": "not run", "error": f"no {FLOWER_PYTHON.relative_to(REPO)}: run `make flower-venv`"}
    data, out, log = scratch / "partitions.npz", scratch / "flower.json", scratch / "flower.log"
    write_partitions(config, data)
    command = [str(FLOWER_PYTHON), "benchmarks/flower_side.py", f"--data={data}", f"--out={out}",
               f"--cpus-per-client={cpus_per_client}"]  # fmt: skip
    env = os.environ | {"PYTHONPATH": str(REPO)}  # for sglr_ray's model and batch helpers only
    measured = run_measured(command, log, env)
    code = measured.pop("code")
    if code != 0 or not out.exists():
        return failure("flower", code, log) | measured
    result = json.loads(out.read_text())
    return measured | {
        "status": "ok", "version": f"flwr {result['flwr_version']}, ray {result['ray_version']}",
        "train_s": result["train_s"], "train_loss": result["train_loss"],
    }  # fmt: skip


def measure_sglr(config: RunConfig, executor: str, scratch: Path) -> dict:
    out, log = scratch / f"sglr-{executor}", scratch / f"sglr-{executor}.log"
    command = sglr_command(config, executor, out)
    measured = run_measured(command, log, dict(os.environ))
    code = measured.pop("code")
    if code != 0:
        return failure(executor, code, log) | measured
    epoch = pd.read_parquet(out / "epochs").iloc[0]
    runs = pd.read_parquet(out / "runs").iloc[0]
    return measured | {
        "status": "ok", "version": f"sglr-ray, ray {ray.__version__}" if executor == "ray" else "sglr-ray",
        "train_s": float(epoch.train_wall_s), "train_loss": float(epoch.train_loss),
        "clients_per_actor": int(runs.clients_per_actor),
    }  # fmt: skip


ROW_DEFAULTS = {
    "status": "", "samples_per_s": None, "peak_GiB": None, "peak_pss_GiB": None, "anon_at_pss_peak_GiB": None,
    "file_at_pss_peak_GiB": None, "shmem_at_pss_peak_GiB": None, "largest_file_MiB": None, "train_loss": None,
    "train_s": None,
    "wall_s": None, "clients_per_actor": None, "version": "", "error": "",
}  # fmt: skip


def measure(side: str, clients: int, samples: int, args: argparse.Namespace) -> dict:
    config = peer_config(clients, samples, args.seed)
    with tempfile.TemporaryDirectory(prefix="flower-peer-") as scratch:
        if side == "flower":
            row = measure_flower(config, Path(scratch), args.flower_cpus_per_client)
        else:
            row = measure_sglr(config, side, Path(scratch))
    trained = clients * (samples // config.batch_size) * config.batch_size
    row = {"side": side, "clients": clients, "samples_per_client": samples} | ROW_DEFAULTS | row
    if row["train_s"]:
        row["samples_per_s"] = trained / row["train_s"]
    print(json.dumps(row), flush=True)
    return row


def parse_size(text: str) -> tuple[int, int]:
    clients, _, samples = text.partition("x")
    return int(clients), int(samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["100x500", "1000x50"], help="CLIENTSxSAMPLES")
    parser.add_argument("--sides", nargs="+", default=list(SIDES), choices=SIDES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--flower-cpus-per-client", type=float, default=1.0,
        help="Ray CPUs per Flower ClientApp actor (Flower's default, 2, runs one actor on 2 cores)",
    )  # fmt: skip
    parser.add_argument("--name", default="flower_peer", help="results/benchmarks/<name>.md and .parquet")
    args = parser.parse_args(argv)
    rows = [measure(side, *parse_size(size), args) for size in args.sizes for side in args.sides]
    for row in rows:  # throughput relative to Flower's at the same size
        flower = next((r for r in rows if r["side"] == "flower" and r["clients"] == row["clients"]), None)
        ok = flower and flower["samples_per_s"] and row["samples_per_s"]
        row["over_flower"] = row["samples_per_s"] / flower["samples_per_s"] if ok else None
    load = psutil.getloadavg()[0]
    title = (
        f"One FedAvg round: Flower's simulation against sglr-ray --method fl ({psutil.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / GIB:.0f} GiB; load average {load:.1f} at the end)"
    )
    command = "  make flower-venv\n  .venv/bin/python -m benchmarks.flower_peer " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    write_results(rows, args.name, title, command, formats={"train_loss": ".5f"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
