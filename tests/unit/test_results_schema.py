"""The results tables: every column documented, the schema version recorded, old tables readable."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from sglr_ray.analysis import tables
from sglr_ray.config import config_fields
from sglr_ray.execution.driver import run_experiment
from sglr_ray.results import writer

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PAGE = ROOT / "docs" / "results-schema.md"
SETTINGS = {f.name for f in config_fields()} - {"run_id"}  # run_id is documented as recorded


def documented(table: str) -> set[str]:
    """Column names in the first column of the Markdown tables of the page's `## \\`table\\`` section."""
    section = SCHEMA_PAGE.read_text().split(f"## `{table}`", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `(\w+)` \|", section, re.MULTILINE))


@pytest.mark.parametrize(
    ("table", "schema"),
    [("runs", writer.RUNS_SCHEMA), ("epochs", writer.EPOCHS_SCHEMA), ("clients", writer.CLIENTS_SCHEMA),
     ("leakage", writer.LEAKAGE_SCHEMA), ("privacy", writer.PRIVACY_SCHEMA)],
)  # fmt: skip
def test_every_written_column_is_documented(table, schema):
    own = set(schema.names) - (SETTINGS if table == "runs" else set())
    assert own - documented(table) == set(), f"document these {table} columns in {SCHEMA_PAGE.name}"
    assert documented(table) - set(schema.names) == set(), (
        f"{SCHEMA_PAGE.name} documents columns no longer written"
    )


def test_the_settings_columns_are_rendered_from_the_config():
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    assert hooks.MARKER in SCHEMA_PAGE.read_text()
    rendered = set(re.findall(r"^\| `(\w+)` \|", hooks.settings_table(), re.MULTILINE))
    assert rendered == SETTINGS and set(writer.RUNS_SCHEMA.names) >= SETTINGS


def test_a_run_records_the_schema_version(tiny_config, tmp_out):
    run_experiment(tiny_config(out=tmp_out, leakage=True, leakage_aux_samples=32, leakage_epochs=1))
    runs = tables.load_runs(tmp_out)
    assert runs.schema_version.tolist() == [writer.SCHEMA_VERSION]
    leakage = pq.read_table(f"{tmp_out}/leakage").column_names
    assert "clients" in leakage and "num_clients" not in leakage
    assert tables.load_leakage(tmp_out).clients.tolist() == [4]


@pytest.mark.parametrize("folder", ["superseded-sglr-alexnet-c5", "reduced-table4"])
def test_tables_of_earlier_versions_load(folder):
    """Recorded before schema_version and before `clients` was named so (they say num_clients)."""
    path = ROOT / "results" / folder
    assert "num_clients" in pq.read_schema(next((path / "runs").glob("*.parquet"))).names
    runs = tables.load_runs(path)
    assert set(runs.schema_version) == {1} and "num_clients" not in runs.columns
    assert runs.clients.notna().all() and set(runs.clients) == {5}
    assert len(tables.load_epochs(path)) == runs.epochs_done.sum()


def test_leakage_tables_of_earlier_versions_load():
    path = ROOT / "results" / "leakage-table5"
    assert "num_clients" in pq.read_schema(next((path / "leakage").glob("*.parquet"))).names
    leakage = tables.load_leakage(path)
    assert not leakage.empty and set(leakage.clients) == {6} and "num_clients" not in leakage.columns
