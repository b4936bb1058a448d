"""Tables like the paper's, computed from a results directory (see sglr_ray/results/writer.py).

Every function takes an output directory or a frame already loaded from one,
counts completed runs only (one per run_key), and returns accuracies in
percent. A cell averages over seeds only runs that share a cell_key (all
settings equal but the seed): a table refuses runs that differ in anything
it does not show. Grid tables carry a `stat` column level (mean, std, ci95:
half-width of the 95% interval, Student t; n seeds); `means(table)` drops it
to the paper's shape.

  from sglr_ray.analysis import tables as analysis
  runs = analysis.load_runs("results/table12")
  analysis.compare_with_paper(analysis.accuracy_by_clients_alpha(runs), analysis.paper_reference()["table1"])
  analysis.paired_difference(runs, {"method": "sglr"}, {"method": "psl"})  # per C: mean and 95% CI
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd

from sglr_ray.analysis.paper import (
    best_per_method,
    compare_with_paper,
    drops_with_clients,
    gain_over,
    means,
    paper_reference,
    server_saving,
)
from sglr_ray.analysis.runs import (
    GRID_METHODS,
    SETTING,
    SETTING_KNOBS,
    MixedWorkloadError,
    Source,
    check_cells,
    check_one_workload,
    completed_runs,
    effective_method,
    load_epochs,
    load_leakage,
    load_runs,
    method_family,
    method_rank,
    setting_keys,
    setting_label,
    setting_labels,
    split_workloads,
    workload_columns,
    workload_label,
)
from sglr_ray.analysis.stats import paired_summary, summarise

__all__ = [
    "CONVERGED_POINTS", "GRID_METHODS", "MB", "PLAIN", "SETTING", "STATS", "AmbiguousPairError",
    "MixedWorkloadError", "accuracy_by_clients_alpha", "accuracy_by_clients_phi", "accuracy_by_phase",
    "accuracy_per_epoch", "best_per_method", "communication_per_epoch", "compare_with_paper",
    "completed_runs", "convergence", "drops_with_clients", "effective_method", "gain_over", "last_gains",
    "leakage_by_phi", "load_epochs", "load_leakage", "load_runs", "means", "method_comparison",
    "paired_difference", "paired_pairs", "paired_with_plain", "paired_with_throughout", "pairs_with",
    "pairs_with_throughout", "paper_reference", "server_saving", "setting_label", "setting_labels",
    "split_workloads", "workload_columns", "workload_label"
]  # fmt: skip

MB = 1e6
STATS = ["mean", "std", "ci95", "n"]
Filter = Mapping[str, Any] | Callable[[pd.DataFrame], pd.Series]


class AmbiguousPairError(ValueError):
    """A treatment or control filter of paired_difference matches more than one run per pair."""


def _one_workload(runs: Source) -> pd.DataFrame:
    runs = completed_runs(runs)
    check_one_workload(runs)
    return runs.assign(acc=100 * runs.final_test_acc)


# ---------------------------------------------------------------- accuracy grids (Tables 1-3)


def _grid(runs: pd.DataFrame, keep: pd.Series, columns: list[str]) -> pd.DataFrame:
    """Rows C, columns `columns` x stat, from the runs `keep` selects (C = 1: see _single_client_row)."""
    many = runs[keep & (runs.C > 1)]
    check_cells(many, ["C", *columns])
    table = summarise(many, ["C", *columns], "acc").unstack(columns) if len(many) else pd.DataFrame()
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
    (C**alpha = 1, nobody to average with), so every grid run with C = 1 stands for it."""
    single = runs[runs.method.isin(GRID_METHODS) & (runs.C == 1)]
    if single.empty:
        return pd.DataFrame()
    # One value per seed: the same seed under several (alpha, phi) is the same computation.
    per_seed = single.groupby("seed").acc.mean().rename("acc").reset_index().assign(cell=1)
    row = summarise(per_seed, ["cell"], "acc").iloc[0]
    return pd.DataFrame({(s, *k): [row[s]] for s in STATS for k in labels}, index=[1])


def _labels(frame: pd.DataFrame, columns: list[str]) -> list:
    return sorted(frame[columns].drop_duplicates().itertuples(index=False, name=None))


def _tuple(label: object) -> tuple:
    return label if isinstance(label, tuple) else (label,)


def accuracy_by_clients_alpha(runs: Source) -> pd.DataFrame:
    """Table 1: final test accuracy (%), rows C, columns alpha x stat; grid methods, phi = 0, phase all."""
    runs = _one_workload(runs)
    keep = runs.method.isin(GRID_METHODS) & (runs.phase == "all") & (runs.phi == 0)
    return _grid(runs, keep, ["alpha"])


def accuracy_by_clients_phi(runs: Source) -> pd.DataFrame:
    """Table 2: final test accuracy (%), rows C, columns (alpha, phi) x stat; grid methods, phase all."""
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


# ---------------------------------------------------------------- methods, leakage, communication


def _sort_methods(table: pd.DataFrame) -> pd.DataFrame:
    def rank(level: pd.Index) -> pd.Index:
        return level.map(method_rank) if level.name == "method" else level

    return table.sort_index(key=rank)


def method_comparison(runs: Source) -> pd.DataFrame:
    """Table 4: per setting (method, C, alpha, phi, phase; a method setting such as local_epochs
    where runs differ in it): accuracy % (acc mean, acc_std, acc_ci95 over seeds, n seeds), PFLOPs
    per client and on the server, MB moved per client in the run and per epoch."""
    runs = _one_workload(runs)
    if runs.empty:
        return pd.DataFrame()
    runs = runs.assign(
        mb_per_client=runs.bytes_per_client_mean / MB,
        mb_per_client_epoch=runs.bytes_per_client_mean / MB / runs.epochs_done,
    )
    keys = setting_keys(runs)
    check_cells(runs, keys)
    table = summarise(runs, keys, "acc").rename(columns={"mean": "acc", "std": "acc_std", "ci95": "acc_ci95"})
    costs = ["client_pflops_mean", "server_pflops", "mb_per_client", "mb_per_client_epoch"]
    costs = runs.groupby(keys, dropna=False)[costs].mean()
    table = table.join(costs.rename(columns={"client_pflops_mean": "client_pflops"}))
    return _sort_methods(table)


def leakage_by_phi(leakage: Source) -> pd.DataFrame:
    """Table 5: reconstruction mse, psnr, ssim and distance correlation per phi (metric x stat
    columns); rows also by method, C, alpha or phase where the runs differ in them."""
    leakage = load_leakage(leakage) if not isinstance(leakage, pd.DataFrame) else leakage
    if leakage.empty:
        return pd.DataFrame()
    leakage = leakage[leakage.status == "completed"]
    check_one_workload(leakage)
    families = {method_family(m) for m in leakage.method}
    rows = ["method"] if len(families) > 1 else []
    rows += [c for c in ("C", "alpha", "phase") if leakage[c].nunique() > 1] + ["phi"]
    check_cells(leakage, rows)
    metrics = ["mse", "psnr", "ssim", "distance_correlation"]
    return pd.concat({m: summarise(leakage, rows, m) for m in metrics}, axis=1, names=["metric", "stat"])


def communication_per_epoch(epochs: Source) -> pd.DataFrame:
    """Per setting: MB per epoch (all clients) up, down and sent by the server, MB per client
    per epoch (up + down), averaged over epochs and seeds; n seeds."""
    epochs = load_epochs(epochs) if not isinstance(epochs, pd.DataFrame) else epochs
    epochs = epochs[epochs.status == "completed"]
    if epochs.empty:
        return pd.DataFrame()
    check_one_workload(epochs)
    epochs = epochs.assign(
        mb_up=epochs.bytes_up / MB,
        mb_down=epochs.bytes_down / MB,
        mb_server_sent=epochs.bytes_server_sent / MB,
        mb_per_client=(epochs.bytes_up + epochs.bytes_down) / MB / epochs.C,
    )
    keys = setting_keys(epochs)
    check_cells(epochs, keys)
    grouped = epochs.groupby(keys, dropna=False)
    table = grouped[["mb_up", "mb_down", "mb_server_sent", "mb_per_client"]].mean()
    table["n"] = grouped.seed.nunique()
    return _sort_methods(table)


def accuracy_per_epoch(epochs: Source) -> pd.DataFrame:
    """Validation accuracy (%) per epoch (rows, 1-based), one column per setting, mean over seeds."""
    epochs = load_epochs(epochs) if not isinstance(epochs, pd.DataFrame) else epochs
    epochs = epochs[epochs.status == "completed"]
    if epochs.empty:
        return pd.DataFrame()
    check_one_workload(epochs)
    check_cells(epochs, setting_keys(epochs))
    frame = epochs.assign(setting=setting_labels(epochs), epoch=epochs.epoch + 1, acc=100 * epochs.val_acc)
    return frame.pivot_table(index="epoch", columns="setting", values="acc", aggfunc="mean")


def accuracy_against_sim_time(epochs: Source) -> pd.DataFrame:
    """Time to accuracy: per setting and epoch (1-based), the mean over seeds of the virtual clock
    (`sim_time_s`) and of the validation accuracy (%); empty where no epoch has a simulated time."""
    epochs = load_epochs(epochs) if not isinstance(epochs, pd.DataFrame) else epochs
    if "sim_time_s" not in epochs:
        return pd.DataFrame()
    epochs = epochs[(epochs.status == "completed") & epochs.sim_time_s.notna()]
    if epochs.empty:
        return pd.DataFrame()
    frame = epochs.assign(setting=setting_labels(epochs), epoch=epochs.epoch + 1, acc=100 * epochs.val_acc)
    return frame.groupby(["setting", "epoch"])[["sim_time_s", "acc"]].mean()


CONVERGED_POINTS = 0.5  # an epoch budget is enough where a run's last epochs gain less than this


def convergence(epochs: Source, window: int = 2) -> pd.DataFrame:
    """The plateau check behind an epoch budget: per setting, the validation accuracy (points) of
    each run's last `window` epochs minus that of the `window` before them, as the largest over
    seeds (`last_gain`), the number of runs, and `over`: how many runs gained CONVERGED_POINTS
    or more (they break the rule). A budget is enough when last_gain stays small."""
    per_run = last_gains(epochs, window)
    if per_run.empty:
        return pd.DataFrame()
    keys = [k for k in per_run.index.names if k not in ("run_id", "seed")]
    grouped = per_run.groupby(level=keys, dropna=False)
    over = (per_run >= CONVERGED_POINTS).groupby(level=keys, dropna=False).sum()
    return _sort_methods(pd.DataFrame({"last_gain": grouped.max(), "runs": grouped.size(), "over": over}))


def last_gains(epochs: Source, window: int = 2) -> pd.Series:
    """Per run (index: the setting keys, seed and run_id): the validation accuracy (points) of its
    last `window` epochs minus that of the `window` before; NaN for a run too short to tell."""
    epochs = load_epochs(epochs) if not isinstance(epochs, pd.DataFrame) else epochs
    epochs = epochs[epochs.status == "completed"]
    if epochs.empty:
        return pd.Series(dtype=float)
    keys = setting_keys(epochs)
    check_cells(epochs, keys)

    def gain(run: pd.DataFrame) -> float:
        acc = 100 * run.sort_values("epoch").val_acc.to_numpy()
        if len(acc) < 2 * window:
            return float("nan")
        return float(acc[-window:].mean() - acc[-2 * window : -window].mean())

    return epochs.groupby([*keys, "seed", "run_id"], dropna=False)[["epoch", "val_acc"]].apply(gain)


# ---------------------------------------------------------------- paired differences


def _select(runs: pd.DataFrame, which: Filter) -> pd.Series:
    """The rows a filter picks: a callable's mask, or every column equal to the mapping's value
    (`method` is the effective method; a missing value matches a missing one)."""
    if callable(which):
        return which(runs).astype(bool)
    mask = pd.Series(True, index=runs.index)
    for column, value in which.items():
        if column not in runs.columns:
            raise KeyError(f"filter column {column!r} is not a column of the runs table")
        mask &= runs[column].eq(value) | (runs[column].isna() & pd.isna(value))
    return mask


def _one_per_pair(side: pd.DataFrame, keys: list[str], name: str) -> pd.DataFrame:
    repeated = side[side.duplicated(keys, keep=False)]
    if len(repeated):
        first = repeated.iloc[0]
        settings = sorted(setting_labels(repeated[repeated[keys].eq(first[keys]).all(axis=1)]))
        raise AmbiguousPairError(
            f"the {name} filter matches {len(settings)} runs at {first[keys].to_dict()}: "
            f"{settings}; add the setting that tells them apart to the filter"
        )
    return side[[*keys, "acc"]].rename(columns={"acc": name})


def paired_pairs(
    runs: Source, treatment: Filter, control: Filter, by: Sequence[str] = ("clients",)
) -> pd.DataFrame:
    """The pairs behind paired_difference, one row each: the `by` values, seed, test_set_digest,
    treatment and control accuracy (%) and diff (treatment - control, points)."""
    runs = completed_runs(runs)
    runs = runs.assign(acc=100 * runs.final_test_acc, test_set_digest=runs.test_set_digest.fillna(""))
    picked_t, picked_c = _select(runs, treatment), _select(runs, control)
    if (picked_t & picked_c).any():
        raise AmbiguousPairError("a run matches both the treatment and the control filter")
    by = list(by)
    check_one_workload(runs[picked_t | picked_c], varied=[*SETTING_KNOBS, *by])
    keys = [*by, "seed", "test_set_digest"]
    pairs = _one_per_pair(runs[picked_t], keys, "treatment").merge(
        _one_per_pair(runs[picked_c], keys, "control"), on=keys, how="inner"
    )
    return pairs.assign(diff=pairs.treatment - pairs.control)


def paired_difference(
    runs: Source, treatment: Filter, control: Filter, by: Sequence[str] = ("clients",)
) -> pd.DataFrame:
    """Treatment minus control in final test accuracy (points), paired: the same `by` values, the
    same seed and the same evaluation images (test_set_digest). Each filter is a mapping
    {column: value} (e.g. {"method": "sglr", "alpha": 0.5}) or a callable from the runs frame to
    a mask, and may match at most one run per pair. The runs must be one workload apart from the
    settings the two sides and `by` vary. Returns per `by` group: treatment and control means,
    diff (mean difference), ci95 (half-width of its 95% interval, Student t), low, high, n pairs,
    t and p (two-sided test of a zero difference), positive (pairs above zero); a group without
    a complete pair is left out."""
    return paired_summary(paired_pairs(runs, treatment, control, by), list(by))


# The plain split engine: what every grid method computes with alpha 0 and phi 0 (PSL).
PLAIN = effective_method(GRID_METHODS[0], 0.0, 0.0)


def paired_with_plain(runs: Source) -> tuple[pd.DataFrame, list[str]]:
    """Every other setting minus PLAIN (PSL) at the same C, seed and test images.

    Returns the paired_difference columns indexed by (setting label, C), empty when the runs have
    no PLAIN run or nothing pairs with one, and a line per setting that could not be paired.
    """
    pairs, skipped = pairs_with(runs, {"method": PLAIN, "phase": "all"})
    return _summary_by_setting(pairs), skipped


def pairs_with(runs: Source, control: Mapping[str, Any]) -> tuple[pd.DataFrame, list[str]]:
    """Every setting of the runs but `control`'s (a filter such as {"method": "psl", "phase":
    "all"}) minus the control run at the same C, seed and test images: one row per pair (paired_pairs'
    columns with `setting`, its label, `C` and the setting's method, alpha, phi and phase), and a line per
    setting that could not be paired. Empty when no run matches the control."""
    runs = completed_runs(runs)
    frame = method_comparison(runs).reset_index()
    if frame.empty or not _select(runs, control).any():
        return pd.DataFrame(), []
    method_settings = [k for k in setting_keys(frame) if k not in SETTING]
    keys = [k for k in frame.columns if k in SETTING and k != "C"] + method_settings
    parts, skipped = [], []
    for setting in frame[keys].drop_duplicates().to_dict("records"):
        if all(setting.get(k) == v for k, v in control.items()):
            continue
        label = setting_labels(pd.DataFrame([setting]).assign(C=None), with_clients=False)[0]
        try:
            pairs = paired_pairs(runs, setting, control, by=["clients"])
        except AmbiguousPairError as ex:
            skipped.append(f"{label}: {ex}")
            continue
        knobs = {k: setting[k] for k in ("method", "alpha", "phi", "phase")}
        parts.append(pairs.rename(columns={"clients": "C"}).assign(setting=label, **knobs))
    return (pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()), skipped


def paired_with_throughout(runs: Source) -> pd.DataFrame:
    """Each averaging phase minus averaging throughout (phase "all"), both with phi = 1, at the
    same C, alpha, seed and test images: Table 3's comparison. The paired_difference columns
    indexed by (phase label, C); empty when nothing pairs."""
    return _summary_by_setting(pairs_with_throughout(runs))


def pairs_with_throughout(runs: Source) -> pd.DataFrame:
    """paired_with_throughout's pairs, one row each (paired_pairs' columns with `setting`, `C`,
    alpha and phase)."""
    runs = completed_runs(runs)
    phased = runs[runs.method.isin(GRID_METHODS) & (runs.phi == 1)]
    settings = phased[["alpha", "phase"]].drop_duplicates().sort_values(["alpha", "phase"])
    parts = []
    for alpha, phase in settings.itertuples(index=False):
        if phase == "all":
            continue
        label = phase if phased.alpha.nunique() == 1 else f"{phase} a={alpha:g}"
        pairs = paired_pairs(phased, {"phase": phase, "alpha": alpha}, {"phase": "all", "alpha": alpha})
        parts.append(pairs.rename(columns={"clients": "C"}).assign(setting=label, alpha=alpha, phase=phase))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _summary_by_setting(pairs: pd.DataFrame) -> pd.DataFrame:
    """paired_summary per (setting, C), settings in their order of first appearance."""
    if pairs.empty:
        return pd.DataFrame()
    order = list(dict.fromkeys(pairs.setting))
    table = paired_summary(pairs, ["setting", "C"])
    return table.reindex(sorted(table.index, key=lambda k: (order.index(k[0]), k[1])))
