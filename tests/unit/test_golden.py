"""Tiny seeded runs in float64, compared with stored per-epoch numbers, to catch silent changes to the math.

In float32, another CPU's kernels (or another thread count) change the last bits
and Adam carries the difference on; in float64 the same runs agree across
instruction sets to about 1e-12, so the comparison can be tight (1e-9) and still
hold on any x86-64 or ARM machine, while any change to the arithmetic (a
different average, a missing gradient scale) moves the losses far more.

After an intended change to the numbers, regenerate with:
  SGLR_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/unit/test_golden.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sglr_ray.execution.driver import run_experiment

GOLDEN = Path(__file__).parent.parent / "data" / "golden_runs.json"
CASES = {
    "sglr-alexnet": {"method": "sglr", "alpha": 0.5, "phi": 0.5},
    "sgl-final-phase": {"method": "sgl", "phi": 1.0, "phase": "final:0.5"},
    "sfl-alexnet": {"method": "sfl"},
    "ssl-alexnet": {"method": "ssl"},
    "fl-alexnet": {"method": "fl"},
    "cl-alexnet": {"method": "cl"},
    "psl-alexnet": {"method": "psl"},
    "slr-alexnet": {"method": "slr", "alpha": 1.0},
    "sflv1-alexnet": {"method": "sflv1"},
    "cyclesl-alexnet": {"method": "cyclesl", "phi": 0.5},
    "gpsl-alexnet": {"method": "gpsl", "global_batch_size": 24},
    "sglr-resnet16": {"method": "sglr", "model": "resnet16", "alpha": 1.0, "phi": 0.5},
    "usl-alexnet": {"method": "usl", "alpha": 0.5, "phi": 0.5},
    "lsl-alexnet": {"method": "lsl"},
    "asl-alexnet": {"method": "asl"},
}


@pytest.mark.parametrize("name", CASES)
def test_tiny_float64_run_matches_stored_numbers(tiny_config, tmp_out, float64, name):
    config = tiny_config(samples_per_client=48, epochs=2, out=tmp_out, **CASES[name])
    outcome = run_experiment(config)
    got = {
        "train_loss": [e.train_loss for e in outcome.epochs],
        "val_correct": [sorted(e.val.per_client.items()) for e in outcome.epochs],
        "final_test_acc": outcome.final_test_acc,
    }
    if os.environ.get("SGLR_UPDATE_GOLDEN"):
        stored = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
        GOLDEN.write_text(json.dumps(stored | {name: got}, indent=1) + "\n")
    want = json.loads(GOLDEN.read_text())[name]
    assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-9)
    # Counts of correct images: an argmax flips only on a logit tie within float64 noise.
    assert [[[c, list(s)] for c, s in epoch] for epoch in got["val_correct"]] == want["val_correct"]
    assert got["final_test_acc"] == want["final_test_acc"]


def test_stored_runs_learned_something():
    """The stored numbers are of runs that train: a broken reference would make the test vacuous."""
    stored = json.loads(GOLDEN.read_text())
    assert set(stored) == set(CASES)
    for name, run in stored.items():
        assert run["train_loss"][-1] < run["train_loss"][0], name
