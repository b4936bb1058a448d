"""benchmarks/gpu_check.py: where torch sees no CUDA device it says so in one line, exits 0 and
writes nothing; its harness keeps to the time budget and records a failed part as a row."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_check


def test_without_a_gpu_it_says_so_in_one_line_and_exits_0(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(gpu_check, "OUT_DIR", tmp_path)
    monkeypatch.setattr(gpu_check, "run_parts", lambda *a: pytest.fail("measured without a GPU"))
    assert gpu_check.main(["--scratch", str(tmp_path / "scratch")]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed == [
        "gpu_check: no CUDA device here (torch.cuda.is_available() is False); nothing measured."
    ]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the file would measure for minutes")
def test_runs_as_a_file_from_anywhere(tmp_path):
    """`python benchmarks/gpu_check.py`, as the project's brief names it, from outside the repo."""
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith("gpu_check: no CUDA device here")


def test_parts_past_the_deadline_are_skipped_and_failures_recorded(monkeypatch, tmp_path):
    def fails(out):
        raise RuntimeError("CUDA error: out of memory")

    assert sum(gpu_check.BUDGETS_S.values()) <= gpu_check.TOTAL_BUDGET_S  # the parts fit 8 minutes
    monkeypatch.setattr(gpu_check, "smoke", fails)
    for part in gpu_check.BUDGETS_S:
        monkeypatch.setitem(gpu_check.BUDGETS_S, part, 10 if part == "smoke" else 100)
    # 50 s in all: the smoke part (10 s) starts and fails at once; no other part (100 s) fits.
    rows = {row["part"]: row for row in gpu_check.run_parts(tmp_path, total_budget_s=50)}
    assert list(rows) == list(gpu_check.BUDGETS_S)
    assert rows["smoke"]["note"].startswith("failed: RuntimeError: CUDA error: out of memory")
    assert all(rows[p]["note"].startswith("skipped") for p in list(rows)[1:])
