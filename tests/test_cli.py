"""recpar.cli: `recpar <command>` registers only the module of its command."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys

from recpar.cli import COMMAND_MODULES, GROUP_MODULES, build_parser


def _commands_of(module: str) -> set[str]:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    importlib.import_module(module).register(sub)
    return set(sub.choices)


def test_every_command_maps_to_the_module_that_registers_it():
    registered = {cmd: m for m in GROUP_MODULES for cmd in _commands_of(m)}
    assert registered == COMMAND_MODULES


def test_one_command_parses_as_with_the_whole_parser():
    argv = ["train", "--data", "d", "--out", "o", "--scheme", "dp", "--dp", "2"]
    assert vars(build_parser("train").parse_args(argv)) == vars(build_parser().parse_args(argv))


def test_a_train_command_does_not_import_pandas():
    """The parent of every run parses its arguments without the data group's pandas import."""
    code = ("import sys; from recpar.cli import build_parser; build_parser('train'); "
            "print('pandas' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and r.stdout.split() == ["False"], r.stderr[-2000:]
