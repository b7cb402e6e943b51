"""`recpar train --run-options`: the sweep's option mappings become the same flags."""

import pytest

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
