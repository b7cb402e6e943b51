"""recpar.rank_exit: a rank ends without interpreter finalization (the module says why), and
every entry point that torchrun starts ends that way.

The race it removes (gloo's worker thread freeing a tensor while the interpreter finalizes)
depends on thread scheduling and cannot be forced from Python; it was shown with core dumps
(see recpar.rank_exit). What is tested here is the mechanism: exit handlers run, output is
flushed, the exit code is kept, and no module teardown happens.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

EXIT = textwrap.dedent("""
    import atexit, sys
    from recpar.rank_exit import exit_rank, run_rank

    class _Finalized:
        def __del__(self, write=sys.stdout.write):
            write("finalized")

    _marker = _Finalized()
    atexit.register(lambda: sys.stdout.write("atexit ran;"))
    sys.stdout.write("buffered;")  # no newline, stdout is a pipe: still in the buffer
    mode = sys.argv[1]
    if mode == "code":
        exit_rank(3)
    if mode == "return":
        run_rank(lambda: 4)
    if mode == "sys.exit":
        def main():
            sys.exit("bad spec")
        run_rank(main)
    def main():
        raise RuntimeError("boom")
    run_rank(main)
""")


@pytest.mark.parametrize("mode, code, stderr_part", [
    ("code", 3, None), ("return", 4, None), ("sys.exit", 1, "bad spec"),
    ("raise", 1, "RuntimeError: boom")])
def test_exit_rank_runs_atexit_and_flushes_but_never_finalizes(tmp_path, mode, code,
                                                                stderr_part):
    script = tmp_path / "exit.py"
    script.write_text(EXIT)
    r = subprocess.run([sys.executable, str(script), mode], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == code, r.stderr
    assert r.stdout == "buffered;atexit ran;"  # flushed, handlers run, no module teardown
    if stderr_part:
        assert stderr_part in r.stderr


SRC = Path(__file__).resolve().parents[1] / "src" / "recpar"


def _main_block(tree: ast.Module) -> ast.If | None:
    for node in tree.body:
        if (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
                and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__"):
            return node
    return None


def test_every_rank_entry_point_ends_through_run_rank():
    """A module that joins a process group and can be started as `python -m` (by torchrun)
    must end through run_rank, not sys.exit."""
    entry_points = []
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text()
        block = _main_block(ast.parse(text))
        if block is None or "init_process_group" not in text:
            continue
        entry_points.append(path.relative_to(SRC).as_posix())
        calls = {n.func.id for n in ast.walk(block)
                 if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        assert "run_rank" in calls, f"{path}: its __main__ block does not call run_rank"
    assert {"train/worker.py", "comm/cli.py", "cluster/allreduce_probe.py"} <= set(entry_points)
