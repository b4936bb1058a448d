"""The tests behind the reports' verdicts (issue 29): p-values, Holm, TOST and the pooled estimate
against hand computations on small synthetic tables, the report's sections, and superseded runs
left out unless asked. No Ray, no training.

The references are closed forms of Student's t with 2 degrees of freedom (its CDF is
1/2 + t / (2 sqrt(2 + t^2))) or Simpson's rule on the t density, never scipy.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest
from analysis_results import run_row, write_results
from test_analysis_keys_stats import paired_runs, t_cdf_above_zero

from sglr_ray.analysis import significance, stats
from sglr_ray.analysis import tables as analysis
from sglr_ray.analysis.paper import paper_difference
from sglr_ray.analysis.provenance import superseded
from sglr_ray.analysis.report import write_report
from sglr_ray.results.writer import write_table_atomic


def t2_cdf(t: float) -> float:
    return 0.5 + t / (2 * math.sqrt(2 + t * t))


def two_sided_p(t: float, dof: int) -> float:
    return 2 * (0.5 - t_cdf_above_zero(abs(t), dof))


# ---------------------------------------------------------------- hand-computed tests


def test_paired_test_of_1_2_4():
    # mean 7/3, std sqrt(7/3), standard error sqrt(7/9): t = sqrt(7), 2 degrees of freedom.
    test = stats.paired_test([1.0, 2.0, 4.0])
    assert test.t == pytest.approx(math.sqrt(7)) and test.n == 3
    assert test.p == pytest.approx(2 * (1 - t2_cdf(math.sqrt(7))))  # = 1 - sqrt(7)/3 = 0.1181
    assert test.p == pytest.approx(1 - math.sqrt(7) / 3)


@pytest.mark.parametrize("values", [[3.0, 3.0], [0.0, 0.0, 0.0], [2.0]])
def test_no_test_without_spread_or_a_second_pair(values):
    assert math.isnan(stats.paired_test(values).p)
    assert math.isnan(stats.equivalence_test(values, 1.0))


def test_holm_by_hand():
    # Sorted 0.01, 0.03, 0.04 times 3, 2, 1: 0.03, 0.06, 0.04, made monotone: 0.03, 0.06, 0.06.
    adjusted = stats.holm([0.01, 0.04, 0.03, float("nan")])
    assert adjusted[:3] == pytest.approx([0.03, 0.06, 0.06]) and math.isnan(adjusted[3])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # 0.5 x 2 capped at 1; monotone after


@pytest.mark.parametrize("margin", [5.0, -5.0, 3.0])
def test_tost_is_the_larger_one_sided_p(margin):
    se = math.sqrt(7 / 9)  # of 1, 2, 4
    above_lower = 1 - t2_cdf((7 / 3 + abs(margin)) / se)  # H0: mean <= -|margin|
    below_upper = t2_cdf((7 / 3 - abs(margin)) / se)  # H0: mean >= +|margin|
    assert stats.equivalence_test([1.0, 2.0, 4.0], margin) == pytest.approx(max(above_lower, below_upper))


@pytest.mark.parametrize("paper", [5.0, -5.0])
def test_shortfall_is_the_one_sided_p_on_zeros_side_of_the_paper(paper):
    se = math.sqrt(7 / 9)  # of 1, 2, 4 (mean 7/3)
    # H0 mean >= 5: p = P(T <= (7/3 - 5) / se); H0 mean <= -5: p = P(T >= (7/3 + 5) / se).
    expected = t2_cdf((7 / 3 - 5) / se) if paper > 0 else 1 - t2_cdf((7 / 3 + 5) / se)
    assert stats.shortfall_test([1.0, 2.0, 4.0], paper) == pytest.approx(expected)
    assert math.isnan(stats.shortfall_test([1.0, 2.0, 4.0], 0.0))
    assert math.isnan(stats.shortfall_test([3.0, 3.0], paper))


def test_tost_rejects_only_where_the_90_percent_interval_sits_inside_the_margin():
    diffs = [0.9, 1.0, 1.1, 1.0]
    half90 = 2.353363 * 0.0816497 / 2  # t(3) 0.95 quantile x std / sqrt(4)
    assert stats.equivalence_test(diffs, 1.0 + half90 + 0.01) < 0.05
    assert stats.equivalence_test(diffs, 1.0 + half90 - 0.01) > 0.05


def test_pooled_test_is_the_paired_t_over_every_pair():
    frame = pd.DataFrame({"C": [4, 4, 4, 10, 10], "seed": [0, 1, 2, 0, 1], "diff": [1.0, 2.0, 4.0, 3.0, 3.0]})
    values = frame["diff"]
    t = values.mean() / (values.std(ddof=1) / math.sqrt(5))
    pooled = stats.pooled_test(frame)
    assert (pooled.diff, pooled.n, pooled.t) == (pytest.approx(2.6), 5, pytest.approx(t))
    assert pooled.p == pytest.approx(two_sided_p(t, 4), abs=1e-6)
    seeds = stats.seed_means_test(frame)  # seed means 2, 2.5, 4
    t_seeds = (17 / 6) / (pd.Series([2.0, 2.5, 4.0]).std(ddof=1) / math.sqrt(3))
    assert seeds.n == 3 and seeds.p == pytest.approx(2 * (1 - t2_cdf(t_seeds)))


# ---------------------------------------------------------------- a table's family and the paper's effect


def grid_pairs(rows: list[tuple]) -> pd.DataFrame:
    """(setting, method, alpha, phi, C, diffs) rows as pairs_with writes them."""
    records = [
        {"setting": s, "method": m, "alpha": a, "phi": f, "phase": "all", "C": c, "seed": seed,
         "treatment": 80 + d, "control": 80.0, "diff": d, "paper": float("nan")}
        for s, m, a, f, c, diffs in rows for seed, d in enumerate(diffs)
    ]  # fmt: skip
    return pd.DataFrame(records)


def test_a_setting_computing_what_another_computes_is_not_a_second_test():
    pairs = grid_pairs([
        ("slr a=0.5", "slr", 0.5, 0.0, 2, [0.1, 0.3, -0.2]),
        ("sgl phi=0.5", "sgl", 0.0, 0.5, 2, [0.0, 0.0, 0.0]),  # floor(0.5 x 2) = 1: averages nobody
        ("sgl phi=0.5", "sgl", 0.0, 0.5, 4, [0.5, 0.7, 0.4]),
        ("sglr a=0.5 phi=0.5", "sglr", 0.5, 0.5, 2, [0.1, 0.3, -0.2]),  # is slr a=0.5 at C = 2
    ])  # fmt: skip
    table = significance.tests_table(pairs, "psl")
    assert table.loc[("sgl phi=0.5", 2), "verdict"] == "computes what psl computes"
    assert table.loc[("sglr a=0.5 phi=0.5", 2), "verdict"] == "computes what slr a=0.5 computes"
    assert table.p_holm.notna().sum() == 2  # the family: slr at C = 2 and sgl at C = 4
    p = table.loc[[("slr a=0.5", 2), ("sgl phi=0.5", 4)], "p"].to_numpy()
    assert table.p_holm.dropna().to_numpy() == pytest.approx(stats.holm(p))


def test_verdicts_read_the_adjusted_p_values():
    # Raw p about 0.034 each (t = 5.29, 2 degrees of freedom): under 0.05 alone, 0.17 after Holm.
    pairs = grid_pairs([(f"s{k}", "slr", 0.5 * (k + 1), 0.0, 4, [1.0, 1.3, 1.9]) for k in range(5)])
    table = significance.tests_table(pairs, "psl")
    assert (table.p < 0.05).all() and (table.p_holm > 0.05).all()
    assert set(table.verdict) == {"inside the noise"}


def test_tost_verdict_against_the_papers_effect():
    pairs = grid_pairs([("sglr", "sglr", 0.5, 0.5, 20, [1.1, 1.2, 1.25])]).assign(paper=2.6)
    row = significance.tests_table(pairs, "psl").iloc[0]
    assert row.verdict == "above; smaller than the paper's" and row.tost_holm < 0.05


def test_shortfall_verdict_where_our_difference_has_the_other_sign():
    # Ours about -2 with a wide spread, the paper's +3.3: TOST fails (-3.3 is not excluded on the
    # far side), but the paper's own +3.3 is: "short of the paper's", not "not excluded".
    pairs = grid_pairs([("sglr", "sglr", 0.5, 0.5, 5, [-2.0, -0.5, -1.0, -1.5, -5.0])]).assign(paper=3.3)
    row = significance.tests_table(pairs, "sfl").iloc[0]
    assert row.tost_holm > 0.05 and row.short_holm < 0.05
    assert row.verdict.endswith("; short of the paper's")
    tied = grid_pairs([("sglr", "sglr", 0.5, 0.5, 5, [3.0, 3.6, 3.1, 3.5, 3.2])]).assign(paper=3.3)
    assert significance.tests_table(tied, "sfl").iloc[0].verdict.endswith("; the paper's size not excluded")


def grid_row(**knobs) -> dict:
    return {"method": "psl", "alpha": 0.0, "phi": 0.0, "phase": "all"} | knobs


@pytest.mark.parametrize(
    ("model", "control", "row", "expected"),
    [
        ("resnet16", "psl", grid_row(method="sgl", phi=0.5, C=20), 86.59 - 84.88),
        ("resnet16", "psl", grid_row(method="slr", alpha=0.5, C=10), 84.78 - 83.49),
        ("resnet16", "psl", grid_row(method="slr", alpha=0.5, C=8), None),  # no such row in the paper
        ("alexnet", "psl", grid_row(method="sgl", phi=0.5, C=20), None),  # Table 2 is ResNet-16's
        ("alexnet-paper", "sglr", grid_row(method="sfl", C=5), 3.3),  # SGLR minus SFL
        ("alexnet", "psl", grid_row(method="cl", C=5), 90.5 - 84.7),
        ("resnet16", "all", {"alpha": 1.0, "phase": "final:0.6", "C": 20}, 86.53 - 60.67),
    ],
)  # fmt: skip
def test_paper_difference_matches_model_and_comparison(model, control, row, expected):
    found = paper_difference(model, control, pd.Series(row))
    assert math.isnan(found) if expected is None else found == pytest.approx(expected)


# ---------------------------------------------------------------- the report


def test_report_has_the_tests_pooled_and_provenance_sections(tmp_path):
    runs = paired_runs()
    runs[0]["code_version"] = "0.1.0+gabc.dirty"
    out = write_results(tmp_path / "o", runs)
    text = write_report(out).read_text()
    for heading in ("### Paired differences against PSL", "p Holm", "TOST Holm", "Pooled over C:",
                    "## Provenance", "| code version | runs | uncommitted |"):  # fmt: skip
        assert heading in text
    # C = 4: differences 1, 2, 4 (p = 1 - sqrt(7)/3); C = 10: 3 and 3, no spread, no test.
    assert f"| {1 - math.sqrt(7) / 3:.3g} | {1 - math.sqrt(7) / 3:.3g} | 3/3 |" in text
    assert "Under Holm's correction over 1 tests, 0 stay under 0.05" in text
    assert "1 of 11 completed runs ran from a tree with uncommitted changes" in text


def keep_and_reset_fl(tmp_path):
    """FL at C = 4: seeds 0-1 recorded before client_optimizer_state existed (ran as keep, 80%)
    and before compress did (ran as none, today's default), and the same seeds under today's
    defaults (reset, 90%); PSL beside them."""
    old = [
        {k: v for k, v in run_row(f"fl-old-s{s}", method="fl", seed=s, client_optimizer_state="keep",
                                  final_test_acc=0.80).items() if k != "client_optimizer_state"}
        for s in (0, 1)
    ]  # fmt: skip
    for row in old:  # the config of a run from before the settings: both absent
        for recorded in ('"client_optimizer_state": "keep", ', '"compress": "none", '):
            assert recorded in row["config_json"]
            row["config_json"] = row["config_json"].replace(recorded, "")
    new = [run_row(f"fl-new-s{s}", method="fl", seed=s, final_test_acc=0.90 - 0.01 * s) for s in (0, 1)]
    psl = [run_row(f"psl-s{s}", method="psl", seed=s, final_test_acc=0.85) for s in (0, 1)]
    out = write_results(tmp_path / "o", [*new, *psl])
    for row in old:
        write_table_atomic([row], None, out / "runs" / f"{row['run_id']}.parquet")
    return out


def test_superseded_runs_are_left_out_unless_asked(tmp_path):
    out = keep_and_reset_fl(tmp_path)
    runs = analysis.load_runs(out)
    assert sorted(runs.run_id[superseded(runs)]) == ["fl-old-s0", "fl-old-s1"]
    text = write_report(out).read_text()
    assert "| fl | 4 | 0 | 0 | all | 89.50" in text and "80.00" not in text
    assert "- fl C=4, seeds 0, 1: recorded before client_optimizer_state (ran as keep) existed" in text
    shown = write_report(out, tmp_path / "all.md", include_superseded=True).read_text()
    assert "| keep |" in shown and "80.00" in shown


def test_a_run_with_the_old_value_and_no_newer_run_stays(tmp_path):
    out = keep_and_reset_fl(tmp_path)
    for seed in (0, 1):
        (out / "runs" / f"fl-new-s{seed}.parquet").unlink()
    assert not superseded(analysis.load_runs(out)).any()


def test_report_names_the_runs_that_break_the_convergence_rule(tmp_path):
    # epoch_rows climbs 2 points an epoch: every 6-epoch run gains 4 points at the end.
    rows = [run_row(f"psl-s{s}", method="psl", seed=s, epochs_done=6) for s in (0, 1)]
    text = write_report(write_results(tmp_path / "o", rows)).read_text()
    assert "2 of 2 runs break the convergence rule (gain 0.5 points or more): psl C=4 seed 0 (+4.00)" in text
