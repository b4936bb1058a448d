"""Tables like the paper's, computed from a results directory (see sglr_ray/results.py).

Every function takes an output directory or a frame already loaded from one,
counts completed runs only, and returns accuracies in percent. Where seeds
repeat, grid tables carry a `stat` column level (mean, std over seeds, n seeds);
`means(table)` drops it to the paper's shape.

  from sglr_ray.analysis import tables as analysis
  runs = analysis.load_runs("results/table12")
  analysis.compare_with_paper(analysis.accuracy_by_clients_alpha(runs), analysis.paper_reference()["table1"])
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise
from pathlib import Path

import pandas as pd
import pyarrow as pa

from sglr_ray.results.writer import EPOCHS_SCHEMA, RUNS_SCHEMA

MB = 1e6
STATS = ["mean", "std", "n"]
# The PSL engine without client averaging: one run differs from another only by (C, alpha, phi, phase).
GRID_METHODS = ("psl", "slr", "sgl", "sglr")
SPLIT_METHODS = (*GRID_METHODS, "sfl")
METHOD_ORDER = ("cl", "fl", "ssl", "psl", "slr", "sgl", "sglr", "sfl")
# Runs that differ in these answer different questions; a table never averages across them.
WORKLOAD = ("model", "dataset", "partition", "batch_size", "samples_per_client", "epochs", "lr", "optimizer")
# A rerun of the same configuration and seed is the same computation: counted once.
RUN_KEY = (*WORKLOAD, "method", "num_clients", "alpha", "phi", "phase", "local_epochs", "seed")
SETTING = ["method", "C", "alpha", "phi", "phase"]  # + local_epochs where runs differ in it (FL)

Source = str | Path | pd.DataFrame


class MixedWorkloadError(ValueError):
    """The runs given to one table differ in model, dataset or another WORKLOAD column."""


# ---------------------------------------------------------------- loading


def _read_dir(directory: Path, schema: pa.Schema | None = None) -> pd.DataFrame:
    """Every `*.parquet` under `directory` (the writers' temporary files end in .tmp), with every
    column of `schema`: files written before a column existed get it as missing values."""
    # File by file rather than pd.read_parquet(directory): a dataset read takes the schema of
    # one file, so a column added to newer runs would vanish or break older ones.
    frames = [pd.read_parquet(p) for p in sorted(directory.glob("*.parquet"))]
    frames = [f for f in frames if not f.empty]
    if not frames:
        return schema.empty_table().to_pandas() if schema is not None else pd.DataFrame()
    table = pd.concat(frames, ignore_index=True)
    missing = [name for name in (schema.names if schema is not None else []) if name not in table.columns]
    return table.reindex(columns=[*table.columns, *missing])


def load_runs(out: str | Path) -> pd.DataFrame:
    """Every run row under `<out>/runs`, whatever its status (empty frame if none)."""
    return _read_dir(Path(out) / "runs", RUNS_SCHEMA)


def completed_runs(runs: Source) -> pd.DataFrame:
    """Completed runs only, one per (configuration, seed): the latest when a run was repeated.
    `method` becomes the name the knobs make (sglr with alpha 0, phi 0 is psl, the same computation);
    `recorded_method` keeps the name the run was started with."""
    runs = load_runs(runs) if not isinstance(runs, pd.DataFrame) else runs
    done = runs[runs.status == "completed"]
    if "recorded_method" not in done.columns:
        knobs = zip(done.method, done.alpha, done.phi, strict=True)
        done = done.assign(recorded_method=done.method, method=[effective_method(*k) for k in knobs])
    key = [c for c in RUN_KEY if c in done.columns]
    if "started_at" in done.columns:
        done = done.sort_values("started_at", kind="stable")
    return done.drop_duplicates(key, keep="last").reset_index(drop=True)


def _join_runs(table: pd.DataFrame, runs: pd.DataFrame, completed_only: bool) -> pd.DataFrame:
    runs = completed_runs(runs) if completed_only else runs
    wanted = ["run_id", *RUN_KEY, "status", "epochs_done"]
    columns = [c for c in wanted if c in runs.columns and (c == "run_id" or c not in table.columns)]
    return table.merge(runs[columns], on="run_id", how="inner")


def load_epochs(out: str | Path, completed_only: bool = True) -> pd.DataFrame:
    """`<out>/epochs` joined with each run's method, C, alpha, phi, phase, seed and workload."""
    return _join_runs(_read_dir(Path(out) / "epochs", EPOCHS_SCHEMA), load_runs(out), completed_only)


def load_leakage(out: str | Path, completed_only: bool = True) -> pd.DataFrame:
    """`<out>/leakage` joined with each run's seed, phase and workload; empty if there is none."""
    leakage = _read_dir(Path(out) / "leakage")
    if leakage.empty:
        return leakage
    return _join_runs(leakage, load_runs(out), completed_only)


def split_workloads(runs: Source) -> dict[str, pd.DataFrame]:
    """Completed runs grouped by WORKLOAD, keyed by a label such as 'alexnet, fashion-mnist, ...'."""
    runs = completed_runs(runs)
    key = [c for c in WORKLOAD if c in runs.columns]
    groups = runs.groupby(key, dropna=False, sort=True) if len(runs) else []
    return {workload_label(group.iloc[0]): group for _, group in groups}


def workload_label(run: pd.Series) -> str:
    return (
        f"{run['model']}, {run['dataset']} ({run['partition']}), {run['samples_per_client']} samples "
        f"per client, batch {run['batch_size']}, {run['epochs']} epoch{'s' if run['epochs'] != 1 else ''}, "
        f"{run['optimizer']} lr {run['lr']:g}"
    )


def _check_one_workload(frame: pd.DataFrame) -> None:
    varying = [c for c in WORKLOAD if c in frame.columns and frame[c].nunique(dropna=False) > 1]
    if varying:
        values = {c: sorted(map(str, frame[c].unique())) for c in varying}
        raise MixedWorkloadError(
            f"these runs differ in {values}; pass one group of split_workloads(runs) at a time"
        )


def _one_workload(runs: Source) -> pd.DataFrame:
    runs = completed_runs(runs)
    _check_one_workload(runs)
    return runs.assign(C=runs.num_clients, acc=100 * runs.final_test_acc)


def effective_method(method: str, alpha: float, phi: float) -> str:
    """The name a split run's knobs make it: sglr with alpha 0 and phi 0 is psl."""
    if method not in GRID_METHODS:
        return method
    names = {(False, False): "psl", (True, False): "slr", (False, True): "sgl", (True, True): "sglr"}
    return names[(alpha > 0, phi > 0)]


def setting_label(method: str, num_clients: int, alpha: float, phi: float, phase: str = "all") -> str:
    """A short name for plots and sentences, e.g. 'sglr a=0.5 phi=0.5 C=10'."""
    name = effective_method(method, alpha, phi)
    knobs = (f" a={alpha:g}" if alpha else "") + (f" phi={phi:g}" if phi else "")
    return name + knobs + ("" if phase == "all" else f" {phase}") + f" C={num_clients}"


def setting_labels(frame: pd.DataFrame) -> list[str]:
    """setting_label of each row of a frame with method, num_clients (or C), alpha, phi and phase;
    ' local_epochs=E' added where a row has E other than 1."""
    clients = frame["C"] if "C" in frame.columns else frame["num_clients"]
    rows = zip(frame.method, clients, frame.alpha, frame.phi, frame.phase, strict=True)
    labels = [setting_label(*row) for row in rows]
    local = frame["local_epochs"] if "local_epochs" in frame.columns else [None] * len(labels)
    return [
        f"{label} local_epochs={e:g}" if pd.notna(e) and e != 1 else label
        for label, e in zip(labels, local, strict=True)
    ]


def _setting_keys(frame: pd.DataFrame) -> list[str]:
    varies = "local_epochs" in frame.columns and frame.local_epochs.nunique() > 1
    return [*SETTING, "local_epochs"] if varies else SETTING


# ---------------------------------------------------------------- accuracy grids (Tables 1-3)


def _summarise(frame: pd.DataFrame, keys: list[str], value: str = "acc") -> pd.DataFrame:
    return frame.groupby(keys, dropna=False)[value].agg(mean="mean", std="std", n="count")


def _grid(runs: pd.DataFrame, keep: pd.Series, columns: list[str]) -> pd.DataFrame:
    """Rows C, columns `columns` x stat, from the runs `keep` selects (C = 1: see _single_client_row)."""
    many = runs[keep & (runs.C > 1)]
    table = _summarise(many, ["C", *columns]).unstack(columns) if len(many) else pd.DataFrame()
    if len(many) or (keep & (runs.C == 1)).any():
        labels = table.columns.droplevel(0).unique() if len(many) else _labels(runs[keep], columns)
        one = _single_client_row(runs, [_tuple(k) for k in labels])
        table = pd.concat([one, table]) if len(table) else one
    if table.empty:
        return table
    labels = sorted({_tuple(k)[1:] for k in table.columns})
    order = [(s, *k) for k in labels for s in STATS]
    table = table.reindex(columns=pd.MultiIndex.from_tuples(order, names=["stat", *columns]))
    table = table.reorder_levels([*columns, "stat"], axis=1).sort_index()
    table.index.name = "C"
    return table


def _single_client_row(runs: pd.DataFrame, labels: list[tuple]) -> pd.DataFrame:
    """The C = 1 row, the same in every column: alpha, phi and phase change nothing with one client
    (C**alpha = 1, nobody to average with), so every split run with C = 1 stands for it."""
    single = runs[runs.method.isin(SPLIT_METHODS) & (runs.C == 1)]
    if single.empty:
        return pd.DataFrame()
    # One value per seed: the same seed under several (alpha, phi) is the same computation.
    per_seed = single.groupby("seed").acc.mean()
    row = {"mean": per_seed.mean(), "std": per_seed.std(), "n": len(per_seed)}
    return pd.DataFrame({(s, *k): [row[s]] for s in STATS for k in labels}, index=[1])


def _labels(frame: pd.DataFrame, columns: list[str]) -> list:
    return sorted(frame[columns].drop_duplicates().itertuples(index=False, name=None))


def _tuple(label: object) -> tuple:
    return label if isinstance(label, tuple) else (label,)


def accuracy_by_clients_alpha(runs: Source) -> pd.DataFrame:
    """Table 1: final test accuracy (%), rows C, columns alpha x stat; phi = 0, phase all, no sfl."""
    runs = _one_workload(runs)
    keep = runs.method.isin(GRID_METHODS) & (runs.phase == "all") & (runs.phi == 0)
    return _grid(runs, keep, ["alpha"])


def accuracy_by_clients_phi(runs: Source) -> pd.DataFrame:
    """Table 2: final test accuracy (%), rows C, columns (alpha, phi) x stat; phase all, no sfl."""
    runs = _one_workload(runs)
    keep = runs.method.isin(GRID_METHODS) & (runs.phase == "all")
    return _grid(runs, keep, ["alpha", "phi"])


def accuracy_by_phase(runs: Source) -> pd.DataFrame:
    """Table 3: final test accuracy (%) with full averaging (phi = 1), rows C, columns phase x stat
    (alpha x phase x stat when the runs use more than one alpha)."""
    runs = _one_workload(runs)
    keep = runs.method.isin(GRID_METHODS) & (runs.phi == 1)
    columns = ["alpha", "phase"] if runs[keep].alpha.nunique() > 1 else ["phase"]
    return _grid(runs, keep, columns)


def means(table: pd.DataFrame) -> pd.DataFrame:
    """The paper's shape: only the mean of a table with a `stat` column level."""
    if "stat" not in (table.columns.names or []):
        return table
    return table.xs("mean", axis=1, level="stat")


# ---------------------------------------------------------------- methods, leakage, communication


def _with_setting(frame: pd.DataFrame) -> pd.DataFrame:
    knobs = zip(frame.method, frame.alpha, frame.phi, strict=True)
    return frame.assign(method=[effective_method(*k) for k in knobs], C=frame.num_clients)


def _sort_methods(table: pd.DataFrame) -> pd.DataFrame:
    def rank(level: pd.Index) -> pd.Index:
        if level.name != "method":
            return level
        return level.map(lambda m: METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER))

    return table.sort_index(key=rank)


def method_comparison(runs: Source) -> pd.DataFrame:
    """Table 4: per setting (method, C, alpha, phi, phase), accuracy % (mean, std over seeds, n),
    PFLOPs per client and on the server, MB moved per client in the run and per epoch."""
    runs = _with_setting(_one_workload(runs))
    if runs.empty:
        return pd.DataFrame()
    runs = runs.assign(
        mb_per_client=runs.bytes_per_client_mean / MB,
        mb_per_client_epoch=runs.bytes_per_client_mean / MB / runs.epochs_done,
    )
    grouped = runs.groupby(_setting_keys(runs), dropna=False)
    table = grouped.acc.agg(acc="mean", acc_std="std", n="count")
    costs = ["client_pflops_mean", "server_pflops", "mb_per_client", "mb_per_client_epoch"]
    table = table.join(grouped[costs].mean().rename(columns={"client_pflops_mean": "client_pflops"}))
    return _sort_methods(table)


def leakage_by_phi(leakage: Source) -> pd.DataFrame:
    """Table 5: reconstruction mse, psnr, ssim and distance correlation per phi (metric x stat
    columns); rows (C, alpha, phi) when the runs use more than one C or alpha."""
    leakage = load_leakage(leakage) if not isinstance(leakage, pd.DataFrame) else leakage
    if leakage.empty:
        return pd.DataFrame()
    leakage = leakage[leakage.status == "completed"]
    _check_one_workload(leakage)
    rows = [c for c in ("num_clients", "alpha") if leakage[c].nunique() > 1] + ["phi"]
    metrics = ["mse", "psnr", "ssim", "distance_correlation"]
    table = pd.concat({m: _summarise(leakage, rows, m) for m in metrics}, axis=1, names=["metric", "stat"])
    return table.rename_axis(index={"num_clients": "C"})


def communication_per_epoch(epochs: Source) -> pd.DataFrame:
    """Per setting: MB per epoch (all clients) up, down and sent by the server, MB per client
    per epoch (up + down), averaged over epochs and seeds."""
    epochs = load_epochs(epochs) if not isinstance(epochs, pd.DataFrame) else epochs
    epochs = _with_setting(epochs[epochs.status == "completed"])
    if epochs.empty:
        return pd.DataFrame()
    _check_one_workload(epochs)
    epochs = epochs.assign(
        mb_up=epochs.bytes_up / MB,
        mb_down=epochs.bytes_down / MB,
        mb_server_sent=epochs.bytes_server_sent / MB,
        mb_per_client=(epochs.bytes_up + epochs.bytes_down) / MB / epochs.num_clients,
    )
    grouped = epochs.groupby(_setting_keys(epochs), dropna=False)
    table = grouped[["mb_up", "mb_down", "mb_server_sent", "mb_per_client"]].mean()
    table["n"] = grouped.seed.nunique()
    return _sort_methods(table)


def accuracy_per_epoch(epochs: Source) -> pd.DataFrame:
    """Validation accuracy (%) per epoch (rows, 1-based), one column per setting, mean over seeds."""
    epochs = load_epochs(epochs) if not isinstance(epochs, pd.DataFrame) else epochs
    epochs = epochs[epochs.status == "completed"]
    if epochs.empty:
        return pd.DataFrame()
    _check_one_workload(epochs)
    frame = epochs.assign(setting=setting_labels(epochs), epoch=epochs.epoch + 1, acc=100 * epochs.val_acc)
    return frame.pivot_table(index="epoch", columns="setting", values="acc", aggfunc="mean")


# ---------------------------------------------------------------- the paper's figures (SPEC section 5)


def paper_reference() -> dict[str, pd.DataFrame]:
    """The paper's numbers: table1 (C x alpha), table2 (C x (alpha, phi)), table4 (per method: acc,
    and the paper's PFLOPs per client, which count CL's whole compute on its one client) and
    table5 (reconstruction loss per phi). Accuracy in percent; NaN where the paper has '-'."""
    nan = float("nan")
    table1 = pd.DataFrame(
        [[82.45, 82.45, 82.45, 82.45, 82.45], [82.68, 82.46, 82.93, 83.42, 82.14],
         [83.49, 84.78, 84.98, 84.21, 34.37], [84.88, 86.25, 86.00, nan, nan]],
        index=pd.Index([1, 4, 10, 20], name="C"), columns=pd.Index([0.0, 0.5, 1.0, 1.5, 2.0], name="alpha"),
    )  # fmt: skip
    pairs = [(0.0, 0.0), (0.0, 0.25), (0.0, 0.5), (0.0, 0.75), (0.5, 0.5), (0.5, 0.75)]
    table2 = pd.DataFrame(
        [[82.68, 82.90, 83.16, 83.81, 83.24, 84.22], [83.49, 84.35, 84.74, 85.49, 85.22, 85.93],
         [84.88, 86.33, 86.59, 86.82, 87.48, 87.47]],
        index=pd.Index([4, 10, 20], name="C"),
        columns=pd.MultiIndex.from_tuples(pairs, names=["alpha", "phi"]),
    )  # fmt: skip
    table4 = pd.DataFrame(
        {"acc": [90.5, 89.7, 89.3, 86.0, 84.7], "pflops_per_client": [2.944, 0.588, 0.031, 0.031, 0.031]},
        index=pd.Index(["cl", "fl", "sglr", "sfl", "psl"], name="method"),
    )  # fmt: skip
    table5 = pd.DataFrame(
        {"loss": [0.2153, 0.2142, 0.2166, 0.2296, 0.2759]},
        index=pd.Index([0.0, 0.25, 0.5, 0.75, 1.0], name="phi"),
    )
    return {"table1": table1, "table2": table2, "table4": table4, "table5": table5}


def compare_with_paper(ours: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """Our means beside the paper's on the rows and columns both have: columns (source, label) with
    source ours | paper | diff (ours - paper). Our rows may carry more index levels than the paper's
    (Table 4: method, C, alpha, ...); they are matched on the paper's levels. Empty if nothing is shared."""
    ours = means(ours)
    if ours.empty:
        return pd.DataFrame()
    extra = [name for name in ours.index.names if name not in paper.index.names]
    if len(extra) == ours.index.nlevels or not set(paper.index.names) <= set(ours.index.names):
        raise ValueError(f"rows of ours {ours.index.names} do not carry the paper's {paper.index.names}")
    keys = ours.index.droplevel(extra) if extra else ours.index
    shared = [c for c in ours.columns if c in paper.columns]
    rows = keys.isin(paper.index)
    if not shared or not rows.any():
        return pd.DataFrame()
    mine = ours.loc[rows, shared]
    theirs = paper.reindex(keys[rows])[shared].set_axis(mine.index)
    return pd.concat({"ours": mine, "paper": theirs, "diff": mine - theirs}, axis=1, names=["source"])


# ---------------------------------------------------------------- the trends the paper claims


def drops_with_clients(table: pd.DataFrame) -> list[tuple]:
    """Where a column of a rows-C table falls as C grows: (column, C before, C after, before, after)
    for each consecutive pair of filled cells. Empty: accuracy rises or holds with C everywhere."""
    table = means(table).sort_index()
    drops = []
    for column in table.columns:
        for (c0, v0), (c1, v1) in pairwise(table[column].dropna().items()):
            if v1 < v0:
                drops.append((column, c0, c1, v0, v1))
    return drops


def gain_over(table: pd.DataFrame, is_baseline: Callable[[object], bool]) -> pd.DataFrame:
    """Per row with C > 1: the best other column's mean minus the one baseline column's (`gain`),
    and which column that was (`best`). Empty when the table lacks either."""
    table = means(table)
    base = [c for c in table.columns if is_baseline(c)]
    others = [c for c in table.columns if not is_baseline(c)]
    if len(base) != 1 or not others:
        return pd.DataFrame(columns=["gain", "best"])
    rows = table[(table.index > 1) & table[base[0]].notna() & table[others].notna().any(axis=1)]
    gain = rows[others].max(axis=1) - rows[base[0]]
    return pd.DataFrame({"gain": gain, "best": rows[others].idxmax(axis=1)})


def best_per_method(table: pd.DataFrame) -> tuple[int | None, pd.Series]:
    """From method_comparison: the C at which the most methods ran, and each method's best mean
    accuracy there (over its alpha, phi and phase settings)."""
    if table.empty:
        return None, pd.Series(dtype=float)
    frame = table.reset_index()
    methods_at = frame.groupby("C").method.nunique()
    clients = int(methods_at[methods_at == methods_at.max()].index.max())
    return clients, frame[frame.C.eq(clients)].groupby("method").acc.max()


def server_saving(table: pd.DataFrame) -> pd.Series:
    """From communication_per_epoch: per averaging setting (phi > 0), the percentage fewer bytes the
    server sends per epoch than the same C without averaging (psl or slr; a broadcast replaces
    unicasts, and alpha moves no bytes)."""
    frame = table.reset_index()
    plain = frame[frame.method.isin(GRID_METHODS) & (frame.phi == 0)].groupby("C").mb_server_sent.mean()
    averaged = frame[(frame.phi > 0) & frame.C.isin(plain.index)]
    saving = 100 * (1 - averaged.mb_server_sent.to_numpy() / plain.loc[averaged.C].to_numpy())
    return pd.Series(saving, index=setting_labels(averaged), dtype=float)
