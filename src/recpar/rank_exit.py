"""End a rank's process without finalizing the interpreter: `run_rank(main)` in every entry
point that torchrun starts.

Why (the "terminate called without an active exception" flake, SIGABRT at a rank's exit):
gloo runs each collective on a C++ worker thread (`pt_gloo_runloop`). That thread drops its
reference to a finished work *after* the caller's `wait()` has returned. When that reference
is the last one to a tensor Python already let go of, freeing the tensor takes the GIL. If the
main thread has meanwhile reached `Py_FinalizeEx`, CPython 3.11 makes any thread that takes the
GIL call `pthread_exit`; the forced unwind passes through the work's (noexcept) destructor and
libstdc++ calls `std::terminate`. Core dumps of both failures in the test suite (ZeRO-3:
`AsyncBroadcastWork`, tp2×pp2: `AsyncAllgatherWork`) show exactly this stack; 2 of ~60 runs
under load failed this way. It is a scheduling race, so no test can force it; the tests check
the exit path itself (tests/test_rank_exit.py).

`destroy_process_group()` does not close the window: it does not join gloo's threads while
megatron-core, DeepSpeed or torch itself still hold a group (a tp2×pp2 rank keeps 36 such
threads alive after it), and those holders are released only during finalization.

So a rank ends the way Python's own multiprocessing ends its children: run the exit handlers
while the interpreter is whole, flush, and leave with `os._exit`, so that no C++ thread ever
meets a finalizing interpreter. Nothing is lost: files are written and closed by then, and
every peer has finished the collectives this rank took part in (the caller waited on them).
"""

from __future__ import annotations

import atexit
import os
import sys
import traceback
from collections.abc import Callable
from typing import NoReturn


def exit_rank(code: int) -> NoReturn:
    """Run atexit handlers, flush stdout/stderr, and end the process with `code` without
    interpreter finalization."""
    try:
        atexit._run_exitfuncs()  # what Py_FinalizeEx would run first; the interpreter is whole
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed or broken pipe: nothing left to save
                pass
        os._exit(code)


def _exit_code(e: SystemExit) -> int:
    """sys.exit's convention: None -> 0, an int as is, anything else printed and 1."""
    if e.code is None:
        return 0
    if isinstance(e.code, int):
        return e.code
    print(e.code, file=sys.stderr)
    return 1


def run_rank(main: Callable[[], int | None]) -> NoReturn:
    """Call `main()` and end the process with its return code (a traceback and 1 if it
    raises) through `exit_rank`."""
    try:
        code = int(main() or 0)
    except SystemExit as e:
        code = _exit_code(e)
    except BaseException:  # noqa: BLE001 - report it as the interpreter would, then exit
        traceback.print_exc()
        code = 1
    exit_rank(code)
