"""A study of controls read against its baseline studies: each control run minus the baseline's run
of the same cell and seed, and whether a knob's effect over PSL changes under the control (a
difference in differences, paired by seed).

A control study (results/paper-controls) reruns cells of baseline studies (results/paper-table12
and paper-table3) with a setting changed: fp32 for bf16, SGD for Adam, the authors' loss and
gradient scale. Which settings a control changes is read from the runs, not listed here: an
identity setting that takes one value throughout the baselines and another in some control run.
A control run pairs with the baseline run that agrees with it on every other identity setting,
the seed included, and on the test images.

  sglr-ray report results/paper-controls --baseline results/paper-table12 --baseline results/paper-table3
"""

from __future__ import annotations

import pandas as pd

from sglr_ray.analysis import significance
from sglr_ray.analysis.runs import IDENTITY, completed_runs, setting_labels
from sglr_ray.analysis.tables import PLAIN

__all__ = ["changed_settings", "control_lines", "control_pairs", "effect_changes"]


def _text(value: object) -> str:
    """A setting's value as text, so that a missing value equals a missing one."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    return f"{value:g}" if isinstance(value, float) else str(value)


def changed_settings(controls: pd.DataFrame, baseline: pd.DataFrame) -> list[str]:
    """The identity settings (seed aside) with one value throughout `baseline` and another in some
    run of `controls`: what the controls change."""
    changed = []
    for name in IDENTITY:
        if name == "seed" or baseline.empty:
            continue
        base = baseline[name].map(_text)
        if base.nunique() == 1 and controls[name].map(_text).ne(base.iloc[0]).any():
            changed.append(name)
    return changed


def _pair_keys(frame: pd.DataFrame, changed: list[str]) -> list[str]:
    columns = [name for name in IDENTITY if name not in changed] + ["test_set_digest"]
    return ["|".join(map(_text, row)) for row in frame[columns].itertuples(index=False)]


def control_pairs(controls: pd.DataFrame, baseline: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """One row per completed control run that differs from the baselines in a changed setting and
    has a baseline run of the same cell and seed: variant (e.g. 'precision fp32'), setting (the
    cell's label), C, seed, method, alpha, phase, treatment (the control's accuracy, %), control
    (the baseline's) and diff (points); and a line per control run without a baseline run."""
    controls, baseline = completed_runs(controls), completed_runs(baseline)
    if controls.empty or baseline.empty:
        return pd.DataFrame(), []
    return _pairs(controls, baseline, changed_settings(controls, baseline))


def _pairs(
    controls: pd.DataFrame, baseline: pd.DataFrame, changed: list[str]
) -> tuple[pd.DataFrame, list[str]]:
    """control_pairs of completed runs, the settings the controls change given."""
    constant = {name: _text(baseline[name].iloc[0]) for name in changed}
    variant = [
        ", ".join(f"{name} {_text(row[name])}" for name in changed if _text(row[name]) != constant[name])
        for row in controls.to_dict("records")
    ]
    controls = controls.assign(variant=variant, setting=setting_labels(controls, with_clients=False))
    controls = controls[controls.variant != ""]
    base = baseline.assign(pair=_pair_keys(baseline, changed), control=100 * baseline.final_test_acc)
    merged = controls.assign(pair=_pair_keys(controls, changed), treatment=100 * controls.final_test_acc)
    merged = merged.merge(base[["pair", "control"]], on="pair", how="left")
    alone = merged[merged.control.isna()]
    unpaired = [
        f"{v}: {s} C={c} seed {k}" for v, s, c, k in alone[["variant", "setting", "C", "seed"]].values
    ]
    pairs = merged[merged.control.notna()]
    columns = ["variant", "setting", "C", "seed", "method", "alpha", "phase", "treatment", "control"]
    pairs = pairs[columns].sort_values(["variant", "C", "setting", "seed"], ignore_index=True)
    return pairs.assign(diff=pairs.treatment - pairs.control), unpaired


def effect_changes(pairs: pd.DataFrame) -> pd.DataFrame:
    """From control_pairs: per variant, C, seed and cell other than PSL, the cell's gain over PSL
    under the control (treatment) and in the baseline (control), and diff, the change in the gain
    (a difference in differences; a seed counts where all four runs exist)."""
    is_plain = pairs.method.eq(PLAIN) & pairs.phase.eq("all")
    keys = ["variant", "C", "seed"]
    plain = pairs.loc[is_plain, [*keys, "treatment", "control"]]
    cells = pairs[~is_plain].merge(plain, on=keys, suffixes=("", "_plain"))
    gain_control = cells.treatment - cells.treatment_plain
    gain_baseline = cells.control - cells.control_plain
    frame = cells[["variant", "setting", "C", "seed"]].assign(treatment=gain_control, control=gain_baseline)
    return frame.assign(diff=frame.treatment - frame.control)


def _tested(frame: pd.DataFrame) -> pd.DataFrame:
    """A pairs frame in significance.tests_lines' shape: one setting label per (variant, cell), no
    paper figure (the paper ran none of these controls)."""
    label = frame.variant + ": " + frame.setting
    return frame[["C", "seed", "treatment", "control", "diff"]].assign(setting=label, paper=float("nan"))


def control_lines(controls: pd.DataFrame, baseline: pd.DataFrame, baseline_dirs: list[str]) -> list[str]:
    """The report's section: the controls against their baselines, then each knob's gain over PSL
    under the control against the same gain in the baseline; [] where nothing pairs."""
    controls, baseline = completed_runs(controls), completed_runs(baseline)
    if controls.empty or baseline.empty:
        return []
    changed = changed_settings(controls, baseline)
    pairs, unpaired = _pairs(controls, baseline, changed)
    if pairs.empty:
        return []
    lines = [
        "",
        "## Controls against the baseline studies",
        "",
        f"Baselines: {', '.join(f'`{d}`' for d in baseline_dirs)}. "
        f"Settings the controls change: {', '.join(changed)} "
        "(each takes one value throughout the baselines). A control run pairs with the baseline run that "
        "agrees with it on every other setting, the seed and the test images.",
        "",
        "### Each control minus the baseline run of the same cell (accuracy points)",
        *significance.tests_lines(_tested(pairs), None, "baseline", ("control %", "baseline %"), paper=False),
    ]
    changes = effect_changes(pairs)
    if not changes.empty:
        lines += [
            "",
            f"### Does the control change a knob's gain over {PLAIN.upper()}? (accuracy points)",
            "",
            f"Per seed: (cell - {PLAIN.upper()}) under the control minus (cell - {PLAIN.upper()}) in the "
            "baseline, the same C and seed; a difference in differences. under control / baseline: "
            "the mean gains.",
            *significance.tests_lines(
                _tested(changes), None, "baseline", ("under control", "baseline"), paper=False
            ),
        ]
    for line in unpaired:
        lines += ["", f"No baseline run for {line}."]
    return lines
