"""An MoE recommender under DDP (every rank holds every expert) trains exactly as one device
on the same global batch, the load-balancing loss included (recpar.parallel.moe_data_parallel).

World size 2 (gloo on CPU, forkserver ranks), 6 SGD steps of lr 0.5. Tolerance: the dense DP
test's, 1e-5 on every weight (only the fp32 summation order differs; 3.2e-6 observed). The aux
coefficient is 1.0, so that ranks computing the loss over their own half-batch
(megatron-core's per-micro-batch loss) land measurably elsewhere (0.079 observed): that is
checked too, so the test can tell the two apart.
"""

import pytest

from ..comm.mp_launch import skip_unless_ranks, spawn_ranks
from .moe_workers import moe_dp_worker, train

WORLD_SIZE = 2
WEIGHT_TOL = 1e-5
pytestmark = pytest.mark.multiprocess


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    skip_unless_ranks(WORLD_SIZE)
    return spawn_ranks(moe_dp_worker, WORLD_SIZE, tmp_path_factory.mktemp("moe_dp"))


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_dp2_with_the_global_aux_loss_equals_one_device(ranks):
    single = train()
    for res in ranks:
        assert _max_diff(res["global_aux"], single) <= WEIGHT_TOL
    # the replicas stay identical, and the per-shard aux loss is another objective
    assert _max_diff(ranks[0]["global_aux"], ranks[1]["global_aux"]) == 0.0
    assert _max_diff(ranks[0]["local_aux"], single) > 100 * WEIGHT_TOL


@pytest.mark.parametrize("world", [2, 4])
def test_expert_parallel_equals_one_device(tmp_path, world):
    """dp = world, ep = 2 (recpar.parallel.expert_parallel): experts sharded over EP groups of
    2 ranks, tokens exchanged by all-to-all, expert gradients summed over the ranks holding the
    same experts (dp4: 2 copies), the gradient clipped over the whole model. The weights
    gathered on each EP group's rank 0 are one device's, to the same 1e-5. Each piece is
    needed: with the norm over this rank's experts only, both worlds end 7.7e-3 away; without
    the sum over the copies, dp4 ends 2.6e-2 away (checked by breaking each in turn)."""
    from .moe_workers import MAX_NORM, moe_ep_worker

    skip_unless_ranks(world)
    ranks = spawn_ranks(moe_ep_worker, world, tmp_path)
    single = train(max_norm=MAX_NORM)
    gathered = [r["ep2"] for r in ranks if r["ep2"] is not None]
    assert len(gathered) == world // 2  # one per EP group
    for full in gathered:
        assert _max_diff(full, single) <= WEIGHT_TOL
