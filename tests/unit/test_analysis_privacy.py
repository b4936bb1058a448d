"""The report's privacy section (analysis/tradeoff.py) on a hand-made results directory: a table and
a plot per attack, accuracy against the attack's main metric, one point per method and defense."""

from __future__ import annotations

from pathlib import Path

import pytest
from analysis_results import run_row, write_results

from sglr_ray.analysis.report import write_report
from sglr_ray.analysis.runs import load_privacy
from sglr_ray.analysis.tradeoff import tradeoff_table
from sglr_ray.results.writer import PRIVACY_SCHEMA, write_table_atomic

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SETTINGS = {  # (method knobs, defense settings): final accuracy, inversion mse, broadcast label_acc
    ("psl", ""): (0.80, 0.010, 0.10),
    ("psl", "noise:0.5"): (0.70, 0.050, 0.10),
    ("sglr", ""): (0.82, 0.011, 0.20),
    ("sglr", "int8"): (0.81, 0.012, 0.19),
}


def privacy_out(tmp_path: Path) -> Path:
    """Two seeds of each setting (seed 1 one point and 0.002 higher), with privacy rows; one run
    with a defense accountant's row, which is not an attack."""
    runs, rows = [], []
    for (method, defense), (acc, mse, label_acc) in SETTINGS.items():
        knobs = {"alpha": 0.5, "phi": 1.0} if method == "sglr" else {}
        compress, defense = ("int8", "") if defense == "int8" else ("none", defense)
        for seed in (0, 1):
            run_id = f"{method}-{defense or compress}-s{seed}"
            settings = {"defense": defense, "compress": compress, "attack": "inversion,broadcast", **knobs}
            runs.append(
                run_row(run_id, method=method, seed=seed, final_test_acc=acc + 0.01 * seed, **settings)
            )
            values = {("inversion", "mse"): mse + 0.002 * seed, ("inversion", "ssim"): 0.5,
                      ("broadcast", "label_acc"): label_acc, ("broadcast", "chance_acc"): 0.1}  # fmt: skip
            if defense:
                values[("accounting", "noise_epsilon")] = 3.0
            rows += [{"run_id": run_id, "attack": a, "client_id": 0, "metric": m, "value": v}
                     for (a, m), v in values.items()]  # fmt: skip
    out = write_results(tmp_path / "privacy-study", runs)
    (out / "privacy").mkdir()
    for run_id in {r["run_id"] for r in rows}:
        write_table_atomic([r for r in rows if r["run_id"] == run_id], PRIVACY_SCHEMA,
                           out / "privacy" / f"{run_id}.parquet")  # fmt: skip
    return out


def test_the_tradeoff_table_averages_seeds_per_method_and_defense(tmp_path):
    table = tradeoff_table(load_privacy(privacy_out(tmp_path)), "inversion")
    assert list(table.columns[:5]) == ["n", "acc", "acc_ci95", "mse", "mse_ci95"]
    row = table.loc[("psl", "noise:0.5")]
    assert row.n == 2 and row.acc == pytest.approx(70.5) and row.mse == pytest.approx(0.051)
    assert ("sglr a=0.5 phi=1", "int8") in table.index and len(table) == 4
    broadcast = tradeoff_table(load_privacy(privacy_out(tmp_path / "b")), "broadcast")
    assert broadcast.columns[3] == "label_acc" and (broadcast.chance_acc == 0.1).all()


def test_the_report_draws_one_tradeoff_plot_per_attack(tmp_path):
    out = privacy_out(tmp_path)
    text = write_report(out).read_text()
    assert "## Privacy: accuracy against leakage" in text
    for attack in ("inversion", "broadcast"):
        assert f"### {attack}" in text and f"(plots/privacy_{attack}.png)" in text
        assert (out / "plots" / f"privacy_{attack}.png").read_bytes()[:8] == PNG_MAGIC
    assert not (out / "plots" / "privacy_accounting.png").exists()
    assert sorted(p.name for p in (out / "plots").glob("privacy_*")) == [
        "privacy_broadcast.png",
        "privacy_inversion.png",
    ]
