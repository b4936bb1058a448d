"""Bad input is refused before any work starts, with a message naming the value."""

from __future__ import annotations

import pytest

from sglr_ray import cli, driver
from sglr_ray.config import ConfigError, Phase, RunConfig, server_lr

BAD_FLAGS = [
    (["--phi", "1.5"], "--phi must be in [0, 1], got 1.5"),
    (["--phi", "-0.1"], "--phi must be in [0, 1], got -0.1"),
    (["--alpha", "-1"], "--alpha must be >= 0, got -1"),
    (["--method", "splitfedx"], "--method 'splitfedx' is unknown"),
    (["--model", "vgg11"], "--model 'vgg11' is unknown"),
    (["--dataset", "cifar10"], "--dataset 'cifar10' is unknown"),
    (["--clients", "51"], "--clients 51 x --samples-per-client 1000 = 51000 samples"),
    (["--batch-size", "2000"], "--batch-size 2000 is larger than a client's partition"),
    (["--phase", "middle:0.4"], "--phase 'middle:0.4' is malformed"),
    (["--phase", "initial:"], "--phase 'initial:' is malformed"),
    (["--phase", "final:1.5"], "--phase 'final:1.5': fraction 1.5 must be in (0, 1]"),
    (["--method", "psl", "--alpha", "0.5"], "--alpha 0.5 does not apply to --method psl"),
    (["--method", "sfl", "--phi", "0.5"], "--phi 0.5 does not apply to --method sfl"),
    (["--clients", "0"], "--clients must be a positive integer, got 0"),
    (["--lr", "0"], "--lr must be positive, got 0.0"),
    (["--optimizer", "lamb"], "--optimizer 'lamb' is unknown"),
    (["--executor", "spark"], "--executor 'spark' is unknown"),
    (["--leakage", "--leakage-client", "7"], "--leakage-client 7 must be in [0, 4]"),
    (["--leakage", "--clients", "50"], "--leakage-aux-samples 5000 exceeds the 0 training samples"),
    (["--link-rate-bps", "0"], "--link-rate-bps must be positive, got 0.0"),
    (["--joules-per-bit", "-1"], "--joules-per-bit must be positive, got -1.0"),
]


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if the run gets as far as loading data or starting an executor."""

    def forbidden(*args, **kwargs):
        raise AssertionError("work started despite bad input")

    monkeypatch.setattr(driver, "prepare_data", forbidden)
    monkeypatch.setattr(driver, "make_executor", forbidden)


@pytest.mark.parametrize("flags, message", BAD_FLAGS, ids=[" ".join(f) for f, _ in BAD_FLAGS])
def test_bad_flag_exits_nonzero_naming_value(flags, message, capsys, no_work, tmp_out):
    assert cli.main(["run", "--out", tmp_out, *flags]) == 2
    err = capsys.readouterr().err
    assert message in err


def test_unwritable_out_is_refused_before_work(tmp_path, capsys, no_work):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    assert cli.main(["run", "--out", str(blocker / "results")]) == 2
    assert f"--out '{blocker / 'results'}' is not writable" in capsys.readouterr().err


def test_unknown_setting_in_config_file(tmp_path, capsys, no_work):
    path = tmp_path / "run.yaml"
    path.write_text("clients: 4\nlearning_rate: 0.1\n")
    assert cli.main(["run", "--config", str(path)]) == 2
    assert "unknown settings: learning_rate" in capsys.readouterr().err


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


def test_help_documents_every_flag_with_default(capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ["--method", "--phi", "--alpha", "--clients-per-actor", "--gpus-per-client", "--out"]:
        assert flag in text
    assert "(default: 'sglr')" in text and "(default: 1000)" in text


@pytest.mark.parametrize("method, alpha, phi", [
    ("psl", 0.0, 0.0), ("slr", 0.5, 0.0), ("sgl", 0.0, 0.5), ("sglr", 0.5, 0.5), ("sfl", 0.0, 0.0),
])  # fmt: skip
def test_method_presets_resolve_knobs(method, alpha, phi):
    config = RunConfig(method=method)
    assert (config.alpha, config.phi) == (alpha, phi)
    assert config.preset.average_client_models == (method == "sfl")


@pytest.mark.parametrize("clients, alpha", [(1, 1.5), (4, 0.0), (10, 0.5), (20, 1.0)])
def test_server_lr_is_client_lr_times_c_to_alpha(clients, alpha):
    config = RunConfig(method="sglr", clients=clients, alpha=alpha, samples_per_client=100, lr=2e-3)
    assert config.server_lr == pytest.approx(2e-3 * clients**alpha)
    assert server_lr(1e-3, clients, alpha) == pytest.approx(1e-3 * clients**alpha)


@pytest.mark.parametrize("text, kind, fraction", [("all", "all", 1.0), ("initial:0.4", "initial", 0.4),
                                                  ("final:.6", "final", 0.6)])  # fmt: skip
def test_phase_parsing(text, kind, fraction):
    phase = Phase.parse(text)
    assert (phase.kind, phase.fraction) == (kind, fraction)


def test_config_error_is_value_error():
    with pytest.raises(ConfigError, match="--samples-per-client must be a positive integer"):
        RunConfig(samples_per_client=-3)
