"""`recpar <group> <command>`: every pipeline step is reachable by hand.

Each group lives with its package (`recpar.<pkg>.cli.register`); this module only assembles
them, imports nothing heavy at start-up, and turns library errors into one-line messages.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Groups in the order `recpar --help` lists them; each module exposes register(subparsers).
GROUP_MODULES = (
    "recpar.data.cli",
    "recpar.train.cli",
    "recpar.comm.cli",
    "recpar.cluster.cli",
    "recpar.perfmodel.cli",
    "recpar.report.cli",
)

COMMAND_MODULES = {
    "data": "recpar.data.cli",
    "train": "recpar.train.cli",
    "eval": "recpar.train.cli",
    "bench": "recpar.comm.cli",
    "cluster": "recpar.cluster.cli",
    "perfmodel": "recpar.perfmodel.cli",
    "report": "recpar.report.cli",
}
"""First argument -> the module that registers it. `recpar <command> ...` registers that
module's commands only: registering `data` alone imports pandas for its source list (0.7 s),
which every `recpar train` (the parent of each run, each pipeline job) would pay for nothing.
`recpar`, `recpar --help` and anything not listed here get the whole parser."""


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `recpar` parser; `command` (a COMMAND_MODULES key): only its module's commands."""
    import recpar

    parser = argparse.ArgumentParser(prog="recpar", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"recpar {recpar.__version__}")
    parser.add_argument("--traceback", action="store_true",
                        help="show the full Python traceback instead of a one-line error")
    sub = parser.add_subparsers(dest="group", metavar="<group>", required=True)
    names = (COMMAND_MODULES[command],) if command in COMMAND_MODULES else GROUP_MODULES
    for name in names:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # group not built yet in this checkout
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv[0] if argv else None)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("recpar: interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        # Library errors are written to name the file/key/value; show them on one line.
        if getattr(args, "traceback", False):
            raise
        print(f"recpar: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
