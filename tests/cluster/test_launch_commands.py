"""The torchrun command lines `launch` builds (no root, nothing started)."""

import sys

import pytest

from recpar.cluster.launch import agent_commands
from recpar.cluster.netns import ClusterError, Names
from recpar.cluster.shaping import LinkShape
from recpar.cluster.state import ClusterState
from recpar.cluster.topology import ENV_VAR, Topology


def _state(nodes=2, rpn=2, prefix="rpu"):
    shape = LinkShape(1e8).to_dict()
    return ClusterState(prefix=prefix, nodes=nodes, ranks_per_node=rpn, base_shape=shape,
                        node_shapes=[shape] * nodes, netem=False, created_unix_s=0.0)


def test_local_is_standalone():
    [(cmd, env)] = agent_commands(Topology("local", 1, 3), ["-m", "recpar", "train"])
    assert "--standalone" in cmd and cmd[cmd.index("--nproc-per-node") + 1] == "3"
    assert cmd[-3:] == ["-m", "recpar", "train"]
    assert ENV_VAR in env


def test_emulated_one_agent_per_namespace():
    st = _state(nodes=3, rpn=2)
    cmds = agent_commands(st.topology(), ["train.py", "--x"], st, rdzv_port=29555, rdzv_id="abc")
    assert len(cmds) == 3
    for i, (cmd, env) in enumerate(cmds):
        assert cmd[:4] == ["ip", "netns", "exec", f"rpu-n{i}"]
        assert cmd[cmd.index("--nnodes") + 1] == "3"
        assert cmd[cmd.index("--nproc-per-node") + 1] == "2"
        assert cmd[cmd.index("--rdzv-backend") + 1] == "c10d"
        assert cmd[cmd.index("--rdzv-endpoint") + 1] == "198.18.0.1:29555"
        assert cmd[cmd.index("--rdzv-conf") + 1] == f"is_host={'true' if i == 0 else 'false'}"
        assert cmd[cmd.index("--local-addr") + 1] == f"198.18.0.{i + 1}"
        assert env["GLOO_SOCKET_IFNAME"] == f"rpu-v{i}"
        assert Topology.from_env(env).nodes == 3
        assert cmd[-2:] == ["train.py", "--x"]


def test_emulated_runs_on_the_first_nodes_of_a_larger_cluster():
    st = _state(nodes=4, rpn=1)
    cmds = agent_commands(Topology("emulated", 2, 3), ["x.py"], st)
    assert [c[3] for c, _ in cmds] == ["rpu-n0", "rpu-n1"]
    for cmd, env in cmds:
        assert cmd[cmd.index("--nnodes") + 1] == "2"
        assert cmd[cmd.index("--nproc-per-node") + 1] == "3"
        assert Topology.from_env(env).nodes == 2


def test_emulated_mismatch_and_bad_input():
    st = _state(nodes=2, rpn=1)
    with pytest.raises(ClusterError, match="needs 3 node"):
        agent_commands(Topology("emulated", 3, 1), ["x.py"], st)
    with pytest.raises(ValueError, match="empty command"):
        agent_commands(Topology("local", 1, 1), [])
    with pytest.raises(ValueError, match="scheduler"):
        agent_commands(Topology("slurm", 2, 1), ["x.py"])


def test_names_are_prefixed_and_fit_ifnamsiz():
    n = Names("rpabcd")
    for name in (n.node_ns(63), n.switch_ns, n.bridge, n.node_dev(63), n.switch_dev(63)):
        assert n.owns(name)
    assert len(n.switch_dev(63)) <= 15
    assert n.is_namespace("rpabcd-n12") and not n.is_namespace("rpabcdx-n1")
    assert not n.is_namespace("other-n1")
    for bad in ("RP", "1rp", "rp-x", "toolongprefix"):
        with pytest.raises(ValueError, match="prefix"):
            Names(bad)


def test_intra_node_links_put_each_rank_in_its_device_namespace():
    st = _state(nodes=2, rpn=2)
    st.intra_shape = LinkShape(1e8, latency_s=0.02).to_dict()
    cmds = agent_commands(st.topology(), ["-m", "recpar.train.worker", "s.json"], st)
    for i, (cmd, env) in enumerate(cmds):
        assert cmd[:4] == ["ip", "netns", "exec", f"rpu-n{i}"]  # the agent stays in the node
        assert "--no-python" in cmd
        wrapper = cmd[cmd.index("sh"):]
        script = wrapper[2]
        assert f"nsenter --net=/run/netns/rpu-n{i}d\"$LOCAL_RANK\"" in script
        assert "MASTER_ADDR=198.19.0.1" in script  # global rank 0's device hosts the store
        assert wrapper[-4:] == [sys.executable, "-m", "recpar.train.worker", "s.json"]
        assert env["GLOO_SOCKET_IFNAME"] == "rpu-e"
        topo = Topology.from_env(env)
        assert topo.intra_rate_bit_per_s == 1e8 and topo.intra_latency_s == 0.02


def test_more_ranks_per_node_than_device_namespaces_is_refused():
    st = _state(nodes=2, rpn=2)
    st.intra_shape = LinkShape(1e8).to_dict()
    with pytest.raises(ClusterError, match="3 ranks per node, but .* 2 device namespace"):
        agent_commands(Topology("emulated", 2, 3), ["x.py"], st)
