"""benchmarks/comm_table6.py: every method's measured bytes per epoch equal the exact formula."""

import pandas as pd
import pytest

from benchmarks import comm_table6


def test_measured_bytes_match_the_exact_formula_for_every_method(tmp_path):
    def run(samples: int) -> int:
        argv = ["--out", str(tmp_path), "--clients", "4", "--samples-per-client", str(samples)]
        return comm_table6.main([*argv, "--dataset", "synthetic", "--eval-samples", "50"])

    assert run(8) == 0
    assert run(16) == 0  # a rerun with other settings replaces the script's own runs
    assert set(pd.read_parquet(tmp_path / "runs").samples_per_client) == {16}
    table = pd.read_parquet(tmp_path / "table6.parquet").set_index("method")
    assert list(table.index) == list(comm_table6.METHODS)
    assert table.measured_total_MB.to_dict() == pytest.approx(
        table.exact_formula_total_MB.to_dict(), rel=1e-12
    )
    # FL moves whole models only: the paper's formula (2 C S(w)) is exact for it, and it moves
    # far more than PSL at this size of data.
    assert table.loc["fl", "measured_total_MB"] == pytest.approx(
        table.loc["fl", "paper_formula_MB"], rel=1e-12
    )
    assert table.loc["fl", "measured_total_MB"] > table.loc["psl", "measured_total_MB"]
    # SGLR's broadcast: the server sends less than PSL's, the clients upload the same.
    assert table.loc["sglr", "measured_up_MB"] == table.loc["psl", "measured_up_MB"]
    assert table.loc["sglr", "measured_server_sent_MB"] < table.loc["psl", "measured_server_sent_MB"]
    assert "comm_table6.py --out" in (tmp_path / "table6.md").read_text()
