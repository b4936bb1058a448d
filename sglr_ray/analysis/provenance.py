"""What made a results directory's runs: machines, code versions, resumes, and which runs a
newer run of today's defaults supersedes.

A run is superseded when it was recorded before a setting existed (its row's config_json lacks
the setting), so it ran the setting's `absent_means` value, today's default resolves to another
value for its method, and a completed run of today's value exists in the same cell. The FL, SFL
and SFLv1 runs recorded before client_optimizer_state kept their optimizers; the default now
resets them, and reset runs of the same cells exist: reports leave the old ones out unless asked.
"""

from __future__ import annotations

import json

import pandas as pd

from sglr_ray.analysis.markdown import markdown_table
from sglr_ray.analysis.runs import IDENTITY_FIELDS, annotate, setting_labels, settings_key
from sglr_ray.config import resolved_optimizer_state

# Settings whose default resolves per method; any other's default is its declared value.
_RESOLVE = {"client_optimizer_state": resolved_optimizer_state}
_LATER = [f for f in IDENTITY_FIELDS if f.metadata["absent_means"] is not None]
UNCOMMITTED = ".dirty"  # version.code_version's mark of a tree with uncommitted changes


def _recorded_settings(config_json: object) -> set[str]:
    return set(json.loads(config_json)) if isinstance(config_json, str) and config_json else set()


def _today(name: str, default: object, method: str) -> object:
    resolve = _RESOLVE.get(name)
    return resolve(method, default) if resolve else default


def superseded(runs: pd.DataFrame) -> pd.Series:
    """A mask over `runs` (load_runs' frame): the completed runs a run of today's defaults
    supersedes (see the module docstring)."""
    done = annotate(runs[runs.status == "completed"])
    cells = set(done.cell_key)
    mask = pd.Series(False, index=runs.index)
    for index, row in done.iterrows():
        for name, today in _absent_and_changed(row).items():
            if settings_key({**row.to_dict(), name: today}, with_seed=False) in cells:
                mask[index] = True
    return mask


def _absent_and_changed(row: pd.Series) -> dict[str, object]:
    """The settings `row` was recorded before whose value it ran differs from today's default
    for its method, each with today's value; a setting added later that the run ran at today's
    value changes nothing and is not named."""
    recorded = _recorded_settings(row.get("config_json"))
    changed = {}
    for field in _LATER:
        today = _today(field.name, field.default, row["method"])
        if field.name not in recorded and row[field.name] != today:
            changed[field.name] = today
    return changed


def left_out(runs: pd.DataFrame, include_superseded: bool) -> pd.Series:
    """The mask of the runs a report leaves out: the superseded ones, unless asked to include them."""
    return pd.Series(False, index=runs.index) if include_superseded else superseded(runs)


def superseded_lines(left_out: pd.DataFrame) -> list[str]:
    """One line per superseded setting left out of a report: its label, seeds and why."""
    if left_out.empty:
        return []
    named = annotate(left_out)
    lines = []
    for label, group in named.groupby(setting_labels(named), sort=True):
        seeds = ", ".join(str(int(s)) for s in sorted(group.seed))
        lines.append(f"- {label}, seeds {seeds}: recorded before {_missing(group.iloc[0])} existed")
    return lines


def _missing(row: pd.Series) -> str:
    names = [f"{name} (ran as {row[name]})" for name in _absent_and_changed(row)]
    return ", ".join(names) or "a setting"


def provenance_lines(runs: pd.DataFrame, left_out: pd.DataFrame) -> list[str]:
    """The report's provenance section: run counts, machines, code versions (uncommitted trees
    flagged), resumed runs, and the superseded runs left out."""
    done = runs[runs.status == "completed"]
    counts = runs.status.value_counts()
    lines = [
        "", "## Provenance", "",
        f"{len(runs)} runs recorded: {counts.get('completed', 0)} completed, {counts.get('running', 0)} "
        f"running, {counts.get('failed', 0)} failed; {len(left_out)} superseded (left out below).",
    ]  # fmt: skip
    lines += ["", "Every completed run, superseded ones included:"]
    lines += ["", markdown_table(_count(done, "machine", "machine (driver's CPU, torch)"))]
    versions = _count(done, "code_version", "code version")
    versions["uncommitted"] = ["yes" if UNCOMMITTED in str(v) else "" for v in versions.index]
    dirty = int(versions.loc[versions.uncommitted == "yes", "runs"].sum())
    lines += ["", markdown_table(versions), "", _versions_sentence(done, len(versions), dirty)]
    if len(left_out):
        lines += ["", "Superseded runs left out (`sglr-ray report --include-superseded` shows them):", ""]
        lines += superseded_lines(left_out)
    return lines


def _count(frame: pd.DataFrame, column: str, name: str) -> pd.DataFrame:
    values = frame[column] if column in frame.columns else pd.Series(index=frame.index, dtype=object)
    counts = values.fillna("not recorded").value_counts()
    return pd.DataFrame({"runs": counts.to_numpy()}, index=pd.Index(counts.index, name=name))


def _versions_sentence(done: pd.DataFrame, versions: int, dirty: int) -> str:
    resumed = int((done.resumes.fillna(0) > 0).sum()) if "resumes" in done.columns else 0
    both = done.code_version.fillna("").str.contains(" + ", regex=False).sum()
    text = (
        f"{versions} code version{'s' if versions != 1 else ''}; {dirty} of {len(done)} completed runs "
        f"ran from a tree with uncommitted changes ({UNCOMMITTED}), whose code no commit holds exactly. "
        f"{resumed} run{'s were' if resumed != 1 else ' was'} resumed from a checkpoint"
    )
    if resumed:
        text += (
            f"; {both} name every start's code version, the other {resumed - both} one: the same code "
            "throughout, or a row written before resumes appended theirs, which kept the first start's only"
        )
    return text + "."
