"""The one writer of results: three Parquet tables per run, rewritten atomically.

Layout under --out (a directory, or a URI such as s3://bucket/path: see storage.py):
  runs/<run_id>.parquet     one row: the configuration, status and final figures
  epochs/<run_id>.parquet   one row per epoch: loss, accuracy, bytes, wall time
  clients/<run_id>.parquet  one row per client per epoch

`pd.read_parquet("<out>/epochs")` loads every run at once. Each file is
whole or absent for a reader (or after a crash): locally it is written to a
hidden temporary name and renamed into place, and pyarrow skips the dot-files
when it reads a directory; on an object store one PUT replaces it whole.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from sglr_ray.atomic import atomic_path
from sglr_ray.config import ConfigError, RunConfig, config_fields, setting_type
from sglr_ray.declared import identity_name
from sglr_ray.measure import energy
from sglr_ray.measure.comm import comm_time_s
from sglr_ray.results.storage import Storage, join_run
from sglr_ray.version import code_version, machine

if TYPE_CHECKING:
    from sglr_ray.epochs import EpochResult

_ARROW_TYPES = {int: pa.int64(), float: pa.float64(), str: pa.string(), bool: pa.bool_()}
# The tables' layout version, recorded in every runs row: raise it with each change a reader must
# know about, and record the change in CHANGELOG.md. Tables written before it existed read as 1.
SCHEMA_VERSION = 2
# One column per setting (config.py declares them), then what the run recorded.
SETTINGS_COLUMNS = [(f.name, _ARROW_TYPES[setting_type(f)]) for f in config_fields() if f.name != "run_id"]
RUNS_SCHEMA = pa.schema([
    ("run_id", pa.string()), *SETTINGS_COLUMNS,
    ("run_key", pa.string()), ("cell_key", pa.string()),
    ("val_set_digest", pa.string()), ("test_set_digest", pa.string()), ("server_lr", pa.float64()),
    ("input_shape", pa.string()), ("num_classes", pa.int64()),
    ("epochs_done", pa.int64()), ("final_test_acc", pa.float64()), ("wall_s", pa.float64()),
    ("client_pflops_mean", pa.float64()), ("server_pflops", pa.float64()),
    ("bytes_per_client_mean", pa.float64()), ("energy_source", pa.string()), ("energy_j", pa.float64()),
    ("compute_energy_model_j", pa.float64()), ("tx_energy_model_j", pa.float64()),
    ("restarts", pa.int64()), ("resumes", pa.int64()), ("sim_time_s", pa.float64()),
    ("status", pa.string()), ("started_at", pa.string()), ("code_version", pa.string()),
    ("machine", pa.string()), ("config_json", pa.string()), ("schema_version", pa.int64()),
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
    ("restarts", pa.int64()), ("sim_epoch_s", pa.float64()), ("sim_time_s", pa.float64()),
])  # fmt: skip
CLIENTS_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("epoch", pa.int64()), ("client_id", pa.int64()),
    ("val_acc", pa.float64()), ("val_scored", pa.int64()), ("test_acc", pa.float64()),
    ("test_scored", pa.int64()), ("bytes_up", pa.int64()),
    ("bytes_down", pa.int64()), ("active_steps", pa.int64()), ("flops", pa.int64()),
    ("energy_j", pa.float64()), ("compute_energy_model_j", pa.float64()),
    ("tx_energy_model_j", pa.float64()), ("busy_s", pa.float64()), ("wait_s", pa.float64()),
    ("steps", pa.int64()), ("late_steps", pa.int64()), ("staleness_mean", pa.float64()),
])  # fmt: skip
LEAKAGE_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("method", pa.string()), ("model", pa.string()), ("clients", pa.int64()),
    ("alpha", pa.float64()), ("phi", pa.float64()), ("epochs", pa.int64()), ("client_id", pa.int64()),
    ("samples", pa.int64()), ("aux_samples", pa.int64()), ("decoder_epochs", pa.int64()),
    ("mse", pa.float64()), ("psnr", pa.float64()), ("ssim", pa.float64()),
    ("distance_correlation", pa.float64()),
])  # fmt: skip
PRIVACY_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("attack", pa.string()), ("client_id", pa.int64()),
    ("metric", pa.string()), ("value", pa.float64()),
])  # fmt: skip
TABLES = {"runs": RUNS_SCHEMA, "epochs": EPOCHS_SCHEMA, "clients": CLIENTS_SCHEMA}


def readable_name(config: RunConfig) -> str:
    """Method, model, clients and seed, for people; a file name's safe characters only."""
    method, model = (Path(spec.rpartition(":")[2]).name for spec in (config.method, config.model))
    return f"{method}-{model}-c{config.clients}-s{config.seed}"  # FILE.py:NAME -> NAME


def make_run_id(config: RunConfig) -> str:
    """A fresh name for a run started without --run-id: readable, the settings' hash, a time stamp."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{readable_name(config)}-{config.run_key}-{stamp}-{secrets.token_hex(2)}"


def check_run_identity(config: RunConfig, run_id: str) -> None:
    """Refuse to reuse `run_id` in --out for a run whose settings differ from the recorded one's."""
    store, rel = Storage(config.out), f"runs/{run_id}.parquet"
    if not store.exists(rel):
        return
    row = store.read_table(rel).to_pylist()[0]
    recorded_key = row.get("run_key")  # absent in tables written before run keys existed
    if recorded_key == config.run_key:
        return
    recorded, mine = json.loads(row["config_json"]), config.to_dict()
    differ = sorted(k for k in config.identity() if k in recorded and recorded[k] != mine[k])
    detail = ", ".join(f"{k}: recorded {recorded[k]!r}, now {mine[k]!r}" for k in differ[:4])
    raise ConfigError(
        f"--run-id {run_id!r} already names a run in {config.out!r} with other settings "
        f"({detail or f'run_key recorded {recorded_key}, now {config.run_key}'}); "
        "choose another --run-id or --out"
    )


def _share(correct: int | None, scored: int | None) -> float | None:
    """Accuracy of one client's slice; None when it scored nothing (more clients than images)."""
    return correct / scored if scored else None


def write_table_atomic(rows: list[dict[str, Any]], schema: pa.Schema | None, path: Path) -> None:
    """Write `rows` to `path` as Parquet via a temporary file and a rename (schema None: inferred)."""
    table = pa.Table.from_pylist(rows, schema=schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def appended(recorded: str | None, current: str) -> str:
    """A provenance column after one more start: the recorded starts' values (joined by " + "),
    then `current` where it differs from every one of them. A row written before the column
    existed records nothing, so its value starts with `current`."""
    parts = [part for part in (recorded or "").split(" + ") if part]
    return " + ".join(dict.fromkeys([*parts, current]))


def read_run_settings(out: str, run_id: str) -> dict[str, Any]:
    """The settings a recorded run was started with (for --resume), checked to be resumable."""
    store, rel, address = Storage(out), f"runs/{run_id}.parquet", join_run(out, run_id)
    if not store.exists(rel):
        raise ConfigError(f"--resume {address!r}: no run recorded at {store.display(rel)!r}")
    (row,) = store.read_table(rel, columns=["status", "config_json"]).to_pylist()
    if row["status"] == "completed":
        raise ConfigError(f"--resume {address!r}: the run has already completed")
    return json.loads(row["config_json"])


def _client_clock(result: EpochResult, client_id: int) -> dict[str, Any]:
    """A client's epoch on the virtual clock: busy and waiting seconds, steps taken part in."""
    clock = result.clock
    if clock is None:
        return {"busy_s": None, "wait_s": None, "steps": None, "late_steps": None, "staleness_mean": None}
    staleness = clock.staleness_mean[client_id] if clock.staleness_mean else None
    return {
        "busy_s": clock.busy_s[client_id], "wait_s": clock.wait_s[client_id],
        "steps": clock.steps[client_id], "late_steps": clock.late_steps[client_id],
        "staleness_mean": staleness,
    }  # fmt: skip


class ResultsWriter:
    def __init__(self, out: str, run_id: str, config: RunConfig, data: Any, energy_source: str) -> None:
        self.run_id = run_id
        self.config = config
        self.store = Storage(out)
        self.files = {name: f"{name}/{run_id}.parquet" for name in TABLES}  # relative to --out
        self.paths = {name: self.store.display(rel) for name, rel in self.files.items()}
        self.run_row: dict[str, Any] = {
            **config.to_dict(), "run_id": run_id, "run_key": config.run_key, "cell_key": config.cell_key,
            "val_set_digest": data.val_digest, "test_set_digest": data.test_digest,
            "server_lr": config.server_lr, "epochs_done": 0,
            # The cut as run (--cut's default resolved), and the data's shape, e.g. "3x32x32".
            "cut": config.resolved_cut, "num_classes": data.num_classes,
            # As the run's identity names them (a file's with its hash): analysis recomputes run keys.
            "model": config.model_identity, "dataset": identity_name(config.dataset),
            "input_shape": "x".join(map(str, data.input_shape)),
            "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "code_version": code_version(), "machine": machine(), "config_json": config.to_json(),
            "status": "running", "schema_version": SCHEMA_VERSION,
            "energy_source": energy_source, "restarts": 0, "resumes": 0,
        }  # fmt: skip
        self.epoch_rows: list[dict[str, Any]] = []
        self.client_rows: list[dict[str, Any]] = []
        self.started = False  # whether the files on disk are this invocation's (see start)

    def resume(self, first_epoch: int) -> None:
        """Carry on a run's tables: keep the recorded epochs before `first_epoch` (the
        checkpoint's) and drop later ones, which the resumed run records again."""
        tables = {name: self.store.read_table(rel).to_pylist() for name, rel in self.files.items()}
        (previous,) = tables["runs"]
        self.run_row.update(
            started_at=previous["started_at"], resumes=(previous["resumes"] or 0) + 1,
            code_version=appended(previous.get("code_version"), code_version()),
            machine=appended(previous.get("machine"), machine()),
        )  # fmt: skip
        self.epoch_rows = [r for r in tables["epochs"] if r["epoch"] < first_epoch]
        self.client_rows = [r for r in tables["clients"] if r["epoch"] < first_epoch]
        if self.epoch_rows:
            self.run_row.update(epochs_done=len(self.epoch_rows), **self._run_totals())

    def start(self, executor: str, clients_per_actor: int) -> None:
        self.run_row.update(executor=executor, clients_per_actor=clients_per_actor)
        self._flush()
        self.started = True

    def record_epoch(self, result: EpochResult, wall_s: float) -> None:
        config, comm, val, test, flops = self.config, result.comm, result.val, result.test, result.flops
        shares = energy.attribute(result.energy_j, [flops.per_client] * flops.clients + [flops.server])
        bits = 8 * (sum(comm.bytes_up) + comm.server_sent)
        comm_s = comm_time_s(sum(comm.bytes_up), comm.server_sent, config.link_rate_bps)
        self.epoch_rows.append({
            "run_id": self.run_id, "epoch": result.epoch, "train_loss": result.train_loss,
            "val_acc": val.accuracy, "test_acc": test.accuracy if test else None,
            "averaging_on": result.averaging_on, "wall_s": wall_s,
            "train_wall_s": result.train_wall_s, "eval_wall_s": result.eval_wall_s,
            "bytes_up": sum(comm.bytes_up), "bytes_down": sum(comm.bytes_down),
            "bytes_server_sent": comm.server_sent,
            "comm_time_s": comm_s, "modelled_time_s": result.train_wall_s + comm_s,
            "client_flops": flops.client_total, "server_flops": flops.server,
            "energy_j": result.energy_j, "energy_source": self.run_row["energy_source"],
            "compute_energy_model_j": (flops.client_total + flops.server) * config.joules_per_flop,
            "tx_energy_model_j": bits * config.joules_per_bit, "restarts": result.restarts,
            **self._sim_time(result),
        })  # fmt: skip
        for client_id in sorted(val.per_client):
            test_correct, test_scored = test.per_client[client_id] if test else (None, None)
            self.client_rows.append({
                "run_id": self.run_id, "epoch": result.epoch, "client_id": client_id,
                "val_acc": _share(*val.per_client[client_id]), "val_scored": val.per_client[client_id][1],
                "test_acc": _share(test_correct, test_scored), "test_scored": test_scored,
                "bytes_up": comm.bytes_up[client_id], "bytes_down": comm.bytes_down[client_id],
                "active_steps": comm.active_steps[client_id], "flops": flops.per_client,
                "energy_j": shares[client_id],
                "compute_energy_model_j": flops.per_client * config.joules_per_flop,
                "tx_energy_model_j": 8 * comm.bytes_up[client_id] * config.joules_per_bit,
                **_client_clock(result, client_id),
            })  # fmt: skip
        self.run_row.update(epochs_done=len(self.epoch_rows), wall_s=wall_s, **self._run_totals())
        self._flush()

    def _sim_time(self, result: EpochResult) -> dict[str, float | None]:
        """The epoch's simulated seconds, and the run's so far (systems/clock.py)."""
        if result.clock is None:
            return {"sim_epoch_s": None, "sim_time_s": None}
        before = self.epoch_rows[-1].get("sim_time_s") if self.epoch_rows else 0.0
        before = before or 0.0  # rows recorded before the clock existed (a resumed older run)
        return {"sim_epoch_s": result.clock.sim_s, "sim_time_s": before + result.clock.sim_s}

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
            "sim_time_s": epochs[-1].get("sim_time_s"),
        }

    def record_leakage(self, result: Any, originals: Any, reconstructions: Any) -> None:
        """`<out>/leakage/<run_id>.parquet`, and `<out>/leakage_images/<run_id>.png` of originals
        (top row) over reconstructions; the PNG lives apart so pandas can read leakage/ whole."""
        from sglr_ray.measure.leakage import grid_png

        config, table = self.config, f"leakage/{self.run_id}.parquet"
        row = {
            "run_id": self.run_id, "method": config.method, "model": config.model,
            "clients": config.clients, "alpha": config.alpha, "phi": config.phi,
            "epochs": len(self.epoch_rows), "aux_samples": config.leakage_aux_samples,
            "decoder_epochs": config.leakage_epochs, **result.as_row(),
        }  # fmt: skip
        self.store.write_table([row], LEAKAGE_SCHEMA, table)
        self.store.write_bytes(f"leakage_images/{self.run_id}.png", grid_png(originals, reconstructions))
        self.paths["leakage"] = self.store.display(table)

    def record_privacy(self, rows: list[dict[str, Any]]) -> None:
        """`<out>/privacy/<run_id>.parquet`: one row per (attack, client, metric) of a run with
        --attack (privacy/), and a defense's accountant's figures as attack `accounting`."""
        table = f"privacy/{self.run_id}.parquet"
        self.store.write_table([{"run_id": self.run_id, **r} for r in rows], PRIVACY_SCHEMA, table)
        self.paths["privacy"] = self.store.display(table)

    def finish(self, status: str, final_test_acc: float | None, wall_s: float) -> None:
        self.run_row.update(status=status, final_test_acc=final_test_acc, wall_s=wall_s)
        self._flush()

    def _flush(self) -> None:
        # The epoch tables first: a runs row never claims epochs that are not on disk.
        self.store.write_table(self.epoch_rows, EPOCHS_SCHEMA, self.files["epochs"])
        self.store.write_table(self.client_rows, CLIENTS_SCHEMA, self.files["clients"])
        self.store.write_table([self.run_row], RUNS_SCHEMA, self.files["runs"])
