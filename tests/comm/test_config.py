"""GradSyncConfig validation: one-line errors before any rank starts."""

import pytest

from recpar.comm.config import GradSyncConfig, GradSyncConfigError


@pytest.mark.parametrize("kwargs, world, match", [
    ({"algorithm": "tree"}, 4, r"grad_sync\.algorithm: unknown value 'tree'"),
    ({"compressor": "qsgd"}, 4, r"grad_sync\.compressor: unknown value 'qsgd'"),
    ({"compressor": "topk", "topk_ratio": 0.0}, 4, r"grad_sync\.topk_ratio: must be in \(0, 1\], got 0\.0"),
    ({"compressor": "topk", "topk_ratio": 1.5}, 4, r"topk_ratio.*1\.5"),
    ({"topk_ratio": float("nan")}, 4, r"topk_ratio"),
    ({"ranks_per_node": 3}, 4, r"world size 4 is not divisible by ranks_per_node=3"),
    ({"ranks_per_node": 0}, 4, r"ranks_per_node: must be an int >= 1"),
    ({"algorithm": "hierarchical", "ranks_per_node": 4}, 4, r"'hierarchical' needs >= 2 nodes.*\(1 node\)"),
    ({"algorithm": "hierarchical", "ranks_per_node": 2, "compressor": "sign"}, 4, r"cannot be combined"),
    ({"compressor": "powersgd", "powersgd_start_iter": 1}, 2, r"powersgd_start_iter: must be > 1"),
    ({"bucket_size": 0}, 2, r"bucket_size: must be an int >= 1"),
    ({}, 0, r"world_size must be an int >= 1"),
])
def test_invalid_configs_raise_one_line_errors(kwargs, world, match):
    with pytest.raises(GradSyncConfigError, match=match) as info:
        GradSyncConfig(**kwargs).validate(world)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("kwargs, world", [
    ({}, 1),
    ({"algorithm": "hierarchical", "ranks_per_node": 2}, 4),
    ({"algorithm": "hierarchical", "ranks_per_node": 1}, 2),
    ({"compressor": "topk", "topk_ratio": 1.0}, 8),
    ({"compressor": "sign", "ranks_per_node": 4}, 8),
])
def test_valid_configs_pass(kwargs, world):
    cfg = GradSyncConfig(**kwargs)
    assert cfg.validate(world) is cfg


def test_bucket_size_is_elements_mapped_to_ddp_mib():
    cfg = GradSyncConfig(bucket_size=1024 * 1024)  # 1 Mi fp32 elements = 4 MiB
    assert cfg.ddp_kwargs(element_size_bytes=4) == {"bucket_cap_mb": 4.0}
    assert cfg.ddp_kwargs(element_size_bytes=2) == {"bucket_cap_mb": 2.0}
    assert GradSyncConfig().ddp_kwargs() == {}


def test_from_dict_rejects_unknown_key():
    with pytest.raises(GradSyncConfigError, match=r"grad_sync\.compresor: unknown key"):
        GradSyncConfig.from_dict({"compresor": "sign"})
    assert GradSyncConfig.from_dict({"compressor": "sign"}).compressor == "sign"
