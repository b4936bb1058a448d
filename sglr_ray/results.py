"""The one writer of results: three Parquet tables per run, rewritten atomically.

Layout under the output directory:
  runs/<run_id>.parquet     one row: the configuration, status and final figures
  epochs/<run_id>.parquet   one row per epoch: loss, accuracy, bytes, wall time
  clients/<run_id>.parquet  one row per client per epoch

`pd.read_parquet("<out>/epochs")` loads every run at once. Each file is
written to a hidden temporary name and renamed into place, so a reader (or a
crash) never sees half a table; pyarrow skips the dot-files when it reads a
directory.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from pathlib import Path
from statistics import fmean
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from sglr_ray import energy
from sglr_ray.atomic import atomic_path
from sglr_ray.comm_model import comm_time_s
from sglr_ray.config import ConfigError, RunConfig
from sglr_ray.version import code_version

if TYPE_CHECKING:
    from sglr_ray.driver import EpochResult

RUNS_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("method", pa.string()), ("model", pa.string()),
    ("dataset", pa.string()), ("partition", pa.string()), ("num_clients", pa.int64()),
    ("alpha", pa.float64()), ("phi", pa.float64()), ("phase", pa.string()), ("local_epochs", pa.int64()),
    ("batch_size", pa.int64()), ("samples_per_client", pa.int64()), ("epochs", pa.int64()),
    ("seed", pa.int64()), ("lr", pa.float64()), ("server_lr", pa.float64()),
    ("optimizer", pa.string()), ("executor", pa.string()), ("clients_per_actor", pa.int64()),
    ("epochs_done", pa.int64()), ("final_test_acc", pa.float64()), ("wall_s", pa.float64()),
    ("client_pflops_mean", pa.float64()), ("server_pflops", pa.float64()),
    ("bytes_per_client_mean", pa.float64()), ("energy_source", pa.string()), ("energy_j", pa.float64()),
    ("compute_energy_model_j", pa.float64()), ("tx_energy_model_j", pa.float64()),
    ("restarts", pa.int64()), ("resumes", pa.int64()),
    ("status", pa.string()), ("started_at", pa.string()), ("code_version", pa.string()),
    ("config_json", pa.string()),
])  # fmt: skip
EPOCHS_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("epoch", pa.int64()), ("train_loss", pa.float64()),
    ("val_acc", pa.float64()), ("test_acc", pa.float64()), ("averaging_on", pa.bool_()),
    ("wall_s", pa.float64()), ("train_wall_s", pa.float64()), ("eval_wall_s", pa.float64()),
    ("bytes_up", pa.int64()), ("bytes_down", pa.int64()), ("bytes_server_sent", pa.int64()),
    ("comm_time_s", pa.float64()), ("modelled_time_s", pa.float64()),
    ("client_flops", pa.int64()), ("server_flops", pa.int64()),
    ("energy_j", pa.float64()), ("energy_source", pa.string()),
    ("compute_energy_model_j", pa.float64()), ("tx_energy_model_j", pa.float64()),
    ("restarts", pa.int64()),
])  # fmt: skip
CLIENTS_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("epoch", pa.int64()), ("client_id", pa.int64()),
    ("val_acc", pa.float64()), ("test_acc", pa.float64()), ("bytes_up", pa.int64()),
    ("bytes_down", pa.int64()), ("active_steps", pa.int64()), ("flops", pa.int64()),
    ("energy_j", pa.float64()), ("compute_energy_model_j", pa.float64()),
    ("tx_energy_model_j", pa.float64()),
])  # fmt: skip
LEAKAGE_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("method", pa.string()), ("model", pa.string()), ("num_clients", pa.int64()),
    ("alpha", pa.float64()), ("phi", pa.float64()), ("epochs", pa.int64()), ("client_id", pa.int64()),
    ("samples", pa.int64()), ("aux_samples", pa.int64()), ("decoder_epochs", pa.int64()),
    ("mse", pa.float64()), ("psnr", pa.float64()), ("ssim", pa.float64()),
    ("distance_correlation", pa.float64()),
])  # fmt: skip
TABLES = {"runs": RUNS_SCHEMA, "epochs": EPOCHS_SCHEMA, "clients": CLIENTS_SCHEMA}


def make_run_id(config: RunConfig) -> str:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{config.method}-{config.model}-c{config.clients}-s{config.seed}-{stamp}-{secrets.token_hex(2)}"


def write_table_atomic(rows: list[dict[str, Any]], schema: pa.Schema | None, path: Path) -> None:
    """Write `rows` to `path` as Parquet via a temporary file and a rename (schema None: inferred)."""
    table = pa.Table.from_pylist(rows, schema=schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_run_settings(out: str, run_id: str) -> dict[str, Any]:
    """The settings a recorded run was started with (for --resume), checked to be resumable."""
    path = Path(out) / "runs" / f"{run_id}.parquet"
    if not path.is_file():
        raise ConfigError(f"--resume {str(Path(out) / run_id)!r}: no run recorded at {str(path)!r}")
    (row,) = pq.read_table(path, columns=["status", "config_json"]).to_pylist()
    if row["status"] == "completed":
        raise ConfigError(f"--resume {str(Path(out) / run_id)!r}: the run has already completed")
    return json.loads(row["config_json"])


class ResultsWriter:
    def __init__(self, out: str, run_id: str, config: RunConfig, dataset: str, energy_source: str) -> None:
        self.run_id = run_id
        self.config = config
        self.paths = {name: str(Path(out) / name / f"{run_id}.parquet") for name in TABLES}
        for path in self.paths.values():
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.run_row: dict[str, Any] = {
            "run_id": run_id, "method": config.method, "model": config.model, "dataset": dataset,
            "partition": config.partition, "num_clients": config.clients, "alpha": config.alpha,
            "phi": config.phi, "phase": config.phase, "local_epochs": config.local_epochs,
            "batch_size": config.batch_size,
            "samples_per_client": config.samples_per_client, "epochs": config.epochs,
            "seed": config.seed, "lr": config.lr, "server_lr": config.server_lr,
            "optimizer": config.optimizer, "executor": config.executor, "epochs_done": 0,
            "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "code_version": code_version(), "config_json": config.to_json(), "status": "running",
            "energy_source": energy_source, "restarts": 0, "resumes": 0,
        }  # fmt: skip
        self.epoch_rows: list[dict[str, Any]] = []
        self.client_rows: list[dict[str, Any]] = []

    def resume(self, first_epoch: int) -> None:
        """Carry on a run's tables: keep the recorded epochs before `first_epoch` (the
        checkpoint's) and drop later ones, which the resumed run records again."""
        tables = {name: pq.read_table(path).to_pylist() for name, path in self.paths.items()}
        (previous,) = tables["runs"]
        self.run_row.update(
            started_at=previous["started_at"], code_version=previous["code_version"],
            resumes=(previous["resumes"] or 0) + 1,
        )  # fmt: skip
        self.epoch_rows = [r for r in tables["epochs"] if r["epoch"] < first_epoch]
        self.client_rows = [r for r in tables["clients"] if r["epoch"] < first_epoch]
        if self.epoch_rows:
            self.run_row.update(epochs_done=len(self.epoch_rows), **self._run_totals())

    def start(self, executor: str, clients_per_actor: int) -> None:
        self.run_row.update(executor=executor, clients_per_actor=clients_per_actor)
        self._flush()

    def record_epoch(self, result: EpochResult, wall_s: float) -> None:
        config, comm, test, flops = self.config, result.comm, result.test_acc, result.flops
        shares = energy.attribute(result.energy_j, [flops.per_client] * flops.clients + [flops.server])
        bits = 8 * (sum(comm.bytes_up) + comm.server_sent)
        comm_s = comm_time_s(sum(comm.bytes_up), comm.server_sent, config.link_rate_bps)
        self.epoch_rows.append({
            "run_id": self.run_id, "epoch": result.epoch, "train_loss": result.train_loss,
            "val_acc": fmean(result.val_acc.values()),
            "test_acc": fmean(test.values()) if test else None,
            "averaging_on": result.averaging_on, "wall_s": wall_s,
            "train_wall_s": result.train_wall_s, "eval_wall_s": result.eval_wall_s,
            "bytes_up": sum(comm.bytes_up), "bytes_down": sum(comm.bytes_down),
            "bytes_server_sent": comm.server_sent,
            "comm_time_s": comm_s, "modelled_time_s": result.train_wall_s + comm_s,
            "client_flops": flops.client_total, "server_flops": flops.server,
            "energy_j": result.energy_j, "energy_source": self.run_row["energy_source"],
            "compute_energy_model_j": (flops.client_total + flops.server) * config.joules_per_flop,
            "tx_energy_model_j": bits * config.joules_per_bit, "restarts": result.restarts,
        })  # fmt: skip
        for client_id in sorted(result.val_acc):
            self.client_rows.append({
                "run_id": self.run_id, "epoch": result.epoch, "client_id": client_id,
                "val_acc": result.val_acc[client_id],
                "test_acc": test[client_id] if test else None,
                "bytes_up": comm.bytes_up[client_id], "bytes_down": comm.bytes_down[client_id],
                "active_steps": comm.active_steps[client_id], "flops": flops.per_client,
                "energy_j": shares[client_id],
                "compute_energy_model_j": flops.per_client * config.joules_per_flop,
                "tx_energy_model_j": 8 * comm.bytes_up[client_id] * config.joules_per_bit,
            })  # fmt: skip
        self.run_row.update(epochs_done=len(self.epoch_rows), wall_s=wall_s, **self._run_totals())
        self._flush()

    def _run_totals(self) -> dict[str, Any]:
        epochs, clients = self.epoch_rows, self.client_rows
        num_clients = self.config.clients
        measured = [e["energy_j"] for e in epochs]
        return {
            "client_pflops_mean": sum(c["flops"] for c in clients) / num_clients / 1e15,
            "server_pflops": sum(e["server_flops"] for e in epochs) / 1e15,
            "bytes_per_client_mean": sum(c["bytes_up"] + c["bytes_down"] for c in clients) / num_clients,
            "energy_j": None if None in measured else sum(measured),
            "compute_energy_model_j": sum(e["compute_energy_model_j"] for e in epochs),
            "tx_energy_model_j": sum(e["tx_energy_model_j"] for e in epochs),
            "restarts": sum(e["restarts"] for e in epochs),
        }

    def record_leakage(self, result: Any, originals: Any, reconstructions: Any) -> None:
        """`<out>/leakage/<run_id>.parquet`, and `<out>/leakage_images/<run_id>.png` of originals
        (top row) over reconstructions; the PNG lives apart so pandas can read leakage/ whole."""
        from sglr_ray.leakage import save_grid

        config, out = self.config, Path(self.paths["runs"]).parent.parent
        directory, images = out / "leakage", out / "leakage_images"
        directory.mkdir(exist_ok=True)
        images.mkdir(exist_ok=True)
        row = {
            "run_id": self.run_id, "method": config.method, "model": config.model,
            "num_clients": config.clients, "alpha": config.alpha, "phi": config.phi,
            "epochs": len(self.epoch_rows), "aux_samples": config.leakage_aux_samples,
            "decoder_epochs": config.leakage_epochs, **result.as_row(),
        }  # fmt: skip
        write_table_atomic([row], LEAKAGE_SCHEMA, directory / f"{self.run_id}.parquet")
        save_grid(originals, reconstructions, images / f"{self.run_id}.png")
        self.paths["leakage"] = str(directory / f"{self.run_id}.parquet")

    def finish(self, status: str, final_test_acc: float | None, wall_s: float) -> None:
        self.run_row.update(status=status, final_test_acc=final_test_acc, wall_s=wall_s)
        self._flush()

    def _flush(self) -> None:
        # The epoch tables first: a runs row never claims epochs that are not on disk.
        write_table_atomic(self.epoch_rows, EPOCHS_SCHEMA, Path(self.paths["epochs"]))
        write_table_atomic(self.client_rows, CLIENTS_SCHEMA, Path(self.paths["clients"]))
        write_table_atomic([self.run_row], RUNS_SCHEMA, Path(self.paths["runs"]))
