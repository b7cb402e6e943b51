import pytest

from recpar.train.config import ConfigError, TrainConfig
from recpar.train.run_id import make_run_id
from recpar.parallel.plan import ParallelPlan


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="unknown train option.*learning_rate"):
        TrainConfig.from_mapping({"learning_rate": 0.1})


@pytest.mark.parametrize("key, value", [("lr", 0), ("global_batch_size", -1), ("device", "tpu"),
                                        ("warmup_steps", -2), ("early_stopping_metric", "auc"),
                                        ("precision", "fp16"), ("compile", "yes"),
                                        ("compile_backend", "tvm")])
def test_bad_values_name_the_key(key, value):
    with pytest.raises(ConfigError, match=f"train.{key}"):
        TrainConfig.from_mapping({key: value})


def test_betas_round_trip():
    cfg = TrainConfig.from_mapping({"betas": [0.8, 0.9]})
    assert cfg.betas == (0.8, 0.9)
    assert cfg.to_record()["betas"] == [0.8, 0.9]


@pytest.mark.parametrize("device, precision, resolved", [
    ("cpu", "auto", "fp32"), ("cuda", "auto", "bf16"), ("cpu", "bf16", "bf16"),
    ("cuda", "fp32", "fp32")])
def test_precision_auto_is_fp32_on_cpu_and_bf16_on_cuda_and_the_record_says_what_ran(
        device, precision, resolved):
    import torch

    cfg = TrainConfig.from_mapping({"device": device, "precision": precision})
    assert cfg.resolved_precision() == resolved
    assert cfg.autocast_dtype() == (torch.bfloat16 if resolved == "bf16" else None)
    assert cfg.to_record()["precision"] == resolved
    assert TrainConfig.from_mapping(cfg.to_record()).resolved_precision() == resolved


def test_run_ids_spell_out_the_plan():
    assert make_run_id(ParallelPlan(), "tiny") == "baseline-tiny-n1"
    assert make_run_id(ParallelPlan(scheme="dp", dp=8), "tiny", nodes=2,
                       grad_sync="topk0.01-ring") == "dp8-topk0.01-ring-tiny-n2"
    assert make_run_id(ParallelPlan(scheme="hybrid", dp=2, tp=2, pp=2, num_microbatches=4,
                                    partition_method="balanced"), "small") == "dp2tp2pp2-small-n1"
    # a pipeline's schedule and partition appear when not recpar train's defaults
    assert make_run_id(ParallelPlan(scheme="mp", pp=2, num_microbatches=4,
                                    pipeline_schedule="gpipe", partition_method="uniform"),
                       "tiny") == "pp2-gpipe-uniform-tiny-n1"
    assert make_run_id(ParallelPlan(scheme="dp", dp=2), "tiny", grad_sync="ring",
                       precision="bf16", compiled=True) == "dp2-ring-bf16-compile-tiny-n1"
