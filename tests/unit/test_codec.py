"""--compress (nodes/codec.py): what the receiver decodes, and bytes counted as sent."""

from __future__ import annotations

import pytest
import torch

from sglr_ray.config import ConfigError
from sglr_ray.execution.driver import run_experiment
from sglr_ray.nodes.codec import parse_codec

X = torch.randn(8, 32, 4, 4, generator=torch.Generator().manual_seed(0))  # 8 samples of 512 values


def test_none_is_the_identity_and_counts_fp32():
    codec = parse_codec("none")
    assert codec.roundtrip(X) is X and codec.nbytes(X) == 8 * 512 * 4


def test_fp16_halves_the_bytes_and_rounds_to_half_precision():
    codec = parse_codec("fp16")
    assert codec.nbytes(X) == 8 * 512 * 2
    assert torch.equal(codec.roundtrip(X), X.half().float())


def test_int8_is_a_byte_a_value_plus_a_scale_and_zero_point_per_sample():
    codec = parse_codec("int8")
    assert codec.nbytes(X) == 8 * 512 + 8 * 8
    decoded = codec.roundtrip(X)
    step = (X.reshape(8, -1).amax(1) - X.reshape(8, -1).amin(1)) / 255  # per sample
    error = (decoded - X).abs().reshape(8, -1).amax(1)
    assert (error <= step / 2 + 1e-6).all() and (error > 0).any()
    constant = torch.full((2, 3), 5.0)
    assert torch.equal(codec.roundtrip(constant), constant)


def test_topk_keeps_each_samples_largest_values_with_their_indices():
    codec = parse_codec("topk:0.1")
    kept = 52  # ceil(0.1 * 512)
    assert codec.nbytes(X) == 8 * kept * (4 + 4)
    decoded = codec.roundtrip(X).reshape(8, -1)
    assert ((decoded != 0).sum(1) == kept).all()
    smallest_kept = decoded.abs().where(decoded != 0, torch.inf).amin(1)
    largest_dropped = X.reshape(8, -1).abs().where(decoded == 0, 0).amax(1)
    assert (smallest_kept >= largest_dropped).all()


@pytest.mark.parametrize("spec", ["int4", "topk:0", "topk:1.5", "topk:x"])
def test_an_unknown_compressor_is_refused_naming_the_flag(tiny_config, spec):
    with pytest.raises(ConfigError, match="--compress"):
        tiny_config(compress=spec)


def test_int8_sends_about_a_quarter_of_the_fp32_smashed_bytes(tiny_config, tmp_path):
    comm = {}
    for spec in ("none", "int8", "topk:0.25"):
        outcome = run_experiment(tiny_config(method="psl", compress=spec, out=str(tmp_path / spec)))
        comm[spec] = outcome.epochs[0].comm
    label_bytes = 4 * 32 * 8  # 4 clients x 32 samples of int64 labels go up uncompressed
    smashed = {k: sum(c.bytes_up) - label_bytes for k, c in comm.items()}
    assert 0.25 <= smashed["int8"] / smashed["none"] < 0.26
    assert 0.25 <= sum(comm["int8"].bytes_down) / sum(comm["none"].bytes_down) < 0.26  # gradients too
    assert smashed["topk:0.25"] == pytest.approx(smashed["none"] * 0.5, rel=0.01)  # values + indices


def test_compressed_runs_still_learn_and_differ_from_uncompressed(tiny_config, tmp_path):
    losses = {
        spec: run_experiment(tiny_config(method="sglr", compress=spec, out=str(tmp_path / spec))).epochs[0]
        for spec in ("none", "int8")
    }
    assert losses["int8"].train_loss != losses["none"].train_loss
    assert losses["int8"].train_loss == pytest.approx(losses["none"].train_loss, rel=0.05)
