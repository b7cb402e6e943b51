"""Parsing and validation of rates, durations, loss and slowdown (no root needed)."""

import pytest

from recpar.cluster.units import (format_duration_us, format_rate, parse_duration, parse_loss,
                                  parse_rate, parse_slowdown)


@pytest.mark.parametrize("text,bits", [("100mbit", 1e8), ("1gbit", 1e9), ("10Mbit", 1e7),
                                       ("12.5mbps", 1e8), ("2.5gbit", 2.5e9), ("500kbit", 5e5),
                                       (1e6, 1e6)])
def test_parse_rate(text, bits):
    assert parse_rate(text) == pytest.approx(bits)


@pytest.mark.parametrize("text,msg", [("fast", "cannot parse"), ("10xbit", "unknown rate unit"),
                                      ("100gbit", "outside"), ("0mbit", "outside"),
                                      ("-1mbit", "cannot parse")])
def test_parse_rate_errors_name_option_and_value(text, msg):
    with pytest.raises(ValueError, match=msg) as e:
        parse_rate(text, "--inter-bw")
    assert "--inter-bw" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("text,s", [("5ms", 0.005), ("0.2s", 0.2), ("250us", 250e-6), ("0", 0.0),
                                    ("1", 1.0)])
def test_parse_duration(text, s):
    assert parse_duration(text) == pytest.approx(s)


@pytest.mark.parametrize("text", ["5 parsecs", "ms", "11s", "-3ms"])
def test_parse_duration_errors(text):
    with pytest.raises(ValueError, match="--inter-latency"):
        parse_duration(text, "--inter-latency")


@pytest.mark.parametrize("text,p", [("1%", 0.01), ("0.001", 0.001), ("0", 0.0), ("12.5%", 0.125)])
def test_parse_loss(text, p):
    assert parse_loss(text) == pytest.approx(p)


@pytest.mark.parametrize("text", ["100%", "1.5", "-0.1", "lots"])
def test_parse_loss_errors(text):
    with pytest.raises(ValueError, match="--loss"):
        parse_loss(text, "--loss")


def test_parse_slowdown():
    assert parse_slowdown("2") == 2.0
    for bad in ("0.5", "x", "1000"):
        with pytest.raises(ValueError, match="--slowdown"):
            parse_slowdown(bad, "--slowdown")


def test_format_round_trips_through_parse():
    for bits in (1e7, 1e8, 1e9, 2.5e9, 123456.0):
        assert parse_rate(format_rate(bits)) == pytest.approx(bits)
    assert format_duration_us(0.0025) == "2500us"
    assert parse_duration(format_duration_us(0.0025)) == pytest.approx(0.0025)
