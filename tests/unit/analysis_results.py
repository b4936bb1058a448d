"""Hand-made results directories for the analysis tests, laid out as ResultsWriter lays them out.

Each runs row holds the settings of a real RunConfig with its run_key and cell_key, so the tests
exercise the keys the writer records.
"""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow as pa

from sglr_ray.config import RunConfig, config_fields
from sglr_ray.results.writer import (
    CLIENTS_SCHEMA,
    EPOCHS_SCHEMA,
    LEAKAGE_SCHEMA,
    RUNS_SCHEMA,
    write_table_atomic,
)

EPOCHS = 3


SETTINGS = {f.name for f in config_fields()}
BASE_SETTINGS = {"method": "sglr", "alpha": 0.0, "phi": 0.0, "clients": 4, "samples_per_client": 200,
                 "epochs": EPOCHS}  # fmt: skip
RESULTS = {
    "val_set_digest": "val-a", "test_set_digest": "test-a", "epochs_done": EPOCHS, "final_test_acc": 0.8,
    "wall_s": 10.0, "client_pflops_mean": 0.03, "server_pflops": 0.5, "bytes_per_client_mean": 3e6,
    "energy_source": "none", "energy_j": None, "compute_energy_model_j": 1.0, "tx_energy_model_j": 1.0,
    "status": "completed", "started_at": "2025-01-01T00:00:00+00:00", "code_version": "test",
    "restarts": 0, "resumes": 0,
}  # fmt: skip


def run_row(run_id: str, **changes) -> dict:
    """A runs row as ResultsWriter writes it: the settings of a real RunConfig (BASE_SETTINGS
    changed by the settings in `changes`) with its run_key and cell_key, then the results (RESULTS
    changed by the rest of `changes`)."""
    config = RunConfig(**(BASE_SETTINGS | {k: v for k, v in changes.items() if k in SETTINGS}))
    row = config.to_dict() | {
        "run_id": run_id, "run_key": config.run_key, "cell_key": config.cell_key,
        "server_lr": config.server_lr, "config_json": config.to_json(),
    }  # fmt: skip
    return filled(RUNS_SCHEMA, row | RESULTS | {k: v for k, v in changes.items() if k not in SETTINGS})


def filled(schema: pa.Schema, row: dict) -> dict:
    """`row` with exactly the schema's columns: the schema grows while other work lands, and a
    column this file does not know yet is left null."""
    return {name: row.get(name) for name in schema.names}


def epoch_rows(run: dict) -> list[dict]:
    """Per-epoch rows whose val_acc climbs to the run's final accuracy; 1 MB up and down per client."""
    clients, rows = run["clients"], []
    for epoch in range(run["epochs_done"]):
        acc = (run["final_test_acc"] or 0.5) - 0.02 * (run["epochs_done"] - 1 - epoch)
        rows.append({
            "run_id": run["run_id"], "epoch": epoch, "train_loss": 1.0 / (epoch + 1), "val_acc": acc,
            "test_acc": acc, "averaging_on": run["phi"] > 0, "wall_s": 1.0, "train_wall_s": 0.8,
            "eval_wall_s": 0.2, "bytes_up": clients * 1_000_000, "bytes_down": clients * 1_000_000,
            "bytes_server_sent": int(clients * 1_000_000 * (1 - run["phi"] / 2)), "comm_time_s": 0.1,
            "modelled_time_s": 0.9, "client_flops": clients * 10**13, "server_flops": 10**14,
            "energy_j": None, "energy_source": "none", "compute_energy_model_j": 1.0,
            "tx_energy_model_j": 1.0, "restarts": 0,
        })  # fmt: skip
    return [filled(EPOCHS_SCHEMA, r) for r in rows]


def client_rows(run: dict) -> list[dict]:
    rows = [
        {"run_id": run["run_id"], "epoch": e, "client_id": c, "val_acc": 0.8, "test_acc": 0.8,
         "bytes_up": 1_000_000, "bytes_down": 1_000_000, "active_steps": 25, "flops": 10**13,
         "energy_j": None, "compute_energy_model_j": 1.0, "tx_energy_model_j": 1.0}
        for e in range(run["epochs_done"]) for c in range(run["clients"])
    ]  # fmt: skip
    return [filled(CLIENTS_SCHEMA, r) for r in rows]


def leakage_row(run: dict, mse: float) -> dict:
    row = {
        "run_id": run["run_id"], "method": run["method"], "model": run["model"],
        "num_clients": run["clients"], "alpha": run["alpha"], "phi": run["phi"], "epochs": EPOCHS,
        "client_id": 0, "samples": 100, "aux_samples": 500, "decoder_epochs": 2, "mse": mse,
        "psnr": 10 * math.log10(1 / mse), "ssim": 0.8, "distance_correlation": 0.9,
    }  # fmt: skip
    return filled(LEAKAGE_SCHEMA, row)


def write_results(out: Path, runs: list[dict], leakage: list[dict] = ()) -> Path:
    """Lay out `out` as ResultsWriter does: runs/, epochs/, clients/ and (if given) leakage/."""
    for name in ("runs", "epochs", "clients"):
        (out / name).mkdir(parents=True, exist_ok=True)
    for run in runs:
        write_table_atomic([run], RUNS_SCHEMA, out / "runs" / f"{run['run_id']}.parquet")
        write_table_atomic(epoch_rows(run), EPOCHS_SCHEMA, out / "epochs" / f"{run['run_id']}.parquet")
        write_table_atomic(client_rows(run), CLIENTS_SCHEMA, out / "clients" / f"{run['run_id']}.parquet")
    if leakage:
        (out / "leakage").mkdir(exist_ok=True)
        for row in leakage:
            write_table_atomic([row], LEAKAGE_SCHEMA, out / "leakage" / f"{row['run_id']}.parquet")
    return out


def grid_runs() -> list[dict]:
    """A Table 1-2 sweep: C in {4, 10}, alpha in {0, 1}, phi in {0, 0.5}, two seeds whose accuracies
    differ by 0.02 (so each cell's std is 1.414 points), a C = 1 PSL run per seed, and one failed
    and one running run that must not count."""
    runs = []
    for clients in (4, 10):
        for alpha in (0.0, 1.0):
            for phi in (0.0, 0.5):
                for seed in (0, 1):
                    acc = 0.80 + 0.01 * (clients == 10) + 0.02 * alpha + 0.005 * (phi > 0) + 0.02 * seed
                    run_id = f"c{clients}-a{alpha:g}-p{phi:g}-s{seed}"
                    runs.append(run_row(run_id, clients=clients, alpha=alpha, phi=phi, seed=seed,
                                        final_test_acc=acc))  # fmt: skip
    runs += [run_row(f"c1-s{seed}", method="psl", clients=1, seed=seed, final_test_acc=0.7 + 0.02 * seed)
             for seed in (0, 1)]  # fmt: skip
    runs.append(run_row("failed", clients=4, final_test_acc=None, status="failed", epochs_done=1))
    runs.append(run_row("running", clients=10, final_test_acc=None, status="running", epochs_done=2))
    return runs
