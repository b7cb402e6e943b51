"""A fixed CPU budget per emulated device: every rank of a run, and the single-device baseline it
is compared with, runs in its own CPU cgroup with a CFS quota, so a device gets the same compute
whatever the number of devices (the scale model: N budgeted devices can be up to N× one).

    budget = CpuBudget(cores=0.2)               # 0.2 CPU-s per wall-s, 10 ms CFS period
    with budget_groups(budget, ranks=4, tag="dp4-ring-tiny-n2") as groups:
        env = {ENV_DIR: str(groups.dir)}        # a rank joins (join_from_env) as training starts
        ...launch the ranks...
        groups.throttling()                     # per-rank CFS statistics, before removal

Layout: `<cpu controller>/recpar/<launcher pid>-<tag>/rank<k>`. The launcher pid names the
owner: a group whose owner is gone (a killed run) is stale and removed by the next
`budget_groups` and by `recpar cluster down` (`remove_stale`).

Why written here: the kernel's cgroup files are the interface (cgroup v1 `cpu.cfs_quota_us` /
`cpu.cfs_period_us` as mounted on this machine, v2 `cpu.max` elsewhere); systemd-run or
cgcreate would add a daemon or a package for four file writes. The ranks of an emulated node run
under `ip netns exec`, which remounts /sys and hides /sys/fs/cgroup; ranks therefore reach their
group through `/proc/<launcher pid>/root/...`, the launcher's view of the file system.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ENV_DIR = "RECPAR_CPU_BUDGET_DIR"
"""Environment variable naming the run's group directory (as a rank reaches it)."""
ROOT_NAME = "recpar"
"""Top group under the cpu controller that holds every group recpar makes."""
V1_CPU = Path("/sys/fs/cgroup/cpu")
V2_ROOTS = (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup"))
MIN_QUOTA_US = 1000
"""The kernel's minimum CFS quota and period (1 ms)."""
MAX_PERIOD_US = 1_000_000
"""The kernel's maximum CFS period (1 s)."""


class BudgetError(RuntimeError):
    """A budget cannot be applied here (the message says why)."""


@dataclass(frozen=True)
class CpuBudget:
    """The compute one emulated device may use."""

    cores: float
    """CPU-seconds per wall-second each device may use, e.g. 0.2 (a fifth of one core)."""
    period_us: int = 10_000
    """CFS period. A device may run `cores × period` per period, then waits for the next:
    a shorter period spreads its share more evenly over a training step (less jitter) at more
    scheduler work; bench/test_cpu_budget.py measures the choice."""
    intra_op_threads: int = 1
    """torch intra-op threads per budgeted rank (more threads only burn the quota faster)."""

    def __post_init__(self) -> None:
        ncpu = os.cpu_count() or 1
        if not 0 < self.cores <= ncpu:
            raise ValueError(f"cpu budget: cores = {self.cores} must be in (0, {ncpu}] "
                             f"(this machine has {ncpu} CPUs)")
        if not MIN_QUOTA_US <= self.period_us <= MAX_PERIOD_US:
            raise ValueError(f"cpu budget: period_us = {self.period_us} must be in "
                             f"[{MIN_QUOTA_US}, {MAX_PERIOD_US}] (the kernel's CFS limits)")
        if self.quota_us < MIN_QUOTA_US:
            raise ValueError(f"cpu budget: cores × period_us = {self.cores} × {self.period_us} "
                             f"= {self.quota_us} µs is below the kernel's minimum quota of "
                             f"{MIN_QUOTA_US} µs; use a longer period")
        if self.intra_op_threads < 1:
            raise ValueError(f"cpu budget: intra_op_threads = {self.intra_op_threads} < 1")

    @property
    def quota_us(self) -> int:
        """CPU time per period, µs."""
        return round(self.cores * self.period_us)

    def to_record(self, mechanism: str) -> dict:
        return {"cores_per_device": self.cores, "period_us": self.period_us,
                "quota_us": self.quota_us, "intra_op_threads": self.intra_op_threads,
                "mechanism": mechanism}


@dataclass(frozen=True)
class Controller:
    """The mounted cpu controller: cgroup v1 (cpu.cfs_*) or v2 (cpu.max)."""

    root: Path
    version: int

    @property
    def mechanism(self) -> str:
        return ("cgroup v1 cpu.cfs_quota_us/cpu.cfs_period_us" if self.version == 1
                else "cgroup v2 cpu.max")

    def set_limit(self, group: Path, budget: CpuBudget) -> None:
        if self.version == 1:
            (group / "cpu.cfs_period_us").write_text(str(budget.period_us))
            (group / "cpu.cfs_quota_us").write_text(str(budget.quota_us))
        else:
            (group / "cpu.max").write_text(f"{budget.quota_us} {budget.period_us}")

    def throttling(self, group: Path) -> dict:
        """CFS statistics of `group` since it was made: periods, throttled periods, time."""
        stat = dict(line.split() for line in (group / "cpu.stat").read_text().splitlines()
                    if len(line.split()) == 2)
        throttled_s = (int(stat.get("throttled_time", 0)) / 1e9 if self.version == 1
                       else int(stat.get("throttled_usec", 0)) / 1e6)
        periods = int(stat.get("nr_periods", 0))
        throttled = int(stat.get("nr_throttled", 0))
        return {"periods_count": periods, "throttled_periods_count": throttled,
                "throttled_periods_pct": 100.0 * throttled / periods if periods else None,
                "throttled_s": throttled_s}


def find_controller(make_top: bool = True) -> Controller:
    """The writable cpu controller, or BudgetError saying why there is none; `make_top`
    (re)makes the `recpar` group that holds the runs' groups."""
    if os.geteuid() != 0:
        raise BudgetError("a CPU budget needs root (it writes cgroup files)")
    if (V1_CPU / "cpu.cfs_quota_us").exists():
        ctl = Controller(V1_CPU, 1)
    else:
        for root in V2_ROOTS:
            controllers = root / "cgroup.controllers"
            if controllers.exists() and "cpu" in controllers.read_text().split():
                ctl = Controller(root, 2)
                break
        else:
            raise BudgetError("no cgroup cpu controller is mounted (looked for "
                              f"{V1_CPU}/cpu.cfs_quota_us and cgroup v2 cpu.max)")
    if not os.access(ctl.root, os.W_OK):
        raise BudgetError(f"the cgroup cpu controller at {ctl.root} is not writable")
    if not make_top:
        return ctl
    top = ctl.root / ROOT_NAME
    try:
        top.mkdir(exist_ok=True)
        if ctl.version == 2:  # children of `top` need the cpu controller enabled in it
            (ctl.root / "cgroup.subtree_control").write_text("+cpu")
            (top / "cgroup.subtree_control").write_text("+cpu")
    except OSError as e:
        raise BudgetError(f"cannot make cgroup {top}: {e}") from e
    return ctl


def unavailable_reason() -> str | None:
    """None when budgets can be applied here; otherwise the reason (for skips and errors)."""
    try:
        find_controller(make_top=False)
    except BudgetError as e:
        return str(e)
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_group(ctl: Controller, group: Path) -> None:
    """Move whatever still runs in `group` (and its children) to the root group, then rmdir
    them, deepest first."""
    for child in sorted((p for p in group.iterdir() if p.is_dir()), reverse=True):
        _remove_group(ctl, child)
    procs = (group / "cgroup.procs").read_text().split()
    for pid in procs:
        with contextlib.suppress(ProcessLookupError, OSError):  # it may exit meanwhile
            (ctl.root / "cgroup.procs").write_text(pid)
    for attempt in range(50):  # rmdir fails while an exiting task is still accounted
        try:
            group.rmdir()
            return
        except OSError:
            time.sleep(0.02 * (attempt + 1))
    group.rmdir()  # the last try raises with the reason


def _owner(group: Path) -> int | None:
    head = group.name.split("-", 1)[0]
    return int(head) if head.isdigit() else None


def remove_stale(ctl: Controller | None = None) -> list[str]:
    """Remove the groups of runs whose launcher is gone; returns their names."""
    ctl = ctl or find_controller(make_top=False)
    if not (ctl.root / ROOT_NAME).is_dir():
        return []
    removed = []
    for group in sorted((ctl.root / ROOT_NAME).iterdir()):
        owner = _owner(group)
        if group.is_dir() and (owner is None or not _pid_alive(owner)):
            _remove_group(ctl, group)
            removed.append(group.name)
    _remove_top_if_empty(ctl)
    return removed


def _remove_top_if_empty(ctl: Controller) -> None:
    """rmdir the `recpar` group once no run uses it (the kernel refuses while a child exists;
    the next run makes it again), so nothing of recpar stays in the hierarchy."""
    with contextlib.suppress(OSError):
        (ctl.root / ROOT_NAME).rmdir()


@dataclass(frozen=True)
class BudgetGroups:
    """One run's groups: `dir/rank<k>` for k < ranks."""

    controller: Controller
    budget: CpuBudget
    path: Path
    ranks: int

    @property
    def dir(self) -> Path:
        """The run's directory as a rank reaches it, also from inside a network namespace."""
        return Path(f"/proc/{os.getpid()}/root") / self.path.relative_to("/")

    def throttling(self) -> list[dict]:
        return [self.controller.throttling(self.path / f"rank{k}") for k in range(self.ranks)]


@contextlib.contextmanager
def budget_groups(budget: CpuBudget, ranks: int, tag: str) -> Iterator[BudgetGroups]:
    """Make one budgeted group per rank (after removing stale ones); remove them on exit,
    whatever happens."""
    remove_stale()
    ctl = find_controller()  # (re)makes the top group, which remove_stale removes when empty
    safe_tag = "".join(c if c.isalnum() or c in "._-" else "_" for c in tag)[:80]
    path = ctl.root / ROOT_NAME / f"{os.getpid()}-{safe_tag}"
    path.mkdir()
    try:
        for k in range(ranks):
            (path / f"rank{k}").mkdir()
            ctl.set_limit(path / f"rank{k}", budget)
        yield BudgetGroups(ctl, budget, path, ranks)
    finally:
        if path.exists():  # `recpar cluster down` may have removed it already
            _remove_group(ctl, path)
        _remove_top_if_empty(ctl)


_joined: Path | None = None
"""The group this process joined (own_throttling reads it)."""


def join(group_dir: Path, rank: int, pid: int | None = None) -> Path:
    """Move process `pid` (default: this one, all its threads) into `group_dir/rank<rank>`."""
    group = Path(group_dir) / f"rank{rank}"
    if not (group / "cgroup.procs").exists():
        raise BudgetError(f"cpu budget group {group} does not exist (was it removed early?)")
    (group / "cgroup.procs").write_text(str(pid or os.getpid()))
    if pid is None:
        global _joined
        _joined = group
    return group


def join_from_env(rank: int) -> Path | None:
    """In a rank: join its group if the launcher gave one (ENV_DIR); returns the group."""
    group_dir = os.environ.get(ENV_DIR)
    return join(Path(group_dir), rank) if group_dir else None


def own_throttling() -> dict:
    """This process's CFS statistics since it joined its group, as rank metrics ({} when it
    runs without a budget)."""
    if _joined is None:
        return {}
    version = 1 if (_joined / "cpu.cfs_quota_us").exists() else 2
    try:
        stats = Controller(_joined.parent.parent.parent, version).throttling(_joined)
    except OSError:  # the group is gone
        return {}
    return {"cpu_throttled_periods_pct": stats["throttled_periods_pct"],
            "cpu_throttled_s": stats["throttled_s"]}


def release() -> bool:
    """In a rank: move this process out of the group it joined, into the controller's root
    (seen the way it was joined, also from inside a node namespace). For work after the timed
    training, e.g. the final evaluation, which need not run at a device's pace. Returns
    whether there was a group to leave; the throttling statistics are gone afterwards."""
    global _joined
    if _joined is None:
        return False
    root = _joined.parent.parent.parent  # <controller root>/recpar/<run tag>/rank<k>
    (root / "cgroup.procs").write_text(str(os.getpid()))
    _joined = None
    return True


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """In a rank: run the block outside its budget, then rejoin the same group (validation
    between training epochs: not part of what a device is timed on, and at a device's pace
    it can take minutes). Nothing happens without a joined group."""
    global _joined
    group = _joined
    if group is None:
        yield
        return
    release()
    try:
        yield
    finally:
        (group / "cgroup.procs").write_text(str(os.getpid()))
        _joined = group


def leave() -> None:
    """Move this process back to the root group (before its group is removed)."""
    global _joined
    ctl = find_controller(make_top=False)
    (ctl.root / "cgroup.procs").write_text(str(os.getpid()))
    _joined = None
