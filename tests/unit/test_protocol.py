"""The split's messages on the wire: out-of-band byte arrays, the same tensors back."""

from __future__ import annotations

import pickle

import pytest
import torch

from sglr_ray.nodes.protocol import GradientDelivery, RowGradients, SmashedBatch


def pickled(obj: object) -> tuple[object, list]:
    buffers: list = []
    data = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    return pickle.loads(data, buffers=buffers), buffers


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_a_smashed_batch_travels_out_of_band_and_comes_back_equal(dtype):
    upload = SmashedBatch([3, 5], [2, 2], torch.randn(4, 2, 3, 3).to(dtype), torch.tensor([1, 0, 9, 4]))
    back, buffers = pickled(upload)
    assert len(buffers) == 2  # smashed data and labels, neither copied into the pickle
    assert back.smashed.dtype == dtype and torch.equal(back.smashed, upload.smashed)
    assert torch.equal(back.labels, upload.labels)
    assert (back.client_ids, back.sizes) == ([3, 5], [2, 2])


def test_row_gradients_pack_adjacent_rows_as_a_view_and_travel_as_one_array():
    grad = torch.randn(6, 4)
    views = {7: grad[0:2], 8: grad[2:4], 9: grad[4:6]}
    packed = RowGradients.pack(views, [7, 8, 9])
    assert packed.rows.data_ptr() == grad.data_ptr() and torch.equal(packed.rows, grad)
    subset = RowGradients.pack(views, [7, 9])  # not adjacent: concatenated
    assert torch.equal(subset[9], grad[4:6]) and subset.rows.data_ptr() != grad.data_ptr()
    back, buffers = pickled(GradientDelivery(packed, averaged=[]))
    assert len(buffers) == 1
    assert dict(back.own.items()).keys() == {7, 8, 9}
    assert all(torch.equal(back.own[c], views[c]) for c in views)
