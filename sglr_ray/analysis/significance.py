"""The tests behind a report's verdicts: per table of paired comparisons, raw and Holm-adjusted
p-values, a TOST against the paper's effect where the paper has one, and a pooled estimate per
setting across C.

A table's comparisons are one family: Holm adjusts over every distinct test in it, so "outside
the noise" in a report means a Holm-adjusted p under 0.05, not a 95% interval that misses zero.
A comparison that is not a distinct test is left out of the family: where a setting at this C
computes what the control computes (phi 0.5 at C = 2 averages nobody: SPEC section 2) or what
another setting of the table computes (SGLR (0.5, 0.5) at C = 2 is SplitLr 0.5).
"""

from __future__ import annotations

import pandas as pd

from sglr_ray.analysis import stats
from sglr_ray.analysis.markdown import markdown_table
from sglr_ray.analysis.runs import setting_label
from sglr_ray.methods.sglr import active_set_size

LEVEL = 0.05  # the family-wise error rate of a table's verdicts


def _computes(row: pd.Series) -> str | None:
    """The label of what a comparison's treatment computes at its C (phi with fewer than two
    clients to average is phi 0); None where the pairs carry no knobs (phase comparisons)."""
    if "phi" not in row or pd.isna(row.get("phi")):
        return None
    phi = row.phi if active_set_size(row.phi, int(row.C)) >= 2 else 0.0
    return setting_label(row.method, None, row.alpha, phi, row.get("phase", "all") or "all")


def duplicates(pairs: pd.DataFrame, control_label: str | None) -> dict[tuple[str, int], str]:
    """The (setting, C) comparisons of `pairs` that are not distinct tests (see the module
    docstring), each with why; the first setting in table order that computes a thing at a C
    stays a test."""
    firsts = pairs.drop_duplicates(["setting", "C"])
    owners: dict[tuple, str] = {}
    reasons = {}
    for row in firsts.itertuples():
        what = _computes(pd.Series(row._asdict()))
        if what is None:
            continue
        if what == control_label:
            reasons[(row.setting, row.C)] = f"computes what {control_label} computes"
            continue
        owner = owners.setdefault((what, row.C), row.setting)
        if owner != row.setting:
            reasons[(row.setting, row.C)] = f"computes what {owner} computes"
    return reasons


def distinct(pairs: pd.DataFrame, control_label: str | None) -> pd.DataFrame:
    """`pairs` without the comparisons `duplicates` names."""
    if pairs.empty:
        return pairs
    left_out = duplicates(pairs, control_label)
    return pairs[[(s, c) not in left_out for s, c in zip(pairs.setting, pairs.C, strict=True)]]


def tests_table(pairs: pd.DataFrame, control_label: str | None) -> pd.DataFrame:
    """Per (setting, C) of `pairs` (columns setting, C, seed, treatment, control, diff and
    `paper`, the paper's difference or NaN): pairs, treatment and control means, diff, low, high
    (95% interval), p (two-sided, zero difference), p_holm (Holm over the table's distinct
    tests; a comparison `duplicates` names has none, and says why in `verdict`), positive (pairs
    above zero), paper, tost_p (TOST that our difference is smaller in size than the paper's),
    tost_holm (over the distinct tests with a paper figure), short_p and short_holm (the same for
    stats.shortfall_test: our difference falls short of the paper's signed one), verdict."""
    left_out, rows = duplicates(pairs, control_label), {}
    for (setting, clients), group in pairs.groupby(["setting", "C"], sort=False):
        test, paper = stats.paired_test(group["diff"]), group["paper"].iloc[0]
        rows[(setting, clients)] = {
            "pairs": test.n, "treatment": group.treatment.mean(), "control": group.control.mean(),
            "diff": test.diff, "low": test.diff - test.ci95, "high": test.diff + test.ci95,
            "p": test.p, "positive": int((group["diff"] > 0).sum()), "paper": paper,
            "tost_p": stats.equivalence_test(group["diff"], paper),
            "short_p": stats.shortfall_test(group["diff"], paper),
        }  # fmt: skip
    order = list(dict.fromkeys(pairs.setting))
    table = pd.DataFrame.from_dict(rows, orient="index")
    table = table.reindex(sorted(table.index, key=lambda key: (order.index(key[0]), key[1])))
    table.index = pd.MultiIndex.from_tuples(table.index, names=["setting", "C"])
    tested = pd.Series([key not in left_out for key in table.index], index=table.index)
    table.insert(table.columns.get_loc("p") + 1, "p_holm", stats.holm(table.p.where(tested)))
    table["tost_holm"] = stats.holm(table.tost_p.where(tested))
    table["short_holm"] = stats.holm(table.short_p.where(tested))
    table["verdict"] = [
        left_out.get(key) or verdict(row) for key, row in zip(table.index, table.itertuples(), strict=True)
    ]
    return table


def verdict(row: tuple) -> str:
    """Words for one comparison, from the Holm-adjusted figures only."""
    if pd.isna(row.p):
        return "no test"
    text = "inside the noise"
    if row.p_holm < LEVEL:
        text = "above" if row.diff > 0 else "below"
    if pd.isna(row.paper):
        return text
    if row.tost_holm < LEVEL:
        return f"{text}; smaller than the paper's"
    if row.short_holm < LEVEL:
        return f"{text}; short of the paper's"
    return f"{text}; the paper's size not excluded"


def pooled_table(pairs: pd.DataFrame) -> pd.DataFrame:
    """Per setting, its differences pooled over every C of the table (stats.pooled_test): C (the
    values pooled), pairs, diff, low, high, p, p_holm (over the settings), positive, p_seeds (the
    seed-means check); then over the C where the paper has a figure: paper (its mean difference
    there), ours_there (ours over the same C), tost_p/tost_holm and short_p/short_holm against
    the paper's mean."""
    rows = {}
    for setting, group in pairs.groupby("setting", sort=False):
        test, seeds = stats.pooled_test(group), stats.seed_means_test(group)
        there = group[group.paper.notna()]
        paper = there.drop_duplicates("C").paper.mean() if len(there) else float("nan")
        rows[setting] = {
            "C": _span(group.C), "pairs": test.n, "diff": test.diff, "low": test.diff - test.ci95,
            "high": test.diff + test.ci95, "p": test.p,
            "positive": f"{int((group['diff'] > 0).sum())}/{test.n}",
            "p_seeds": seeds.p, "paper": paper,
            "ours_there": there["diff"].mean() if len(there) else float("nan"),
            "tost_p": stats.equivalence_test(there["diff"], paper) if len(there) else float("nan"),
            "short_p": stats.shortfall_test(there["diff"], paper) if len(there) else float("nan"),
        }  # fmt: skip
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "setting"
    table.insert(table.columns.get_loc("p") + 1, "p_holm", stats.holm(table.p))
    table["tost_holm"] = stats.holm(table.tost_p)
    table["short_holm"] = stats.holm(table.short_p)
    return table


def _span(clients: pd.Series) -> str:
    values = sorted(set(int(c) for c in clients))
    return ", ".join(map(str, values))


# ---------------------------------------------------------------- markdown for the report

TESTS_NOTE = (
    "p: two-sided paired t-test of a zero difference (n - 1 degrees of freedom); p Holm: adjusted "
    "over this table's {tests} distinct tests (Holm's step-down, family-wise error 5%); +: pairs "
    "above zero.{paper} The verdict reads the adjusted figures only: above/below where p Holm < "
    "0.05, else inside the noise."
)
PAPER_TESTS_NOTE = (
    " paper: the paper's difference for this comparison (the two means of its table). TOST Holm: "
    "the equivalence test against it, Holm-adjusted over the {tost} comparisons with a paper figure: "
    "under 0.05 means our true difference lies inside (-|paper|, +|paper|), i.e. is smaller in size "
    "than the paper's (the same as our 90% interval inside those bounds). Short Holm: TOST's "
    "one-sided half on zero's side of the paper's figure, adjusted the same way: under 0.05 means "
    "our true difference falls short of the paper's (below a positive figure, above a negative "
    "one), also where TOST fails because our difference may exceed the paper's size in the other "
    "direction."
)
POOLED_NOTE = (
    "Each setting's per-seed differences pooled over every C it was paired at, one paired t-test "
    "(each (C, seed) pair counts once; p Holm over the settings); p seeds: the same over each seed's "
    "mean difference (seeds - 1 degrees of freedom), which holds however a seed's C values are "
    "related.{paper}"
)
PAPER_POOLED_NOTE = (
    " paper: the paper's mean difference over the C where it has a figure; ours there: our "
    "mean over the same C; TOST Holm and short Holm: the tests of ours there against that mean."
)
PAPER_COLUMNS = ["paper", "ours there", "TOST Holm", "short Holm"]


def tests_lines(
    pairs: pd.DataFrame, control_label: str | None, control: str, columns: tuple[str, str] | None = None,
    paper: bool = True,
) -> list[str]:  # fmt: skip
    """The report's lines for one table of paired comparisons: the tests table (its two accuracy
    columns named `columns`, default setting % and `control` %), its note, one sentence on what
    survives Holm, and the pooled table; without the paper's columns and their test where not
    `paper` (comparisons the paper never made)."""
    table = tests_table(pairs, control_label)
    treatment_name, control_name = columns or ("setting %", f"{control} %")
    shown = pd.DataFrame({
        "pairs": table.pairs.astype(int), treatment_name: table.treatment, control_name: table.control,
        "difference": table["diff"], "95% interval": _intervals(table), "p": table.p.map(_p),
        "p Holm": table.p_holm.map(_p), "+": _counts(table),
        "paper": table.paper, "TOST Holm": table.tost_holm.map(_p),
        "short Holm": table.short_holm.map(_p), "verdict": table.verdict,
    })  # fmt: skip
    tost = PAPER_TESTS_NOTE.format(tost=int(table.tost_holm.notna().sum())) if paper else ""
    note = TESTS_NOTE.format(tests=int(table.p_holm.notna().sum()), paper=tost)
    pooled = pooled_table(distinct(pairs, control_label))
    pooled_shown = pd.DataFrame({
        "C": pooled.C, "pairs": pooled.pairs.astype(int), "difference": pooled["diff"],
        "95% interval": _intervals(pooled), "p": pooled.p.map(_p), "p Holm": pooled.p_holm.map(_p),
        "+": pooled.positive, "p seeds": pooled.p_seeds.map(_p), "paper": pooled.paper,
        "ours there": pooled.ours_there, "TOST Holm": pooled.tost_holm.map(_p),
        "short Holm": pooled.short_holm.map(_p),
    })  # fmt: skip
    if not paper:
        shown = shown.drop(columns=[c for c in PAPER_COLUMNS if c in shown.columns])
        pooled_shown = pooled_shown.drop(columns=PAPER_COLUMNS)
    lines = ["", markdown_table(shown, decimals=2), "", note, "", survivors_sentence(table)]
    if pairs.groupby("setting").C.nunique().max() < 2:
        return lines  # one C per setting: the pooled table would repeat the one above
    pooled_note = POOLED_NOTE.format(paper=PAPER_POOLED_NOTE if paper else "")
    return [*lines, "", "Pooled over C:", "", markdown_table(pooled_shown, decimals=2), "", pooled_note]


def survivors_sentence(table: pd.DataFrame) -> str:
    """Which comparisons stay under 0.05 after Holm, and the direction of the per-seed pairs."""
    tested = table[table.p_holm.notna()]
    below = tested[tested.p_holm < LEVEL]
    found = zip(below.index, below["diff"], below.p_holm, strict=True)
    names = "; ".join(f"{s} at C={c} ({d:+.2f}, p Holm {_p(h)})" for (s, c), d, h in found)
    verb = "stays" if len(below) == 1 else "stay"
    text = f"Under Holm's correction over {len(tested)} tests, {len(below)} {verb} under 0.05"
    smallest = tested.p_holm.min() if len(tested) else float("nan")
    text += f": {names}." if len(below) else f" (the smallest adjusted p: {_p(smallest)})."
    positive, pairs = int(tested.positive.sum()), int(tested.pairs.sum())
    return text + f" {positive} of the {pairs} per-seed differences behind them are positive."


def _counts(table: pd.DataFrame) -> list[str]:
    return [f"{k}/{n}" for k, n in zip(table.positive, table.pairs, strict=True)]


def _intervals(table: pd.DataFrame) -> list[str]:
    return [_interval(lo, hi) for lo, hi in zip(table.low, table.high, strict=True)]


def _interval(low: float, high: float) -> str:
    return "" if pd.isna(low) else f"[{low:+.2f}, {high:+.2f}]"


def _p(value: float) -> str:
    if pd.isna(value):
        return ""
    return f"{value:.3g}" if value >= 0.001 else f"{value:.1e}"  # 0.0504 stays apart from 0.05
