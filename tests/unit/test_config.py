"""Bad input is refused before any work starts, with a message naming the value."""

from __future__ import annotations

import pytest

from sglr_ray import cli
from sglr_ray.config import ConfigError, RunConfig
from sglr_ray.execution import driver
from sglr_ray.methods.phase import Phase
from sglr_ray.methods.sglr import split_lr

# Every bad input, as flags and as a config file alike: (settings, message).
# Each entry runs twice, once as flags and once as a YAML --config, and must be
# refused before any work with the same message.
BAD_SETTINGS = [
    ({"phi": 1.5}, "--phi must be >= 0 and <= 1, got 1.5"),
    ({"phi": -0.1}, "--phi must be >= 0 and <= 1, got -0.1"),
    ({"alpha": -1}, "--alpha must be >= 0, got -1.0"),
    ({"alpha": "nan"}, "--alpha must be a finite number, got nan"),
    ({"lr": "inf"}, "--lr must be a finite number, got inf"),
    ({"dirichlet_beta": "-inf"}, "--dirichlet-beta must be a finite number, got -inf"),
    ({"method": "splitfedx"}, "--method 'splitfedx' is unknown"),
    ({"method": "nofile.py:sgm"}, "--method 'nofile.py:sgm': no file 'nofile.py'"),
    ({"model": "vgg11"}, "--model 'vgg11' is unknown"),
    ({"dataset": "imagenet"}, "--dataset 'imagenet' is unknown"),
    ({"clients": 51}, "--clients 51 x --samples-per-client 1000 = 51000 samples"),
    ({"batch_size": 2000}, "--batch-size 2000 is larger than a client's partition"),
    ({"phase": "middle:0.4"}, "--phase 'middle:0.4' is malformed"),
    ({"phase": "initial:"}, "--phase 'initial:' is malformed"),
    ({"phase": "final:1.5"}, "--phase 'final:1.5': fraction 1.5 must be in (0, 1]"),
    ({"method": "psl", "alpha": 0.5}, "--alpha 0.5 does not apply to --method psl"),
    ({"method": "sfl", "phi": 0.5}, "--phi 0.5 does not apply to --method sfl"),
    ({"clients": 0}, "--clients must be >= 1, got 0"),
    ({"seed": -1}, "--seed must be >= 0 and <= 4294967295, got -1"),
    ({"seed": 2**32}, "--seed must be >= 0 and <= 4294967295, got 4294967296"),
    ({"max_restarts": -2}, "--max-restarts must be >= 0, got -2"),
    ({"lr": 0}, "--lr must be > 0, got 0.0"),
    ({"optimizer": "lamb"}, "--optimizer 'lamb' is unknown"),
    ({"executor": "spark"}, "--executor 'spark' is unknown"),
    ({"leakage": True, "leakage_client": 7}, "--leakage-client 7 must be in [0, 4]"),
    ({"leakage": True, "clients": 50}, "--leakage-aux-samples 5000 exceeds the 0 training samples"),
    ({"link_rate_bps": 0}, "--link-rate-bps must be > 0, got 0.0"),
    ({"joules_per_bit": -1}, "--joules-per-bit must be > 0, got -1.0"),
    ({"val_samples": 20000}, "--val-samples 20000 exceeds the 10000 images of that split"),
    ({"eval_mode": "some"}, "--eval-mode 'some' is unknown"),
    ({"run_id": "../x"}, "--run-id '../x': use letters"),
]
# Only a config file can say these (argparse refuses such flags itself, with a usage line).
BAD_FILE_ONLY = [
    ("alpha: abc\n", "--alpha must be a number, got 'abc'"),
    ("clients: 2.5\n", "--clients must be an integer, got 2.5"),
    ("clients: '4'\n", "--clients must be an integer, got '4'"),
    ("leakage: 1\n", "--leakage must be true or false, got 1"),
    ("- clients: 4\n", "must hold a mapping of settings"),
    ("learning_rate: 0.1\n", "unknown setting 'learning_rate'"),
    ("cliens: 4\n", "unknown setting 'cliens'; did you mean 'clients'?"),
    ("clients: [4\n", "could not be read"),
]


def as_flags(settings: dict) -> list[str]:
    flags = []
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        flags += [flag] if value is True else [f"{flag}={value}"]
    return flags


def as_yaml(settings: dict) -> str:
    import yaml

    # nan and inf as YAML floats (.nan, .inf), the way a config file writes them
    values = {k: float(v) if v in ("nan", "inf", "-inf") else v for k, v in settings.items()}
    return yaml.safe_dump(values)


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if the run gets as far as loading data or starting an executor."""

    def forbidden(*args, **kwargs):
        raise AssertionError("work started despite bad input")

    monkeypatch.setattr(driver, "prepare_data", forbidden)
    monkeypatch.setattr(driver, "make_executor", forbidden)


@pytest.mark.parametrize("settings, message", BAD_SETTINGS, ids=[str(s) for s, _ in BAD_SETTINGS])
@pytest.mark.parametrize("given_as", ["flags", "config file"])
def test_bad_setting_is_refused_before_work_naming_it(settings, message, given_as, capsys, no_work, tmp_path):
    argv = ["run", "--out", str(tmp_path / "out")]
    if given_as == "flags":
        argv += as_flags(settings)
    else:
        (tmp_path / "run.yaml").write_text(as_yaml(settings))
        argv += ["--config", str(tmp_path / "run.yaml")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


@pytest.mark.parametrize("text, message", BAD_FILE_ONLY, ids=[t for t, _ in BAD_FILE_ONLY])
def test_bad_config_file_is_refused_naming_the_setting(text, message, tmp_path, capsys, no_work):
    (tmp_path / "run.yaml").write_text(text)
    assert cli.main(["run", "--config", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("flags", [["--clients", "2.5"], ["--seed", "x"], ["--epochs"]])
def test_malformed_flag_gets_a_usage_error_not_a_traceback(flags, capsys, no_work):
    with pytest.raises(SystemExit) as stop:
        cli.main(["run", *flags])
    assert stop.value.code == 2
    assert flags[0] in capsys.readouterr().err


def test_unwritable_out_is_refused_before_work(tmp_path, capsys, no_work):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    assert cli.main(["run", "--out", str(blocker / "results")]) == 2
    assert f"--out '{blocker / 'results'}' is not writable" in capsys.readouterr().err


@pytest.mark.parametrize("suffix, text", [
    (".yaml", "method: sgl\nclients: 6\nphi: 0.75\nsamples-per-client: 100\n"),
    (".toml", 'method = "sgl"\nclients = 6\nphi = 0.75\nsamples_per_client = 100\n'),
])  # fmt: skip
def test_config_file_with_flags_overriding(tmp_path, suffix, text):
    path = tmp_path / f"run{suffix}"
    path.write_text(text)
    args = cli.build_parser().parse_args(["run", "--config", str(path), "--clients", "8"])
    config = cli.config_from_args(args)
    assert (config.method, config.clients, config.phi, config.samples_per_client) == ("sgl", 8, 0.75, 100)


def test_help_documents_every_setting_and_every_method(capsys):
    from sglr_ray.config import config_fields
    from sglr_ray.methods import METHODS

    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for f in config_fields():
        assert "--" + f.name.replace("_", "-") in text
        assert " ".join(f.metadata["help"].split()[:3]) in text
    for name, method in METHODS.items():
        assert f"{name} = {method.summary}" in text
    assert "(default: 'sglr')" in text and "(default: 1000)" in text


@pytest.mark.parametrize("method, alpha, phi", [
    ("psl", 0.0, 0.0), ("slr", 0.5, 0.0), ("sgl", 0.0, 0.5), ("sglr", 0.5, 0.5), ("sfl", 0.0, 0.0),
])  # fmt: skip
def test_method_presets_resolve_knobs(method, alpha, phi):
    config = RunConfig(method=method)
    assert (config.alpha, config.phi) == (alpha, phi)
    assert config.spec.averages_clients == (method == "sfl")


@pytest.mark.parametrize("clients, alpha", [(1, 1.5), (4, 0.0), (10, 0.5), (20, 1.0)])
def test_server_lr_is_client_lr_times_c_to_alpha(clients, alpha):
    config = RunConfig(method="sglr", clients=clients, alpha=alpha, samples_per_client=100, lr=2e-3)
    assert config.server_lr == pytest.approx(2e-3 * clients**alpha)
    assert split_lr(1e-3, clients, alpha) == pytest.approx(1e-3 * clients**alpha)


@pytest.mark.parametrize("text, kind, fraction", [("all", "all", 1.0), ("initial:0.4", "initial", 0.4),
                                                  ("final:.6", "final", 0.6)])  # fmt: skip
def test_phase_parsing(text, kind, fraction):
    phase = Phase.parse(text)
    assert (phase.kind, float(phase.fraction)) == (kind, fraction)


def test_config_error_is_value_error():
    with pytest.raises(ConfigError, match="--samples-per-client must be >= 1"):
        RunConfig(samples_per_client=-3)


class ExitCalledError(Exception):
    """os._exit, caught: the code the command line leaves with."""


@pytest.mark.parametrize(
    ("outcome", "code"),
    [(lambda: 3, 3), (lambda: cli.build_parser().parse_args(["--nope"]), 2),
     (lambda: cli.build_parser().parse_args(["--help"]), 0)],
)  # fmt: skip
def test_the_command_line_leaves_with_mains_code_after_flushing_and_stopping_ray(monkeypatch, outcome, code):
    # entry() exits with os._exit to skip the interpreter's teardown, where pyarrow's thread
    # pools can abort a finished command; what main returned, or argparse's exit, is the code
    calls = []

    def fake_exit(status):
        raise ExitCalledError(status)

    class FakeRay:
        def is_initialized(self):
            return True

        def shutdown(self):
            calls.append("ray.shutdown")

    monkeypatch.setattr(cli, "main", outcome)
    monkeypatch.setattr(cli.os, "_exit", fake_exit)
    monkeypatch.setitem(cli.sys.modules, "ray", FakeRay())
    with pytest.raises(ExitCalledError) as exited:
        cli.entry()
    assert exited.value.args == (code,) and calls == ["ray.shutdown"]
