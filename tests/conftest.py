"""Shared fixtures: the real embedded model, a real LoRA adapter trained once per session."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAIN_CONFIG = ROOT / "configs" / "experiments" / "formatting-smollm2-cpu.yaml"
BIN = Path(sys.executable).parent

# `make test` runs the suite on pytest-xdist workers. Each worker, and every process it starts,
# computes on its share of the cores (one thread each for two workers on the two-core CI machine):
# more threads than cores would make OpenMP threads wait on each other instead of working.
if os.environ.get("PYTEST_XDIST_WORKER"):
    _share = (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, _share)))


# The groups that take minutes each on the CI machine start first, so the two workers finish together
# (`make test` passes --no-loadscope-reorder, without which xdist orders groups by their number of tests).
LONGEST_FIRST = ("trained_run", "test_qlora.py", "test_trust.py", "test_tone_experiment.py", "test_sweep.py", "test_scripted_teacher.py")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """Under xdist (`--dist loadgroup`) a module's tests stay together on one worker, so its module
    fixtures are made once. The modules that use the session's trained adapter (and its one vLLM
    server) form one group, in file order, so the adapter is trained once; a module that names its
    own group (modules that share something else) keeps it."""
    shared = {item.path for item in items if "trained_run" in getattr(item, "fixturenames", ())}
    for item in items:
        if item.path in shared:
            item.add_marker(pytest.mark.xdist_group("trained_run"))
        elif item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(item.path.name))
    group = {item: item.get_closest_marker("xdist_group").args[0] for item in items}
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(group[item], len(rank)))  # stable: file order otherwise


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids):
    """xdist names each grouped test `id@group`; where it could not, the groups would scatter."""
    if node.config.getoption("dist") == "loadgroup" and any("@" not in i for i in ids):
        raise pytest.UsageError("pytest-xdist could not group the tests (--dist loadgroup): install the "
                                "pinned test tools, pip install -e '.[test]'")


@contextmanager
def _machine_share(item):
    """A test marked `quiet` (it compares timings within a bound) runs alone: under xdist every
    test holds a shared lock on the machine from its setup to its teardown, a quiet one the
    exclusive lock, so it waits for the other worker's current test and holds the next one back."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        yield
        return
    # the workers' temporary folders (--basetemp, set by xdist) share one parent: the run's
    with open(Path(item.config.getoption("basetemp")).parent / "machine.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX if item.get_closest_marker("quiet") else fcntl.LOCK_SH)
        yield  # closing the file releases the lock


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    with _machine_share(item):
        return (yield)


@pytest.fixture(scope="session", autouse=True)
def _in_repo_root():
    os.chdir(ROOT)  # configs name data files relative to the checkout


@pytest.fixture(scope="session")
def embedded_model() -> str:
    from ftscale import models

    if not (models.local_dir("smollm2-135m") / models.MANIFEST).is_file():
        pytest.fail("the embedded model is not prepared: run `make setup` (ftscale models prepare smollm2-135m)")
    return "smollm2-135m"


# A short, real training run: enough steps for the format to start sticking on two CPU cores.
TRAIN_OVERRIDES = ["--num_train_examples", "24", "--train.epochs", "3", "--train.learning_rate", "3e-4",
                   "--train.batch_size", "8"]


@pytest.fixture(scope="session")
def trained_run(embedded_model, tmp_path_factory) -> Path:
    """Train through the user's entry point: `accelerate launch train/sft.py ...`."""
    run_dir = tmp_path_factory.mktemp("sft") / "n0024"
    cmd = [str(BIN / "accelerate"), "launch", "--num_processes", "1", "--cpu", "train/sft.py",
           "--config", str(MAIN_CONFIG), "--output_dir", str(run_dir), *TRAIN_OVERRIDES]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return run_dir


def ctrl_c_reaches_it() -> None:
    """`preexec_fn` of a child a test stops with SIGINT (Ctrl-C): started as a shell's background job
    (as a CI script may start the suite), the test session ignores SIGINT, every child inherits
    that, and Python in the child would never raise KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _snapshot(folder: Path) -> frozenset:
    """Every path below `folder` with its size; os.walk passes over folders renamed away meanwhile."""
    out = set()
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            try:
                out.add((os.path.join(root, name), os.stat(os.path.join(root, name)).st_size))
            except FileNotFoundError:  # renamed away while we looked
                pass
    return frozenset(out)


def kill_at_change(args: list[str], folder: Path, changes: int) -> bool:
    """Run `ftscale ARGS` and SIGKILL its whole process group at the `changes`-th change seen in
    `folder`: an event of the work itself, so a faster machine is killed at the same points. True if
    it was killed while still working, False if it finished first."""
    proc = subprocess.Popen([str(BIN / "ftscale"), *map(str, args)], cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen, last = 0, _snapshot(folder)
    while proc.poll() is None:
        time.sleep(0.05)
        now = _snapshot(folder)
        if now != last:
            seen, last = seen + 1, now
        if seen >= changes:
            os.killpg(proc.pid, signal.SIGKILL)  # no chance to clean up: the worst case
            proc.wait()
            return True
    return False


@pytest.fixture(scope="session")
def vllm_server(trained_run, tmp_path_factory):
    """ONE vLLM server for the session (startup takes 30-110 s on two cores): the embedded model
    with the session's adapter served as `ft`. tests/test_serve_vllm.py's last test kills it, so
    the modules that share it sort before that one (test_migrate_walkthrough.py does)."""
    from ftscale.config import load_config
    from ftscale.serve.server import server_for

    cfg = load_config(MAIN_CONFIG, {"eval.limit": "12"})
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    with server_for(cfg, {"ft": trained_run}, log) as s:
        yield s
    assert not s.alive()
