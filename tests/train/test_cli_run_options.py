"""`recpar train --run-options`: the sweep's option mappings become the same flags."""

import pytest
import yaml

from recpar.cli import build_parser
from recpar.train.cli import apply_run_options


def _args(*extra):
    return build_parser().parse_args(["train", "--data", "d", "--out", "o", *extra])


def test_options_set_the_same_attributes_as_flags():
    flagged = _args("--scheme", "dp", "--dp", "2", "--compressor", "topk", "--topk-ratio", "0.05",
                    "--no-error-feedback")
    mapped = _args()
    apply_run_options(mapped, '{"scheme": "dp", "dp": 2, "compressor": "topk", '
                              '"topk_ratio": 0.05, "error_feedback": false}')
    assert vars(mapped) | {"run_options": None} == vars(flagged) | {"run_options": None}


@pytest.mark.parametrize("options, message", [
    ('{"dpp": 2}', "unknown option 'dpp'"),
    ('{"dp": "two"}', "dp = 'two' should be a int"),
    ('{"overlap": "no"}', "overlap must be true or false"),
    ('{"data": "x"}', "unknown option 'data'"),
    ('[1, 2]', "expected a JSON object"),
    ('{dp: 2}', "not valid JSON"),
])
def test_bad_options_name_the_key(options, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        apply_run_options(_args(), options)


@pytest.mark.parametrize("text, value", [("1e-05", 1e-05), ("-2.5E3", -2500.0), ("0.001", 0.001),
                                         ("128", 128), ("true", True), ("cpu", "cpu"),
                                         ("[0.9, 0.95]", [0.9, 0.95]), ("inf", "inf")])
def test_set_values_parse_exponent_floats_as_numbers(text, value):
    """The workflow writes small floats as Python prints them (1e-05), which YAML 1.1 would
    read as a string and TrainConfig would then refuse."""
    from recpar.train.cli import parse_value

    assert parse_value(text) == value and type(parse_value(text)) is type(value)


def test_fault_schedule_inline_or_file_becomes_canonical_events(tmp_path):
    """The sweep's inline `fault_schedule` and a --fault-schedule file give the same spec
    entry: events sorted by time, rates in bit/s, loss as a probability."""
    from recpar.train.cli import _fault_schedule

    events = [{"at_s": 25, "action": "link", "args": {"node": 1, "rate": "20mbit",
                                                     "loss": "1%"}},
              {"at_s": 5, "action": "straggler", "args": {"node": 0, "slowdown": 4,
                                                          "duration_s": 10}}]
    inline = _args("--topology", "emulated", "--nodes", "2")
    apply_run_options(inline, {"fault_schedule": events})
    f = tmp_path / "faults.yaml"
    f.write_text(yaml.safe_dump(events))
    from_file = _args("--topology", "emulated", "--nodes", "2", "--fault-schedule", str(f))
    want = [{"at_s": 5.0, "action": "straggler",
             "args": {"node": 0, "slowdown": 4.0, "duration_s": 10.0}},
            {"at_s": 25.0, "action": "link", "args": {"node": 1, "rate": 2e7,
                                                      "loss": pytest.approx(0.01)}}]
    assert _fault_schedule(inline, "emulated", 2) == want
    assert _fault_schedule(from_file, "emulated", 2) == want


@pytest.mark.parametrize("kind, nodes, events, message", [
    ("local", 1, [{"at_s": 1, "action": "reset-link", "args": {"node": 0}}],
     "needs --topology emulated, not local"),
    ("emulated", 2, [{"at_s": 1, "action": "kill-rank", "args": {"node": 2}}],
     r"event 0 \(kill-rank at 1 s\) names node 2, but the run has nodes 0..1"),
    ("emulated", 2, [{"at_s": 1, "action": "straggler", "args": {"node": 0}}],
     r"fault_schedule\[0\]\.args: straggler needs duration_s, slowdown"),
])
def test_bad_fault_schedules_fail_before_any_rank_starts(kind, nodes, events, message):
    from recpar.train.cli import _fault_schedule

    args = _args()
    apply_run_options(args, {"fault_schedule": events})
    with pytest.raises(ValueError, match=message):
        _fault_schedule(args, kind, nodes)


def test_moe_model_names_itself_in_the_run_id_and_other_schemes_are_refused():
    from recpar.train.cli import _spec

    args = _args("--model-override", "num_moe_experts=4", "--model-override",
                 "moe_expert_capacity_factor=1.25")
    args.model_size = "tiny"
    assert _spec(args, "baseline").run_id == "baseline-moe4top2-cap1.25-tiny-n1"
    args = _args("--scheme", "zero", "--dp", "2", "--model-override", "num_moe_experts=4")
    with pytest.raises(ValueError, match="num_moe_experts=4: an MoE model trains with schemes "
                                         "baseline and dp, and mp / hybrid with tensor "
                                         "parallelism only .pp = 1., not scheme zero"):
        _spec(args, "zero")
    args = _args("--scheme", "mp", "--pp", "2", "--model-override", "num_moe_experts=4")
    with pytest.raises(ValueError, match="not scheme mp with pp = 2"):
        _spec(args, "mp")
    args = _args("--scheme", "hybrid", "--dp", "2", "--tp", "2", "--model-override",
                 "num_moe_experts=4")
    args.model_size = "tiny"
    assert _spec(args, "hybrid").run_id == "dp2tp2-ring-moe4top2-tiny-n1"


def test_model_overrides_option_adds_model_fields_after_the_configs():
    from recpar.train.cli import _spec

    args = _args("--model-override", "num_moe_experts=8", "--model-override", "dropout=0.0")
    apply_run_options(args, {"scheme": "baseline",
                             "model_overrides": {"num_moe_experts": 4,
                                                 "moe_expert_capacity_factor": None}})
    args.model_size = "tiny"
    spec = _spec(args, "baseline")
    assert (spec.model.num_moe_experts, spec.model.dropout) == (4, 0.0)
    assert spec.model.moe_expert_capacity_factor is None
    with pytest.raises(ValueError, match="model_overrides must be a mapping"):
        apply_run_options(_args(), {"model_overrides": ["num_moe_experts=4"]})
