"""Run identity, paired evaluation subsets and the averaging_on column (issue: trustworthy results)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sglr_ray import cli
from sglr_ray.config import ConfigError, RunConfig, config_fields, settings_hash
from sglr_ray.data import eval_slice, prepare_data
from sglr_ray.execution import sweep
from sglr_ray.execution.driver import run_experiment
from sglr_ray.results.writer import RUNS_SCHEMA

BASE = {"dataset": "synthetic", "samples_per_client": 16, "epochs": 1, "val_samples": 50,
        "test_samples": 50, "torch_threads": 1}  # fmt: skip


@pytest.mark.parametrize("key, values", [
    ("lr", [1e-3, 2e-3]), ("batch_size", [4, 8]), ("samples_per_client", [16, 32]), ("epochs", [1, 2]),
    ("partition", ["iid", "dirichlet"]), ("dirichlet_beta", [0.1, 0.5]), ("val_samples", [50, 100]),
    ("lr_schedule", ["constant", "step:0.5:0.1"]), ("precision", ["fp32", "bf16"]),
])  # fmt: skip
def test_grid_points_differing_in_any_result_setting_are_distinct_runs(key, values):
    configs = sweep.expand_grid(BASE | {"method": "psl"}, {key: values})
    assert len({c.run_id for c in configs}) == 2
    assert len({c.run_key for c in configs}) == 2


def test_grid_points_differing_only_in_execution_settings_are_one_run():
    configs = sweep.expand_grid(BASE | {"method": "psl"}, {"torch_threads": [1, 2], "executor": ["local"]})
    assert len({c.run_id for c in configs}) == 1


def test_a_changed_base_renames_every_run_so_nothing_old_counts_as_done():
    before = sweep.expand_grid(BASE, {"method": ["psl", "sglr"]})
    after = sweep.expand_grid(BASE | {"lr": 5e-4}, {"method": ["psl", "sglr"]})
    assert not {c.run_id for c in before} & {c.run_id for c in after}


def test_every_identity_setting_is_in_the_run_key():
    config = RunConfig(**BASE)
    identity = {f.name for f in config_fields() if f.metadata["identity"]}
    assert set(config.identity()) == identity
    assert {"lr", "batch_size", "dirichlet_beta", "local_epochs", "val_samples", "test_samples"} <= identity
    assert not {"executor", "torch_threads", "out", "run_id", "checkpoint_every"} & identity
    for name, value in [("leakage_epochs", 7), ("joules_per_bit", 1e-6), ("eval_mode", "every")]:
        assert config.replace(**{name: value}).run_key != config.run_key, name
    assert config.replace(executor="ray", torch_threads=2).run_key == config.run_key


def test_a_resolved_choice_and_its_explicit_value_are_one_run():
    for method, resolved, other in [("fl", "reset", "keep"), ("sglr", "keep", "reset")]:
        auto = RunConfig(**BASE, method=method, client_optimizer_state="auto")
        assert auto.run_key == auto.replace(client_optimizer_state=resolved).run_key, method
        assert auto.run_key != auto.replace(client_optimizer_state=other).run_key, method


def test_a_setting_added_later_keeps_older_runs_keys_at_the_value_they_ran_with():
    # Runs recorded before client_optimizer_state existed kept every client's optimizer: their
    # run_key hashed the identity without the setting. At "keep" the key must still be that one.
    # (Settings added after it, such as attack and defense, are left out at their absent values.)
    config = RunConfig(**BASE, method="fl", client_optimizer_state="keep")
    # Settings added later still (loss, split_gradient, ...) are at their absent values here too.
    later = {f.name for f in config_fields() if f.metadata["absent_means"] is not None}
    assert "client_optimizer_state" in later
    older = {k: v for k, v in config.identity().items() if k not in later}
    assert config.run_key == settings_hash(older)
    assert config.replace(client_optimizer_state="reset").run_key != settings_hash(older)


def test_runs_table_has_a_column_for_every_setting_and_the_keys():
    names = set(RUNS_SCHEMA.names)
    assert {f.name for f in config_fields()} <= names
    assert {"run_key", "cell_key", "val_set_digest", "test_set_digest"} <= names


def test_run_id_of_an_existing_run_with_other_settings_is_refused(tmp_path, capsys):
    out = str(tmp_path / "out")
    args = ["run", "--dataset", "synthetic", "--clients", "2", "--samples-per-client", "16", "--epochs", "1",
            "--val-samples", "50", "--test-samples", "50", "--torch-threads", "1", "--out", out,
            "--run-id", "mine", "--method", "psl"]  # fmt: skip
    assert cli.main(args) == 0
    assert cli.main(args) == 0  # the same settings: a rerun of the same run is fine
    assert cli.main([*args, "--lr", "0.01"]) == 2
    err = capsys.readouterr().err
    assert "--run-id 'mine' already names a run" in err and "lr: recorded 0.001, now 0.01" in err


def test_seed_is_not_in_the_cell_key_but_is_in_the_run_key():
    a, b = RunConfig(**BASE, seed=1), RunConfig(**BASE, seed=2)
    assert a.cell_key == b.cell_key and a.run_key != b.run_key


# --- paired evaluation -------------------------------------------------------------


@pytest.mark.parametrize("changes", [
    {"clients": 7}, {"method": "sfl"}, {"partition": "dirichlet"}, {"seed": 3}, {"samples_per_client": 40},
])  # fmt: skip
def test_evaluation_subsets_depend_only_on_their_size(changes):
    base = RunConfig(**BASE | {"val_samples": 300, "test_samples": 200, "clients": 3, "method": "psl"})
    one, other = prepare_data(base), prepare_data(base.replace(**changes))
    assert one.val_digest == other.val_digest and one.test_digest == other.test_digest
    np.testing.assert_array_equal(one.val.images, other.val.images)
    np.testing.assert_array_equal(one.test.labels, other.test.labels)
    smaller = prepare_data(base.replace(val_samples=100))
    assert smaller.val_digest != one.val_digest


@pytest.mark.parametrize("size", [100, 2000, 1234])
def test_validation_subset_is_class_balanced(size):
    labels = prepare_data(RunConfig(**BASE | {"val_samples": size})).val.labels
    counts = np.bincount(labels, minlength=10)
    assert counts.sum() == size and counts.max() - counts.min() <= 1


def test_no_validation_image_is_in_any_partition():
    data = prepare_data(RunConfig(**BASE | {"clients": 50, "samples_per_client": 1000, "val_samples": 0}))
    held = {img.tobytes() for part in data.partitions for img in part.images[:50]}
    assert not held & {img.tobytes() for img in data.val.images}


@pytest.mark.parametrize("size, clients", [(100, 3), (10, 10), (7, 20), (2000, 1000)])
def test_eval_slices_are_disjoint_and_cover_the_subset(size, clients):
    covered = np.concatenate([np.arange(size)[eval_slice(size, clients, c)] for c in range(clients)])
    np.testing.assert_array_equal(covered, np.arange(size))
    sizes = [len(range(size)[eval_slice(size, clients, c)]) for c in range(clients)]
    assert max(sizes) - min(sizes) <= 1


def test_slices_mode_scores_the_whole_subset_once_and_every_mode_c_times(tiny_config, tmp_out):
    sliced = run_experiment(tiny_config(method="psl", clients=3, out=tmp_out, val_samples=100))
    every = run_experiment(
        tiny_config(method="psl", clients=3, out=tmp_out, val_samples=100, eval_mode="every")
    )
    assert sum(n for _, n in sliced.epochs[0].val.per_client.values()) == 100
    assert [n for _, n in every.epochs[0].val.per_client.values()] == [100, 100, 100]
    clients = pd.read_parquet(f"{tmp_out}/clients")
    assert set(clients.val_scored) == {33, 34, 100}
    runs = pd.read_parquet(f"{tmp_out}/runs")
    assert runs.val_set_digest.nunique() == 1 and runs.test_set_digest.nunique() == 1


# --- averaging_on -------------------------------------------------------------------


@pytest.mark.parametrize("changes, expected", [
    ({"method": "psl"}, [False, False]),
    ({"method": "sfl"}, [False, False]),
    ({"method": "sgl", "phi": 0.4}, [False, False]),  # floor(0.4 * 4) = 1 client: nothing to average
    ({"method": "sgl", "phi": 0.5}, [True, True]),
    ({"method": "sgl", "phi": 1.0, "phase": "final:0.5"}, [False, True]),
    ({"method": "sgl", "phi": 1.0, "phase": "initial:0.5"}, [True, False]),
])  # fmt: skip
def test_averaging_on_is_true_only_where_gradients_were_averaged(tiny_config, tmp_out, changes, expected):
    outcome = run_experiment(tiny_config(epochs=2, out=tmp_out, **changes))
    assert [e.averaging_on for e in outcome.epochs] == expected


def test_grid_key_that_is_not_a_setting_is_refused():
    with pytest.raises(ConfigError, match="unknown setting 'learning_rate'"):
        sweep.expand_grid(BASE, {"learning_rate": [0.1]})
