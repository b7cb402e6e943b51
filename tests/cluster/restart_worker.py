"""torchrun worker for tests/cluster/test_elastic.py: `restart_worker.py OUT_DIR`.

Every attempt joins a gloo group and all-reduces rank + 1; what it saw goes to
OUT_DIR/attempt<a>-rank<r>.json. In attempt 0 rank 1 then kills itself with SIGKILL, so torchrun
must restart both ranks; attempt 1 ends normally.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist


def main() -> None:
    out = Path(sys.argv[1])
    attempt = int(os.environ["TORCHELASTIC_RESTART_COUNT"])
    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo", timeout=timedelta(seconds=30))
    x = torch.tensor([float(rank + 1)])
    dist.all_reduce(x)
    (out / f"attempt{attempt}-rank{rank}.json").write_text(json.dumps({
        "attempt": attempt, "rank": rank, "sum": float(x),
        "use_agent_store": os.environ["TORCHELASTIC_USE_AGENT_STORE"]}))
    if attempt == 0 and rank == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    if attempt == 0:  # rank 0 waits in a collective its dead peer never joins
        dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
