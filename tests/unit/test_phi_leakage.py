"""Table 5 revisited (analysis/phi_leakage.py): SGLR at phi > 0 against phi 0, paired by seed,
with verdicts that read Holm-adjusted p and each metric's direction."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sglr_ray.analysis.phi_leakage import phi_contrasts


def privacy_rows(values: dict[tuple[str, str, float], list[float]], method: str = "sglr") -> pd.DataFrame:
    """load_privacy-shaped rows of the target client 0 (and a decoy row of client 1 per run)."""
    rows = []
    for (attack, metric, phi), per_seed in values.items():
        for seed, value in enumerate(per_seed):
            common = {"attack": attack, "metric": metric, "phi": phi, "alpha": 0.5, "seed": seed,
                      "recorded_method": method, "defense": "", "compress": "none",
                      "leakage_client": 0}  # fmt: skip
            rows += [{**common, "client_id": 0, "value": value}, {**common, "client_id": 1, "value": -99.0}]
    return pd.DataFrame(rows)


def test_directions_and_adjusted_verdicts() -> None:
    seeds = np.arange(5)
    rows = privacy_rows({
        ("inversion", "mse", 0.0): list(0.020 + 0.001 * seeds),
        ("inversion", "mse", 1.0): list(0.030 + 0.001 * seeds + 0.0001 * (seeds % 2)),  # higher: less leakage
        ("inversion", "ssim", 0.0): [0.6, 0.7, 0.5, 0.6, 0.7],
        ("inversion", "ssim", 1.0): [0.7, 0.6, 0.6, 0.5, 0.7],  # moves both ways: noise
        ("broadcast", "label_acc", 0.0): [0.1] * 5,
        ("broadcast", "label_acc", 1.0): [0.21, 0.22, 0.20, 0.23, 0.21],  # higher: more leakage
        ("broadcast", "chance_acc", 1.0): [0.1] * 5,  # bookkeeping, not contrasted
    })  # fmt: skip
    table = phi_contrasts(rows).set_index(["attack", "metric"])
    assert set(table.index) == {("inversion", "mse"), ("inversion", "ssim"), ("broadcast", "label_acc")}
    mse = table.loc[("inversion", "mse")]
    assert mse.pairs == 5 and mse.difference == pytest.approx(
        0.010, abs=1e-4
    )  # the decoy client's -99 unused
    assert mse["p Holm"] < 0.05 and mse.verdict == "leaks less at this phi"
    assert table.loc[("broadcast", "label_acc")].verdict == "leaks more at this phi"
    assert table.loc[("inversion", "ssim")].verdict == "inside the noise"


def test_only_sglr_runs_with_a_phi_0_partner_are_compared() -> None:
    one_seed = privacy_rows({("inversion", "mse", 0.0): [0.02], ("inversion", "mse", 0.5): [0.03]})
    assert phi_contrasts(one_seed).verdict.tolist() == ["no test"]  # one pair: no interval, no test
    assert phi_contrasts(privacy_rows({("inversion", "mse", 0.5): [0.02, 0.03]})).empty  # no phi 0
    psl = privacy_rows(
        {("inversion", "mse", 0.0): [0.02, 0.03], ("inversion", "mse", 1.0): [0.03, 0.04]}, "psl"
    )
    assert phi_contrasts(psl).empty
