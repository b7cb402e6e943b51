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


def build_parser() -> argparse.ArgumentParser:
    import recpar

    parser = argparse.ArgumentParser(prog="recpar", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"recpar {recpar.__version__}")
    parser.add_argument("--traceback", action="store_true",
                        help="show the full Python traceback instead of a one-line error")
    sub = parser.add_subparsers(dest="group", metavar="<group>", required=True)
    for name in GROUP_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # group not built yet in this checkout
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
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
