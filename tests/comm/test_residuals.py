"""ResidualStore: remapping across DDP's bucket rebuild and checkpoint round trips."""

import pytest
import torch

from recpar.comm.residuals import ResidualStore, bucket_layout


def _params():
    return [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2, 2))]


def test_remap_after_bucket_rebuild_keeps_each_parameters_residual():
    a, b = _params()
    store = ResidualStore()
    old = bucket_layout([a, b], [torch.zeros(3), torch.zeros(2, 2)], None)  # one bucket [a | b]
    store.get(0, old, torch.zeros(7))
    store.put(0, old, torch.arange(7.0))
    # rebuilt: bucket 0 = [b], bucket 1 = [a]
    new0 = bucket_layout([b], [torch.zeros(2, 2)], None)
    new1 = bucket_layout([a], [torch.zeros(3)], None)
    assert torch.equal(store.get(0, new0, torch.zeros(4)), torch.tensor([3.0, 4, 5, 6]))
    assert torch.equal(store.get(1, new1, torch.zeros(3)), torch.tensor([0.0, 1, 2]))


def test_named_state_dict_restores_into_a_different_layout():
    a, b = _params()
    names = {id(a): "a", id(b): "b"}
    store = ResidualStore()
    lay = bucket_layout([a, b], [torch.zeros(3), torch.zeros(2, 2)], names)
    store.get(0, lay, torch.zeros(7))
    store.put(0, lay, torch.arange(7.0))
    sd = store.state_dict()
    assert sorted(sd["per_param"]) == ["a", "b"]
    fresh = ResidualStore()
    fresh.load_state_dict(sd)
    lay_b = bucket_layout([b], [torch.zeros(2, 2)], names)
    assert torch.equal(fresh.get(0, lay_b, torch.zeros(4)), torch.tensor([3.0, 4, 5, 6]))


def test_unnamed_checkpoint_into_other_shapes_is_an_error():
    store = ResidualStore()
    lay = bucket_layout([], [torch.zeros(5)], None)
    store.get(0, lay, torch.zeros(5))
    fresh = ResidualStore()
    fresh.load_state_dict(store.state_dict())
    with pytest.raises(ValueError, match="checkpoint layout"):
        fresh.get(0, bucket_layout([], [torch.zeros(6)], None), torch.zeros(6))
