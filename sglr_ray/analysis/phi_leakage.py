"""Table 5 revisited (issue 26): does a larger phi leak less, paired by seed?

The paper's Table 5 says an honest-but-curious server reconstructs less from SGLR as phi grows.
Seeds move these metrics more than phi does (results/leakage-table5), so the comparison pairs
each SGLR run at phi > 0 with the run at phi 0 of the same seed, alpha, defense and attack: the
same partition, initial weights, auxiliary and test images. One row per (attack, metric,
defense, alpha, phi): the mean difference (phi minus phi 0) with its 95% interval, the paired
t-test, Holm's adjustment within each (attack, metric) family, and a verdict that reads the adjusted p and the
metric's direction (privacy/metrics.py: for mse higher is less leakage, for the rest lower).

  from sglr_ray.analysis.phi_leakage import phi_contrasts
  phi_contrasts(load_privacy("results/privacy-study"))   # analysis.runs.load_privacy
"""

from __future__ import annotations

import pandas as pd

from sglr_ray.analysis.markdown import markdown_table
from sglr_ray.analysis.significance import LEVEL
from sglr_ray.analysis.stats import holm, paired_summary
from sglr_ray.analysis.tradeoff import defense_labels
from sglr_ray.privacy.metrics import LESS_LEAKAGE_WHEN_HIGHER

__all__ = ["CONTRASTED", "phi_contrasts", "phi_lines"]
# The metrics compared per attack: each attack's leakage measures, not its bookkeeping
# (chance levels, the share of steps that carried a broadcast).
CONTRASTED = {
    "inversion": ("mse", "ssim", "dcor"),
    "fsha": ("mse", "ssim"),
    "broadcast": ("label_acc", "row_acc"),
}
_KEYS = ["attack", "metric", "defense", "alpha"]


def phi_contrasts(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (attack, metric, defense, alpha, phi > 0): pairs, the phi 0 and phi means, the paired
    difference with its 95% half-width, p, p Holm (within the attack and metric), pairs above zero and the
    verdict. `rows`: analysis.runs.load_privacy's frame. Empty where no SGLR attack ran at phi 0
    and at another phi."""
    sglr = rows[(rows.recorded_method == "sglr") & (rows.client_id == rows.leakage_client)]
    sglr = sglr[
        [
            metric in CONTRASTED.get(attack, ())
            for attack, metric in zip(sglr.attack, sglr.metric, strict=True)
        ]
    ]
    if sglr.empty:
        return pd.DataFrame()
    values = (
        sglr.assign(defense=defense_labels(sglr)).groupby([*_KEYS, "phi", "seed"]).value.mean().reset_index()
    )
    # One row per pair: each run at phi > 0 beside the phi 0 run of the same keys and seed.
    control = values[values.phi == 0].drop(columns="phi").rename(columns={"value": "control"})
    pairs = values[values.phi > 0].rename(columns={"value": "treatment"}).merge(control, on=[*_KEYS, "seed"])
    if pairs.empty:
        return pd.DataFrame()
    summary = paired_summary(pairs, [*_KEYS, "phi"]).reset_index()
    table = pd.DataFrame({
        **{key: summary[key] for key in [*_KEYS, "phi"]}, "pairs": summary.n, "phi 0": summary.control,
        "at phi": summary.treatment, "difference": summary["diff"], "ci95": summary.ci95, "p": summary.p,
        "above zero": summary.positive,
    })  # fmt: skip
    adjusted = table.groupby(["attack", "metric"]).p.transform(
        lambda p: pd.Series(holm(p.to_numpy()), p.index)
    )
    table.insert(table.columns.get_loc("p") + 1, "p Holm", adjusted)
    table["verdict"] = [_verdict(r.metric, r.difference, r["p Holm"]) for _, r in table.iterrows()]
    return table


def _verdict(metric: str, difference: float, p_holm: float) -> str:
    if pd.isna(p_holm):
        return "no test"
    if p_holm >= LEVEL:
        return "inside the noise"
    less = (difference > 0) == (metric in LESS_LEAKAGE_WHEN_HIGHER)
    return "leaks less at this phi" if less else "leaks more at this phi"


def phi_lines(rows: pd.DataFrame) -> list[str]:
    """The report's "Table 5 revisited" subsection from load_privacy's `rows`; [] without data."""
    table = phi_contrasts(rows) if not rows.empty else pd.DataFrame()
    if table.empty:
        return []
    shown = pd.DataFrame({
        "attack": table.attack, "metric": table.metric, "defense": table.defense,
        "alpha": table.alpha.map("{:g}".format), "phi": table.phi.map("{:g}".format), "pairs": table.pairs,
        "phi 0": table["phi 0"].map("{:.4f}".format), "at phi": table["at phi"].map("{:.4f}".format),
        "difference": table.difference.map("{:+.4f}".format),
        "interval": [_interval(d, h) for d, h in zip(table.difference, table.ci95, strict=True)],
        "p": table.p, "p Holm": table["p Holm"],
        "+": [f"{a}/{n}" for a, n in zip(table["above zero"], table.pairs, strict=True)],
        "verdict": table.verdict,
    })  # fmt: skip
    return [
        "",
        "### Table 5 revisited: SGLR at phi against phi 0, paired by seed",
        "",
        markdown_table(shown.set_index("attack")),
        "",
        "Each SGLR run at phi > 0 minus the run at phi 0 of the same seed, alpha, defense and attack (same "
        "partition, weights, auxiliary and test images), on the target client's metric. p: paired t-test "
        "(n - 1 degrees of freedom); p Holm: adjusted within each attack and metric; +: pairs above zero. "
        "The verdict reads p Holm < 0.05 and the metric's direction (mse: higher is less leakage; ssim, "
        "dcor, label_acc, row_acc: lower is less). The paper's Table 5: the server's reconstruction "
        "loss rises with phi (less leakage).",
    ]


def _interval(diff: float, half: float) -> str:
    return "" if pd.isna(half) else f"[{diff - half:+.4f}, {diff + half:+.4f}]"
