"""Time to accuracy on the virtual clock (SPEC section 4): one table across a results directory.

The other tables hold one workload fixed; a systems study compares variants of one workload
(a deadline, compression, a faster server link) with each other, so this table puts every
completed run of the directory in one place, a row per setting and variant, averaged over seeds:

  from sglr_ray.analysis import systems
  systems.time_to_accuracy("results/systems-study")

The target accuracy is the lowest of the rows' mean final validation accuracies, so every row
reaches it on average, though a seed of the lowest rows may not; a run's time to target is the
virtual clock (`sim_time_s`, cumulative) at its first epoch whose validation accuracy reaches the
target. A row's time to target is the mean over the seeds that reached it, and `reached` counts
them. Epochs are the clock's resolution: a run that reaches the target mid-epoch is timed at
the epoch's end.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from sglr_ray.analysis.runs import (
    SETTING_KNOBS,
    completed_runs,
    load_clients,
    load_epochs,
    load_runs,
    setting_labels,
    workload_columns,
)

MB = 1e6
# What makes a run a systems run: a setting of the virtual clock away from the homogeneous,
# always-present, uncompressed default (config.py declares them; these are the ones that change
# who trains when, or what travels).
_SYSTEMS_DEFAULTS = {"devices": "homogeneous", "deadline_s": 0.0, "dropout": 0.0, "clients_per_round": 0,
                     "compress": "none"}  # fmt: skip


def uses_virtual_clock(runs: pd.DataFrame) -> bool:
    """Whether any run sets the systems model away from its default (then the report shows the table)."""
    return any(
        name in runs.columns and (runs[name].fillna(default) != default).any()
        for name, default in _SYSTEMS_DEFAULTS.items()
    )


def _variant_labels(runs: pd.DataFrame) -> pd.Series:
    """Per run: the setting label plus each workload setting where the run differs from the
    directory's most common value (the study's base), e.g. 'psl deadline_s=0.3'."""
    varied = [
        c for c in workload_columns(SETTING_KNOBS)
        if c in runs.columns and c != "devices" and runs[c].nunique(dropna=False) > 1
    ]  # fmt: skip
    labels = pd.Series(setting_labels(runs, with_clients=False), index=runs.index)
    for name in varied:
        base = runs[name].mode().iloc[0]
        labels = labels + [
            "" if v == base else f" {name}={v:g}" if isinstance(v, float) else f" {name}={v}"
            for v in runs[name]
        ]
    return labels


def time_to_accuracy(
    out: str | Path, runs: pd.DataFrame | None = None, target: float | None = None
) -> pd.DataFrame:
    """Per setting and variant (mean over seeds): final test accuracy (%), simulated seconds per epoch
    and in all, the simulated seconds to the target accuracy (see the module), MB on the wire (up +
    down, all clients, the whole run; `mb_server`: what left the server, a broadcast once), how
    many seeds reached the target (`reached`; `to_target_s` averages those only) and the
    share of the clients' simulated time spent waiting. Empty where no run has a simulated time.
    `runs`: the run rows to count (the report passes them without superseded runs); default: every
    run of `out`. Only completed runs count either way. `target`: a validation accuracy in [0, 1]
    to time instead of the default (the lowest row mean, see the module)."""
    runs = completed_runs(load_runs(out) if runs is None else runs)
    epochs = load_epochs(out)
    if runs.empty or "sim_time_s" not in epochs or epochs.sim_time_s.isna().all():
        return pd.DataFrame()
    runs = runs.assign(row=_variant_labels(runs))
    epochs = epochs.merge(runs[["run_id", "row"]], on="run_id")
    final_val = epochs.sort_values("epoch").groupby("run_id").val_acc.last()
    if target is None:
        target = runs.assign(v=runs.run_id.map(final_val)).groupby("row").v.mean().min()

    def reached(run: pd.DataFrame) -> float:
        hits = run.sort_values("epoch")
        hits = hits[hits.val_acc >= target - 1e-12]
        return float(hits.sim_time_s.iloc[0]) if not hits.empty else float("nan")

    per_run = epochs.groupby("run_id").agg(
        sim_s=("sim_time_s", "max"), sim_epoch_s=("sim_epoch_s", "mean"),
        mb=("bytes_up", "sum"), mb_down=("bytes_down", "sum"), mb_server=("bytes_server_sent", "sum"),
    )  # fmt: skip
    per_run["mb"] = (per_run.mb + per_run.mb_down) / MB
    per_run["mb_server"] = per_run.mb_server / MB
    per_run["to_target_s"] = epochs.groupby("run_id")[["epoch", "val_acc", "sim_time_s"]].apply(reached)
    clients = load_clients(out)
    if not clients.empty and "wait_s" in clients:
        took = clients.groupby("run_id")[["busy_s", "wait_s"]].sum()
        per_run["waiting"] = took.wait_s / (took.busy_s + took.wait_s)
    frame = runs.set_index("run_id").join(per_run)
    frame["test_acc"] = 100 * frame.final_test_acc
    columns = ["test_acc", "sim_epoch_s", "sim_s", "to_target_s", "mb", "mb_server",
               *(["waiting"] if "waiting" in frame else [])]  # fmt: skip
    table = frame.groupby("row")[columns].mean()  # NaN skipped: to_target_s over the seeds that reached it
    table.insert(0, "seeds", frame.groupby("row").size())
    table.insert(4, "reached", frame.groupby("row").to_target_s.count())
    table.index.name = f"setting (target: {100 * target:.2f}% validation accuracy)"
    return table.sort_values("to_target_s")
