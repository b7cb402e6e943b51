"""Entry point of one rank: `python -m recpar.train.worker SPEC.json` (started by torchrun).

The launcher (`recpar train` with dp > 1) validated everything and wrote the spec; a rank only
joins the process group, reads the topology it runs on, trains, and leaves the group.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from recpar.comm.collective_trace import CollectiveTrace, describe_failure
from recpar.train.spec import spec_from_dict

COMM_FAILURE_EXIT = 3
"""Exit code of a rank whose peer stopped answering (the error line names the collective)."""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m recpar.train.worker SPEC.json", file=sys.stderr)
        return 2
    spec = spec_from_dict(json.loads(Path(argv[0]).read_text()))
    backend = "nccl" if spec.train.device == "cuda" else "gloo"
    timeout_s = spec.train.collective_timeout_s
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    trace = CollectiveTrace().install()
    try:
        from recpar.cluster.topology import Topology

        if os.environ.get("RECPAR_TOPOLOGY"):
            spec.topology = {**spec.topology, **Topology.from_env().to_record()}
        from recpar.train.loop import train

        train(spec, progress=dist.get_rank() == 0 and sys.stderr.isatty())
    except RuntimeError as e:  # torch's DistBackendError and gloo's errors are RuntimeErrors
        line = describe_failure(e, trace, dist.get_rank(), dist.get_world_size(), timeout_s)
        if line is None:
            raise
        print(line, file=sys.stderr, flush=True)
        return COMM_FAILURE_EXIT
    finally:
        trace.uninstall()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    from recpar.rank_exit import run_rank

    # A rank ends without interpreter finalization (recpar.rank_exit: gloo threads vs exit).
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    run_rank(main)
