"""A results directory read back: runs, epochs and leakage, and the keys that group them.

Nothing here lists settings or methods by hand; both come from their one declaration:

- The settings (config.py `RunConfig`). `run_key` hashes every setting that
  can change a number: a rerun with the same run_key counts once, the latest.
  `cell_key` is the same hash without the seed: a table averages over seeds
  only runs that share it. The workload of a table is the identity settings
  it does not vary; runs that differ in one answer different questions.
- The methods (methods/ `METHODS`). Methods that are the same engine and
  differ only in the knobs they pin form a family (PSL, SLR, SGL, SGLR); a
  run of one is named by the member its knobs make it (`effective_method`:
  sglr with alpha 0 and phi 0 computes exactly what psl does).

  from sglr_ray.analysis import runs
  done = runs.completed_runs("results/table12")
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from sglr_ray.config import (
    METHOD_SETTINGS,
    config_fields,
    identity_hash,
    resolved_optimizer_state,
    setting_type,
)
from sglr_ray.methods import METHODS, Method
from sglr_ray.methods.base import own_gradients
from sglr_ray.methods.sglr import split_avg
from sglr_ray.results.storage import Storage
from sglr_ray.results.writer import EPOCHS_SCHEMA, PRIVACY_SCHEMA, RUNS_SCHEMA

Source = str | Path | pd.DataFrame

IDENTITY_FIELDS = [f for f in config_fields() if f.metadata["identity"]]
IDENTITY = [f.name for f in IDENTITY_FIELDS]
# The settings the tables put in their rows and columns; every other identity setting but the
# seed is the workload, which one table holds fixed.
# Settings whose meaning depends on the method: a table shows them where its runs differ in one.
PER_METHOD = (*METHOD_SETTINGS, "client_optimizer_state")
SETTING_KNOBS = ("method", "clients", "alpha", "phi", "phase", *PER_METHOD)
SETTING = ["method", "C", "alpha", "phi", "phase"]  # + the method settings where runs differ in one

# Split-layer rules that phi alone decides: with phi 0 both hand every client its own gradient,
# so a method using either computes what its family member pinning phi at 0 computes.
_KNOB_RULES = (own_gradients, split_avg)
_NOT_ENGINE = ("name", "summary", "fixed", "defaults", "rule")


class MixedWorkloadError(ValueError):
    """The runs given to one table differ in a setting other than those the table varies."""


# ---------------------------------------------------------------- methods from the registry


def _engine(method: Method) -> tuple | None:
    """What a method computes apart from its knobs; None when its rule does more than phi says."""
    if method.rule not in _KNOB_RULES:
        return None
    return tuple(getattr(method, f.name) for f in dataclasses.fields(Method) if f.name not in _NOT_ENGINE)


def method_family(name: str) -> tuple[str, ...]:
    """The registered methods that are `name`'s engine with other knobs pinned (registry order);
    just `name` for a method outside the registry or one with its own rule."""
    spec = METHODS.get(name)
    engine = _engine(spec) if spec is not None else None
    if engine is None:
        return (name,)
    return tuple(m.name for m in METHODS.values() if _engine(m) == engine)


# Methods whose runs differ only by (C, alpha, phi, phase): PSL's engine, which is what a Method
# with every field at its default is (methods/base.py). Tables 1-3 are grids over them.
GRID_METHODS = tuple(m.name for m in METHODS.values() if _engine(m) == _engine(Method("", "")))


def effective_method(method: str, alpha: float, phi: float) -> str:
    """The name a run's knobs make it: the member of its family that pins the most of the knobs
    at the run's values (sglr with alpha 0 and phi 0 is psl, with alpha 0.5 and phi 0 slr)."""
    family = [METHODS[m] for m in method_family(method) if m in METHODS]
    knobs = {"alpha": alpha, "phi": phi}
    matching = [m for m in family if all(knobs[k] == v for k, v in m.fixed.items())]
    if not matching:
        return method
    return max(matching, key=lambda m: (len(m.fixed), m.name == method)).name


def method_rank(name: str) -> int:
    """Registry order for sorting tables; methods from files after the built-in ones."""
    order = list(METHODS)
    return order.index(name) if name in order else len(order)


# ---------------------------------------------------------------- keys


def _typed(f: dataclasses.Field, value: Any) -> Any:
    # A column with a gap reads back as float (1 -> 1.0), which would change the JSON hashed.
    return None if value is None or pd.isna(value) else setting_type(f)(value)


def settings_key(row: Mapping[str, Any], with_seed: bool = True) -> str:
    """config.py's run_key (with_seed) or cell_key of the settings in a runs row."""
    values = {f.name: _typed(f, row.get(f.name)) for f in IDENTITY_FIELDS}
    state = values["client_optimizer_state"]
    values["client_optimizer_state"] = resolved_optimizer_state(values["method"], state)
    return identity_hash(values, with_seed)


def annotate(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs named by their effective method (`recorded_method` keeps the name run), with C and
    the run_key and cell_key of that method: an aliased run shares the keys of the method it
    computes. Rows without keys (older files) get them from their settings."""
    if "recorded_method" in runs.columns:
        return runs
    knobs = zip(runs.method, runs.alpha, runs.phi, strict=True)
    named = runs.assign(recorded_method=runs.method, method=[effective_method(*k) for k in knobs])
    states = zip(named.method, named.client_optimizer_state, strict=True)
    named["client_optimizer_state"] = [resolved_optimizer_state(m, v) for m, v in states]
    redo = (named.method != named.recorded_method) | named.run_key.isna() | named.cell_key.isna()
    rows = named.to_dict("records")
    run_key = [settings_key(r) if again else r["run_key"] for r, again in zip(rows, redo, strict=True)]
    cell_key = [settings_key(r, False) if a else r["cell_key"] for r, a in zip(rows, redo, strict=True)]
    return named.assign(C=named.clients, run_key=run_key, cell_key=cell_key)


# ---------------------------------------------------------------- loading


def _read_dir(out: str | Path, table: str, schema: pa.Schema | None = None) -> pd.DataFrame:
    """Every `*.parquet` under `<out>/<table>` (a directory or a URI; the writers' temporary files
    are hidden), with every column of `schema`: files written before a column existed get it as
    missing values."""
    # File by file rather than pd.read_parquet(directory): a dataset read takes the schema of
    # one file, so a column added to newer runs would vanish or break older ones.
    store = Storage(str(out))
    names = store.list(table, ".parquet")
    frames = [pd.read_parquet(io.BytesIO(store.read_bytes(f"{table}/{name}"))) for name in names]
    frames = [f for f in frames if not f.empty]
    if not frames:
        return schema.empty_table().to_pandas() if schema is not None else pd.DataFrame()
    table = pd.concat(frames, ignore_index=True)
    missing = [name for name in (schema.names if schema is not None else []) if name not in table.columns]
    return table.reindex(columns=[*table.columns, *missing])


def load_runs(out: str | Path) -> pd.DataFrame:
    """Every run row under `<out>/runs`, whatever its status (empty frame if none). A row written
    before a setting existed gets the setting's default, which is how such a run ran (a new
    setting keeps the old behaviour as its default); rows from before `clients` was named so get
    it from their `num_clients`, and rows from before `schema_version` read as version 1."""
    runs = _read_dir(out, "runs", RUNS_SCHEMA)
    if "num_clients" in runs.columns:
        runs = runs.assign(clients=runs.clients.fillna(runs.num_clients)).drop(columns="num_clients")
    runs = runs.assign(schema_version=runs.schema_version.fillna(1).astype("int64"))
    # A setting added later fills with the value older runs ran with (absent_means), else its default.
    gaps = {f.name: f.metadata["absent_means"] or f.default for f in IDENTITY_FIELDS}
    gaps = {name: value for name, value in gaps.items() if value is not None and runs[name].isna().any()}
    return runs.fillna(gaps) if gaps else runs


def completed_runs(runs: Source) -> pd.DataFrame:
    """Completed runs only (see `annotate`), one per run_key: the latest when a run was repeated."""
    runs = load_runs(runs) if not isinstance(runs, pd.DataFrame) else runs
    done = annotate(runs[runs.status == "completed"])
    if "started_at" in done.columns:
        done = done.sort_values("started_at", kind="stable")
    return done.drop_duplicates("run_key", keep="last").reset_index(drop=True)


def _join_runs(table: pd.DataFrame, runs: pd.DataFrame, completed_only: bool) -> pd.DataFrame:
    """`table` (keyed by run_id) with its runs' settings, keys and status; the runs' settings win
    over a copy of one in `table` (the leakage table repeats a few)."""
    runs = completed_runs(runs) if completed_only else annotate(runs)
    wanted = ["run_id", *IDENTITY, "recorded_method", "C", "run_key", "cell_key", "test_set_digest",
              "status", "epochs_done", "started_at"]  # fmt: skip
    columns = [c for c in wanted if c in runs.columns]
    table = table.drop(columns=[c for c in [*columns, "num_clients"] if c != "run_id" and c in table.columns])
    return table.merge(runs[columns], on="run_id", how="inner")


def load_epochs(out: str | Path, completed_only: bool = True) -> pd.DataFrame:
    """`<out>/epochs` joined with each run's settings (method, C, alpha, ...), keys and status."""
    return _join_runs(_read_dir(out, "epochs", EPOCHS_SCHEMA), load_runs(out), completed_only)


def load_clients(out: str | Path, completed_only: bool = True) -> pd.DataFrame:
    """`<out>/clients` (a row per client and epoch) joined with each run's settings, keys and status."""
    return _join_runs(_read_dir(out, "clients"), load_runs(out), completed_only)


def load_leakage(out: str | Path, completed_only: bool = True) -> pd.DataFrame:
    """`<out>/leakage` joined with each run's settings, keys and status; empty if there is none."""
    leakage = _read_dir(out, "leakage")
    if leakage.empty:
        return leakage
    return _join_runs(leakage, load_runs(out), completed_only)


def load_privacy(out: str | Path, completed_only: bool = True) -> pd.DataFrame:
    """`<out>/privacy` (one row per attack, client and metric) joined with each run's settings,
    keys, status and final accuracy; empty if there is none."""
    rows = _read_dir(out, "privacy", PRIVACY_SCHEMA)
    if rows.empty:
        return rows
    runs = load_runs(out)
    # `attack` is also a setting (--attack, the list a run ran); each row's own attack wins here.
    joined = _join_runs(rows.rename(columns={"attack": "scored"}), runs, completed_only)
    joined = joined.drop(columns="attack").rename(columns={"scored": "attack"})
    return joined.merge(runs[["run_id", "final_test_acc"]], on="run_id")


# ---------------------------------------------------------------- workloads and cells


def workload_columns(varied: Iterable[str] = SETTING_KNOBS) -> list[str]:
    """The identity settings other than `varied` and the seed: what one table holds fixed."""
    return [name for name in IDENTITY if name not in {*varied, "seed"}]


def _differing(frame: pd.DataFrame, columns: Iterable[str]) -> dict[str, list[str]]:
    return {
        c: sorted(map(str, frame[c].unique()))
        for c in columns
        if c in frame.columns and frame[c].nunique(dropna=False) > 1
    }


def check_one_workload(frame: pd.DataFrame, varied: Iterable[str] = SETTING_KNOBS) -> None:
    """Raise MixedWorkloadError, naming the settings, if the runs differ outside `varied` and seed."""
    differ = _differing(frame, workload_columns(varied))
    if differ:
        raise MixedWorkloadError(f"these runs differ in {differ}; pass one group of split_workloads(runs)")


def check_cells(frame: pd.DataFrame, keys: list[str]) -> None:
    """Raise MixedWorkloadError if a group of `keys` holds runs of more than one cell_key: a table
    cell must average over seeds only, never over runs whose settings differ."""
    if frame.empty:
        return
    for cell, group in frame.groupby(keys, dropna=False):
        if group.cell_key.nunique(dropna=False) > 1:
            differ = _differing(group, [c for c in IDENTITY if c != "seed"])
            raise MixedWorkloadError(f"the runs at {dict(zip(keys, cell, strict=True))} differ in {differ}")


def split_workloads(runs: Source) -> dict[str, pd.DataFrame]:
    """Completed runs grouped by workload, keyed by a label such as 'alexnet, fashion-mnist, ...'
    (plus the settings that tell two workloads apart where the label's own do not)."""
    runs = completed_runs(runs)
    key = [c for c in workload_columns() if c in runs.columns]
    if runs.empty:
        return {}
    groups = [group for _, group in runs.groupby(key, dropna=False, sort=True)]
    firsts = pd.DataFrame([group.iloc[0] for group in groups])
    extra = [c for c in _differing(firsts, key) if c not in _LABELLED]
    return {workload_label(group.iloc[0], extra): group for group in groups}


_LABELLED = ("model", "dataset", "partition", "samples_per_client", "batch_size", "epochs", "optimizer", "lr")


def workload_label(run: pd.Series, extra: Iterable[str] = ()) -> str:
    """'alexnet, fashion-mnist (iid), 200 samples per client, batch 8, 3 epochs, adam lr 0.001',
    then `extra` settings as name=value."""
    label = (
        f"{run['model']}, {run['dataset']} ({run['partition']}), {run['samples_per_client']} samples "
        f"per client, batch {run['batch_size']}, {run['epochs']} epoch{'s' if run['epochs'] != 1 else ''}, "
        f"{run['optimizer']} lr {run['lr']:g}"
    )
    return label + "".join(f", {name}={run[name]}" for name in extra)


# ---------------------------------------------------------------- setting labels


def setting_keys(frame: pd.DataFrame) -> list[str]:
    """SETTING, plus each per-method setting (local_epochs, ...) that differs between runs of one
    method: a difference between methods alone (fl resets its optimizers, psl keeps them) is the
    method's, not a setting the table varies."""
    if frame.empty:
        return list(SETTING)
    per_method = frame.groupby("method", dropna=False)
    varies = [s for s in PER_METHOD if s in frame.columns and per_method[s].nunique(dropna=False).max() > 1]
    return [*SETTING, *varies]


def setting_label(method: str, num_clients: int | None, alpha: float, phi: float, phase: str = "all") -> str:
    """A short name for plots and sentences, e.g. 'sglr a=0.5 phi=0.5 C=10' (no C when None)."""
    name = effective_method(method, alpha, phi)
    knobs = (f" a={alpha:g}" if alpha else "") + (f" phi={phi:g}" if phi else "")
    clients = "" if num_clients is None else f" C={num_clients}"
    return name + knobs + ("" if phase == "all" else f" {phase}") + clients


def setting_labels(frame: pd.DataFrame, with_clients: bool = True) -> list[str]:
    """setting_label of each row of a frame with method, C (or clients), alpha, phi and phase;
    ' name=value' added for a method setting (local_epochs, ...) away from its default."""
    clients = frame["C"] if "C" in frame.columns else frame["clients"]
    clients = clients if with_clients else [None] * len(frame)
    rows = zip(frame.method, clients, frame.alpha, frame.phi, frame.phase, strict=True)
    labels = [setting_label(*row) for row in rows]
    defaults = {f.name: f.default for f in config_fields()}
    for name in METHOD_SETTINGS:
        values = frame[name] if name in frame.columns else [None] * len(labels)
        labels = [
            f"{label} {name}={v:g}" if pd.notna(v) and v != defaults[name] else label
            for label, v in zip(labels, values, strict=True)
        ]
    return labels
