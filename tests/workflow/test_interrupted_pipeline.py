"""Interrupting the pipeline mid-grid and running it again redoes only the unfinished runs, with
no partial record left in place (issue 15, item 6).

The `.test` grid on its synthetic-amazon source (seconds per run), four training runs (baseline
and 2-rank dp, two seeds each) of 4 epochs, so that a run can be caught between its first
checkpoint and its record. Every process of the pipeline is frozen (SIGSTOP) at the moment one
run has finished and another is mid-training, so the state the interruption meets is known, not
raced. Then, with `--profile profiles/local` as `make reproduce` runs it:

1. Ctrl-C: SIGINT to Snakemake's process group, what a terminal sends;
2. the same command again; once another run has finished and one is mid-training, SIGKILL
   to the process group (a crash, `kill -9`): Snakemake's incomplete
   markers stay behind (the profile sets rerun-incomplete), and its lock, which
   `snakemake --unlock` removes, as Snakemake's message says;
3. the whole default DAG (rule all), to the end.

After each interruption: no process of the pipeline is left, every record.json in place is
complete (schema-valid), and a dry run plans exactly the runs Snakemake had not finished. At the
end the records finished before an interruption are untouched (same bytes, same mtime), the
interrupted runs resumed from their checkpoints, and the rest of the grid ran: this is also the
`.test` grid's end-to-end run, its tables, reports and logs checked by
test_snakemake.check_tiny_pipeline_outputs, and a second run has nothing to do.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from recpar.train import record

from .test_snakemake import ROOT, SNAKEMAKE, _env, check_tiny_pipeline_outputs

pytestmark = [pytest.mark.pipeline, pytest.mark.slow, pytest.mark.multiprocess,
              pytest.mark.skipif(SNAKEMAKE is None, reason="snakemake is not installed")]

DATASET = "synthetic-amazon"
RUNS = ("baseline-tiny-n1/seed0", "baseline-tiny-n1/seed1", "laptop/dp2-ring-tiny-n1/seed0",
        "laptop/dp2-ring-tiny-n1/seed1")
TARGETS = frozenset(f"results/{DATASET}/{run}/record.json" for run in RUNS)
REST = frozenset(f"results/{DATASET}/laptop/baseline-tiny-n1/seed{s}/record.json" for s in (0, 1))
"""The grid's other training runs, made only by the last, whole-DAG run."""
EPOCHS = 4  # a run spends most of its time after its first checkpoint: easy to catch there
TRAINING_RULES = "baseline|sweep_run"
POLL_S = 0.05
CATCH_TIMEOUT_S = 600  # an upper bound only (2 shared cores); a phase ends when its state is met
GONE_TIMEOUT_S = 60  # the launcher's grace for torchrun is 5 s (recpar.cluster.launch)


def _write_config(work: Path) -> None:
    """The `.test` config on its small synthetic source, every run 4 epochs, no early stop."""
    cfg = yaml.safe_load((ROOT / ".test" / "config" / "config.yaml").read_text())
    cfg["dataset"] = DATASET
    cfg["train"].update(max_epochs=EPOCHS, patience=EPOCHS)
    cfg["sweep"]["train"] = {"max_epochs": EPOCHS}
    (work / "config").mkdir()
    (work / "config" / "config.yaml").write_text(yaml.safe_dump(cfg))


def _command(work: Path, *extra: str, targets=TARGETS) -> list[str]:
    """`targets` () : the whole default DAG (rule all)."""
    return [SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(work), "--profile",
            str(ROOT / "profiles" / "local"), *extra, *sorted(targets)]


def _as_from_a_terminal() -> None:
    """In the child before exec: SIGINT handled by default and no signal blocked, as a shell
    starts a command. Whatever an earlier test left in this pytest process (an ignored or
    blocked SIGINT is inherited across fork and exec) must not decide whether Ctrl-C reaches
    Snakemake: in two full `make test` runs the SIGINT was lost and the grid ran to its end,
    while the test alone passed."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


def _start(work: Path, name: str) -> tuple[subprocess.Popen, Path]:
    """Snakemake in a process group of its own (its pid is the group id), log in `name`.log."""
    log = work / f"{name}.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(_command(work), cwd=ROOT, env={**_env(), "PYTHONUNBUFFERED": "1"},
                                stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_as_from_a_terminal)
    return proc, log


def _training_jobs(log: str) -> tuple[set[str], set[str]]:
    """(started, finished) records of the training jobs in a Snakemake log."""
    outputs = {}
    for block in re.finditer(rf"^localrule (?:{TRAINING_RULES}):\n((?:    .*\n)+)", log, re.M):
        jobid = re.search(r"^    jobid: (\d+)$", block.group(1), re.M)
        output = re.search(r"^    output: (\S+)$", block.group(1), re.M)
        if jobid and output:
            outputs[jobid.group(1)] = output.group(1)
    done = re.findall(rf"^Finished jobid: (\d+) \(Rule: (?:{TRAINING_RULES})\)", log, re.M)
    return set(outputs.values()), {outputs[j] for j in done if j in outputs}


def _manifests(work: Path) -> set[Path]:
    """Every committed checkpoint generation of every run (its manifest)."""
    return set((work / "results").glob("**/checkpoints/*/manifest.json"))


def _mid_training(work: Path, running: set[str], before: set[Path]) -> str | None:
    """A running job whose run has committed a checkpoint since `before` (so it trains, and has
    something to resume from) and written no record yet."""
    for rec in sorted(running):
        run = (work / rec).parent
        if not (work / rec).exists() and set(run.glob("checkpoints/*/manifest.json")) - before:
            return rec
    return None


def _ours(work: Path) -> list[int]:
    """Live processes working in `work`: Snakemake, its job shells, launchers, torchrun agents
    and ranks (these two in sessions of their own)."""
    pids = []
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            cwd = os.readlink(f"/proc/{name}/cwd")
        except OSError:  # gone, or a zombie
            continue
        if int(name) != os.getpid() and (cwd == str(work) or cwd.startswith(f"{work}{os.sep}")):
            pids.append(int(name))
    return pids


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def _signal(pids, sig) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _freeze(proc: subprocess.Popen, work: Path) -> set[int]:
    """SIGSTOP the group, then every other process of ours until none is left running."""
    os.killpg(proc.pid, signal.SIGSTOP)
    frozen: set[int] = set()
    while new := set(_ours(work)) - frozen:
        _signal(new, signal.SIGSTOP)
        frozen |= new
    for pid in frozen:
        while _state(pid) not in (None, "T", "t", "Z"):  # a stop takes effect asynchronously
            time.sleep(0.001)
    return frozen


def _thaw(proc: subprocess.Popen, frozen: set[int]) -> None:
    os.killpg(proc.pid, signal.SIGCONT)
    _signal(frozen, signal.SIGCONT)


def _catch(proc: subprocess.Popen, log: Path, work: Path, before: set[Path],
           ready) -> tuple[set[int], str, set[str]]:
    """Poll until `ready(finished)` and some run is mid-training (a checkpoint beyond `before`);
    freeze everything and check again on the frozen state. Returns (frozen pids, the run caught,
    the finished records)."""
    deadline = time.monotonic() + CATCH_TIMEOUT_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, ("the pipeline ended before a run was caught mid-training:\n"
                                     + log.read_text()[-3000:])
        started, finished = _training_jobs(log.read_text())
        if ready(finished) and _mid_training(work, started - finished, before):
            frozen = _freeze(proc, work)
            started, finished = _training_jobs(log.read_text())
            caught = _mid_training(work, started - finished, before)
            if ready(finished) and caught:
                return frozen, caught, finished
            _thaw(proc, frozen)
        time.sleep(POLL_S)
    pytest.fail(f"no run caught mid-training in {CATCH_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


def _wait_all_gone(work: Path) -> None:
    deadline = time.monotonic() + GONE_TIMEOUT_S
    while (left := _ours(work)) and time.monotonic() < deadline:
        time.sleep(0.1)
    cmds = {pid: Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:200]
            for pid in left if Path(f"/proc/{pid}/cmdline").exists()}
    assert not left, f"processes left behind after the interruption: {cmds}"


def _planned(work: Path) -> set[str]:
    """The records a dry run of the same command would (re)make."""
    r = subprocess.run(_command(work, "-n"), cwd=ROOT, env=_env(), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    return {p for p in re.findall(r"^    output: (\S+)$", r.stdout, re.M) if p in TARGETS}


def _check_interrupted(work: Path, finished: set[str], caught: str) -> dict[str, tuple]:
    """Nothing left running, no partial record in place, only the unfinished runs planned;
    returns the finished records' (mtime, bytes)."""
    _wait_all_gone(work)
    for rec in (work / "results").rglob("record.json"):
        record.read(rec)  # complete and schema-valid, or it raises naming the file
    planned = _planned(work)
    assert planned == TARGETS - finished, (planned, finished)
    assert caught in planned
    return {rec: ((work / rec).stat().st_mtime_ns, (work / rec).read_bytes()) for rec in finished}


@pytest.fixture
def work(tmp_path):
    """The scratch working directory; whatever still runs in it when the test ends is killed."""
    work = tmp_path.resolve()
    yield work
    _signal(_ours(work), signal.SIGKILL)


def test_interrupted_pipeline_redoes_only_the_unfinished_runs(work):
    _write_config(work)

    # 1. Ctrl-C once a run has finished and another is mid-training
    proc, log = _start(work, "first")
    frozen, caught1, finished = _catch(proc, log, work, set(), ready=bool)
    os.killpg(proc.pid, signal.SIGINT)
    _thaw(proc, frozen)
    proc.wait(timeout=120)
    kept = _check_interrupted(work, finished, caught1)

    # 2. again; kill -9 of the group once another run has finished and one is mid-training
    # (which ones: Snakemake's order)
    before = _manifests(work)
    proc, log = _start(work, "second")
    frozen, caught2, finished2 = _catch(proc, log, work, before, ready=bool)
    os.killpg(proc.pid, signal.SIGKILL)
    _signal(frozen, signal.SIGCONT)  # torchrun agents, in their own sessions, get PDEATHSIG
    proc.wait(timeout=60)
    assert not finished2 & set(kept), "a finished run was trained again"
    kept = {**_check_interrupted(work, finished | finished2, caught2), **kept}

    # 3. again, to the end; a killed Snakemake leaves its lock, which it names with the remedy
    locked = subprocess.run(_command(work), cwd=ROOT, env=_env(), capture_output=True, text=True,
                            timeout=120)
    assert locked.returncode != 0 and "--unlock" in locked.stdout + locked.stderr
    unlock = subprocess.run(_command(work, "--unlock"), cwd=ROOT, env=_env(), capture_output=True,
                            text=True, timeout=120)
    assert unlock.returncode == 0, (unlock.stdout + unlock.stderr)[-3000:]
    last = subprocess.run(_command(work, targets=()), cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=CATCH_TIMEOUT_S)
    assert last.returncode == 0, (last.stdout + last.stderr)[-4000:]
    _, finished3 = _training_jobs(last.stdout + last.stderr)
    assert finished3 == (TARGETS - set(kept)) | REST
    for rec, (mtime_ns, data) in kept.items():
        assert ((work / rec).stat().st_mtime_ns, (work / rec).read_bytes()) == (mtime_ns, data), rec
    for rec in TARGETS:
        got = record.read(work / rec)
        assert len(got["history"]) == EPOCHS, rec  # every epoch once
    for rec in (caught1, caught2):
        assert record.read(work / rec)["notes"][0].startswith("resumed from last.pt after epoch")
    check_tiny_pipeline_outputs(work, sweep_epochs=EPOCHS)
    again = subprocess.run(_command(work, "-n", targets=()), cwd=ROOT, env=_env(),
                           capture_output=True, text=True, timeout=120)
    assert "Nothing to be done" in again.stdout + again.stderr, again.stdout[-3000:]
